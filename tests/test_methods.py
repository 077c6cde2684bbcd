from soups.recipes import Recipe
from soups.recipes import build_recipes


def test_method_all_selects_and_builds_every_recipe(soup_cfg):
    recipes = build_recipes(soup_cfg("method=all").method)
    assert list(recipes) == ["uniform", "greedy", "greedy_random", "learned", "learned_bylayer", "mehl", "ema", "last_k",
                             "lora_factor_mean", "model_stock", "ties", "dare", "fisher", "regmean", "wise_ft", "ensemble",
                             "greedy_ensemble"]
    assert all(isinstance(recipe, Recipe) for recipe in recipes.values())  # the declared interface
    assert [name for name, recipe in recipes.items() if recipe.needs_init] == ["lora_factor_mean", "model_stock", "ties", "dare",
                                                                                  "wise_ft"]


def test_a_recipes_details_and_tables_cannot_share_a_name_in_soup_json():
    """soup.json holds details, tables and the draws' mean/std side by side: a shared name would silently keep
    only one (dare's `draws` setting was once overwritten by its table of draws)."""
    import pytest

    from soups.recipes import RecipeResult

    assert RecipeResult(None, [], {"draws": 3}, tables={"mask_draws": [{"a": 1}]}).record == \
        {"draws": 3, "mask_draws": [{"a": 1}]}
    with pytest.raises(ValueError, match=r"\['draws'\]"):
        RecipeResult(None, [], {"draws": 3}, tables={"draws": [{"a": 1}]}).record
    with pytest.raises(ValueError, match=r"\['mean'\]"):
        RecipeResult(None, [], {"mean": 1.0}, mean={"test": 2.0}).record
