"""Per-recipe figures written next to a soup: learned mixing coefficients."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    """Atomic: a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    pyplot().close(fig)
    tmp.replace(path)


def coefficients(record: dict, path: Path, title: str) -> None:
    """Bars (one weight per ingredient) or a heatmap (ingredients x parameter tensors)."""
    plt = pyplot()
    coef = record["coefficients"]
    names = [n.split("/")[-1] for n in coef["ingredients"]]
    weights = coef["weights"]
    if coef.get("tensors"):
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.35 * len(names)))
        image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel(f"parameter tensor (0 = {coef['tensors'][0]}, {len(coef['tensors']) - 1} = {coef['tensors'][-1]})",
                      fontsize=8)
        fig.colorbar(image, ax=ax, label="mixing weight")
    else:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5))
        ax.bar(range(len(names)), weights, color="#2ca02c")
        ax.axhline(1 / len(names), color="black", lw=0.8, ls="--", label="uniform")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("mixing weight")
        ax.legend(fontsize=8)
    ax.set_title(f"{title} (temperature {record['temperature']:.2f})", fontsize=10)
    fig.tight_layout()
    save(fig, path)
