"""A recipe's result as the outside sees it: a report row, W&B entries, and a saved folder (soup.json, the
weights, and run.json in a fine-tune's schema so a soup loads, and soups, like any run). Reads only the
fields RecipeResult declares."""
from __future__ import annotations

from pathlib import Path

from soups import plots
from soups.files import atomic_save_safetensors, sha256_file, write_json
from soups.names import RUN_INFO_NAME, SOUP_INFO_NAME, WEIGHTS_NAME
from soups.ingredient import Ingredient
from soups.recipes import RecipeResult
from soups.report import reference_comparison


def baseline_rows(ingredients: list[Ingredient], init_metrics: dict | None) -> list[dict]:
    """Initialization (unless the pool names none: None), every individual, and the best individual by
    held-out accuracy."""
    rows = [] if init_metrics is None else [{"row": "initialization", "kind": "init", "ingredients": "",
                                             "metrics": init_metrics}]
    rows += [{"row": i.name, "kind": "individual", "ingredients": 1, "metrics": i.info["metrics"],
              "hparams": i.info.get("hparams", {})} for i in ingredients]
    best = max(ingredients, key=lambda i: i.held_out)
    rows.append({"row": f"best individual ({best.name})", "kind": "best_individual", "ingredients": 1,
                 "metrics": best.info["metrics"]})
    return rows


def recipe_row(name: str, result: RecipeResult, metrics: dict) -> dict:
    """The report table's row: a soup costs one forward pass per image, an ensemble one per member."""
    row = {"row": f"{name} soup" if result.kind == "soup" else name.replace("_", " "), "kind": result.kind,
           "ingredients": len(result.ingredients), "cost": 1 if result.kind == "soup" else len(result.ingredients),
           "metrics": metrics}
    if result.curve:  # WiSE-FT's path, drawn in the figure
        row["curve"] = result.curve
    if result.std is not None:  # several draws of one recipe (greedy over random orders): mean +- std
        row |= {"metrics": result.mean, "std": result.std}
    return row


TRACE_COLUMNS = ["run", "individual_held_out", "soup_held_out", "accepted"]


def log_recipe(tracker, name: str, metrics: dict, result: RecipeResult, soup_dir: Path, quality: dict) -> None:
    """W&B: the recipe's metrics, calibration and difference to the best individual (`quality`: see
    PoolScorer.qualify), its greedy trace / WiSE-FT curve / random orders as tables, its plot."""
    tracker.log({f"{name}/{k}": v for k, v in metrics.items()})
    for group, per_set in quality.items():  # e.g. greedy/calibration/test/ece, greedy/vs_best/test/low
        tracker.log({f"{name}/{group}/{s}/{k}": v for s, values in per_set.items() for k, v in values.items()})
    if result.trace:
        tracker.table(f"{name}/trace", TRACE_COLUMNS, [[t[c] for c in TRACE_COLUMNS] for t in result.trace])
    if result.curve:
        cols = list(result.curve[0])
        tracker.table(f"{name}/curve", cols, [[p[c] for c in cols] for p in result.curve])
    if result.orders:
        cols = list(result.orders[0]["metrics"])
        tracker.table(f"{name}/orders", ["order", "ingredients", *cols],
                      [[" ".join(o["order"]), len(o["chosen"]), *[o["metrics"][c] for c in cols]] for o in result.orders])
    if (soup_dir / "coefficients.png").is_file():
        tracker.image(f"{name}/coefficients", soup_dir / "coefficients.png")


def save_soup(soup_dir: Path, name: str, result: RecipeResult, metrics: dict, template_info: dict,
              recalibrated: bool, seconds: float, quality: dict) -> None:
    """soup.json (+ the weights and a run.json for a soup; an ensemble has no weights of its own).
    `recalibrated`: whether the job recomputes BN statistics of averaged weights; `quality`: its
    calibration and difference to the best individual (PoolScorer.qualify)."""
    record = {"kind": result.kind, "method": name, "ingredients": [str(i.source) for i in result.ingredients],
              "metrics": metrics, **quality,
              "bn_recalibrated": recalibrated and result.kind == "soup" and result.is_average,
              "seconds": seconds, **result.record, "environment": template_info["environment"]}
    if result.weights is None:
        write_json(record, soup_dir / SOUP_INFO_NAME)
        return
    atomic_save_safetensors(result.weights, soup_dir / WEIGHTS_NAME, metadata={"kind": "soup", "method": name})
    write_json(record, soup_dir / SOUP_INFO_NAME)
    if result.coefficients is not None:
        plots.coefficients(record, soup_dir / "coefficients.png", f"{name} soup: mixing weights")
    write_json({"kind": "soup", "method": name, "metrics": metrics, "weights": WEIGHTS_NAME,
                "sha256": sha256_file(soup_dir / WEIGHTS_NAME), "init": template_info["init"],
                "config": template_info["config"], "environment": template_info["environment"]},
               soup_dir / RUN_INFO_NAME)


def log_report(tracker, rows: list[dict], figure: Path, reference: dict | None) -> None:
    """W&B: the comparison table, the figure, and (for the paper's pool) the comparison with the paper."""
    cols = ["row", "kind", "ingredients", *rows[0]["metrics"].keys()]
    tracker.table("soups/table", cols, [[r["row"], r["kind"], str(r["ingredients"]),
                                         *[r["metrics"].get(c) for c in cols[3:]]] for r in rows])
    tracker.image("soups/figure", figure)
    if reference:
        comparison = reference_comparison(rows, reference)
        tracker.table("soups/reference", list(comparison[0]), [list(c.values()) for c in comparison])
