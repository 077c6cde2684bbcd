"""WiSE-FT (Wortsman et al., 2022): interpolate fine-tuned weights with the initialization,
theta_alpha = (1 - alpha) * theta_init + alpha * theta_ft, over an alpha grid. Every point of the curve
is evaluated on every set (the paper shows soups beyond these curves); alpha is chosen on held-out."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from soups.averaging import interpolate
from soups.errors import BadInput
from soups.names import HELD_OUT
from soups.recipes import Recipe, RecipeResult


@dataclass
class WiseFT(Recipe):
    needs_init: ClassVar[bool] = True  # moves relative to the shared initialization
    alphas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    base: str = "best"  # "best": the best individual by held-out accuracy; else an ingredient's name

    def __post_init__(self):
        super().__post_init__()
        given = self.alphas
        try:
            self.alphas = [float(a) for a in given]
        except (TypeError, ValueError):
            self.alphas = []
        if not self.alphas or not all(math.isfinite(a) and a >= 0 for a in self.alphas):
            raise BadInput(f"alphas={given!r}: expected a non-empty list of finite numbers >= 0, e.g. [0.5, 1.0]")

    def __call__(self, ingredients, scorer) -> RecipeResult:
        if self.base == "best":
            base = max(ingredients, key=lambda i: i.held_out)
        else:
            base = next((i for i in ingredients if i.name == self.base), None)
            if base is None:
                raise BadInput(f"wise_ft base {self.base!r} is not in the pool ({[i.name for i in ingredients][:5]} ...)")
        init, tuned = scorer.load_init(), scorer.load(base)
        curve = [{"alpha": a, **scorer.evaluate(interpolate(init, tuned, a), new_point=is_new_point(a))} for a in self.alphas]
        chosen = max(curve, key=lambda point: point[HELD_OUT])  # first of equals: the smallest alpha
        return RecipeResult(interpolate(init, tuned, chosen["alpha"]), [base],
                            {"base": base.name, "alpha": chosen["alpha"]}, curve=curve,
                            new_point=is_new_point(chosen["alpha"]))


def is_new_point(alpha: float) -> bool:
    """alpha 0 is the init and 1 the fine-tune, each with its own BN statistics; every other alpha
    (between them or beyond) is new weights whose BN statistics must be recomputed."""
    return alpha not in (0.0, 1.0)
