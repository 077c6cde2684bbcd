"""DARE (drop and rescale) on constructed task vectors: the three rescales by hand, p = 0 is the recipe it
starts from (uniform soup, task arithmetic, TIES at density 1), the masks are seeded per tensor and unbiased
under the paper's rescale, draws are reported as mean ± std; and `python src/soup.py method=dare`."""
import json
import statistics

import pytest
import torch

from soups.errors import BadInput
from soups.jobs.soup import run_soup
from soups.recipes.dare import Dare, drop_and_rescale, drop_mask
from soups.recipes.ties import TiesMerging

from test_ties import INIT, STATES, TAUS  # three constructed task vectors of two tensors and an integer buffer


class Pool:
    """The Scorer surface DARE uses: the init, the ingredients' weights and, for draws, an evaluation whose
    held-out accuracy is the merged a[0] (so the best draw is known) and test = 10 × a[1]."""

    def __init__(self, init=INIT, states=STATES, aliases=None):
        self.init, self.states, self.aliases, self.evaluated = init, states, aliases or {}, []

    def load_init(self):
        return self.init

    def load(self, i):
        return self.states[i]

    def evaluate(self, state, new_point):
        self.evaluated.append(new_point)
        return {"val": float(state["a"][0]), "test": 10 * float(state["a"][1])}


def by_hand(drop, rescale, merge, scale=1.0, draw=0, seed=0):
    """The merge written out entry by entry from the masks the recipe draws (no sign election)."""
    out = {}
    for key in ("a", "b"):
        taus = [torch.tensor(t[key], dtype=torch.float64) for t in TAUS]
        dropped = []
        for i, tau in enumerate(taus):
            keep = drop_mask(tau.shape, drop, seed, draw, i, key)
            kept = tau * keep
            r = {"inverse": 1 / (1 - drop), "none": 1.0,
                 "l1": float(tau.abs().sum() / kept.abs().sum()) if kept.abs().sum() > 0 else 1.0}[rescale]
            dropped.append(r * kept)
        total = sum(dropped)
        out[key] = INIT[key] + scale * (total / 3 if merge == "mean" else total)
    return out


def test_the_three_rescales_by_hand():
    tau = torch.tensor([2.0, -1.0, 4.0, 0.5], dtype=torch.float64)
    keep = torch.tensor([True, False, True, False])
    torch.testing.assert_close(drop_and_rescale(tau, keep, 0.75, "inverse"), torch.tensor([8.0, 0, 16.0, 0], dtype=torch.float64))
    # l1: |τ|₁ = 7.5, kept |τ|₁ = 6 -> × 1.25 (mergekit's dare_*), whatever p says
    torch.testing.assert_close(drop_and_rescale(tau, keep, 0.75, "l1"), torch.tensor([2.5, 0, 5.0, 0], dtype=torch.float64))
    torch.testing.assert_close(drop_and_rescale(tau, keep, 0.75, "none"), torch.tensor([2.0, 0, 4.0, 0], dtype=torch.float64))
    nothing = torch.zeros(4, dtype=torch.bool)  # every entry dropped: zeros, not 0/0
    assert torch.equal(drop_and_rescale(tau, nothing, 0.5, "l1"), torch.zeros(4, dtype=torch.float64))
    # as mergekit: no L1 rescale where either norm is below 1e-7 (a tensor that barely moved)
    tiny = tau * 1e-8  # |τ|₁ = 7.5e-8
    torch.testing.assert_close(drop_and_rescale(tiny, keep, 0.75, "l1"), tiny * keep, rtol=0, atol=0)
    torch.testing.assert_close(drop_and_rescale(tau * 2e-8, keep, 0.75, "l1"), tau * 2e-8 * keep * 1.25)


@pytest.mark.parametrize("drop,rescale,merge,scale", [(0.5, "inverse", "mean", 1.0), (0.5, "inverse", "sum", 0.3),
                                                      (0.3, "l1", "mean", 1.0), (0.3, "l1", "sum", 0.5),
                                                      (0.6, "none", "mean", 2.0), (0.6, "none", "sum", 1.0)])
def test_one_draw_is_the_merge_written_out_from_its_masks(drop, rescale, merge, scale):
    result = Dare(drop=drop, rescale=rescale, merge=merge, scale=scale, draws=1)(list(range(3)), Pool())
    want = by_hand(drop, rescale, merge, scale)
    for key in ("a", "b"):
        torch.testing.assert_close(result.weights[key], want[key], rtol=0, atol=1e-12)
    assert result.weights["steps"] == 0 and result.is_new_point  # integer buffers: the first ingredient's
    survived = sum(int(drop_mask(torch.Size([len(t[k])]), drop, 0, 0, i, k).sum()) for i, t in enumerate(TAUS) for k in t)
    assert result.details["entries_kept"] == survived / 18


