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


def test_equal_held_out_points_choose_the_smallest_alpha_in_whatever_order_alphas_are_given():
    """A flat top (0.7 to 1 score alike on held-out, as on the EfficientNet demo pool): the point nearest the
    init is chosen, and the curve runs in alpha order with each point once."""

    class Flat(Curve):
        def evaluate(self, state, new_point):
            score = 100.0 if state["w"].item() > 0.65 else 50.0
            return {"val": score, "test": score, "avg_shifts": score}

    result = WiseFT(alphas=[1.0, 0.8, 0.5, 0.7, 1.0])(pool(), Flat())
    assert [p["alpha"] for p in result.record["curve"]] == [0.5, 0.7, 0.8, 1.0]
    assert result.record["alpha"] == 0.7 and result.weights["w"].item() == pytest.approx(0.7)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="alphas"):
        WiseFT(alphas=[])
    with pytest.raises(ValueError, match="not in the pool"):
        WiseFT(base="zzz")(pool(), Curve())


def test_wise_ft_of_the_uniform_soup_and_of_an_ingredient_by_its_label():
    ctx = Curve()
    result = WiseFT(base="uniform")(pool(), ctx)  # theta_ft = (1 + 2) / 2 = 1.5; the best alpha on the grid: 0.5
    assert result.record["base"] == "uniform" and [i.name for i in result.ingredients] == ["a", "b"]
    assert result.record["alpha"] == pytest.approx(0.5) and result.weights["w"].item() == pytest.approx(0.75)
    assert ctx.calls[0] is False and ctx.calls[-1] is True  # alpha 1 is the soup: a new point (BN recomputed)
    labelled = pool()
    labelled[1].short_name = "fine-tune 1"
    assert WiseFT(alphas=[0.5], base="fine-tune 1")(labelled, Curve()).record["base"] == "b"


def test_wise_ft_of_the_greedy_soup_through_soup_py(tiny_sweep, tmp_path):
    from conftest import compose_cfg, own_cache
    from soups.errors import BadInput
    from soups.jobs.soup import run_soup

    sweep_tmp, sweep = tiny_sweep
    base = own_cache(sweep_tmp, tmp_path)
    cfg = compose_cfg("soup", base, ["logger=none", "eval_batch_size=128", f"pool.dir={sweep}",
                                     "method=[greedy,wise_ft]", "method.wise_ft.base=greedy",
                                     "method.wise_ft.alphas=[0.5,1.0]"])
    rows = {r["row"]: r for r in run_soup(cfg, tmp_path / "out")}
    greedy, wise = rows["greedy soup"], rows["wise_ft soup"]
    assert wise["ingredients"] == greedy["ingredients"]
    import json
    curve = json.loads((tmp_path / "out" / "wise_ft" / "soup.json").read_text())["curve"]
    assert curve[-1]["alpha"] == 1.0 and curve[-1]["test"] == greedy["metrics"]["test"]  # alpha 1: the greedy soup
    bad = compose_cfg("soup", base, ["logger=none", f"pool.dir={sweep}", "method=[uniform,wise_ft]",
                                     "method.wise_ft.base=nope"])
    with pytest.raises(BadInput, match="is not in the pool"):
        run_soup(bad, tmp_path / "bad")
    assert not (tmp_path / "bad" / "uniform").exists()  # refused before the first recipe ran


def test_wise_ft_of_another_recipes_result_and_the_order_it_needs(tiny_sweep, tmp_path):
    import json

    from conftest import compose_cfg, own_cache
    from soups.errors import BadInput
    from soups.jobs.soup import run_soup

    sweep_tmp, sweep = tiny_sweep
    base = own_cache(sweep_tmp, tmp_path)
    common = ["logger=none", "eval_batch_size=128", f"pool.dir={sweep}", "method.wise_ft.base=model_stock",
              "method.wise_ft.alphas=[0.5,1.0]"]
    rows = {r["row"]: r for r in run_soup(compose_cfg("soup", base, [*common, "method=[model_stock,wise_ft]"]),
                                          tmp_path / "out")}
    record = json.loads((tmp_path / "out" / "wise_ft" / "soup.json").read_text())
    assert record["base"] == "model_stock" and record["curve"][-1]["alpha"] == 1.0
    assert record["curve"][-1]["test"] == rows["model_stock soup"]["metrics"]["test"]  # alpha 1: that recipe's soup
    with pytest.raises(BadInput, match="runs after wise_ft: list it first"):  # refused before any evaluation
        run_soup(compose_cfg("soup", base, [*common, "method=[wise_ft,model_stock]"]), tmp_path / "bad")
    assert not (tmp_path / "bad" / "wise_ft").exists()
    with pytest.raises(BadInput, match="'ensemble' gives no weights"):
        run_soup(compose_cfg("soup", base, [*common, "method=[ensemble,wise_ft]", "method.wise_ft.base=ensemble"]),
                 tmp_path / "bad2")
    assert not (tmp_path / "bad2" / "ensemble").exists()


def test_task_arithmetic_is_wise_ft_of_the_uniform_soup_at_alpha_lambda_k_beyond_1_too():
    """Task arithmetic from one init, θ₀ + λ Σᵢ τᵢ (Ilharco et al., 2023), is WiSE-FT of the uniform soup at
    α = λK: here K = 2, τ = 1 and 2, so the point is 3λ; α > 1 extrapolates past the soup."""
    for lam in (0.2, 0.7):
        result = WiseFT(alphas=[2 * lam], base="uniform")(pool(), Curve())
        assert result.weights["w"].item() == pytest.approx(3 * lam) and result.is_new_point
    ctx = Curve()  # 'accuracy' peaks at 0.7: λ = 0.25 (α = 0.5, w = 0.75) beats λ = 0.2 and λ = 0.7 (w = 2.1)
    assert WiseFT(alphas=[0.4, 0.5, 1.4], base="uniform")(pool(), ctx).record["alpha"] == 0.5 and all(ctx.calls)
