"""Output ensembles (the paper's baselines): average the members' logits. Inference costs k forward
passes, where a soup costs one. `ensemble` uses every ingredient; `greedy_ensemble` adds members in
order of held-out accuracy while the ensemble's held-out accuracy does not drop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from soups.recipes import Recipe, RecipeResult
from soups.recipes.greedy import GreedyRecipe, by_held_out, greedy_selection


@dataclass
class LogitEnsemble(Recipe):
    gives_weights: ClassVar[bool] = False

    def __call__(self, ingredients, scorer) -> RecipeResult:
        return RecipeResult(None, list(ingredients), {"inference_cost": len(ingredients)})


@dataclass
class GreedyEnsemble(GreedyRecipe):
    gives_weights: ClassVar[bool] = False

    def __call__(self, ingredients, scorer) -> RecipeResult:
        members = []
        chosen, best, trace = greedy_selection(
            by_held_out(ingredients, self.ties), lambda candidate, _: scorer.ensemble_held_out([*members, candidate]), members.append,
            self.comparator, "greedy ensemble")
        return RecipeResult(None, chosen, {"comparator": self.comparator, "ties": self.ties, "held_out": best,
                                           "inference_cost": len(chosen)}, tables={"trace": trace})
