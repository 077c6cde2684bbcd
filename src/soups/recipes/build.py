"""Recipes from the `method` config, validated before any work: every `_target_` (at any depth) must be a
Recipe class defined in this package (soups/targets.py), so a method config cannot make instantiation run
other code."""
from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from soups.errors import BadInput
from soups.recipes import Recipe
from soups.targets import class_in


def build_recipes(method_cfg) -> dict:
    """Instantiated (hence validated) before any work."""
    if not method_cfg:
        raise BadInput("no method selected; e.g. method=greedy or method=[uniform,greedy]")
    recipes = {}
    for name, node in method_cfg.items():
        _check_targets(f"method.{name}", node)
        try:
            recipes[name] = instantiate(node)
        except InstantiationException as err:
            raise BadInput(f"method.{name}: {err.__cause__ or err}") from err
    return recipes


RECIPES_PACKAGE = "soups.recipes"


def _check_targets(where: str, node) -> None:
    """A method config names recipe classes, never arbitrary callables: every `_target_` must be a class
    defined in soups.recipes (where a new recipe goes), so a method config cannot make instantiation run
    other code. Only modules of that package are imported to check it."""
    if OmegaConf.is_dict(node):
        target = node.get("_target_")
        if target is not None and class_in(target, RECIPES_PACKAGE, Recipe) is None:
            raise BadInput(f"{where}._target_={target!r}: a method must be a Recipe class in {RECIPES_PACKAGE} "
                           f"(add new recipes to src/soups/recipes/)")
        for key, child in node.items():
            _check_targets(f"{where}.{key}", child)
    elif OmegaConf.is_list(node):
        for i, child in enumerate(node):
            _check_targets(f"{where}[{i}]", child)
