"""One soup job: pool -> recipes -> evaluation -> soup dirs + report (table, figure, W&B)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soups.errors import BadInput
from soups.io.files import nonfinite_tensors
from soups.evaluation.evaluator import format_metrics
from soups.evaluation.scorer import EvalSettings, PoolScorer, init_missing, require_init
from soups.evaluation.stats import build_statistics
from soups.names import FIGURE_NAME
from soups.pools import OpenPool, open_pool
from soups.pools.ingredient import best_individual
from soups.recipes import build_recipes, runnable
from soups.reporting.records import baseline_rows, log_recipe, log_report, recipe_row, save_soup
from soups.reporting.report import write_report
from soups.runtime import resolve_device, setup
from soups.settings import SoupSettings, checked, no_training_settings
from soups.tracking import build_logger, tracking

log = logging.getLogger(__name__)


def run_recipe(name: str, recipe, pool: OpenPool, scorer: PoolScorer, out_dir: Path, template: dict,
               tracker, qualify) -> dict:
    """One recipe: choose, evaluate, qualify (calibration, difference to the best individual), save its
    folder, log it; its report row. `qualify`: {set: logits} -> what PoolScorer.qualify returns."""
    start = time.time()
    result = recipe(pool.ingredients, scorer)
    bad = nonfinite_tensors(result.weights) if result.weights is not None else []
    if bad:  # never a NaN row: the recipe's settings made it diverge
        raise BadInput(f"method.{name} made weights holding NaN or inf ({len(bad)} tensors, e.g. {bad[:3]}); its "
                       f"settings diverged (a learning rate or scale too large?)")
    if result.kind == "ensemble":  # k forward passes per image
        logits = scorer.ensemble_logits(result.ingredients)
        metrics = scorer.metrics_of(logits)
    else:
        metrics = scorer.evaluate(result.weights, new_point=result.is_new_point, hold=True)
        logits = scorer.soup_logits(result.weights, new_point=result.is_new_point)
        # save what was evaluated: the average with its recomputed BN statistics (if any)
        result.weights = {k: v.detach().cpu().clone() for k, v in scorer.model.state_dict().items()}
    scorer.results[name] = result  # later recipes may build on it (wise_ft's base)
    quality = {} if result.std is not None else qualify(logits)  # several draws: their spread says more
    seconds = round(time.time() - start, 1)
    save_soup(out_dir / name, name, result, metrics, template, scorer.bn_sample is not None, seconds, quality)
    if pool.export is not None and result.weights is not None:  # also in the ingredients' own format
        written = pool.export(result.weights, out_dir / name)
        log.info("%s: also written as %s", name, ", ".join(f"{p.name}/" for p in written))
    log_recipe(tracker, name, metrics, result, out_dir / name, quality)
    row = recipe_row(name, result, metrics, out_dir / name) | quality
    if result.std is None:
        log.info("%s (%d ingredients, %.1fs): %s", row["row"], len(result.ingredients), seconds, format_metrics(metrics))
    else:  # the row is the mean over draws; the saved weights are one draw's
        log.info("%s (%s ingredients, %.1fs): mean %s; std %s; saved weights (%d ingredients): %s", row["row"],
                 row["ingredients"], seconds, format_metrics(result.mean), format_metrics(result.std),
                 len(result.ingredients), format_metrics(metrics))
    return row


def run_soup(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    """pool -> recipes -> evaluation -> soup folders + report (table, figure, W&B). Every input is checked
    before the first evaluation. Returns the report's rows."""
    out_dir = Path(out_dir)
    cfg = checked(cfg, SoupSettings)
    no_training_settings(cfg, "src/soup.py")
    recipes, logger = build_recipes(cfg.get("method")), build_logger(cfg.logger)
    statistics = build_statistics(cfg.get("statistics"))
    setup(cfg.seed, cfg.get("threads"))
    device = resolve_device(cfg.device)
    pool = open_pool(cfg, device)
    log.info("pool %s: %d ingredients%s", pool.name, len(pool.ingredients),
             f", {len(pool.skipped)} skipped" if pool.skipped else "")
    if len(pool.ingredients) == 1:  # allowed (a test of a recipe's edge), but rarely what was meant
        why = f"{len(pool.skipped)} other run dir(s) skipped, named above" if pool.skipped else "a sweep of one run?"
        log.warning("pool %s has one ingredient: every soup of it is that model (%s; pool.dir=... names another)",
                    pool.name, why)
    every_applicable = bool((cfg.get("method") or {}).get("_every_applicable"))
    recipes, left_out = runnable(recipes, pool.ingredients, every_applicable, init_missing(pool))  # before any evaluation
    require_init(pool, [name for name, recipe in recipes.items() if recipe.needs_init])
    scorer = PoolScorer(pool, EvalSettings.of(cfg), device)
    # released checkpoints carry no metrics, and a run measured under other evaluation settings
    # (precision, batch size, ...) is not comparable with the soups: each is evaluated once, cached
    individuals = pool.ingredients + ([pool.release_init] if pool.release_init else [])
    for ingredient in individuals:
        scorer.individual_metrics(ingredient)
    best = best_individual(pool.ingredients)
    best_logits = scorer.individual_logits(best)  # every soup and ensemble is compared with it, image by image
    log.info("individual models: %d images forwarded for %d models (0: all from run.json or the evaluation "
             "cache, e.g. filled by src/evaluate.py)", scorer.images_forwarded, len(individuals))
    template = pool.template() | {"evaluation": scorer.settings_record()}
    if pool.release_init is None and template["init"].get("metrics"):  # a run-dir pool's init: its run.json's
        forwarded = scorer.images_forwarded
        template["init"] = scorer.init_record(template["init"])
        if scorer.images_forwarded > forwarded:
            log.info("the initialization: %d images forwarded (its run.json's metrics were measured under other "
                     "evaluation settings)", scorer.images_forwarded - forwarded)
    rows = baseline_rows(pool.ingredients, template["init"]["metrics"])
    best_row = next(r for r in rows if r["kind"] == "best_individual")
    best_row |= scorer.qualify(best_logits, None, statistics)  # its calibration

    def qualify(logits):
        return scorer.qualify(logits, best_logits, statistics)

    # the command's config, plus what was used where it left a choice (eval_batch_size=null, model/data from
    # the pool's runs, bn_recalibration=auto): what one filters runs by in W&B
    used = {"evaluation": template["evaluation"], "pool": {"name": pool.name, "ingredients": len(pool.ingredients)},
            **{k: template["config"][k] for k in ("model", "data") if k in template["config"]}}
    with tracking(logger, out_dir, name=f"soup/{out_dir.name}", job_type="soup",
                  config=OmegaConf.to_container(cfg, resolve=True) | {"used": used}, group=pool.name) as tracker:
        rows += [run_recipe(name, recipe, pool, scorer, out_dir, template, tracker, qualify)
                 for name, recipe in recipes.items()]
        title = f"soups of {pool.name} ({len(pool.ingredients)} ingredients)"
        table = write_report(rows, out_dir, title, cfg.get("reference"), pool.skipped, template["environment"],
                             statistics.caption(), left_out)
        log_report(tracker, rows, out_dir / FIGURE_NAME, cfg.get("reference"))
    print(f"\n{title}\n\n{table}\nwritten to {out_dir}")
    return rows
