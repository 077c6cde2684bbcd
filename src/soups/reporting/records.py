"""A recipe's result as the outside sees it: a report row, W&B entries, and a saved folder (soup.json, the
weights, its own figures, and run.json in a fine-tune's schema so a soup loads, and soups, like any run).
Reads only the fields RecipeResult declares: nothing here knows a recipe by name."""
from __future__ import annotations

import json
from pathlib import Path

from soups.io.files import atomic_save_safetensors, sha256_file, write_json
from soups.names import RUN_INFO_NAME, SOUP_INFO_NAME, WEIGHTS_NAME
from soups.pools.ingredient import Ingredient, best_individual
from soups.recipes import RecipeResult
from soups.reporting.report import reference_comparison


def baseline_rows(ingredients: list[Ingredient], init_metrics: dict | None) -> list[dict]:
    """Initialization (unless the pool names none: None), every individual, and the best individual by
    held-out accuracy. Rows are named by the ingredients' short labels (`fine-tune 6`, a file's stem)."""
    rows = [] if init_metrics is None else [{"row": "initialization", "kind": "init", "ingredients": "",
                                             "metrics": init_metrics}]
    rows += [{"row": i.label, "kind": "individual", "ingredients": 1, "metrics": i.info["metrics"],
              "hparams": i.info.get("hparams", {}), "source": str(i.source)} for i in ingredients]
    best = best_individual(ingredients)
    rows.append({"row": f"best individual ({best.label})", "kind": "best_individual", "ingredients": 1,
                 "metrics": best.info["metrics"], "source": str(best.source), "members": [best.label]})
    return rows


def row_name(name: str, result: RecipeResult) -> str:
    """The recipe's own row name if it gives one, else `<name> soup` for weights and the name in words for an
    ensemble (`greedy ensemble`)."""
    if result.row:
        return result.row
    return f"{name} soup" if result.kind == "soup" else name.replace("_", " ")


def recipe_row(name: str, result: RecipeResult, metrics: dict, soup_dir: Path) -> dict:
    """The report table's row: a soup costs one forward pass per image, an ensemble one per member. It carries
    the recipe's own tables and figures (paths) for report.md."""
    row = {"row": row_name(name, result), "kind": result.kind, "method": name,
           "ingredients": len(result.ingredients), "cost": 1 if result.kind == "soup" else len(result.ingredients),
           "metrics": metrics, "tables": result.tables,
           "figures": {f: str(soup_dir / f"{f}.png") for f in result.figures}}
    if result.curve:  # a path of evaluated points, drawn in the report's figure
        row["curve"] = result.curve
    if result.std is None:  # one soup or ensemble: which ingredients, in the order the recipe took them
        row["members"] = [i.label for i in result.ingredients]
    else:  # several draws of one recipe: mean +- std, and the range of their sizes
        row |= {"metrics": result.mean, "std": result.std}
        if result.sizes and min(result.sizes) != max(result.sizes):
            row["ingredients"] = f"{min(result.sizes)}–{max(result.sizes)}"
    return row


def _cell(value):
    """A W&B table cell: a list of plain values as comma-separated text, anything nested as JSON."""
    if isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def flat_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, rows) of a recipe's table: a dict-valued column becomes one column per key (`metrics/test`)."""
    columns: list[str] = []
    for key, value in rows[0].items():
        columns += [f"{key}/{k}" for k in value] if isinstance(value, dict) else [key]

    def get(row, column):
        key, _, sub = column.partition("/")
        value = row.get(key)
        return _cell(value.get(sub) if sub and isinstance(value, dict) else value)
    return columns, [[get(r, c) for c in columns] for r in rows]


def log_recipe(tracker, name: str, metrics: dict, result: RecipeResult, soup_dir: Path, quality: dict) -> None:
    """W&B: the recipe's metrics as its report row shows them, calibration and difference to the best individual
    (`quality`: see PoolScorer.qualify), each of its tables, its curve, and each of its figures. A recipe of
    several draws (greedy_random) logs the row's mean over draws under its name, the spread under `std/`, and
    `metrics`, the evaluation of the weights it saved (one draw), under `saved/`."""
    if result.std is None:
        tracker.log({f"{name}/{k}": v for k, v in metrics.items()})
    else:
        tracker.log({f"{name}/{k}": v for k, v in result.mean.items()}
                    | {f"{name}/std/{k}": v for k, v in result.std.items()}
                    | {f"{name}/saved/{k}": v for k, v in metrics.items()})
    for group, per_set in quality.items():  # e.g. greedy/calibration/test/ece, greedy/vs_best/test/low
        tracker.log({f"{name}/{group}/{s}/{k}": v for s, values in per_set.items() for k, v in values.items()})
    tables = {**result.tables, **({"curve": result.curve} if result.curve else {})}
    for table, rows in tables.items():
        if rows:
            tracker.table(f"{name}/{table}", *flat_table(rows))
    for figure in result.figures:
        tracker.image(f"{name}/{figure}", soup_dir / f"{figure}.png")


RESERVED = ("kind", "method", "ingredients", "metrics", "calibration", "vs_best", "bn_recalibrated", "seconds",
            "evaluation", "environment", "curve", "mean", "std", "sizes")  # soup.json's own fields


def check_outputs(name: str, result: RecipeResult) -> None:
    """A recipe's details and tables may not overwrite soup.json's own fields; its figures are plain names (a
    PNG in its folder); a table's rows share their keys. Raises ValueError (a recipe's bug), naming the recipe."""
    clash = sorted(set(RESERVED) & (set(result.details) | set(result.tables)))
    bad_figures = [f for f in result.figures if not f or Path(f).name != f or f.startswith(".")]
    ragged = [t for t, rows in result.tables.items() if any(set(r) != set(rows[0]) for r in rows)]
    if clash or bad_figures or ragged:
        raise ValueError(f"recipe {name}: " + "; ".join(
            ([f"details/tables named {clash} would overwrite soup.json's own fields"] if clash else []) +
            ([f"figure names {bad_figures} are not plain file names"] if bad_figures else []) +
            ([f"tables {ragged} have rows with different keys"] if ragged else [])))


def save_soup(soup_dir: Path, name: str, result: RecipeResult, metrics: dict, template_info: dict,
              recalibrated: bool, seconds: float, quality: dict) -> None:
    """soup.json (+ the weights and a run.json for a soup; an ensemble has no weights of its own), and the
    recipe's figures. `recalibrated`: whether the job recomputes BN statistics of new points in weight space;
    `quality`: its calibration and difference to the best individual (PoolScorer.qualify)."""
    check_outputs(name, result)
    record = {"kind": result.kind, "method": name, "ingredients": [str(i.source) for i in result.ingredients],
              "metrics": metrics, **quality,
              "bn_recalibrated": recalibrated and result.kind == "soup" and result.is_new_point,
              "seconds": seconds, **result.record, "evaluation": template_info.get("evaluation"),
              "environment": template_info["environment"]}
    for figure, draw in result.figures.items():
        soup_dir.mkdir(parents=True, exist_ok=True)
        draw(soup_dir / f"{figure}.png", f"{row_name(name, result)}: {figure.replace('_', ' ')}")
    if result.weights is None:
        write_json(record, soup_dir / SOUP_INFO_NAME)
        return
    atomic_save_safetensors(result.weights, soup_dir / WEIGHTS_NAME, metadata={"kind": "soup", "method": name})
    write_json(record, soup_dir / SOUP_INFO_NAME)
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
        if comparison:  # recipes this run did not run are left out: possibly all of them
            tracker.table("soups/reference", list(comparison[0]), [list(c.values()) for c in comparison])
