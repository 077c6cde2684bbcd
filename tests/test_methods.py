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
