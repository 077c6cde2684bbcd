from pathlib import Path

import pytest
import torch

from soups.pools.ingredient import Ingredient
from soups.averaging import interpolate
from soups.recipes.wise_ft import WiseFT


class Curve:
    """'Accuracy' peaks where the weight equals 0.7; records what it was asked."""

    def __init__(self):
        self.init = {"w": torch.tensor([0.0]), "n": torch.tensor(1)}
        self.tuned = {"a": {"w": torch.tensor([1.0]), "n": torch.tensor(3)}, "b": {"w": torch.tensor([2.0]),
                                                                              "n": torch.tensor(4)}}
        self.calls = []

    def load_init(self):
        return self.init

    def load(self, ingredient):
        return self.tuned[ingredient.name]

    def evaluate(self, state, new_point):
        self.calls.append(new_point)
        score = 100 - 50 * abs(state["w"].item() - 0.7)
        return {"val": score, "test": score, "avg_shifts": score}


def pool():
    return [Ingredient("a", Path("a"), {"metrics": {"val": 90.0}}), Ingredient("b", Path("b"), {"metrics": {"val": 80.0}})]


def test_interpolation_is_exact_and_keeps_integer_buffers():
    out = interpolate({"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(1)},
                      {"w": torch.tensor([1.0, 4.0]), "n": torch.tensor(3)}, 0.25)
    assert out["w"].tolist() == [0.25, 2.5] and out["n"].item() == 3


def test_curve_over_alphas_and_choice_on_held_out():
    ctx = Curve()
    result = WiseFT()(pool(), ctx)  # base = best individual = "a"
    assert [p["alpha"] for p in result.record["curve"]] == pytest.approx([0.1 * i for i in range(11)])
    assert result.record["alpha"] == pytest.approx(0.7) and result.record["base"] == "a"
    assert result.weights["w"].item() == pytest.approx(0.7)
    assert ctx.calls[0] is False and ctx.calls[-1] is False and all(ctx.calls[1:-1])  # endpoints are not averages
    assert WiseFT(alphas=[0.5, 1.0], base="b")(pool(), Curve()).record["alpha"] == 0.5


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="alphas"):
        WiseFT(alphas=[])
    with pytest.raises(ValueError, match="not in the pool"):
        WiseFT(base="zzz")(pool(), Curve())
