"""WiSE-FT (Wortsman et al., 2022): interpolate fine-tuned weights with the initialization,
theta_alpha = (1 - alpha) * theta_init + alpha * theta_ft, over an alpha grid. Every point of the curve
is evaluated on every set (the paper shows soups beyond these curves); alpha is chosen on held-out.
theta_ft is the best individual, a named ingredient, a soup (`base: uniform` or `greedy`: WiSE-FT of a soup,
which the paper discusses: the soup interpolated back toward the init), or the weights of any other recipe
that runs before it in the same job (`method=[mehl,wise_ft] method.wise_ft.base=mehl`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from soups.averaging import average, interpolate
from soups.errors import BadInput
from soups.names import HELD_OUT
from soups.pools.ingredient import best_individual
from soups.recipes import Recipe, RecipeResult


@dataclass
class WiseFT(Recipe):
    needs_init: ClassVar[bool] = True  # moves relative to the shared initialization
    alphas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    base: str = "best"  # best (by held-out) | uniform | greedy | an ingredient's name or label | an earlier recipe
    comparator: str = ">="  # base=greedy: the greedy rule (conf/method/wise_ft.yaml reads soup.yaml's greedy_rule)
    ties: str = "pool"

    def __post_init__(self):
        super().__post_init__()
        given = self.alphas
        try:
            self.alphas = sorted({float(a) for a in given})  # the curve in order, each point evaluated once
        except (TypeError, ValueError):
            self.alphas = []
        if not self.alphas or not all(math.isfinite(a) and a >= 0 for a in self.alphas):
            raise BadInput(f"alphas={given!r}: expected a non-empty list of finite numbers >= 0, e.g. [0.5, 1.0]")

    def uses(self, ingredients) -> list[str]:
        """The recipe whose result is the base, when `base` names no ingredient (the soup job checks it runs first)."""
        return [] if self.base in ("best", "uniform", "greedy") or self.named(ingredients) else [self.base]

    def unknown(self, ingredients, name: str, why: str) -> BadInput:
        shown = [i.label for i in ingredients][:5]
        return BadInput(f"method.wise_ft.base={name!r} {why}; expected best, uniform, greedy, an ingredient's name or "
                        f"label (e.g. {shown}) or a recipe that gives weights, listed before wise_ft in `method`")

    def named(self, ingredients):
        return next((i for i in ingredients if self.base in (i.name, i.label)), None)

    def tuned(self, ingredients, scorer):
        """(theta_ft, the ingredients it is made of, whether it is itself a new point in weight space)."""
        if self.base == "uniform":
            return average(scorer.load(i) for i in ingredients), list(ingredients), len(ingredients) > 1
        if self.base == "greedy":
            from soups.recipes.greedy import GreedySoup

            soup = GreedySoup(comparator=self.comparator, ties=self.ties)(ingredients, scorer)
            return soup.weights, soup.ingredients, soup.is_new_point
        if self.uses(ingredients):  # another recipe's weights, from this job
            earlier = getattr(scorer, "results", {}).get(self.base)
            if earlier is None or earlier.weights is None:
                raise self.unknown(ingredients, self.base, "is not in the pool nor a recipe run before wise_ft")
            return earlier.weights, earlier.ingredients, earlier.is_new_point
        base = best_individual(ingredients) if self.base == "best" else self.named(ingredients)
        return scorer.load(base), [base], False

    def __call__(self, ingredients, scorer) -> RecipeResult:
        tuned, used, soup_point = self.tuned(ingredients, scorer)
        init = scorer.load_init()

        def new_point(alpha: float) -> bool:  # alpha 1 is the base itself: new iff the base is a soup
            return is_new_point(alpha) or (alpha == 1.0 and soup_point)

        curve = [{"alpha": a, **scorer.evaluate(interpolate(init, tuned, a), new_point=new_point(a))} for a in self.alphas]
        # of equal held-out accuracies the smallest alpha, the point nearest the init, whatever order was given
        chosen = max(curve, key=lambda point: (point[HELD_OUT], -point["alpha"]))
        name = self.base if self.base in ("uniform", "greedy") or self.uses(ingredients) else used[0].name
        return RecipeResult(interpolate(init, tuned, chosen["alpha"]), used,
                            {"base": name, "alpha": chosen["alpha"]}, curve=curve,
                            new_point=new_point(chosen["alpha"]))


def is_new_point(alpha: float) -> bool:
    """alpha 0 is the init and 1 the fine-tune, each with its own BN statistics; every other alpha
    (between them or beyond) is new weights whose BN statistics must be recomputed."""
    return alpha not in (0.0, 1.0)
