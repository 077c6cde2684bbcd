"""Model Stock (Jang et al., 2024): per tensor, pull the average of the fine-tunes back toward the
initialization by how much their displacements from it agree.

    t = k cos(theta) / ((k - 1) cos(theta) + 1),   merged = t * mean(w_i) + (1 - t) * w_0

With k > 2 ingredients, cos(theta) is the mean pairwise cosine of the displacements d_i = w_i - w_0,
computed in one pass from the sum of unit displacements u = sum d_i/|d_i|:
mean_{i<j} cos_ij = (|u|^2 - m) / (k (k - 1)), m the number of non-zero d_i. A displacement that is zero on a
tensor (an ingredient that did not move it, or the init itself in the pool) has cosine 0 with every other,
as mergekit's `model_stock` computes it: it lowers the mean instead of counting as a unit vector (with k = 2
that would give t = -2, the fine-tune's step reversed). Memory is two accumulators, whatever k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from soups.averaging import RunningAverage, interpolate
from soups.errors import BadInput
from soups.recipes import Recipe, RecipeResult


@dataclass
class ModelStock(Recipe):
    needs_init: ClassVar[bool] = True  # moves relative to the shared initialization

    def __call__(self, ingredients, scorer) -> RecipeResult:
        k = len(ingredients)
        if k < 2:
            raise BadInput(f"model_stock needs at least 2 ingredients, got {k}")
        init = scorer.load_init()
        mean, units, moved = RunningAverage(), {}, {}
        for ingredient in ingredients:
            state = scorer.load(ingredient)
            mean.add(state)
            for key, value in state.items():
                if value.is_floating_point() and key not in scorer.aliases:  # a tied copy follows its first name
                    d = value.double() - init[key].double()
                    norm = d.norm()
                    unit = d / norm if norm > 0 else torch.zeros_like(d)
                    units[key] = units[key] + unit if key in units else unit
                    moved[key] = moved.get(key, 0) + int(norm > 0)
        ratios = {}
        for key, u in units.items():
            cos = ((u.pow(2).sum() - moved[key]) / (k * (k - 1))).clamp(-1.0, 1.0).item()
            denominator = (k - 1) * cos + 1
            ratios[key] = k * cos / denominator if denominator > 1e-12 else 0.0
        merged = interpolate(init, mean.result(), lambda key: ratios[scorer.aliases.get(key, key)])
        mean_t = sum(ratios.values()) / len(ratios)
        return RecipeResult(merged, list(ingredients), {"mean_ratio": mean_t, "ratios": ratios},
                            new_point=True)  # mixed with the init, whatever k
