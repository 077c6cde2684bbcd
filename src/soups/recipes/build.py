"""Recipes from the `method` config, validated before any work: every `_target_` (at any depth) must be a
Recipe class defined in this package (soups/targets.py), so a method config cannot make instantiation run
other code."""
from __future__ import annotations

from soups.errors import BadInput
from soups.recipes import Recipe
from soups.targets import build


def build_recipes(method_cfg) -> dict:
    """{config key: Recipe}, instantiated (hence validated) before any work. Raises BadInput."""
    if not method_cfg:
        raise BadInput("no method selected; e.g. method=greedy or method=[uniform,greedy]")
    return {name: build(node, f"method.{name}", "soups.recipes", Recipe) for name, node in method_cfg.items()}
