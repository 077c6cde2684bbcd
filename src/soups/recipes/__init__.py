"""Souping recipes: each maps a pool of ingredients (+ the `Scorer`, which loads and scores weights) to one
set of weights and a record of how it chose. One recipe per file; configs in conf/method/."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from soups.averaging import StateDict
from soups.ingredient import Ingredient
from soups.targets import Settings


@dataclass
class RecipeResult:
    """What every recipe returns. The soup job evaluates it; soups/records.py turns it into soup.json, the
    saved weights, a report row and W&B entries, reading only these fields."""
    weights: StateDict | None  # the soup's weights; None for an ensemble (its members' logits are averaged)
    ingredients: list[Ingredient]  # what it used, in the order it added them
    details: dict = field(default_factory=dict)  # its settings and findings, saved in soup.json as they are
    # whether `weights` are a new point in weight space (an average, interpolation or extrapolation: BN
    # statistics must be recomputed) rather than one model's weights exactly; None: more than one ingredient
    averaged: bool | None = None
    trace: list[dict] | None = None  # greedy: per candidate {run, individual_held_out, soup_held_out, accepted}
    curve: list[dict] | None = None  # WiSE-FT: per alpha {alpha, <set>: accuracy %, ...}; drawn in the figure
    orders: list[dict] | None = None  # several draws (random orders): per draw {order, chosen, held_out, metrics}
    mean: dict | None = None  # over the draws, per set (%); the report shows mean +- std
    std: dict | None = None
    coefficients: dict | None = None  # learned soups: {ingredients, tensors, weights}; plotted

    @property
    def kind(self) -> str:
        return "ensemble" if self.weights is None else "soup"

    @property
    def is_average(self) -> bool:
        return len(self.ingredients) > 1 if self.averaged is None else bool(self.averaged)

    @property
    def record(self) -> dict:
        """soup.json's recipe fields: the details, then each optional field that is set."""
        optional = {k: getattr(self, k) for k in ("trace", "curve", "orders", "mean", "std", "coefficients")}
        return {**self.details, **{k: v for k, v in optional.items() if v is not None}}


class Recipe(Settings, ABC):
    """Base of every recipe: one dataclass per file in this package, configured by conf/method/<key>.yaml
    (`_target_` names the class); the config key is its name in the table, soup.json and W&B. Its int,
    float, bool and str settings are converted and checked on construction (soups.targets.Settings)."""
    needs_init: ClassVar[bool] = False  # True: it moves relative to the shared initialization, which must exist

    @abstractmethod
    def __call__(self, ingredients: list[Ingredient], scorer: "Scorer") -> RecipeResult:
        """The soup (or ensemble) this recipe makes of `ingredients`, scoring candidates with `scorer`."""


class Scorer(Protocol):
    """What a recipe may ask of the soup job (soups.scorer.PoolScorer implements it; tests use small fakes)."""
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
