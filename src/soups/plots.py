"""Matplotlib without a display (Agg) and atomic PNG writes: what every figure of the project is drawn with."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tick_labels(names: list[str]) -> list[str]:
    """Ingredient names as a figure shows them: the last path part (`6` for `<sweep>/6`) where no other name
    in `names` ends the same, else the whole name (`run0/model_best.pth.tar` beside `run1/...`)."""
    tails = [str(n).split("/")[-1] for n in names]
    return [t if tails.count(t) == 1 else str(n) for n, t in zip(names, tails)]


def save(fig, path: Path) -> None:
    """Atomic: a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    pyplot().close(fig)
    tmp.replace(path)
