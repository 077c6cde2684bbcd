"""Greedy soup (the paper's Recipe 1): rank ingredients by held-out accuracy, start from the best,
add each next one if the held-out accuracy of the running average does not drop.

comparator ">=" is the paper's text; ">" is the released code's. Ties in the held-out ranking keep pool
order (ties="pool") or follow the released code (ties="official": its ranking sorts ascending and then
reverses, so equal accuracies are visited in reverse pool order; mlfoundations/model-soups main.py).
`greedy_selection` is shared with the greedy ensemble, which adds models to a logit average instead.

order="random" is the paper's ablation: `orders` greedy soups, each over a seeded random permutation
of the pool; each is evaluated on every set and the report shows their mean ± std (the population std
of the orders drawn, as in the ingredients analysis; scripts/demo_study.py's seeds use the sample std).
The saved weights are those of the order with the best held-out accuracy (the first of equals).
"""
from __future__ import annotations

import logging
import operator
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from soups.averaging import RunningAverage
from soups.errors import BadInput
from soups.recipes import Recipe, RecipeResult

log = logging.getLogger(__name__)
COMPARATORS = {">=": operator.ge, ">": operator.gt}
TIE_ORDERS = ("pool", "official")


@dataclass
class GreedyRecipe(Recipe):
    """Base of the greedy recipes: the acceptance comparator and the tie order, validated at construction."""
    comparator: str = ">="
    ties: str = "pool"

    def __post_init__(self):
        super().__post_init__()
        if self.comparator not in COMPARATORS:
            raise BadInput(f"greedy comparator {self.comparator!r}; expected one of {list(COMPARATORS)}")
        if self.ties not in TIE_ORDERS:
            raise BadInput(f"greedy ties {self.ties!r}; expected one of {list(TIE_ORDERS)}")


def by_held_out(ingredients, ties: str = "pool") -> list:
    """Ingredients by held-out accuracy, best first. Equal accuracies: pool order (ties="pool"), or the
    released code's order (ties="official": sorted ascending, then reversed, so reverse pool order)."""
    if ties == "official":
        return list(reversed(sorted(ingredients, key=lambda i: i.held_out)))
    return sorted(ingredients, key=lambda i: i.held_out, reverse=True)  # stable: ties keep pool order


def greedy_selection(ranked, score_with: Callable, on_accept: Callable, comparator: str, what: str):
    """(chosen in order, final held-out score, trace of every candidate), visiting `ranked` in order.

    `score_with(candidate, acceptable)` is the held-out accuracy with the candidate added, or None if
    its evaluation stopped early because `acceptable(score)` could no longer hold (a rejection, exact);
    `on_accept(candidate)` adds it for good."""
    accept = COMPARATORS[comparator]
    on_accept(ranked[0])
    chosen, best = [ranked[0]], ranked[0].held_out
    trace = [{"run": ranked[0].label, "individual_held_out": best, "soup_held_out": best, "accepted": True}]
    for candidate in ranked[1:]:
        score = score_with(candidate, lambda s, bar=best: accept(s, bar))
        accepted = score is not None and accept(score, best)
        if accepted:
            on_accept(candidate)
            chosen.append(candidate)
            best = score
        trace.append({"run": candidate.label, "individual_held_out": candidate.held_out,
                      "soup_held_out": score, "accepted": accepted})
        log.info("%s: %s held-out %.2f -> %s %s", what, candidate.label, candidate.held_out,
                 "(stopped early)" if score is None else f"{score:.2f}", "accepted" if accepted else "rejected")
    return chosen, best, trace


@dataclass
class GreedySoup(GreedyRecipe):
    order: str = "held_out"  # or "random"
    orders: int = 5          # random permutations (order="random")
    seed: int = 0
    early_rejection: bool = True  # stop a candidate's evaluation once it cannot be accepted (same choices)

    def __post_init__(self):
        super().__post_init__()
        if self.order not in ("held_out", "random"):
            raise BadInput(f"greedy order {self.order!r}; expected held_out or random")
        if self.order == "random" and int(self.orders) < 1:
            raise BadInput(f"greedy orders={self.orders}; expected at least 1 random order")

    def __call__(self, ingredients, scorer) -> RecipeResult:
        if self.order == "held_out":
            state, chosen, best, trace = self.soup(by_held_out(ingredients, self.ties), scorer)
            return RecipeResult(state, chosen, {"comparator": self.comparator, "ties": self.ties, "held_out": best},
                                tables={"trace": trace})
        runs = []
        for k in range(int(self.orders)):
            permutation = random.Random(int(self.seed) * 1_000_003 + k).sample(list(ingredients), len(ingredients))
            state, chosen, best, trace = self.soup(permutation, scorer)
            metrics = scorer.evaluate(state, new_point=len(chosen) > 1)
            runs.append({"state": state, "chosen": chosen, "record": {
                "order": [i.label for i in permutation], "chosen": [i.label for i in chosen], "held_out": best,
                "metrics": metrics, "trace": trace}})
        saved = max(range(len(runs)), key=lambda k: runs[k]["record"]["held_out"])
        records = [r["record"] for r in runs]
        columns = list(records[0]["metrics"])
        spread = lambda f: {c: f([r["metrics"][c] for r in records]) for c in columns}  # noqa: E731
        details = {"comparator": self.comparator, "order": "random", "seed": self.seed, "saved_order": saved,
                   "held_out": records[saved]["held_out"]}
        return RecipeResult(runs[saved]["state"], runs[saved]["chosen"], details,
                            tables={"trace": records[saved]["trace"], "orders": records}, mean=spread(statistics.fmean),
                            std=spread(lambda v: statistics.pstdev(v) if len(v) > 1 else 0.0),
                            sizes=[len(r["chosen"]) for r in runs])

    def soup(self, ranked, scorer):
        running = RunningAverage()
        loaded = {}  # only the current candidate: memory is one accumulator + one ingredient

        def score_with(candidate, acceptable):
            loaded.clear()
            loaded[candidate.name] = scorer.load(candidate)
            state = running.peek_with(loaded[candidate.name])
            return scorer.held_out(state, acceptable if self.early_rejection else None)

        def on_accept(candidate):
            running.add(loaded.pop(candidate.name, None) or scorer.load(candidate))

        chosen, best, trace = greedy_selection(ranked, score_with, on_accept, self.comparator, "greedy soup")
        return running.result(), chosen, best, trace
