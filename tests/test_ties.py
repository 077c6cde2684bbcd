"""TIES-Merging on constructed task vectors: trim per tensor or per model, sign election by the summed mass,
the disjoint mean; and `python src/soup.py method=ties` on a pool with its init."""
import pytest
import torch

from soups.errors import BadInput
from soups.jobs.soup import run_soup
from soups.io.files import load_weights
from soups.recipes.ties import TiesMerging, kept_count


class Pool:
    """The Scorer surface TIES uses: the init and the ingredients' weights."""

    def __init__(self, init, states, aliases=None):
        self.init, self.states, self.aliases = init, states, aliases or {}

    def load_init(self):
        return self.init

    def load(self, i):
        return self.states[i]


INIT = {"a": torch.zeros(4, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64),
        "steps": torch.tensor(7)}
TAUS = [{"a": [4.0, -1.0, 0.5, 0.0], "b": [0.1, -3.0]},
        {"a": [-2.0, 3.0, 0.2, -0.1], "b": [0.2, 0.3]},
        {"a": [-3.0, 0.4, -0.6, 1.0], "b": [-0.4, 0.1]}]
STATES = [{k: INIT[k] + torch.tensor(v, dtype=torch.float64) for k, v in t.items()} | {"steps": torch.tensor(i)}
          for i, t in enumerate(TAUS)]


def merged(**settings):
    return TiesMerging(**settings)(list(range(3)), Pool(INIT, STATES)).weights


def test_a_tied_copy_does_not_count_again_in_the_global_threshold():
    """"a_copy" is "a" registered under a second name (tied): the model has 6 weights, not 10, so the global
    top-k% is taken over 6 and the copy is left for the scorer to set from "a"."""
    tied = lambda state: state | {"a_copy": state["a"]}
    pool = Pool(tied(INIT), [tied(s) for s in STATES], aliases={"a_copy": "a"})
    for scope, density in (("global", 0.3), ("global", 0.6), ("tensor", 0.5)):
        got = TiesMerging(density=density, scope=scope)(list(range(3)), pool).weights
        want = merged(density=density, scope=scope)
        assert all(torch.equal(got[k], want[k]) for k in want), scope
    # counted twice, density 0.3 keeps 3 of 10 entries per model instead of 1 of 6: another merge
    double = TiesMerging(density=0.3, scope="global")(list(range(3)), Pool(tied(INIT), [tied(s) for s in STATES])).weights
    assert kept_count(6, 0.3) == 1 and kept_count(10, 0.3) == 3
    assert not torch.equal(double["b"], merged(density=0.3, scope="global")["b"])


def test_per_tensor_trim_elect_and_disjoint_mean_by_hand():
    got = merged(density=0.5, scope="tensor")
    # a keeps 2 of 4 per model: [4,-1,0,0], [-2,3,0,0], [-3,0,0,1]; sums [-1,2,0,1] elect [-,+,+,+]
    # agreeing entries: [(-2,-3), (-1? no: 3), -, (1)] -> means [-2.5, 3, 0, 1]
    torch.testing.assert_close(got["a"], torch.tensor([-2.5, 3.0, 0.0, 1.0], dtype=torch.float64))
    # b keeps 1 of 2: [0,-3], [0.2,0], [-0.4,0]; sums [-0.2,-3] elect [-,-] -> [-0.4, -3] added to 1
    torch.testing.assert_close(got["b"], torch.tensor([0.6, -2.0], dtype=torch.float64))
    assert got["steps"] == 0  # integer buffers: the first ingredient's
    # entries the merge moves: a's 0, 1 and 3, both of b's
    assert TiesMerging(density=0.5)(list(range(3)), Pool(INIT, STATES)).details["entries_moved"] == 5 / 6


def test_global_trim_counts_every_tensor_of_a_model_and_scale_sum_apply():
    got = merged(density=0.5, scope="global", merge="sum", scale=0.5)
    # 3 of 6 per model: model 0 keeps 4,-1(a),-3(b)... |values| 4,3,1 -> a=[4,-1,0,0], b=[0,-3]
    # model 1: 3,2,0.3 -> a=[-2,3,0,0], b=[0,0.3]; model 2: 3,1,0.6 -> a=[-3,0,-0.6,1], b=[0,0]
    # a sums [-1,2,-0.6,1] -> [-,+,-,+]: sums of agreeing [-5, 3, -0.6, 1]; b sums [0, -2.7] -> [+,-]: [0, -3]
    torch.testing.assert_close(got["a"], 0.5 * torch.tensor([-5.0, 3.0, -0.6, 1.0], dtype=torch.float64))
    torch.testing.assert_close(got["b"], 1 + 0.5 * torch.tensor([0.0, -3.0], dtype=torch.float64))


def test_density_1_without_conflicts_is_the_plain_mean_and_the_sign_election_matters():
    same_sign = [{k: INIT[k] + (i + 1) * torch.ones_like(INIT[k]) for k in ("a", "b")} | {"steps": torch.tensor(0)}
                 for i in range(3)]
    got = TiesMerging(density=1.0)(list(range(3)), Pool(INIT, same_sign)).weights
    torch.testing.assert_close(got["a"], torch.full((4,), 2.0, dtype=torch.float64))
    # the plausible wrong merge, the mean of the trimmed vectors without electing a sign, is another number
    plain = torch.stack([torch.tensor(t["a"], dtype=torch.float64) for t in TAUS]).mean(0)
    assert not torch.allclose(merged(density=1.0)["a"], plain)


def test_kept_count_and_bad_settings():
    assert [kept_count(10, d) for d in (0.05, 0.2, 0.55, 1.0)] == [1, 2, 5, 10]
    with pytest.raises(BadInput, match="density"):
        TiesMerging(density=0.0)
    with pytest.raises(BadInput, match="^scope='layer'; expected"):  # names only the wrong setting
        TiesMerging(scope="layer")
    with pytest.raises(BadInput, match="scale=nan"):
        TiesMerging(scale=float("nan"))


def test_soup_py_method_ties_runs_on_a_pool_with_its_init(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=ties"), tmp_path / "soup")
    assert rows[-1]["row"] == "ties soup" and 0 < rows[-1]["metrics"]["val"] <= 100
    assert load_weights(tmp_path / "soup" / "ties" / "model.safetensors")
