"""The error landscape on the plane through the shared init and two fine-tunes (the paper's Figure 2): on
a grid of points of that plane, the loss on a fixed training sample and the held-out and test error, each
on a fixed seeded sample of the set (BN statistics recomputed per point for BN models). The paper's point:
the best point is often between the fine-tunes, not at one of them."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from soups import plots
from soups.analyses import Analysis
from soups.averaging import Plane
from soups.errors import BadInput
from soups.io.files import sha256_file
from soups.names import HELD_OUT, TEST

log = logging.getLogger(__name__)
SURFACES = (("train_loss", "train loss (nats)"), ("held_out_error", "held-out error (%)"), ("test_error", "test error (%)"))


@dataclass
class Landscape(Analysis):
    needs_init: ClassVar[bool] = True
    models: list | None = None  # two ingredient names (e.g. [<sweep>/3, <sweep>/5]); None: the two best by held-out
    grid: int = 7               # points per axis
    margin: float = 0.3         # beyond the three models, as a fraction of their span on each axis
    max_images: int = 300       # per set: the training sample, held-out and test (seeded samples)
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.grid < 2 or self.margin < 0 or self.max_images < 1 or (self.models is not None and len(self.models) != 2):
            raise BadInput(f"grid={self.grid} (>= 2), margin={self.margin} (>= 0), max_images={self.max_images} "
                           f"(>= 1), models={self.models} (two names or null) expected")

    def check(self, ingredients: list) -> None:
        """Before any evaluation: ingredients of other pools get their held-out accuracy (the ranking) only then."""
        if self.models is None and len(ingredients) < 2:
            raise BadInput("the landscape needs two fine-tunes; the pool has one")
        if self.models is not None:
            first, second = self._named(ingredients)
            if first is second:
                raise BadInput(f"analysis.models={list(self.models)} names one model twice: the plane needs two")

    def __call__(self, pool, scorer) -> dict:
        first, second = self._pick(pool.ingredients)
        # the plane's origin and BN handling too: another pool.init or bn_recalibration is another surface
        settings = {"analysis": "landscape", "models": [scorer.digest(first), scorer.digest(second)],
                    "init": sha256_file(scorer.init_weights), "bn_recalibration": scorer.bn_sample is not None,
                    "grid": self.grid, "margin": self.margin, "max_images": self.max_images, "seed": self.seed,
                    "statistics": "affine"}  # BN statistics on the plane (before: the init's): measured again
        known = scorer.recall(settings)  # a rerun reads the grid instead of measuring it again
        if known is not None:  # the same weights, perhaps under other names (a copied or renamed sweep)
            return known | {"models": [first.name, second.name]}
        try:
            plane = Plane(scorer.load_init(), scorer.load(first), scorer.load(second), skip=scorer.aliases)
        except ValueError as err:  # e.g. a released pool's model_0, the init itself
            raise BadInput(f"analysis=landscape on {first.name} and {second.name}: {err}; name two fine-tunes "
                           f"that span a plane with the init: analysis.models=[a,b]") from err
        points = plane.coordinates | {"midpoint": tuple(np.add(plane.coordinates["first"],
                                                               plane.coordinates["second"]) / 2)}
        xs, ys = (axis_values([p[i] for p in plane.coordinates.values()], self.grid, self.margin) for i in (0, 1))
        per_class = -(-self.max_images // int(pool.run_cfg.data.num_classes))  # enough for the sample
        train = scorer.data.probe_sets(per_class)[0]
        sets = {"train_loss": train, "held_out_error": scorer.sets[HELD_OUT],
                "test_error": scorer.sets[TEST]}
        surfaces = {name: np.zeros((len(ys), len(xs))) for name in sets}
        for (i, y), (j, x) in ((iy, jx) for iy in enumerate(ys) for jx in enumerate(xs)):
            model = scorer.materialize(plane.point(x, y), new_point=True)
            for name, data in sets.items():
                loss, error = measure(model, data, self.max_images, self.seed, scorer)
                surfaces[name][i, j] = loss if name == "train_loss" else error
            log.info("point (%.2f, %.2f): train loss %.3f, held-out error %.2f%%", x, y, surfaces["train_loss"][i, j],
                     surfaces["held_out_error"][i, j])
        record = {"models": [first.name, second.name], "points": {k: list(v) for k, v in points.items()},
                  "xs": xs, "ys": ys, **{k: v.tolist() for k, v in surfaces.items()},
                  "samples": {k: min(self.max_images, len(v)) for k, v in sets.items()},
                  "bn_recalibrated": scorer.bn_sample is not None}
        scorer.remember(settings, record)
        return record

    def _pick(self, ingredients):
        if self.models is None:
            ranked = sorted(ingredients, key=lambda i: i.held_out, reverse=True)
            if len(ranked) < 2:
                raise BadInput("the landscape needs two fine-tunes; the pool has one")
            return ranked[0], ranked[1]
        return self._named(ingredients)

    def _named(self, ingredients):
        """The two ingredients `models` names: each by its whole name, else by a label or last part of a name
        (`fine-tune 3` or `3` for `<sweep>/3`) that only one ingredient has. BadInput otherwise."""
        found = []
        for wanted in map(str, self.models):
            hits = ([i for i in ingredients if wanted == i.name]
                    or [i for i in ingredients if wanted in (i.label, i.name.split("/")[-1])])
            if not hits:
                raise BadInput(f"analysis.models: {wanted!r} not in the pool; its ingredients: "
                               f"{sorted(i.name for i in ingredients)[:8]}")
            if len(hits) > 1:
                raise BadInput(f"analysis.models: {wanted!r} names {len(hits)} ingredients "
                               f"({sorted(i.name for i in hits)[:4]}); give the whole name")
            found.append(hits[0])
        return found[0], found[1]

    def summary(self, record: dict) -> str:
        error = np.array(record["held_out_error"])
        i, j = np.unravel_index(np.argmin(error), error.shape)
        corners = record["points"]
        return (f"plane through the init, {record['models'][0]} and {record['models'][1]}; lowest held-out error "
                f"{error[i, j]:.2f}% at ({record['xs'][j]:.2f}, {record['ys'][i]:.2f}); models at "
                + ", ".join(f"{k} ({v[0]:.2f}, {v[1]:.2f})" for k, v in corners.items()))

    def draw(self, record: dict, path: Path, title: str) -> None:
        plt = plots.pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(16, 5))
        marks = {"init": ("k", "o"), "first": ("#1f77b4", "o"), "second": ("#d62728", "o"), "midpoint": ("#2ca02c", "*")}
        first, second = plots.tick_labels(record["models"])
        labels = {"init": "init", "first": first, "second": second, "midpoint": "midpoint (2-soup)"}
        for ax, (key, label) in zip(axes, SURFACES):
            z = np.array(record[key])
            # levels over the lower 70% of values: the basin's shape, not the far corner's cliff, fills the range
            levels = np.linspace(z.min(), max(np.quantile(z, 0.7), z.min() + 1e-6), 13)
            filled = ax.contourf(record["xs"], record["ys"], z, levels=levels, cmap="viridis_r", extend="max")
            ax.contour(record["xs"], record["ys"], z, levels=levels, colors="white", linewidths=0.4)
            fig.colorbar(filled, ax=ax, shrink=0.85, format="%.3g")
            for name, (x, y) in record["points"].items():
                color, marker = marks[name]
                ax.scatter([x], [y], c=color, marker=marker, s=140 if marker == "*" else 50, edgecolors="white",
                           zorder=3, label=labels[name])
            ax.set(title=f"{label}, {record['samples'][key]} images", xlabel="u (weight-space distance)",
                   ylabel="v (weight-space distance)")
            ax.set_aspect("equal", adjustable="box")
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        plots.save(fig, path)


def axis_values(coordinates: list[float], points: int, margin: float) -> list[float]:
    """`points` evenly spaced values covering `coordinates` plus `margin` x their span on each side."""
    lo, hi = min(coordinates), max(coordinates)
    pad = margin * (hi - lo)
    return np.linspace(lo - pad, hi + pad, points).tolist()


def measure(model, data, max_images: int, seed: int, scorer) -> tuple[float, float]:
    """(mean cross-entropy in nats, error %) on the first `max_images` of a `seed`-shuffled pass over `data`."""
    logits, labels = scorer.sample_logits(model, data, max_images, seed)
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    return loss, 100.0 * float((logits.argmax(-1) != labels).double().mean())
