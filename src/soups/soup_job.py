"""One soup job: pool -> recipes -> evaluation -> soup dirs + report (table, figure, W&B)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soups.config import SoupSettings, check
from soups.data import build_data
from soups.errors import BadInput, MissingInput
from soups.eval_cache import EvaluationCache, evaluation_key
from soups.evaluate import Evaluator, format_metrics
from soups.io import sha256_file
from soups.models import build_classifier, has_batchnorm
from soups.names import FIGURE_NAME, WEIGHTS_NAME
from soups.pool import load_pool
from soups.recipes.build import build_recipes
from soups.records import baseline_rows, log_recipe, recipe_row, save_soup
from soups.release import load_release_pool
from soups.report import reference_comparison, write_report
from soups.runtime import environment, resolve_device, setup
from soups.scorer import WeightsScorer
from soups.tracking import tracking

log = logging.getLogger(__name__)


def _wants_recalibration(setting, model) -> bool:
    """`setting`: auto, true or false (checked with the other settings by soups.config)."""
    return has_batchnorm(model) if setting == "auto" else bool(setting)


def _open_pool(cfg, device):
    """(ingredients, run config with model/data/shifts, template model, init record, pool name,
    {run dir: why it was skipped})."""
    if cfg.pool.get("release"):
        missing = [k for k in ("model", "data", "shifts") if not cfg.get(k)]
        if missing:
            raise BadInput(f"pool.release needs {missing} in the soup config; use experiment=paper_vit_b32")
        run_cfg = OmegaConf.create({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "shifts")})
        model = build_classifier(run_cfg.model, run_cfg.data.num_classes, load_pretrained=False).to(device)
        ingredients, init = load_release_pool(cfg.pool.release, model.state_dict(), cfg.paths.cache_dir)
        return ingredients, run_cfg, model, init, Path(cfg.pool.release.dir).name, {}
    ingredients, skipped = load_pool(cfg.pool, cfg.paths.log_dir, cfg.pool.verify_sha256)
    run_cfg = OmegaConf.create(ingredients[0].info["config"])
    model = build_classifier(run_cfg.model, run_cfg.data.num_classes, load_pretrained=False).to(device)
    return ingredients, run_cfg, model, None, ingredients[0].run_dir.parent.name, skipped


def run_soup(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    out_dir = Path(out_dir)
    check(cfg, SoupSettings)
    recipes = build_recipes(cfg.method)
    setup(cfg.seed, cfg.get("threads"))
    device = resolve_device(cfg.device)
    ingredients, run_cfg, model, init, pool_name, skipped = _open_pool(cfg, device)
    log.info("pool %s: %d ingredients%s", pool_name, len(ingredients), f", {len(skipped)} skipped" if skipped else "")
    if cfg.eval_batch_size is None:  # batch size is part of the evaluation key (kernels differ by shape)
        cfg.eval_batch_size = int(run_cfg.get("eval_batch_size") or 256)
    data = build_data(run_cfg.data, run_cfg.shifts, run_cfg.model, cfg.paths.cache_dir)
    evaluator = Evaluator(data.eval_sets(), cfg.eval_batch_size, cfg.precision, device, compile=bool(cfg.get("compile")))
    bn_sample = data.bn_set() if _wants_recalibration(cfg.bn_recalibration, model) else None
    init_weights = init.weights if init is not None else Path(ingredients[0].info["init"]["dir"]) / WEIGHTS_NAME
    needs_init = [name for name, recipe in recipes.items() if recipe.needs_init]
    if needs_init and not Path(init_weights).is_file():
        raise MissingInput(f"{needs_init} interpolate with the pool's shared initialization, but its weights "
                           f"{init_weights} (named in the ingredients' run.json) are missing; the init lives "
                           f"in paths.cache_dir: was it cleaned? Choose other methods, or fine-tune the pool again")
    key = evaluation_key(run_cfg, cfg.precision, cfg.eval_batch_size, bool(cfg.get("compile")))
    scorer = WeightsScorer(model, evaluator, bn_sample, cfg.eval_batch_size, device, init_weights,
                           EvaluationCache(cfg.paths.cache_dir, key), key, cfg.cache_logits)

    # released checkpoints carry no metrics, and a run measured under other evaluation settings
    # (precision, batch size, ...) is not comparable with the soups: each is evaluated once, cached
    for ingredient in ingredients:
        scorer.individual_metrics(ingredient)
    if init is None:
        template = {"init": ingredients[0].info["init"], "config": ingredients[0].info["config"]}
    else:
        template = {"init": {"name": init.name, "sha256": sha256_file(init.weights), "metrics": init.info["metrics"]},
                    "config": OmegaConf.to_container(run_cfg)}

    template["environment"] = environment()
    rows = baseline_rows(ingredients, template["init"]["metrics"])
    with tracking(cfg.logger, out_dir, name=f"soup/{out_dir.name}", job_type="soup",
                  config=OmegaConf.to_container(cfg, resolve=True), group=pool_name) as tracker:
        for name, recipe in recipes.items():
            start = time.time()
            result = recipe(ingredients, scorer)
            if result.kind == "ensemble":  # k forward passes per image
                metrics = scorer.ensemble_evaluate(result.ingredients)
            else:
                metrics = scorer.evaluate(result.weights, averaged=result.is_average, hold=True)
                # save what was evaluated: the average with its recomputed BN statistics (if any)
                result.weights = {k: v.detach().cpu().clone() for k, v in scorer.model.state_dict().items()}
            seconds = round(time.time() - start, 1)
            save_soup(out_dir / name, name, result, metrics, template, bn_sample is not None, seconds)
            rows.append(recipe_row(name, result, metrics))
            log_recipe(tracker, name, metrics, result, out_dir / name)
            log.info("%s (%d ingredients, %.1fs): %s", rows[-1]["row"], len(result.ingredients), seconds,
                     format_metrics(metrics))
        title = f"soups of {pool_name} ({len(ingredients)} ingredients)"
        table = write_report(rows, out_dir, title, cfg.get("reference"), skipped, template["environment"])
        cols = ["row", "kind", "ingredients", *rows[0]["metrics"].keys()]
        tracker.table("soups/table", cols, [[r["row"], r["kind"], str(r["ingredients"]),
                                             *[r["metrics"].get(c) for c in cols[3:]]] for r in rows])
        tracker.image("soups/figure", out_dir / FIGURE_NAME)
        if cfg.get("reference"):
            comparison = reference_comparison(rows, cfg.reference)
            tracker.table("soups/reference", list(comparison[0]), [list(c.values()) for c in comparison])
    print(f"\n{title}\n\n{table}\nwritten to {out_dir}")
    return rows


