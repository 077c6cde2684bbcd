"""Accuracy as ingredients are added. For each size k = 1..K, `draws` seeded random k-subsets of the pool
(models *considered*) and, on each subset, its uniform soup, its greedy soup and its best individual (by
held-out), each on held-out, test and avg shifts (mean ± std over the draws; the three share the draws, so
they compare pairwise). Also the greedy soup's running curve over the whole pool (its soup after each
accepted ingredient). The paper's question: does considering more fine-tunes keep helping, and does greedy
stay at or above the best individual while the uniform soup may not?"""
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
from soups.pools.ingredient import best_individual
from soups.recipes.greedy import COMPARATORS, TIE_ORDERS, GreedySoup

COLUMNS = (HELD_OUT, TEST, AVG_SHIFTS)
log = logging.getLogger(__name__)


@dataclass
class Ingredients(Analysis):
    draws: int = 3     # random subsets per size (fewer where fewer exist)
    seed: int = 0
    sizes: list | None = None  # subset sizes (distinct integers 1..K); None: 1..K
    comparator: str = ">="     # the greedy soups' rule, as the greedy recipe's (conf/soup.yaml greedy_rule)
    ties: str = "pool"
    considered: bool = True    # also the greedy soup and the best individual of each drawn subset

    def __post_init__(self):
        super().__post_init__()
        wrong = [f"{name}={value!r} (expected {expected})" for name, value, ok, expected in (
            ("draws", self.draws, isinstance(self.draws, int) and not isinstance(self.draws, bool) and self.draws >= 1,
             "an integer >= 1"),
            ("comparator", self.comparator, self.comparator in COMPARATORS, " or ".join(COMPARATORS)),
            ("ties", self.ties, self.ties in TIE_ORDERS, " or ".join(TIE_ORDERS))) if not ok]
        if wrong:
            raise BadInput("; ".join(wrong))  # the analysis job says "analysis: " before it

    def check(self, ingredients: list) -> None:
        """BadInput unless `sizes` is null or a non-empty list of distinct integers from 1 to K."""
        if self.sizes is None:
            return
        expected = f"expected null (1..K) or a list of distinct integers from 1 to the pool's {len(ingredients)}"
        if isinstance(self.sizes, (str, bytes, dict)) or not hasattr(self.sizes, "__iter__") or not list(self.sizes):
            raise BadInput(f"analysis.sizes={self.sizes!r}: {expected}, e.g. [1,2,4]")
        sizes = list(self.sizes)
        wrong = [k for k in sizes if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(ingredients)]
        if wrong or len(set(sizes)) < len(sizes):
            raise BadInput(f"analysis.sizes={sizes}: {expected} ({'not: ' + str(wrong) if wrong else 'repeated sizes'})")

    def __call__(self, pool, scorer) -> dict:
        ingredients = pool.ingredients
        self.check(ingredients)
        sizes = list(self.sizes) if self.sizes is not None else list(range(1, len(ingredients) + 1))
        rng = random.Random(self.seed)
        random_curve = []
        for k in sizes:
            draws = []
            for subset in distinct_subsets(len(ingredients), k, self.draws, rng):
                members = [ingredients[i] for i in subset]
                draw = {"members": [m.name for m in members], "metrics": soup_metrics(members, scorer)}
                if self.considered:
                    draw.update(self.of_considered(members, scorer))
                draws.append(draw)
            point = {"k": k, "draws": draws, **spread(draws)}
            if self.considered:
                point.update({w: spread([d[w] for d in draws]) for w in ("greedy", "best")})
            random_curve.append(point)
            log.info("k=%d: %d uniform soups, test %.2f ± %.2f", k, len(draws), random_curve[-1]["mean"][TEST],
                     random_curve[-1]["std"][TEST])
        chosen = GreedySoup(comparator=self.comparator, ties=self.ties)(ingredients, scorer).ingredients
        greedy_curve = [{"k": t, "added": chosen[t - 1].name, "metrics": soup_metrics(chosen[:t], scorer)}
                        for t in range(1, len(chosen) + 1)]
        return {"ingredients": [i.name for i in ingredients], "random": random_curve, "greedy": greedy_curve,
                "draws": self.draws, "seed": self.seed, "sizes": sizes, "considered": self.considered,
                "greedy_rule": {"comparator": self.comparator, "ties": self.ties}}

    def of_considered(self, members: list, scorer) -> dict:
        """{"greedy": {"members", "metrics"}, "best": {"members", "metrics"}}: the greedy soup (this analysis's
        rule) and the best individual by held-out (first in pool order on a tie, as the soup job's row) of
        `members` alone."""
        result = GreedySoup(comparator=self.comparator, ties=self.ties)(members, scorer)
        metrics = scorer.evaluate(result.weights, new_point=result.is_new_point)  # as the soup job does
        best = best_individual(members)
        return {"greedy": {"members": [m.name for m in result.ingredients], "metrics": metrics},
                "best": {"members": [best.name], "metrics": scorer.individual_metrics(best)}}

    def summary(self, record: dict) -> str:
        lines = []
        for point in record["random"]:
            lines.append(f"  k={point['k']:>3} ({len(point['draws'])} draws): " + ", ".join(
                f"{DISPLAY_NAMES.get(c, c)} {point['mean'][c]:.2f} ± {point['std'][c]:.2f}" for c in COLUMNS))
            for what in ("greedy", "best"):
                if what in point:
                    lines.append(f"        {what + ' of them':>16}: " + ", ".join(
                        f"{DISPLAY_NAMES.get(c, c)} {point[what]['mean'][c]:.2f} ± {point[what]['std'][c]:.2f}"
                        for c in COLUMNS))
        lines.append("  whole pool's greedy soup, by accepted ingredients: " + " -> ".join(
            f"{p['k']}: test {p['metrics'][TEST]:.2f}" for p in record["greedy"]))
        then = " (then the greedy soup and best individual of the same subsets)" if record.get("considered", True) else ""
        return f"uniform soups of k random ingredients{then}, mean ± std:\n" + "\n".join(lines)

    def draw(self, record: dict, path: Path, title: str) -> None:
        plt = plots.pyplot()
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, col in zip(axes, COLUMNS):
            ks = [p["k"] for p in record["random"]]
            mean = [p["mean"][col] for p in record["random"]]
            std = [p["std"][col] for p in record["random"]]
            for p in record["random"]:
                ax.scatter([p["k"]] * len(p["draws"]), [d["metrics"][col] for d in p["draws"]], c="#ffbb78", s=12)
            ax.errorbar(ks, mean, yerr=std, c="#ff7f0e", marker="o", capsize=3,
                        label=f"uniform soup of k random ingredients (dots; mean ± std over up to {record['draws']} draws)")
            for what, colour, label in (("greedy", "#1f77b4", "greedy soup of the same k"),
                                        ("best", "#7f7f7f", "best individual of the same k (by held-out)")):
                points = [p for p in record["random"] if what in p]
                if points:
                    ax.errorbar([p["k"] for p in points], [p[what]["mean"][col] for p in points],
                                yerr=[p[what]["std"][col] for p in points], c=colour, marker="s", markersize=4,
                                capsize=3, ls="--" if what == "best" else "-", label=label)
            greedy = record["greedy"]
            ax.plot([p["k"] for p in greedy], [p["metrics"][col] for p in greedy], c="#2ca02c", marker="*",
                    markersize=10, label="whole pool's greedy soup after its k-th accepted ingredient")
            shown = DISPLAY_NAMES.get(col, col)
            ax.set(xlabel="k: models considered (random subsets) or accepted (whole pool's greedy soup)",
                   ylabel=f"{shown} accuracy (%)", title=shown)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
