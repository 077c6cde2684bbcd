"""Accuracy as ingredients are added: uniform soups of random subsets of size k = 1..K (seeded draws per
size; mean ± std over them) and the greedy soup's running curve (its soup after each accepted ingredient),
on held-out, test and avg shifts. The paper's question: does adding more fine-tunes keep helping?"""
from __future__ import annotations

import logging
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from soups import plots
from soups.analyses import Analysis
from soups.averaging import average
from soups.errors import BadInput
from soups.names import AVG_SHIFTS, DISPLAY_NAMES, HELD_OUT, TEST
from soups.recipes.greedy import COMPARATORS, TIE_ORDERS, GreedySoup

COLUMNS = (HELD_OUT, TEST, AVG_SHIFTS)
log = logging.getLogger(__name__)


@dataclass
class Ingredients(Analysis):
    draws: int = 3     # random subsets per size (fewer where fewer exist)
    seed: int = 0
    sizes: list | None = None  # subset sizes; None: 1..K
    comparator: str = ">="     # the greedy curve's rule, as the greedy recipe's (conf/soup.yaml greedy_rule)
    ties: str = "pool"

    def __post_init__(self):
        super().__post_init__()
        if self.draws < 1 or self.comparator not in COMPARATORS or self.ties not in TIE_ORDERS:
            raise BadInput(f"draws={self.draws} (>= 1), comparator={self.comparator!r} ({list(COMPARATORS)}), "
                           f"ties={self.ties!r} ({list(TIE_ORDERS)}) expected")

    def check(self, ingredients: list) -> None:
        sizes = list(self.sizes) if self.sizes else []
        wrong = [k for k in sizes if not isinstance(k, int) or not 1 <= k <= len(ingredients)]
        if wrong:
            raise BadInput(f"sizes {wrong}: expected integers from 1 to the pool's {len(ingredients)} ingredients")

    def __call__(self, pool, scorer) -> dict:
        ingredients = pool.ingredients
        self.check(ingredients)
        sizes = list(self.sizes) if self.sizes else list(range(1, len(ingredients) + 1))
        rng = random.Random(self.seed)
        random_curve = []
        for k in sizes:
            draws = []
            for subset in distinct_subsets(len(ingredients), k, self.draws, rng):
                members = [ingredients[i] for i in subset]
                draws.append({"members": [m.name for m in members], "metrics": soup_metrics(members, scorer)})
            random_curve.append({"k": k, "draws": draws, **spread(draws)})
            log.info("k=%d: %d uniform soups, test %.2f ± %.2f", k, len(draws), random_curve[-1]["mean"][TEST],
                     random_curve[-1]["std"][TEST])
        chosen = GreedySoup(comparator=self.comparator, ties=self.ties)(ingredients, scorer).ingredients
        greedy_curve = [{"k": t, "added": chosen[t - 1].name, "metrics": soup_metrics(chosen[:t], scorer)}
                        for t in range(1, len(chosen) + 1)]
        return {"ingredients": [i.name for i in ingredients], "random": random_curve, "greedy": greedy_curve,
                "draws": self.draws, "seed": self.seed, "greedy_rule": {"comparator": self.comparator,
                                                                       "ties": self.ties}}

    def summary(self, record: dict) -> str:
        lines = []
        for point in record["random"]:
            lines.append(f"  k={point['k']:>3} ({len(point['draws'])} draws): " + ", ".join(
                f"{c} {point['mean'][c]:.2f} ± {point['std'][c]:.2f}" for c in COLUMNS))
        lines.append("  greedy: " + " -> ".join(f"{p['k']}: test {p['metrics'][TEST]:.2f}" for p in record["greedy"]))
        return "uniform soups of random subsets, mean ± std over draws:\n" + "\n".join(lines)

    def draw(self, record: dict, path: Path, title: str) -> None:
        plt = plots.pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, col in zip(axes, COLUMNS):
            ks = [p["k"] for p in record["random"]]
            mean = [p["mean"][col] for p in record["random"]]
            std = [p["std"][col] for p in record["random"]]
            for p in record["random"]:
                ax.scatter([p["k"]] * len(p["draws"]), [d["metrics"][col] for d in p["draws"]], c="#9e9e9e", s=12)
            ax.errorbar(ks, mean, yerr=std, c="#ff7f0e", marker="o", capsize=3,
                        label=f"uniform soup of k random ingredients (mean ± std, {record['draws']} draws)")
            greedy = record["greedy"]
            ax.plot([p["k"] for p in greedy], [p["metrics"][col] for p in greedy], c="#2ca02c", marker="*",
                    markersize=10, label="greedy soup after each accepted ingredient")
            shown = DISPLAY_NAMES.get(col, col)
            ax.set(xlabel="ingredients in the soup (k)", ylabel=f"{shown} accuracy (%)", title=shown)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        plots.save(fig, path)


def soup_metrics(members: list, scorer) -> dict[str, float]:
    """Every set's accuracy of the uniform soup of `members` (one member: the model itself)."""
    if len(members) == 1:
        return scorer.individual_metrics(members[0])
    return scorer.evaluate(average(scorer.load(m) for m in members), new_point=True)


def distinct_subsets(n: int, k: int, draws: int, rng: random.Random) -> list[tuple[int, ...]]:
    """min(draws, C(n, k)) different k-subsets of range(n), each sorted (pool order), drawn with `rng`."""
    wanted, found = min(draws, math.comb(n, k)), []
    while len(found) < wanted:
        subset = tuple(sorted(rng.sample(range(n), k)))
        if subset not in found:
            found.append(subset)
    return found


def spread(draws: list[dict]) -> dict:
    """{"mean": {set: %}, "std": {set: %}} over the draws (population std; 0 for one draw)."""
    columns = list(draws[0]["metrics"])
    values = {c: [d["metrics"][c] for d in draws] for c in columns}
    return {"mean": {c: statistics.fmean(v) for c, v in values.items()},
            "std": {c: statistics.pstdev(v) if len(v) > 1 else 0.0 for c, v in values.items()}}
