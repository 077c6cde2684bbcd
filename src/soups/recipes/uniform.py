"""Uniform soup: the plain average of every ingredient."""
from __future__ import annotations

from dataclasses import dataclass

from soups.averaging import average
from soups.recipes import Recipe, RecipeResult


@dataclass
class UniformSoup(Recipe):
    def __call__(self, ingredients, scorer) -> RecipeResult:
        return RecipeResult(average(scorer.load(i) for i in ingredients), list(ingredients))
