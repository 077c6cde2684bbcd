"""Analyses of a pool (`python src/analyze.py analysis=<name>`): one class per file in this package, chosen
by conf/analysis/<name>.yaml (`_target_`), reading the same pool and evaluation cache as the soup job.
Each returns a JSON-able record (written as <name>.json) and draws it (<name>.png)."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from soups.errors import BadInput
from soups.settings import Settings, build


class Analysis(Settings, ABC):
    """Base of every analysis: a dataclass whose fields are the analysis config's settings."""
    needs_init: ClassVar[bool] = False  # True: it measures relative to the shared initialization

    def check(self, ingredients: list) -> None:
        """BadInput where this pool cannot be analysed (too few ingredients, names not in it): called by the
        analyze job before any evaluation or logging, and again by __call__."""

    def check_sets(self, names: list[str]) -> None:
        """BadInput where the analysis names an evaluation set the pool does not have (`names`: held-out, test,
        the shifts): called by the analyze job once the sets are known, before any evaluation."""

    @abstractmethod
    def __call__(self, pool, scorer) -> dict:
        """The record of this analysis of `pool` (soups.pools.OpenPool), measured with `scorer`
        (soups.evaluation.scorer.PoolScorer: cached evaluations, logits, weights)."""

    @abstractmethod
    def draw(self, record: dict, path: Path, title: str) -> None:
        """The record's figure, written to `path` (PNG)."""

    def summary(self, record: dict) -> str:
        """A few lines for the terminal and the run's log."""
        return ""


def build_analysis(node) -> Analysis:
    """The Analysis that `analysis._target_` names; BadInput for any other target or a bad setting."""
    return build(node, "analysis", "soups.analyses", Analysis)


def require_pairs(name: str, ingredients: list, max_ingredients: int | None) -> None:
    """BadInput unless the best `max_ingredients` (None: all) of `ingredients` make at least one pair."""
    kept = ingredients[: max_ingredients or None]
    if len(kept) < 2:
        said = f"; max_ingredients={max_ingredients} keeps" if max_ingredients else ";"
        raise BadInput(f"{name} needs at least 2 ingredients{said} {len(kept)} of the pool's {len(ingredients)}")


def correlation(test, x: list[float], y: list[float]) -> float | None:
    """`test` (scipy.stats.pearsonr or spearmanr) of x and y; None where undefined (fewer than 3 points, a
    constant input, NaN)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    r = float(test(x, y).statistic)
    return None if math.isnan(r) else r
