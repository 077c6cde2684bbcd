"""The results table (like the paper's Table 3) and figure (like its Figure 1) of one pool's soups."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from soups.io import write_json, write_text

NAME_COLUMNS = ("row", "kind", "ingredients")


def metric_columns(rows: list[dict]) -> list[str]:
    """val, test, the shifts in their order, avg_shifts."""
    seen = []
    for row in rows:
        for key in row["metrics"]:
            if key not in seen:
                seen.append(key)
    head = [k for k in ("val", "test") if k in seen]
    tail = [k for k in ("avg_shifts",) if k in seen]
    return head + [k for k in seen if k not in head and k not in tail] + tail


HEADERS = {"val": "held-out", "avg_shifts": "avg shifts"}


def markdown_table(rows: list[dict]) -> str:
    cols = metric_columns(rows)
    header = ["", *[HEADERS.get(c, c) for c in cols], "#ingredients"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) - 1) + "---:|"]
    lines[1] = "|---|" + "---:|" * (len(header) - 1)
    for row in rows:
        name = f"**{row['row']}**" if row["kind"] in ("best_individual", "soup") else row["row"]
        cells = [f"{row['metrics'][c]:.2f}" if c in row["metrics"] else "" for c in cols]
        lines.append("| " + " | ".join([name, *cells, str(row.get("ingredients", ""))]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    cols = metric_columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*NAME_COLUMNS, *cols])
    for row in rows:
        writer.writerow([row["row"], row["kind"], row.get("ingredients", ""),
                         *[f"{row['metrics'][c]:.4f}" if c in row["metrics"] else "" for c in cols]])
    return buf.getvalue()


def figure(rows: list[dict], path: Path, title: str) -> None:
    """x: in-distribution (test) accuracy, y: average accuracy over the shifts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"init": dict(marker="*", s=160, c="black"), "individual": dict(marker="o", s=30, c="#9e9e9e"),
             "best_individual": dict(marker="o", s=60, c="#1f77b4")}
    soup_markers = ["D", "s", "^", "v", "P", "X", "h", "<", ">"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    labelled, soups = set(), 0
    for row in rows:
        m = row["metrics"]
        if "avg_shifts" not in m:
            continue
        if row["kind"] == "soup":
            kw = dict(marker=soup_markers[soups % len(soup_markers)], s=90, zorder=3)
            soups += 1
            label = row["row"]
        else:
            kw = style[row["kind"]]
            label = None if row["kind"] in labelled else {"init": "initialization", "individual": "fine-tuned models",
                                                          "best_individual": "best individual (held-out)"}[row["kind"]]
            labelled.add(row["kind"])
        ax.scatter(m["test"], m["avg_shifts"], label=label, **kw)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("avg accuracy over shifts (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_report(rows: list[dict], out_dir: Path, title: str) -> str:
    table = markdown_table(rows)
    write_text(f"# {title}\n\nTop-1 accuracy (%). held-out = the validation split used to rank and select "
               f"ingredients.\n\n{table}", out_dir / "report.md")
    write_text(csv_text(rows), out_dir / "report.csv")
    write_json(rows, out_dir / "results.json")
    figure(rows, out_dir / "figure.png", title)
    return table