def test_drop_0_is_the_recipe_it_starts_from():
    mean = Dare(drop=0.0, draws=1)(list(range(3)), Pool()).weights
    for key in ("a", "b"):  # the uniform soup
        torch.testing.assert_close(mean[key], sum(s[key] for s in STATES) / 3, rtol=0, atol=1e-12)
    summed = Dare(drop=0.0, merge="sum", scale=0.4, draws=1)(list(range(3)), Pool()).weights
    for key in ("a", "b"):  # task arithmetic: init + λ Σ τᵢ
        torch.testing.assert_close(summed[key], INIT[key] + 0.4 * sum(s[key] - INIT[key] for s in STATES), rtol=0, atol=1e-12)
    for merge in ("mean", "sum"):  # DARE-TIES without dropping: TIES keeping every entry
        dare = Dare(drop=0.0, merge=merge, sign_election=True, draws=1)(list(range(3)), Pool()).weights
        ties = TiesMerging(density=1.0, merge=merge)(list(range(3)), Pool()).weights
        assert all(torch.equal(dare[k], ties[k]) for k in ("a", "b")), merge


@pytest.mark.parametrize("rescale,merge", [("inverse", "mean"), ("l1", "sum")])
def test_dare_ties_elects_the_sign_of_the_dropped_vectors(rescale, merge):
    """The election recomputed from the recipe's own masks: γ = sign of the summed dropped vectors, then the
    mean (or sum) of the dropped entries that agree with it."""
    got = Dare(drop=0.5, rescale=rescale, merge=merge, sign_election=True, draws=1, seed=0)(list(range(3)), Pool()).weights
    differs = []  # without the election the merge is another number (on some tensor)
    for key in ("a", "b"):
        dropped = torch.stack([drop_and_rescale(torch.tensor(t[key], dtype=torch.float64),
                                                drop_mask(torch.Size([len(t[key])]), 0.5, 0, 0, i, key), 0.5, rescale)
                               for i, t in enumerate(TAUS)])
        gamma = torch.where(dropped.sum(0) >= 0, 1.0, -1.0).double()
        agree = torch.sign(dropped) == gamma
        summed = (dropped * agree).sum(0)
        want = INIT[key] + (summed / agree.sum(0).clamp_min(1) if merge == "mean" else summed)
        torch.testing.assert_close(got[key], want, rtol=0, atol=1e-12)
        plain = dropped.mean(0) if merge == "mean" else dropped.sum(0)
        differs.append(not torch.allclose(want, INIT[key] + plain))
    assert any(differs)


def test_under_the_election_the_mean_of_rescaled_survivors_takes_a_1_over_1_minus_p_step():
    """K copies of one task vector τ: the disjoint mean of the survivors, each τ/(1−p), is τ/(1−p) wherever one
    survived (2τ at p = 0.5); without the rescale it is τ, TIES' step."""
    same = [STATES[0] | {"steps": torch.tensor(i)} for i in range(8)]
    tau = {k: STATES[0][k] - INIT[k] for k in ("a", "b")}
    doubled = Dare(drop=0.5, sign_election=True, draws=1)(list(range(8)), Pool(INIT, same)).weights
    kept = Dare(drop=0.5, sign_election=True, rescale="none", draws=1)(list(range(8)), Pool(INIT, same)).weights
    for k in ("a", "b"):
        survived = sum(drop_mask(tau[k].shape, 0.5, 0, 0, i, k) for i in range(8)) > 0
        torch.testing.assert_close(doubled[k], INIT[k] + 2 * tau[k] * survived, rtol=0, atol=1e-12)
        torch.testing.assert_close(kept[k], INIT[k] + tau[k] * survived, rtol=0, atol=1e-12)


def test_masks_are_seeded_per_tensor_keep_1_minus_p_and_the_inverse_rescale_is_unbiased():
    shape = torch.Size([200, 50])
    m = drop_mask(shape, 0.9, seed=0, draw=0, index=1, key="w")
    assert torch.equal(m, drop_mask(shape, 0.9, 0, 0, 1, "w"))  # the same tensor's mask whatever else is drawn
    assert not torch.equal(m, drop_mask(shape, 0.9, 0, 1, 1, "w"))  # another draw,
    assert not torch.equal(m, drop_mask(shape, 0.9, 0, 0, 2, "w"))  # another ingredient,
    assert not torch.equal(m, drop_mask(shape, 0.9, 1, 0, 1, "w"))  # another seed: other masks
    n, kept = m.numel(), int(m.sum())  # binomial(10,000, 0.1): sd 30
    assert abs(kept - 0.1 * n) < 5 * (n * 0.1 * 0.9) ** 0.5
    assert bool(drop_mask(shape, 0.0, 0, 0, 0, "w").all())  # p = 0 keeps everything
    # E[τ̂] = τ under 1/(1 − p): the mean over 4,000 draws within 5 standard errors, entry by entry
    tau = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    draws = torch.stack([drop_and_rescale(tau, drop_mask(tau.shape, 0.5, 0, d, 0, "t"), 0.5, "inverse")
                         for d in range(4000)])
    se = tau.abs() / 4000 ** 0.5  # sd of τ̂ = |τ| √(p/(1−p)) = |τ| at p = 0.5
    assert bool(((draws.mean(0) - tau).abs() < 5 * se).all())


