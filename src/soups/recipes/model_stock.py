"""Model Stock (Jang et al., 2024): per tensor, pull the average of the fine-tunes back toward the
initialization by how much their displacements from it agree.

    t = k cos(theta) / ((k - 1) cos(theta) + 1),   merged = t * mean(w_i) + (1 - t) * w_0

With k > 2 ingredients, cos(theta) is the mean pairwise cosine of the displacements d_i = w_i - w_0,
computed in one pass from the sum of unit displacements u = sum d_i/|d_i|:
mean_{i<j} cos_ij = (|u|^2 - k) / (k (k - 1)). Memory is two accumulators, whatever k.
"""
from __future__ import annotations

from typing import ClassVar

from dataclasses import dataclass

import torch

from soups.errors import BadInput
from soups.recipes import RecipeResult


@dataclass
class ModelStock:
    needs_init: ClassVar[bool] = True  # moves relative to the shared initialization
    name: str = "model_stock"

    def __call__(self, ingredients, ctx) -> RecipeResult:
        k = len(ingredients)
        if k < 2:
            raise BadInput(f"model_stock needs at least 2 ingredients, got {k}")
        init = ctx.load_init()
        sums, units, fixed = {}, {}, {}
        for ingredient in ingredients:
            state = ctx.load(ingredient)
            for key, value in state.items():
                if not value.is_floating_point():
                    fixed.setdefault(key, value.clone())
                    continue
                w = value.double()
                d = w - init[key].double()
                norm = d.norm()
                unit = d / norm if norm > 0 else torch.zeros_like(d)
                sums[key] = sums[key] + w if key in sums else w
                units[key] = units[key] + unit if key in units else unit
        merged, ratios = {}, {}
        for key, total in sums.items():
            cos = ((units[key].pow(2).sum() - k) / (k * (k - 1))).clamp(-1.0, 1.0).item()
            denominator = (k - 1) * cos + 1
            t = k * cos / denominator if denominator > 1e-12 else 0.0
            merged[key] = (t * total / k + (1 - t) * init[key].double()).to(init[key].dtype)
            ratios[key] = t
        merged.update(fixed)
        mean_t = sum(ratios.values()) / len(ratios)
        return RecipeResult(merged, list(ingredients), {"mean_ratio": mean_t, "ratios": ratios},
                            averaged=True)  # mixed with the init, whatever k
