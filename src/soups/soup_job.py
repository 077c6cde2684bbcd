"""One soup job: pool -> recipes -> evaluation -> soup dirs + report (table, figure, W&B)."""
from __future__ import annotations

import logging
import time

from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from soups import plots
from soups.config import SoupSettings, check
from soups.data import build_data
from soups.errors import BadInput, MissingInput
from soups.eval_cache import EvaluationCache, evaluation_key
from soups.evaluate import Evaluator, format_metrics
from soups.io import atomic_save_safetensors, sha256_file, write_json
from soups.models import build_classifier, has_batchnorm
from soups.names import WEIGHTS_NAME, RUN_INFO_NAME, SOUP_INFO_NAME, FIGURE_NAME
from soups.pool import Ingredient, load_pool
from soups.release import load_release_pool
from soups.report import reference_comparison, write_report
from soups.runtime import environment, resolve_device, setup
from soups.scorer import WeightsScorer
from soups.tracking import tracking

log = logging.getLogger(__name__)


def build_recipes(method_cfg) -> dict:
    """Instantiated (hence validated) before any work."""
    if not method_cfg:
        raise BadInput("no method selected; e.g. method=greedy or method=[uniform,greedy]")
    recipes = {}
    for name, node in method_cfg.items():
        _check_targets(f"method.{name}", node)
        try:
            recipes[name] = instantiate(node)
        except InstantiationException as err:
            raise BadInput(f"method.{name}: {err.__cause__ or err}") from err
    return recipes


RECIPES_PACKAGE = "soups.recipes."


def _check_targets(where: str, node) -> None:
    """A method config names recipe classes, never arbitrary callables: every `_target_` must be a class
    defined in soups.recipes (where a new recipe goes), so a method config cannot make instantiation run
    other code. Only modules of that package are imported to check it."""
    if OmegaConf.is_dict(node):
        target = node.get("_target_")
        if target is not None and not _is_recipe_class(str(target)):
            raise BadInput(f"{where}._target_={target!r}: a method must be a class in {RECIPES_PACKAGE.rstrip('.')} "
                           f"(add new recipes to src/soups/recipes/)")
        for key, child in node.items():
            _check_targets(f"{where}.{key}", child)
    elif OmegaConf.is_list(node):
        for i, child in enumerate(node):
            _check_targets(f"{where}[{i}]", child)


def _is_recipe_class(path: str) -> bool:
    if not path.startswith(RECIPES_PACKAGE):
        return False
    try:
        found = get_object(path)  # e.g. soups.recipes.greedy.logging.os.system reaches os.system: refused below
    except Exception:  # noqa: BLE001 - not found: not a recipe
        return False
    return isinstance(found, type) and found.__module__.startswith(RECIPES_PACKAGE)


def _wants_recalibration(setting, model) -> bool:
    """`setting`: auto, true or false (checked with the other settings by soups.config)."""
    return has_batchnorm(model) if setting == "auto" else bool(setting)


def baseline_rows(ingredients: list[Ingredient], init_metrics: dict) -> list[dict]:
    """Initialization, every individual, and the best individual by held-out accuracy."""
    rows = [{"row": "initialization", "kind": "init", "ingredients": "", "metrics": init_metrics}]
    rows += [{"row": i.name, "kind": "individual", "ingredients": 1, "metrics": i.info["metrics"],
              "hparams": i.info.get("hparams", {})} for i in ingredients]
    best = max(ingredients, key=lambda i: i.held_out)
    rows.append({"row": f"best individual ({best.name})", "kind": "best_individual", "ingredients": 1,
                 "metrics": best.info["metrics"]})
    return rows


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
    needs_init = [name for name, recipe in recipes.items() if getattr(recipe, "needs_init", False)]
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
            if result.state is None:  # an ensemble: k forward passes per image
                metrics = scorer.ensemble_evaluate(result.ingredients)
                kind, cost = "ensemble", len(result.ingredients)
            else:
                metrics = scorer.evaluate(result.state, averaged=result.is_average, hold=True)
                # save what was evaluated: the average with its recomputed BN statistics (if any)
                result.state = {k: v.detach().cpu().clone() for k, v in scorer.model.state_dict().items()}
                kind, cost = "soup", 1
            seconds = round(time.time() - start, 1)
            _save_soup(out_dir / name, name, result, metrics, template, bn_sample is not None, seconds)
            row = {"row": f"{name} soup" if kind == "soup" else name.replace("_", " "), "kind": kind,
                   "ingredients": len(result.ingredients), "cost": cost, "metrics": metrics}
            if "curve" in result.record:  # WiSE-FT's path, drawn in the figure
                row["curve"] = result.record["curve"]
            if "std" in result.record:  # several draws of one recipe (greedy over random orders): mean ± std
                row |= {"metrics": result.record["mean"], "std": result.record["std"]}
            rows.append(row)
            log_recipe(tracker, name, metrics, result.record, out_dir / name)
            log.info("%s (%d ingredients, %.1fs): %s", row["row"], len(result.ingredients), seconds,
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


TRACE_COLUMNS = ["run", "individual_held_out", "soup_held_out", "accepted"]


def log_recipe(tracker, name: str, metrics: dict, record: dict, soup_dir: Path) -> None:
    """W&B: the recipe's metrics, its greedy trace / WiSE-FT curve / random orders as tables, its plot."""
    tracker.log({f"{name}/{k}": v for k, v in metrics.items()})
    if record.get("trace"):
        tracker.table(f"{name}/trace", TRACE_COLUMNS, [[t[c] for c in TRACE_COLUMNS] for t in record["trace"]])
    if record.get("curve"):
        cols = list(record["curve"][0])
        tracker.table(f"{name}/curve", cols, [[p[c] for c in cols] for p in record["curve"]])
    if record.get("orders"):
        cols = list(record["orders"][0]["metrics"])
        tracker.table(f"{name}/orders", ["order", "ingredients", *cols],
                      [[" ".join(o["order"]), len(o["chosen"]), *[o["metrics"][c] for c in cols]] for o in record["orders"]])
    if (soup_dir / "coefficients.png").is_file():
        tracker.image(f"{name}/coefficients", soup_dir / "coefficients.png")


def _save_soup(soup_dir: Path, name: str, result, metrics: dict, template_info: dict, recalibrated: bool,
               seconds: float) -> None:
    record = {"kind": "soup" if result.state is not None else "ensemble", "method": name,
              "ingredients": [str(i.source) for i in result.ingredients], "metrics": metrics,
              "bn_recalibrated": recalibrated and result.state is not None and result.is_average,
              "seconds": seconds, **result.record,
              "environment": template_info["environment"]}
    if result.state is None:  # an ensemble has no weights of its own
        write_json(record, soup_dir / SOUP_INFO_NAME)
        return
    atomic_save_safetensors(result.state, soup_dir / WEIGHTS_NAME, metadata={"kind": "soup", "method": name})
    write_json(record, soup_dir / SOUP_INFO_NAME)
    if "coefficients" in record:
        plots.coefficients(record, soup_dir / "coefficients.png", f"{name} soup: mixing weights")
    # run.json in the same schema as a fine-tune's, so a soup loads (and soups) like any run
    write_json({"kind": "soup", "method": name, "metrics": metrics, "weights": WEIGHTS_NAME,
                "sha256": sha256_file(soup_dir / WEIGHTS_NAME), "init": template_info["init"],
                "config": template_info["config"], "environment": template_info["environment"]},
               soup_dir / RUN_INFO_NAME)
