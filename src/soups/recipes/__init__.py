"""Souping recipes: each maps a pool of ingredients (+ a context that loads and scores weights) to one
set of weights and a record of how it chose. One recipe per file; configs in conf/method/."""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Protocol

import torch

from soups.averaging import StateDict
from soups.pool import Ingredient


@dataclass
class RecipeResult:
    state: StateDict | None  # None for an ensemble: its members' logits are averaged instead
    ingredients: list[Ingredient]
    record: dict = field(default_factory=dict)  # recipe-specific: trace, parameters, ...
    # whether `state` is a new point in weight space (an average, interpolation or extrapolation: BN
    # statistics must be recomputed) rather than one model's weights exactly; None: more than one ingredient
    averaged: bool | None = None

    @property
    def is_average(self) -> bool:
        return len(self.ingredients) > 1 if self.averaged is None else bool(self.averaged)


class SoupContext(Protocol):
    model: torch.nn.Module  # a model of the pool's architecture (recipes that run it themselves)
    device: torch.device
    precision: str

    def held_out_set(self):
        """The held-out evaluation set: `.batches(batch_size, shuffle_seed=None, device=None)`
        yields (images on `device`, labels)."""

    def load(self, ingredient: Ingredient) -> StateDict:
        """The ingredient's weights."""

    def load_init(self) -> StateDict:
        """The shared initialization's weights (for recipes that move relative to it)."""

    def held_out(self, state: StateDict, acceptable: Callable[[float], bool] | None = None) -> float | None:
        """Held-out accuracy (%) of averaged weights (BN statistics recomputed where the model has BN).
        With `acceptable`, None as soon as no remaining outcome could satisfy it (exact early rejection)."""

    def evaluate(self, state: StateDict, averaged: bool) -> dict[str, float]:
        """Accuracy on every set (+ avg_shifts); `averaged` weights get BN statistics recomputed."""

    def ensemble_held_out(self, members: list[Ingredient]) -> float:
        """Held-out accuracy (%) of the mean of the members' logits."""

    def digest(self, ingredient: Ingredient) -> str:
        """sha256 of the ingredient's weights file."""

    def recall(self, key: dict) -> dict | None:
        """What a recipe stored under `key` (settings + ingredient digests) in an earlier run, if anything."""

    def remember(self, key: dict, record: dict) -> None: ...


class Recipe(Protocol):
    name: str

    def __call__(self, ingredients: list[Ingredient], ctx: SoupContext) -> RecipeResult: ...
