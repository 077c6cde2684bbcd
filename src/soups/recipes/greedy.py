"""Greedy soup (the paper's Recipe 1): rank ingredients by held-out accuracy, start from the best,
add each next one if the held-out accuracy of the running average does not drop.

comparator ">=" is the paper's text; ">" is the released code's. Ties in ranking keep pool order.
`greedy_selection` is shared with the greedy ensemble, which adds models to a logit average instead.
"""
from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass

from soups.averaging import RunningAverage
from soups.recipes import RecipeResult

log = logging.getLogger(__name__)
COMPARATORS = {">=": operator.ge, ">": operator.gt}


@dataclass
class GreedyRecipe:
    """Base of the greedy recipes: the acceptance comparator, validated at construction."""
    comparator: str = ">="

    def __post_init__(self):
        if self.comparator not in COMPARATORS:
            raise ValueError(f"greedy comparator {self.comparator!r}; expected one of {list(COMPARATORS)}")


def greedy_selection(ingredients, score_with: Callable, on_accept: Callable, comparator: str, what: str):
    """(chosen in order, final held-out score, trace of every candidate). `score_with(candidate)` is the
    held-out accuracy with the candidate added; `on_accept(candidate)` adds it for good."""
    accept = COMPARATORS[comparator]
    ranked = sorted(ingredients, key=lambda i: i.held_out, reverse=True)
    on_accept(ranked[0])
    chosen, best = [ranked[0]], ranked[0].held_out
    trace = [{"run": ranked[0].name, "individual_held_out": best, "soup_held_out": best, "accepted": True}]
    for candidate in ranked[1:]:
        score = score_with(candidate)
        accepted = accept(score, best)
        if accepted:
            on_accept(candidate)
            chosen.append(candidate)
            best = score
        trace.append({"run": candidate.name, "individual_held_out": candidate.held_out,
                      "soup_held_out": score, "accepted": accepted})
        log.info("%s: %s held-out %.2f -> %.2f %s", what, candidate.name, candidate.held_out, score,
                 "accepted" if accepted else "rejected")
    return chosen, best, trace


@dataclass
class GreedySoup(GreedyRecipe):
    name: str = "greedy"

    def __call__(self, ingredients, ctx) -> RecipeResult:
        running = RunningAverage()
        loaded = {}

        def score_with(candidate):
            loaded[candidate.name] = ctx.load(candidate)
            return ctx.held_out(running.peek_with(loaded[candidate.name]))

        def on_accept(candidate):
            running.add(loaded.pop(candidate.name, None) or ctx.load(candidate))

        chosen, best, trace = greedy_selection(ingredients, score_with, on_accept, self.comparator, "greedy soup")
        return RecipeResult(running.result(), chosen, {"comparator": self.comparator, "held_out": best, "trace": trace})
