import math
from pathlib import Path

import pytest
import torch

from soups.pools.ingredient import Ingredient
from soups.recipes.model_stock import ModelStock


class Weights:
    def __init__(self, init, states, aliases=None):
        self.init, self.states, self.aliases = init, states, aliases or {}

    def load_init(self):
        return self.init

    def load(self, ingredient):
        return self.states[ingredient.name]


def pool(*names):
    return [Ingredient(n, Path(n), {"metrics": {"val": 0.0}}) for n in names]


def test_a_tied_copy_takes_its_first_names_ratio_and_is_not_averaged_again():
    init = {"w": torch.zeros(2), "w_copy": torch.zeros(2), "v": torch.zeros(2)}
    a = {"w": torch.tensor([1.0, 0.0]), "v": torch.tensor([1.0, 1.0])}
    b = {"w": torch.tensor([1.0, 1.0]), "v": torch.tensor([-1.0, 1.0])}
    tied = ModelStock()(pool("a", "b"), Weights(init, {"a": a | {"w_copy": a["w"]}, "b": b | {"w_copy": b["w"]}},
                                                   aliases={"w_copy": "w"}))
    alone = ModelStock()(pool("a", "b"), Weights({"w": init["w"], "v": init["v"]}, {"a": a, "b": b}))
    assert tied.details["ratios"] == alone.details["ratios"] and tied.details["mean_ratio"] == alone.details["mean_ratio"]
    assert torch.equal(tied.weights["w_copy"], alone.weights["w"]) and torch.equal(tied.weights["w"], alone.weights["w"])


def test_two_models_match_the_hand_computation():
    init = {"w": torch.zeros(2), "steps": torch.tensor(5)}
    states = {"a": {"w": torch.tensor([1.0, 0.0]), "steps": torch.tensor(7)},
              "b": {"w": torch.tensor([1.0, 1.0]), "steps": torch.tensor(9)}}
    result = ModelStock()(pool("a", "b"), Weights(init, states))
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (cos + 1)
    assert result.weights["w"].tolist() == pytest.approx([t * 1.0, t * 0.5])
    assert result.weights["steps"].item() == 7  # integer buffers from the first ingredient
    assert result.record["ratios"]["w"] == pytest.approx(t)


def test_orthogonal_displacements_fall_back_to_the_init_and_parallel_ones_to_the_mean():
    init = {"w": torch.tensor([1.0, 1.0])}
    orthogonal = {"a": {"w": torch.tensor([2.0, 1.0])}, "b": {"w": torch.tensor([1.0, 2.0])}}
    assert ModelStock()(pool("a", "b"), Weights(init, orthogonal)).weights["w"].tolist() == pytest.approx([1.0, 1.0])
    parallel = {"a": {"w": torch.tensor([2.0, 2.0])}, "b": {"w": torch.tensor([3.0, 3.0])}}
    assert ModelStock()(pool("a", "b"), Weights(init, parallel)).weights["w"].tolist() == pytest.approx([2.5, 2.5])


def test_k_models_use_the_mean_pairwise_cosine():
    torch.manual_seed(0)
    init = {"w": torch.randn(6, dtype=torch.float64)}
    states = {n: {"w": init["w"] + torch.randn(6, dtype=torch.float64)} for n in "abcd"}
    result = ModelStock()(pool(*"abcd"), Weights(init, states))
    ds = [states[n]["w"] - init["w"] for n in "abcd"]
    cos = sum(torch.nn.functional.cosine_similarity(ds[i], ds[j], dim=0).item()
              for i in range(4) for j in range(i + 1, 4)) / 6
    t = 4 * cos / (3 * cos + 1)
    mean = sum(states[n]["w"] for n in "abcd") / 4
    assert torch.allclose(result.weights["w"], t * mean + (1 - t) * init["w"])


def test_a_tensor_an_ingredient_did_not_move_has_cosine_0_with_the_others_as_in_mergekit():
    # mergekit's model_stock: cos of a zero offset with any other is 0 (its norm product is clamped), the mean
    # over all pairs. Counting the zero offset as a unit vector gave t = -2 here: the step of b reversed.
    init = {"w": torch.tensor([1.0, 1.0]), "v": torch.tensor([0.0, 0.0])}
    states = {"a": {"w": torch.tensor([1.0, 1.0]), "v": torch.tensor([1.0, 0.0])},  # w not moved
              "b": {"w": torch.tensor([2.0, 1.0]), "v": torch.tensor([2.0, 0.0])}}
    result = ModelStock()(pool("a", "b"), Weights(init, states))
    assert result.record["ratios"]["w"] == 0.0 and result.weights["w"].tolist() == [1.0, 1.0]  # t = 0: the init
    assert result.record["ratios"]["v"] == pytest.approx(1.0)  # parallel: the mean
    three = dict(states, c={"w": torch.tensor([3.0, 1.0]), "v": torch.tensor([0.0, 1.0])})
    result = ModelStock()(pool("a", "b", "c"), Weights(init, three))
    cos = (1 + 0 + 0) / 3  # b, c parallel; a's zero offset: 0 with each
    assert result.record["ratios"]["w"] == pytest.approx(3 * cos / (1 + 2 * cos))  # 0.6
    assert result.weights["w"].tolist() == pytest.approx([1 + 0.6 * 1.0, 1.0])


def test_one_ingredient_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        ModelStock()(pool("a"), Weights({"w": torch.zeros(1)}, {"a": {"w": torch.ones(1)}}))
