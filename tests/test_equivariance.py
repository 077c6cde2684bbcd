"""Every init-relative merge moves a tensor by what its fine-tunes moved it, not by their values: a common
shift c of the init and every ingredient (as a BatchNorm running variance of 1 is "shifted" against a weight
near 0) shifts the soup by c and leaves its displacement from the init unchanged. FusionBench 0.2.33's
DARE-TIES fails this on BN statistics: it adds the fine-tunes' running variances themselves to the init's
(about twice the variance; `scripts/peers/buffers.py`, BENCHMARKS.md). The pool is on a dyadic grid, so
the shift is exact in float32 and every trim and sign sees the same task vectors."""
import pytest
import torch

from soups.recipes.dare import Dare
from soups.recipes.model_stock import ModelStock
from soups.recipes.ties import TiesMerging
from soups.recipes.uniform import UniformSoup

K, SHIFT = 4, 2.0


class Pool:
    """The Scorer surface the arithmetic recipes use: the init and the ingredients' weights."""
    aliases = {}

    def __init__(self, init, states):
        self.init, self.states = init, states

    def load_init(self):
        return self.init

    def load(self, i):
        return self.states[i]


def grid(shape, generator, low, high):
    """float32 values k/1024, k uniform in [low, high): exact under a shift by a small integer."""
    return torch.randint(low, high, shape, generator=generator).float() / 1024


def bn_pool(shift=0.0):
    """(init, [K states]): a weight near 0, a BatchNorm running_var near 1 and its counter; `shift` added to
    every float tensor of the init and of every ingredient."""
    g = torch.Generator().manual_seed(0)
    init = {"fc.weight": grid((6, 5), g, -32, 32), "bn.running_var": 1 + grid((6,), g, -16, 16),
            "bn.num_batches_tracked": torch.tensor(0)}
    states = [{"fc.weight": init["fc.weight"] + grid((6, 5), g, -40, 40),
               "bn.running_var": init["bn.running_var"] + grid((6,), g, -120, 200),
               "bn.num_batches_tracked": torch.tensor(100 + i)} for i in range(K)]
    move = lambda s: {k: v + shift if v.is_floating_point() else v for k, v in s.items()}  # noqa: E731
    return move(init), [move(s) for s in states]


RECIPES = {
    "uniform": UniformSoup(),
    "model_stock": ModelStock(),
    "ties per tensor, mean": TiesMerging(density=0.4),
    "ties global, sum, λ 0.5": TiesMerging(density=0.4, scope="global", merge="sum", scale=0.5),
    "dare 1/(1-p), mean": Dare(drop=0.5, draws=1),
    "dare l1, sum, λ 0.3": Dare(drop=0.5, rescale="l1", merge="sum", scale=0.3, draws=1),
    "dare-ties, no rescale, mean": Dare(drop=0.3, rescale="none", sign_election=True, draws=1),
}


def shift_error(recipe) -> float:
    """The largest |soup(pool + c) − c − soup(pool)| over the float tensors."""
    plain = recipe(list(range(K)), Pool(*bn_pool())).weights
    shifted = recipe(list(range(K)), Pool(*bn_pool(SHIFT))).weights
    return max(float((shifted[k].double() - SHIFT - plain[k].double()).abs().max())
               for k in plain if plain[k].is_floating_point())


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_common_shift_of_the_init_and_the_ingredients_shifts_the_soup_by_it(name):
    assert shift_error(RECIPES[name]) < 1e-6
    plain = RECIPES[name](list(range(K)), Pool(*bn_pool())).weights
    assert plain["bn.num_batches_tracked"].dtype == torch.int64  # integer buffers are not averaged as floats


def test_a_merge_of_values_instead_of_displacements_is_caught():
    """The check can fail: DARE-TIES as FusionBench 0.2.33 applies it to buffers (init + the elected mean of
    the fine-tunes' values; drop 0, no trim) is off by about the shift, and by about 1 on running_var itself."""
    class ValuesMerge:
        def __call__(self, ingredients, scorer):
            init, states = scorer.load_init(), [scorer.load(i) for i in ingredients]
            out = dict(init)
            for key, value in init.items():
                if value.is_floating_point():
                    values = torch.stack([s[key] for s in states])
                    sign = torch.where(values.sum(0) >= 0, 1.0, -1.0)
                    agree = torch.sign(values) == sign
                    out[key] = value + (values * agree).sum(0) / agree.sum(0).clamp(min=1)
            return type("Result", (), {"weights": out})()

    assert shift_error(ValuesMerge()) > SHIFT / 2
    init, states = bn_pool()
    values = ValuesMerge()(list(range(K)), Pool(init, states)).weights["bn.running_var"]
    right = Dare(drop=0.0, sign_election=True, draws=1)(list(range(K)), Pool(init, states)).weights["bn.running_var"]
    assert float((values - right).abs().min()) > 0.8  # init 1 counted twice
