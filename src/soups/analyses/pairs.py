"""Every pair of ingredients (the paper's Figures 3 and 4): the angle between their displacements from the
shared init, the soup gain acc(½θi + ½θj) − ½(acc θi + acc θj) and the ensemble gain (the same with the
mean of their logits), on held-out, test and avg shifts, with rank correlations; and the held-out accuracy
of every pair's midpoint next to the best model's, which says why a greedy soup kept what it kept."""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.stats import spearmanr

from soups import plots
from soups.analyses import Analysis, correlation, require_pairs
from soups.averaging import angles_degrees, average, displacement_gram
from soups.names import AVG_SHIFTS, DISPLAY_NAMES, HELD_OUT, TEST

COLUMNS = (HELD_OUT, TEST, AVG_SHIFTS)
log = logging.getLogger(__name__)


@dataclass
class Pairs(Analysis):
    needs_init: ClassVar[bool] = True
    max_ingredients: int | None = None  # the best k by held-out accuracy; None: all (K(K-1)/2 midpoints)

    def check(self, ingredients: list) -> None:
        require_pairs("pairs", ingredients, self.max_ingredients)

    def __call__(self, pool, scorer) -> dict:
        self.check(pool.ingredients)
        chosen = sorted(pool.ingredients, key=lambda i: i.held_out, reverse=True)[: self.max_ingredients or None]
        gram, count = displacement_gram([i.weights for i in chosen], scorer.init_weights, skip=scorer.aliases)
        angles = angles_degrees(gram)
        alone = {i.name: scorer.individual_metrics(i) for i in chosen}
        pairs = []
        for a, b in itertools.combinations(range(len(chosen)), 2):
            first, second = chosen[a], chosen[b]
            midpoint = scorer.evaluate(average([scorer.load(first), scorer.load(second)]), new_point=True)
            ensemble = scorer.metrics_of(scorer.ensemble_logits([first, second]))
            mean = {s: (alone[first.name][s] + alone[second.name][s]) / 2 for s in midpoint}
            moved = bool(gram[a, a] > 0 and gram[b, b] > 0)  # the released pool holds its init (model_0) itself
            pairs.append({"a": first.name, "b": second.name, "angle": float(angles[a, b]) if moved else None,
                          "midpoint": midpoint, "ensemble": ensemble,
                          "soup_gain": {s: midpoint[s] - mean[s] for s in midpoint},
                          "ensemble_gain": {s: ensemble[s] - mean[s] for s in ensemble},
                          "differs_most": differs_most(first, second, chosen)})
            log.info("pair %d/%d %s + %s: angle %s deg, soup gain test %+.2f, ensemble gain test %+.2f", len(pairs),
                     len(chosen) * (len(chosen) - 1) // 2, first.label, second.label,
                     "undefined" if pairs[-1]["angle"] is None else f"{pairs[-1]['angle']:.2f}",
                     pairs[-1]["soup_gain"][TEST], pairs[-1]["ensemble_gain"][TEST])
        best = chosen[0]
        return {"ingredients": [i.name for i in chosen], "individual": alone, "best": best.name,
                "weights": f"{count:,} scalars: every floating-point tensor (image tower and head), BN running "
                           f"statistics excluded", "norms": gram.diagonal().sqrt().tolist(),
                "angles": [[None if math.isnan(x) else x for x in row] for row in angles.tolist()], "pairs": pairs, "correlations": correlations(pairs),
                "with_best": [{"other": p["b"], "midpoint_held_out": p["midpoint"][HELD_OUT],
                               "over_best": p["midpoint"][HELD_OUT] - alone[best.name][HELD_OUT]}
                              for p in pairs if p["a"] == best.name]}

    def summary(self, record: dict) -> str:
        c, with_best = record["correlations"], record["with_best"]
        angles = [p["angle"] for p in record["pairs"] if p["angle"] is not None]
        lines = [f"{len(record['pairs'])} pairs of {len(record['ingredients'])} ingredients; angles "
                 + (f"{min(angles):.1f}–{max(angles):.1f} deg" if angles else "undefined (no displacement)")]
        for col in COLUMNS:
            rho = c.get(f"angle_vs_soup_gain/{col}")
            lines.append(f"  {col}: mean soup gain {np.mean([p['soup_gain'][col] for p in record['pairs']]):+.2f}, "
                         f"ensemble gain {np.mean([p['ensemble_gain'][col] for p in record['pairs']]):+.2f}; "
                         f"Spearman(angle, soup gain) {'n/a' if rho is None else f'{rho:+.2f}'}")
        above = [w for w in with_best if w["over_best"] >= 0]
        lines.append(f"  midpoints with the best model ({record['best']}): {len(above)} of {len(with_best)} at or "
                     f"above its held-out accuracy (best {max(w['over_best'] for w in with_best):+.2f})")
        return "\n".join(lines)

    def draw(self, record: dict, path: Path, title: str) -> None:
        plt = plots.pyplot()
        fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
        pairs = record["pairs"]
        kinds = sorted({p["differs_most"] for p in pairs})
        colors = dict(zip(kinds, plt.get_cmap("tab10").colors))
        for ax, col in ((axes[0, 0], TEST), (axes[0, 1], AVG_SHIFTS)):
            for kind in kinds:
                pts = [p for p in pairs if p["differs_most"] == kind and p["angle"] is not None]
                ax.scatter([p["angle"] for p in pts], [p["soup_gain"][col] for p in pts], c=[colors[kind]],
                           label=f"differ most in {kind}", s=30)
            rho = record["correlations"].get(f"angle_vs_soup_gain/{col}")
            ax.axhline(0, c="gray", lw=0.8)
            ax.set(xlabel="angle between displacements from the init (degrees)",
                   ylabel=f"soup gain, {DISPLAY_NAMES.get(col, col)} (points)",
                   title=f"{DISPLAY_NAMES.get(col, col)}: Spearman rho {'n/a' if rho is None else f'{rho:+.2f}'}")
            ax.legend(fontsize=7)
        ax = axes[1, 0]
        x, y = [p["ensemble_gain"][TEST] for p in pairs], [p["soup_gain"][TEST] for p in pairs]
        ax.scatter(x, y, s=30, c="#1f77b4")
        lo, hi = min(x + y), max(x + y)
        ax.plot([lo, hi], [lo, hi], c="gray", lw=0.8, ls="--", label="soup gain = ensemble gain")
        rho = record["correlations"].get(f"ensemble_gain_vs_soup_gain/{TEST}")
        ax.set(xlabel="ensemble gain, test (points)", ylabel="soup gain, test (points)",
               title=f"soups vs ensembles: Spearman rho {'n/a' if rho is None else f'{rho:+.2f}'}")
        ax.legend(fontsize=7)
        midpoint_heatmap(axes[1, 1], record)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        plots.save(fig, path)