def test_draws_are_reported_as_mean_and_std_and_the_saved_weights_are_the_best_on_held_out():
    pool = Pool()
    result = Dare(drop=0.5, draws=4)(list(range(3)), pool)
    rows = result.tables["mask_draws"]
    assert [r["draw"] for r in rows] == [0, 1, 2, 3] and pool.evaluated == [True] * 4
    for r, draw in zip(rows, range(4)):  # each row is that draw's own merge
        one = Dare(drop=0.5, draws=1).merged(list(range(3)), pool, draw)[0]
        assert r["val"] == float(one["a"][0]) and r["test"] == 10 * float(one["a"][1])
    best = max(range(4), key=lambda d: rows[d]["val"])
    assert result.details["saved_draw"] == best and float(result.weights["a"][0]) == rows[best]["val"]
    assert [r["saved"] for r in rows] == [d == best for d in range(4)]
    assert result.mean == {c: statistics.fmean(r[c] for r in rows) for c in ("val", "test")}
    assert result.std == {c: statistics.pstdev([r[c] for r in rows]) for c in ("val", "test")}
    assert all(0 < r["entries_kept"] < 1 for r in rows)


def test_of_draws_equal_on_held_out_the_first_is_saved():
    class Flat(Pool):
        def evaluate(self, state, new_point):
            return {"val": 50.0, "test": float(state["a"][1])}
    result = Dare(drop=0.5, draws=3)(list(range(3)), Flat())
    first = Dare(drop=0.5, draws=1).merged(list(range(3)), Flat(), 0)[0]
    assert result.details["saved_draw"] == 0 and all(torch.equal(result.weights[k], first[k]) for k in first)


def test_a_tied_copy_is_dropped_once_and_follows_its_first_name():
    tied = lambda state: state | {"a_copy": state["a"]}
    pool = Pool(tied(INIT), [tied(s) for s in STATES], aliases={"a_copy": "a"})
    got = Dare(drop=0.5, draws=1)(list(range(3)), pool)
    want = Dare(drop=0.5, draws=1)(list(range(3)), Pool())
    assert torch.equal(got.weights["a"], want.weights["a"])
    assert torch.equal(got.weights["a_copy"], STATES[0]["a"])  # left for the scorer to tie to "a"
    assert got.details["entries_kept"] == want.details["entries_kept"]  # its entries counted once


@pytest.mark.parametrize("settings,match", [({"drop": 1.0}, "drop=1.0"), ({"drop": -0.1}, "drop=-0.1"),
                                            ({"rescale": "l2"}, "^rescale='l2'; expected"),
                                            ({"merge": "max"}, "^merge='max'"), ({"draws": 0}, "draws=0"),
                                            ({"scale": float("inf")}, "scale=inf")])
def test_bad_settings_are_refused_naming_the_setting(settings, match):
    with pytest.raises(BadInput, match=match):
        Dare(**settings)


def test_soup_py_method_dare_runs_on_a_pool_with_its_init(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=dare", "method.dare.draws=2"), tmp_path / "soup")
    row = rows[-1]
    assert row["row"] == "dare soup" and 0 < row["metrics"]["val"] <= 100
    record = json.loads((tmp_path / "soup" / "dare" / "soup.json").read_text())
    assert record["draws"] == 2  # the setting, beside the table of the draws
    assert [d["draw"] for d in record["mask_draws"]] == [0, 1] and record["saved_draw"] in (0, 1)
    assert [d["saved"] for d in record["mask_draws"]] == [d == record["saved_draw"] for d in (0, 1)]
    assert record["mean"]["val"] == pytest.approx(statistics.fmean(d["val"] for d in record["mask_draws"]))
    report = (tmp_path / "soup" / "report.md").read_text()
    assert "## dare soup" in report and "| draw | saved | entries_kept | held-out | test |" in report  # not `val`


def test_a_negative_bn_variance_without_recalibration_is_refused_not_evaluated(tiny_sweep, soup_cfg, tmp_path):
    """Task vectors rescaled 10× and summed push some BN running variances of the tiny EfficientNet below 0; with
    BN statistics used as given its outputs would be NaN and its accuracies silently meaningless."""
    _, sweep = tiny_sweep
    cfg = soup_cfg(f"pool.dir={sweep}", "method=dare", "method.dare.drop=0.9", "method.dare.merge=sum",
                   "method.dare.draws=1", "bn_recalibration=false")
    with pytest.raises(BadInput, match="negative BatchNorm running variance .*running_var.*bn_recalibration=auto"):
        run_soup(cfg, tmp_path / "soup")
