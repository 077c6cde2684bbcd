"""Greedy soup (the paper's Recipe 1): rank ingredients by held-out accuracy, start from the best,
add each next one if the held-out accuracy of the running average does not drop.

comparator ">=" is the paper's text; ">" is the released code's. Ties in ranking keep pool order.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

from soups.averaging import RunningAverage
from soups.recipes import RecipeResult

log = logging.getLogger(__name__)
COMPARATORS = {">=": operator.ge, ">": operator.gt}


@dataclass
class GreedySoup:
    comparator: str = ">="
    name: str = "greedy"

    def __post_init__(self):
        if self.comparator not in COMPARATORS:
            raise ValueError(f"greedy comparator {self.comparator!r}; expected one of {list(COMPARATORS)}")

    def __call__(self, ingredients, ctx) -> RecipeResult:
        accept = COMPARATORS[self.comparator]
        ranked = sorted(ingredients, key=lambda i: i.held_out, reverse=True)
        running = RunningAverage()
        running.add(ctx.load(ranked[0]))
        chosen, best = [ranked[0]], ranked[0].held_out
        trace = [{"run": ranked[0].name, "individual_held_out": best, "soup_held_out": best, "accepted": True}]
        for candidate in ranked[1:]:
            state = ctx.load(candidate)
            score = ctx.held_out(running.peek_with(state))
            accepted = accept(score, best)
            if accepted:
                running.add(state)
                chosen.append(candidate)
                best = score
            trace.append({"run": candidate.name, "individual_held_out": candidate.held_out,
                          "soup_held_out": score, "accepted": accepted})
            log.info("greedy: %s held-out %.2f -> soup %.2f %s", candidate.name, candidate.held_out, score,
                     "accepted" if accepted else "rejected")
        return RecipeResult(running.result(), chosen,
                            {"comparator": self.comparator, "held_out": best, "trace": trace})
