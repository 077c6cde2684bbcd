"""Greedy soup on constructed cases: each ingredient is one number, a soup's 'held-out accuracy' is a
known function of the average, so every decision can be checked by hand."""
from pathlib import Path

import pytest
import torch

from soups.pool import Ingredient
from soups.recipes.greedy import GreedySoup
from soups.recipes.uniform import UniformSoup


class ScalarScorer:
    def __init__(self, values, score):
        self.values, self.score, self.calls = values, score, 0

    def load(self, ingredient):
        return {"x": torch.tensor([self.values[ingredient.name]], dtype=torch.float64)}

    def held_out(self, state):
        self.calls += 1
        return self.score(state["x"].item())


def ingredient(name, held_out):
    return Ingredient(name, Path(name) / "model.safetensors", {"metrics": {"val": held_out}})


def names(result):
    return [i.name for i in result.ingredients]


def test_ranks_by_held_out_and_rejects_a_bad_ingredient():
    # soup accuracy peaks when the average is near 1.0; "bad" drags the average far away
    pool = [ingredient("c", 80.0), ingredient("bad", 70.0), ingredient("a", 90.0), ingredient("b", 85.0)]
    scorer = ScalarScorer({"a": 1.2, "b": 0.8, "c": 1.0, "bad": 10.0}, lambda x: 100 - 10 * abs(x - 1.0))
    result = GreedySoup()(pool, scorer)
    assert names(result) == ["a", "b", "c"]
    assert [t["run"].split("/")[-1] for t in result.record["trace"]] == ["a", "b", "c", "bad"]
    assert [t["accepted"] for t in result.record["trace"]] == [True, True, True, False]
    assert result.state["x"].item() == pytest.approx(1.0)
    assert scorer.calls == 3  # one evaluation per candidate after the first


def test_tie_is_accepted_by_paper_comparator_and_rejected_by_released_code_comparator():
    pool = [ingredient("a", 90.0), ingredient("b", 80.0)]
    flat = ScalarScorer({"a": 1.0, "b": 3.0}, lambda x: 90.0)  # the average scores exactly the same
    assert names(GreedySoup(comparator=">=")(pool, flat)) == ["a", "b"]
    assert names(GreedySoup(comparator=">")(pool, flat)) == ["a"]


def test_ties_in_ranking_keep_pool_order():
    pool = [ingredient("first", 90.0), ingredient("second", 90.0)]
    result = GreedySoup()(pool, ScalarScorer({"first": 1.0, "second": 2.0}, lambda x: 0.0))
    assert names(result) == ["first"]
    assert result.record["trace"][1]["run"].endswith("second")


def test_greedy_compares_against_the_running_soup_not_the_first_model():
    # b raises the soup to 95; c would give 92 (> a's 90 but < 95): rejected
    scores = {1.0: 90.0, 1.5: 95.0, (1.0 + 2.0 + 0.0) / 3: 92.0}
    pool = [ingredient("a", 90.0), ingredient("b", 85.0), ingredient("c", 84.0)]
    scorer = ScalarScorer({"a": 1.0, "b": 2.0, "c": 0.0}, lambda x: scores[round(x, 6)])
    result = GreedySoup()(pool, scorer)
    assert names(result) == ["a", "b"]
    assert result.record["held_out"] == 95.0


def test_unknown_comparator_is_refused_at_construction():
    with pytest.raises(ValueError, match="comparator"):
        GreedySoup(comparator="=>")


def test_uniform_soup_averages_every_ingredient():
    pool = [ingredient("a", 1.0), ingredient("b", 2.0), ingredient("c", 3.0)]
    result = UniformSoup()(pool, ScalarScorer({"a": 1.0, "b": 2.0, "c": 6.0}, lambda x: 0.0))
    assert result.state["x"].item() == pytest.approx(3.0)
    assert len(result.ingredients) == 3
