"""Souping recipes: each maps a pool of ingredients (+ the `Scorer`, which loads and scores weights) to one
set of weights and a record of how it chose. One recipe per file; configs in conf/method/."""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import torch

from soups.averaging import StateDict
from soups.pools.ingredient import Ingredient
from soups.errors import BadInput, NotApplicable
from soups.settings import Settings, build


Figure = Callable[[Path, str], None]  # draw(png path, title): a recipe's own figure


@dataclass
class RecipeResult:
    """What every recipe returns, generic so that the report, soup.json and W&B render any recipe without
    knowing its name (soups/reporting/records.py reads only these fields).

    weights      the soup's weights; None for an ensemble (its members' logits are averaged; cost k passes)
    ingredients  what it used, in the order it added them
    details      its settings and findings: soup.json's fields, saved as they are
    new_point    whether `weights` are a new point in weight space (an average, interpolation or extrapolation,
                 whose BN statistics must be recomputed) rather than one model's weights exactly; None: so
                 iff more than one ingredient
    tables       its own tables, {name: rows}, each row a dict with the same keys (e.g. greedy's `trace`): in
                 soup.json under `name`, in report.md under the recipe, and W&B table `<recipe>/<name>`
    figures      its own figures, {name: draw(path, title)}: `<soup dir>/<name>.png`, linked from report.md,
                 W&B image `<recipe>/<name>`
    curve        evaluated points ({"alpha" or another label: value, <set>: accuracy %}) that the report's
                 figure joins with a line from this recipe's marker (WiSE-FT's path); also a table
    mean, std    set when the recipe made several draws ({set: %}): the report row shows mean ± std instead of
                 the saved weights' own evaluation
    sizes        with mean, std: how many ingredients each draw used; the row's #ingredients is their range
                 (e.g. 1–6), not the saved draw's count alone
    row          the report's name for it (default `<config key> soup`, or the key in words for an ensemble)
    """
    weights: StateDict | None
    ingredients: list[Ingredient]
    details: dict = field(default_factory=dict)
    new_point: bool | None = None
    tables: dict[str, list[dict]] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    curve: list[dict] | None = None
    mean: dict | None = None
    std: dict | None = None
    sizes: list[int] | None = None
    row: str | None = None

    @property
    def kind(self) -> str:
        return "ensemble" if self.weights is None else "soup"

    @property
    def is_new_point(self) -> bool:
        return len(self.ingredients) > 1 if self.new_point is None else bool(self.new_point)

    @property
    def record(self) -> dict:
        """soup.json's recipe fields: the details, then the tables, the curve and the draws' mean, std and sizes."""
        optional = {"curve": self.curve, "mean": self.mean, "std": self.std, "sizes": self.sizes}
        optional = {k: v for k, v in optional.items() if v is not None}
        clash = (set(self.details) & set(self.tables)) | (set(self.details) | set(self.tables)) & set(optional)
        if clash:  # one would overwrite the other in soup.json
            raise ValueError(f"a recipe's details and tables share the names {sorted(clash)}")
        return {**self.details, **self.tables, **optional}


class Recipe(Settings, ABC):
    """Base of every recipe: one dataclass per file in this package, configured by conf/method/<key>.yaml
    (`_target_` names the class); the config key is its name in the table, soup.json and W&B. Its int,
    float, bool and str settings are converted and checked on construction (soups.settings.Settings)."""
    needs_init: ClassVar[bool] = False  # True: it moves relative to the shared initialization, which must exist
    gives_weights: ClassVar[bool] = True  # False: its result is an ensemble of logits (no weights to build on)

    @abstractmethod
    def __call__(self, ingredients: list[Ingredient], scorer: "Scorer") -> RecipeResult:
        """The soup (or ensemble) this recipe makes of `ingredients`, scoring candidates with `scorer`."""

    def check(self, ingredients: list[Ingredient]) -> None:
        """Raises BadInput if this recipe cannot run on these ingredients; the soup job asks every recipe
        before the first evaluation. NotApplicable (e.g. a recipe of LoRA factors on a pool of full weights):
        `method=all` leaves the recipe out, naming why."""

    def uses(self, ingredients: list[Ingredient]) -> list[str]:
        """Config keys of other recipes whose weights (`Scorer.results`) this one reads; the soup job refuses the
        run before any evaluation unless each runs before it and gives weights (`unknown` says why)."""
        return []

    def unknown(self, ingredients: list[Ingredient], name: str, why: str) -> BadInput:
        """The error for `name`, a recipe `uses` gave that cannot serve (`why`: e.g. it runs after this one)."""
        return BadInput(f"{type(self).__name__} uses {name!r}, which {why}")


