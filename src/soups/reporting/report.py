"""The results table (like the paper's Table 3) and figure (like its Figure 1) of one pool's soups."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from soups import plots
from soups.io.files import write_json, write_text
from soups.names import DISPLAY_NAMES, HELD_OUT, TEST, AVG_SHIFTS, REPORT_NAME, FIGURE_NAME
from soups.evaluation.stats import interval_text, p_text

NAME_COLUMNS = ("row", "kind", "ingredients")


def metric_columns(rows: list[dict]) -> list[str]:
    """val, test, the shifts in their order, avg_shifts."""
    seen = []
    for row in rows:
        for key in row["metrics"]:
            if key not in seen:
                seen.append(key)
    head = [k for k in (HELD_OUT, TEST) if k in seen]
    tail = [k for k in (AVG_SHIFTS,) if k in seen]
    return head + [k for k in seen if k not in head and k not in tail] + tail


HEADERS = DISPLAY_NAMES


def cell(row: dict, col: str) -> str:
    if col not in row["metrics"]:
        return ""
    spread = row.get("std", {}).get(col)
    return f"{row['metrics'][col]:.2f}" + ("" if spread is None else f" ± {spread:.2f}")


def markdown_table(rows: list[dict]) -> str:
    cols = metric_columns(rows)
    header = ["", *[HEADERS.get(c, c) for c in cols], "#ingredients", "inference cost"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        name = f"**{row['row']}**" if row["kind"] in ("best_individual", "soup", "ensemble") else row["row"]
        cells = [cell(row, c) for c in cols]
        lines.append("| " + " | ".join([name, *cells, str(row.get("ingredients", "")), f"{row.get('cost', 1)}×"]) + " |")
    return "\n".join(lines) + "\n"


def quality_table(rows: list[dict], caption: str) -> str:
    """Two tables under `caption`: the calibration of the best individual and of every soup and ensemble
    (test and avg shifts), and each one's difference to the best individual on every set with its interval
    and p-value (rows carry `calibration` / `vs_best`, see PoolScorer.qualify)."""
    rows = [r for r in rows if r.get("calibration")]
    if not rows:
        return ""
    cols = [c for c in (TEST, AVG_SHIFTS) if c in rows[0]["calibration"]]
    header = ["", *[f"{HEADERS.get(c, c)} {k}" for c in cols for k in ("NLL", "ECE")]]
    lines = [caption + ".", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        lines.append("| " + " | ".join([row["row"], *[f"{row['calibration'][c]['nll']:.3f} | "
                                                      f"{row['calibration'][c]['ece']:.2f}" for c in cols]]) + " |")
    compared = [r for r in rows if r.get("vs_best")]
    if compared:
        sets = [c for c in metric_columns(compared) if c in compared[0]["vs_best"]]
        lines += ["", "| vs best individual | " + " | ".join(HEADERS.get(c, c) for c in sets) + " |",
                  "|---|" + "---:|" * len(sets)]
        for row in compared:
            cells = [f"{interval_text(v['diff'], v['low'], v['high'])} p={p_text(v['p'])}"
                     for v in (row["vs_best"][c] for c in sets)]
            lines.append("| " + " | ".join([row["row"], *cells]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    cols = metric_columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    spread = [c for c in cols if any(c in row.get("std", {}) for row in rows)]
    writer.writerow([*NAME_COLUMNS, "inference_cost", *cols, *[f"{c}_std" for c in spread]])
    for row in rows:
        writer.writerow([row["row"], row["kind"], row.get("ingredients", ""), row.get("cost", 1),
                         *[f"{row['metrics'][c]:.4f}" if c in row["metrics"] else "" for c in cols],
                         *[f"{row['std'][c]:.4f}" if c in row.get("std", {}) else "" for c in spread]])
    return buf.getvalue()


def figure(rows: list[dict], path: Path, title: str) -> None:
    """x: in-distribution (test) accuracy, y: average accuracy over the shifts (the paper's Figure 1).

    Axes frame the fine-tuned models and soups; the far-away initialization is noted, not plotted."""
    plt = plots.pyplot()
    points = [r for r in rows if AVG_SHIFTS in r["metrics"]]
    style = {"individual": dict(marker="o", s=30, c="#9e9e9e", label="fine-tuned models"),
             "best_individual": dict(marker="o", s=70, c="#1f77b4", label="best individual (held-out)")}
    soup_colors = ["#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                   "#393b79", "#ad494a", "#637939", "#7b4173"]
    soup_markers = ["*", "D", "s", "^", "v", "P", "X", "h", "p", "<", ">", "d"]
    fig, ax = plt.subplots(figsize=(8.5, 5))
    labelled, soups = set(), 0
    for row in points:
        x, y = row["metrics"][TEST], row["metrics"][AVG_SHIFTS]
        if row["kind"] == "init":
            continue
        if row["kind"] in ("soup", "ensemble"):
            color = soup_colors[soups % len(soup_colors)]
            ax.scatter(x, y, marker=soup_markers[soups % len(soup_markers)], c=color, s=150, zorder=3,
                       label=row["row"], edgecolors="black", linewidths=0.5)
            if row.get("std"):  # mean ± std over several draws (greedy over random orders)
                ax.errorbar(x, y, xerr=row["std"].get(TEST), yerr=row["std"].get(AVG_SHIFTS), c=color,
                            capsize=3, zorder=2)
            curve = [p for p in row.get("curve") or [] if p["alpha"] > 0]
            if curve:  # WiSE-FT: the interpolation path from the init to the fine-tuned model
                ax.plot([p[TEST] for p in curve], [p[AVG_SHIFTS] for p in curve], c=color, lw=1, ls="--",
                        marker=".", zorder=2, label=f"{row['row']} curve (alpha {curve[0]['alpha']:g}..{curve[-1]['alpha']:g})")
            soups += 1
        else:
            kw = dict(style[row["kind"]])
            if row["kind"] in labelled:
                kw.pop("label")
            labelled.add(row["kind"])
            ax.scatter(x, y, **kw)
    init = next((r for r in points if r["kind"] == "init"), None)
    if init is not None:
        ax.text(0.02, 0.02, f"initialization: test {init['metrics']['test']:.1f}, "
                f"shifts {init['metrics']['avg_shifts']:.1f} (off the axes)", transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("avg accuracy over shifts (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    # frame the models and soups; a WiSE-FT curve may run off toward the initialization
    framed = [r["metrics"] for r in points if r["kind"] != "init"]
    for axis, key in ((ax.set_xlim, TEST), (ax.set_ylim, AVG_SHIFTS)) if framed else ():
        lo, hi = min(m[key] for m in framed), max(m[key] for m in framed)
        pad = 0.15 * (hi - lo) + 0.5
        axis(lo - pad, hi + pad)
    fig.tight_layout()
    plots.save(fig, path)


REFERENCE_ROWS = {"uniform": "uniform soup", "greedy": "greedy soup", "ensemble": "ensemble",
                  "greedy_ensemble": "greedy ensemble", "learned": "learned soup",
                  "learned_bylayer": "learned_bylayer soup"}  # reference key -> our row (else by kind)


def reference_comparison(rows: list[dict], reference) -> list[dict]:
    """One record per (recipe, published source, column): ours, the reference, the difference; recipes this
    run did not run are left out. Our avg shifts is compared only where it is the mean over the reference's
    shifts (`data.shifts.names` trimmed or extended gives another mean under the same name: shown as –)."""
    shifts = {c for c in reference.columns if c not in (HELD_OUT, TEST, AVG_SHIFTS)}
    out = []
    for key, published in reference.rows.items():
        ours = next((r for r in rows if (r["row"] == REFERENCE_ROWS[key] if key in REFERENCE_ROWS
                                         else r["kind"] == key)), None)
        if ours is None:
            continue
        for source, values in published.items():
            for col, ref in zip(reference.columns, values):
                mine = ours["metrics"].get(col) if ours else None
                if col == AVG_SHIFTS and set(ours["metrics"]) - {HELD_OUT, TEST, AVG_SHIFTS} != shifts:
                    mine = None
                out.append({"row": key, "source": source, "column": col, "ours": mine, "reference": ref,
                            "difference": None if mine is None or ref is None else mine - ref})
    return out


def reference_table(rows: list[dict], reference) -> str:
    """Ours next to published numbers, per cell `ours (reference, difference)`."""
    cols = list(reference.columns)
    lines = [f"Reference: {reference.source}", "",
             "| | " + " | ".join(HEADERS.get(c, c) for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    cells: dict[tuple[str, str], list[str]] = {}
    for c in reference_comparison(rows, reference):
        mine, ref = c["ours"], c["reference"]
        text = ("" if mine is None else f"{mine:.2f}") if ref is None else (
            f"– ({ref:.2f})" if mine is None else f"{mine:.2f} ({ref:.2f}, {c['difference']:+.2f})")
        cells.setdefault((c["row"], c["source"]), []).append(text)
    lines += [f"| {row} vs {source} | " + " | ".join(texts) + " |" for (row, source), texts in cells.items()]
    members = member_lines(rows, reference)
    return "\n".join(lines + (["", *members] if members else [])) + "\n"


def member_lines(rows: list[dict], reference) -> list[str]:
    """Per reference row with published `members` (the ingredients the released run chose, in the order
    added) that this run has: whether ours chose the same ones, e.g. 'greedy: 3 of the released 5 (model_43,
    ...); ours adds model_12'. Rows without `members` (a recipe's several draws) are left out."""
    out = []
    for key, released in (reference.get("members") or {}).items():
        ours = next((r for r in rows if (r["row"] == REFERENCE_ROWS[key] if key in REFERENCE_ROWS
                                         else r["kind"] == key)), None)
        if ours is None or ours.get("members") is None:
            continue
        chosen, released = list(ours["members"]), list(released)
        if chosen == released:
            out.append(f"- {key}: the released choice, in its order ({', '.join(chosen)})")
            continue
        common = [m for m in released if m in chosen]
        text = f"- {key}: {len(common)} of the released {len(released)} ({', '.join(released)})"
        extra = [m for m in chosen if m not in released]
        out.append(text + (f"; ours adds {', '.join(extra)}" if extra else "")
                   + (" (the same set in another order)" if not extra and len(common) == len(released) else ""))
    return out


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):  # a nested table is summarized here; soup.json holds it whole
        nested = any(isinstance(v, (dict, list)) for v in value)
        return f"{len(value)} rows (soup.json)" if nested else ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def recipe_sections(rows: list[dict], out_dir: Path) -> str:
    """Each recipe's own tables, curve and figures (rows carry `tables` {name: [dict]}, `curve` [dict] and
    `figures` {name: png path}), under a heading per recipe; nothing here knows a recipe by name."""
    parts = []
    for row in rows:
        tables = {**(row.get("tables") or {}), **({"curve": row["curve"]} if row.get("curve") else {})}
        figures = row.get("figures") or {}
        if not tables and not figures:
            continue
        parts.append(f"## {row['row']}\n")
        for name, table in tables.items():
            if not table:
                continue
            cols = list(table[0])  # metric keys shown as the main table names them (val: held-out)
            parts += [f"{name.replace('_', ' ')}:\n", "| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |",
                      "|" + "---|" * len(cols),
                      *["| " + " | ".join(_text(r.get(c)) for c in cols) + " |" for r in table], ""]
        for name, path in figures.items():
            rel = Path(path).relative_to(out_dir) if Path(path).is_relative_to(out_dir) else Path(path)
            parts.append(f"![{row['row']}: {name.replace('_', ' ')}]({rel.as_posix()})\n")
    return "\n".join(parts)


def provenance(skipped: dict[str, str], environment: dict | None, left_out: dict[str, str] | None = None) -> str:
    """The report's last lines: recipes and runs left out and why; what computed the numbers."""
    text = ""
    if left_out:
        text += "\nRecipes left out (they do not apply to this pool):\n" + "".join(f"- {m}: {why}\n"
                                                                                 for m, why in left_out.items())
    if skipped:
        text += "\nSkipped runs (not finished or not intact):\n" + "".join(f"- {d}: {why}\n" for d, why in skipped.items())
    if environment:
        git = environment.get("git") or {}
        commit = (git.get("commit") or "not a git checkout")[:12] + (" with uncommitted changes"
                                                                      if git.get("uncommitted_changes") else "")
        machine = environment.get("device")
        if environment.get("cpu_capability"):  # trained weights differ between CPU instruction sets
            machine = f"{machine} ({environment.get('cpu')}, {environment['cpu_capability']})"
        text += (f"\nComputed with torch {environment['torch']}, open_clip {environment.get('open_clip_torch')}, "
                 f"timm {environment.get('timm')} on {machine}; code {commit}.\n")
    return text


def write_report(rows: list[dict], out_dir: Path, title: str, reference=None, skipped: dict[str, str] | None = None,
                 environment: dict | None = None, caption: str = "", left_out: dict[str, str] | None = None) -> str:
    """report.md (the table, calibration and intervals under `caption`, the paper's numbers if `reference`, then
    each recipe's own tables and figures), report.csv, results.json and the figure. Returns the markdown tables
    printed to the terminal (the recipes' own sections are in report.md only)."""
    table = markdown_table(rows)
    quality = quality_table(rows, caption)
    if quality:
        table += "\n" + quality
    if reference:
        table += "\n" + reference_table(rows, reference)
    sections = recipe_sections(rows, out_dir)
    write_text(f"# {title}\n\nTop-1 accuracy (%). held-out = the validation split used to rank and select "
               f"ingredients.\n\n{table}{provenance(skipped or {}, environment, left_out)}"
               + (f"\n{sections}" if sections else ""), out_dir / REPORT_NAME)
    write_text(csv_text(rows), out_dir / "report.csv")
    write_json(rows, out_dir / "results.json")
    figure(rows, out_dir / FIGURE_NAME, title)
    return table