def midpoint_heatmap(ax, record: dict) -> None:
    """Held-out accuracy of every pair's midpoint (diagonal: the models alone) minus the best model's."""
    names = record["ingredients"]
    best = record["individual"][record["best"]][HELD_OUT]
    grid = np.full((len(names), len(names)), np.nan)
    for i, name in enumerate(names):
        grid[i, i] = record["individual"][name][HELD_OUT] - best
    index = {n: i for i, n in enumerate(names)}
    for p in record["pairs"]:
        grid[index[p["a"]], index[p["b"]]] = grid[index[p["b"]], index[p["a"]]] = p["midpoint"][HELD_OUT] - best
    span = max(1e-9, float(np.nanmax(np.abs(grid))))
    image = ax.imshow(grid, cmap="RdBu", vmin=-span, vmax=span)
    labels = plots.tick_labels(names)
    ax.set_xticks(range(len(names)), labels, fontsize=7)
    ax.set_yticks(range(len(names)), labels, fontsize=7)
    if len(names) <= 12:
        for i, j in itertools.product(range(len(names)), repeat=2):
            ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=6)
    ax.set_title(f"held-out of each midpoint minus the best model's ({record['best'].split('/')[-1]}, row 0)",
                 fontsize=9)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="points")


def correlations(pairs: list[dict]) -> dict[str, float | None]:
    """Spearman rank correlations over pairs (None where undefined: fewer than 3 pairs or a constant input)."""
    out = {}
    moved = [p for p in pairs if p["angle"] is not None]
    for col in [c for c in COLUMNS if c in pairs[0]["soup_gain"]]:
        soup = [p["soup_gain"][col] for p in pairs]
        ensemble = [p["ensemble_gain"][col] for p in pairs]
        out[f"angle_vs_soup_gain/{col}"] = _spearman([p["angle"] for p in moved], [p["soup_gain"][col] for p in moved])
        out[f"ensemble_gain_vs_soup_gain/{col}"] = _spearman(ensemble, soup)
    return out


def _spearman(x: list[float], y: list[float]) -> float | None:
    return correlation(spearmanr, x, y)


NAMES_NOT_AMOUNTS = ("seed",)  # numbers that name a draw: different or not, never far apart


def differs_most(a, b, pool: list) -> str:
    """The hyperparameter in which two ingredients differ most, each scored in [0, 1] relative to its spread
    over the pool members that record it: numbers > 0 on a log scale (a learning rate 10x apart outweighs a
    weight decay 2x apart), numbers with a 0 on a linear one (label smoothing 0 vs 0.05 in a 0..0.2 pool:
    0.25), anything else (and seeds) 1 if different, ranked below a number at the same score. "none" if they
    agree on all; "unknown" without recorded hyperparameters."""
    ha, hb = a.info.get("hparams"), b.info.get("hparams")
    if not ha or not hb:
        return "unknown"
    scores = {}
    for key in sorted(set(ha) & set(hb)):
        va, vb = ha[key], hb[key]
        if va == vb:
            continue
        values = [va, vb, *(h[key] for h in (i.info.get("hparams") or {} for i in pool) if key in h)]  # not model_0's
        if key not in NAMES_NOT_AMOUNTS and all(_is_number(v) for v in values):
            scale = math.log if all(v > 0 for v in values) else float
            spread = scale(max(values)) - scale(min(values))  # > 0: va != vb
            scores[key] = (abs(scale(va) - scale(vb)) / spread, 1)
        else:
            scores[key] = (1.0, 0)
    return max(scores, key=scores.get) if scores else "none"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