class Scorer(Protocol):
    """What a recipe may ask of the soup job (soups.evaluation.scorer.PoolScorer implements it; tests use small fakes)."""
    model: torch.nn.Module  # a model of the pool's architecture (recipes that run it themselves)
    device: torch.device
    precision: str
    results: dict  # {config key: RecipeResult} of the recipes this job ran before this one
    aliases: dict[str, str]  # {tied copy's state-dict key: its first name} (averaging.tied_aliases); copies are set from the first name when loaded

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

    def evaluate(self, state: StateDict, new_point: bool) -> dict[str, float]:
        """Accuracy on every set (+ avg_shifts); a `new_point` in weight space gets BN statistics recomputed."""

    def ensemble_held_out(self, members: list[Ingredient]) -> float:
        """Held-out accuracy (%) of the mean of the members' logits."""

    def digest(self, ingredient: Ingredient) -> str:
        """sha256 of the ingredient's weights file."""

    def recall(self, key: dict) -> dict | None:
        """What a recipe stored under `key` (settings + ingredient digests) in an earlier run, if anything."""

    def remember(self, key: dict, record: dict) -> None: ...


def held_out_examples(scorer: Scorer, wanted: int, recipe: str) -> int:
    """How many held-out examples a recipe's statistics use: `wanted`, or all there are (said in the log)."""
    available = len(scorer.held_out_set())
    if available < wanted:
        logging.getLogger(__name__).warning("%s: the held-out set has %d examples; the statistics use all of them, "
                                            "not %d", recipe, available, wanted)
    return min(wanted, available)


def build_recipes(method_cfg) -> dict:
    """{config key: Recipe} from the `method` config, instantiated (hence validated) before any work: every
    `_target_` (at any depth) must be a Recipe class defined in this package, so a method config cannot make
    instantiation run other code. Raises BadInput."""
    if not method_cfg:
        raise BadInput("no method selected; e.g. method=greedy or method=[uniform,greedy]")
    return {name: build(node, f"method.{name}", "soups.recipes", Recipe) for name, node in method_cfg.items()
            if not str(name).startswith("_")}  # `_every_applicable` (method=all) is a flag, not a recipe


def runnable(recipes: dict, ingredients: list[Ingredient], every_applicable: bool,
             init_missing: str | None = None) -> tuple[dict, dict]:
    """(the recipes that run on `ingredients`, in the config's order; {config key: why} of those left out),
    asked before any evaluation. A recipe's `check` may refuse the pool: NotApplicable leaves it out under
    `every_applicable` (method=all) and is raised otherwise. `init_missing` (why the pool's shared
    initialization cannot be read; None: it can) leaves out the recipes that need it under `every_applicable`
    (asked by name, they are the soup job's `require_init` error). Each recipe's `uses` must name recipes that
    run before it and give weights. Raises BadInput."""
    recipes, left_out = dict(recipes), {}
    for name, recipe in list(recipes.items()):
        try:
            if every_applicable and init_missing and recipe.needs_init:
                raise NotApplicable(f"it interpolates with the pool's shared initialization: {init_missing}")
            recipe.check(ingredients)
        except NotApplicable as why:
            if not every_applicable:
                raise
            left_out[name] = str(why)
            del recipes[name]
            logging.getLogger(__name__).warning("method=all: %s left out: %s", name, why)
    order = list(recipes)
    for index, (name, recipe) in enumerate(recipes.items()):  # one built on another's weights runs after it
        for used in recipe.uses(ingredients):
            if used in order[:index] and recipes[used].gives_weights:
                continue
            why = ("gives no weights (an ensemble of logits)" if used in order[:index] else
                   f"runs after {name}: list it first, e.g. 'method=[{used},{name}]'" if used in recipes else
                   "is not in the pool nor a recipe in this run's method list")
            raise recipe.unknown(ingredients, used, why)
    return recipes, left_out
