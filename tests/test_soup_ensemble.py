"""The paper's Section 4 (soups against ensembles, analytically): the approximation's terms by hand, its
exactness on a straight path of logits, its second-order agreement on a bent one, and the analysis end to
end on the tiny sweep, consistent with `pairs` and served by the evaluation cache."""
import math

import pytest
import torch

from conftest import compose_cfg, own_cache
from soups.analyses.soup_ensemble import confidence_term, loss, loss_gap


def test_the_confidence_term_is_the_variance_of_the_logit_change_under_the_soups_softmax():
    soup = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)  # softmax: [1/4, 3/4] and [1/2, 1/2] at beta 1
    change = torch.tensor([[2.0, 6.0], [1.0, 3.0]])
    # row 0: mean 5, variance 1/4 * 9 + 3/4 * 1 = 3; row 1: mean 2, variance 1
    assert confidence_term(soup, change, 1.0) == pytest.approx((3.0 + 1.0) / 2, abs=1e-12)
    # beta 2: row 0 softmax [1/10, 9/10], mean 5.6, variance 0.1 * 3.6^2 + 0.9 * 0.4^2 = 1.44; row 1 unchanged
    assert confidence_term(soup, change, 2.0) == pytest.approx((1.44 + 1.0) / 2, abs=1e-12)
    # the loss is the mean cross-entropy of softmax(beta * logits)
    labels = torch.tensor([1, 0])
    assert loss(soup, labels, 1.0) == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, abs=1e-12)
    assert loss(soup, labels, 2.0) == pytest.approx((-math.log(0.9) - math.log(0.5)) / 2, abs=1e-12)


def _path(f0, f1, bend, alpha):
    """Logits on a path from f0 to f1 bent by `bend`: h(a) = (1-a) f0 + a f1 + a(1-a) bend, so h'' = -2 bend
    and h'(1/2) = f1 - f0 exactly."""
    return (1 - alpha) * f0 + alpha * f1 + alpha * (1 - alpha) * bend


def _pair(seed=0, n=64, classes=5):
    g = torch.Generator().manual_seed(seed)
    f0, f1, bend = (torch.randn(n, classes, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    labels = torch.randint(0, classes, (n,), generator=g)
    bend += 3 * torch.nn.functional.one_hot(labels, classes)  # the soup surer of the label than the ensemble
    return f0, f1, bend, labels


def test_on_a_straight_path_of_logits_the_soup_is_the_ensemble_and_the_approximation_is_zero():
    """Logits linear in the mix: the soup's loss is the ensemble's exactly, and the two terms of the
    approximation cancel (the curvature is then β² E Var[Δf], up to the central difference's error)."""
    f0, f1, bend, labels = _pair()
    alpha, delta = 0.5, 1e-3
    for beta in (0.5, 1.0, 2.0):
        gap = loss_gap(f0, f1, tuple(_path(f0, f1, 0 * bend, a) for a in (alpha - delta, alpha, alpha + delta)),
                       labels, alpha, delta, beta)
        assert gap["observed"] == 0.0
        assert gap["curvature"] == pytest.approx(beta ** 2 * gap["confidence"], rel=1e-5)
        assert abs(gap["predicted"]) < 1e-5 * gap["curvature"]


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_on_a_bent_path_the_approximation_agrees_with_the_observed_gap_to_second_order(beta):
    """The observed gap is first order in the bend s; the approximation's error is second order, so the
    relative error falls ~10x as s does (a wrong constant, sign or β power would leave it of order 1)."""
    f0, f1, bend, labels = _pair(seed=1)
    alpha, delta, errors = 0.5, 1e-4, []
    for s in (1e-1, 1e-2, 1e-3):
        soups = tuple(_path(f0, f1, s * bend, a) for a in (alpha - delta, alpha, alpha + delta))
        gap = loss_gap(f0, f1, soups, labels, alpha, delta, beta)
        assert abs(gap["observed"]) > 1e-2 * s  # first order in s: not a cancellation
        errors.append(abs(gap["predicted"] - gap["observed"]) / abs(gap["observed"]))
    assert errors[1] < 0.005 and errors[2] < errors[1] / 5 and errors[1] < errors[0] / 5
    # without the endpoints' Δf (the loss curvature alone) the approximation is far off
    assert abs(-alpha * (1 - alpha) / 2 * gap["curvature"] - gap["observed"]) > 10 * abs(gap["observed"])


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
def test_with_the_paths_own_slope_the_approximation_converges_at_any_mix(alpha):
    """Off α = ½ the paper's h' ≈ Δf is first-order wrong (its relative error stays put as the bend shrinks);
    the slope the soups themselves give (a central difference, exact on a quadratic path) converges at any α,
    so the factor α(1−α)/2 and the ensemble's orientation (1−α)·first + α·second are tested off the middle."""
    f0, f1, bend, labels = _pair(seed=2)
    delta, errors, paper = 1e-4, [], []
    for s in (1e-1, 1e-2, 1e-3):
        soups = tuple(_path(f0, f1, s * bend, a) for a in (alpha - delta, alpha, alpha + delta))
        gap = loss_gap(f0, f1, soups, labels, alpha, delta, 1.0)
        errors.append(abs(gap["predicted_path"] - gap["observed"]) / abs(gap["observed"]))
        paper.append(abs(gap["predicted"] - gap["observed"]) / abs(gap["observed"]))
    assert errors[1] < 0.005 and errors[2] < errors[1] / 5 and errors[1] < errors[0] / 5
    if alpha == 0.5:
        assert paper == pytest.approx(errors, rel=1e-3, abs=1e-9)  # the two forms agree at the middle
    else:
        assert paper[2] > 0.01 and paper[2] > paper[1] / 2  # a first-order error: it does not shrink


def analyze(sweep, tmp, out, *overrides):
    from soups.jobs.analyze import run_analysis

    cfg = compose_cfg("analyze", tmp, ["logger=none", f"pool.dir={sweep}", *overrides])
    return run_analysis(cfg, out)


def test_soup_ensemble_on_a_sweep_agrees_with_pairs_and_is_served_by_the_cache(tiny_sweep, tmp_path):
    """At α = ½ the soup is the pairs analysis' midpoint (the same weights, so the same cache entry) and the
    ensemble its ensemble: their test accuracies are those pairs reports, and only the soups at α ± δ are
    forwarded (two per pair, on the test set alone); a rerun forwards nothing."""
    tmp, sweep = tiny_sweep
    tmp = own_cache(tmp, tmp_path)
    pairs = analyze(sweep, tmp, tmp_path / "pairs", "analysis=pairs")
    record = analyze(sweep, tmp, tmp_path / "gap", "analysis=soup_ensemble", "analysis.betas=[1,2]")
    by_pair = {(p["a"], p["b"]): p for p in pairs["pairs"]}
    assert len(record["pairs"]) == 3 and record["betas"] == [1.0, 2.0] and record["eval_set"] == "test"
    for p in record["pairs"]:
        midpoint = by_pair[(p["a"], p["b"])]
        assert p["soup_accuracy"] == pytest.approx(midpoint["midpoint"]["test"], abs=1e-9)
        assert p["ensemble_accuracy"] == pytest.approx(midpoint["ensemble"]["test"], abs=1e-9)
        assert p["error_gap"] == pytest.approx(p["ensemble_accuracy"] - p["soup_accuracy"])
        for beta, gap in p["by_beta"].items():
            assert gap["observed"] == pytest.approx(gap["soup_loss"] - gap["ensemble_loss"])
            assert gap["predicted"] == pytest.approx(0.125 * (-gap["curvature"] + float(beta) ** 2 * gap["confidence"]))
            assert gap["predicted_path"] == pytest.approx(
                0.125 * (-gap["curvature"] + float(beta) ** 2 * gap["confidence_path"]))
    assert record["images_forwarded"] == 3 * 2 * record["examples"] > 0
    assert set(record["correlations"]) == {"pearson", "spearman", "pearson/beta=1", "pearson/beta=2", "pearson_path",
                                           "error_spearman"}
    assert record["precision"] == "fp32"
    assert (tmp_path / "gap" / "soup_ensemble.png").stat().st_size > 10_000
    again = analyze(sweep, tmp, tmp_path / "again", "analysis=soup_ensemble", "analysis.betas=[1,2]")
    assert again["images_forwarded"] == 0 and again["pairs"] == record["pairs"]


@pytest.mark.parametrize("args, message", [
    (["analysis.alpha=1"], r"alpha=1.0 \(expected a number in \(0, 1\)\)"),
    (["analysis.delta=0.6"], r"delta=0.6 \(expected a step in \[0.001, min\(alpha, 1 − alpha\)\]"),
    (["analysis.betas=[]"], r"betas=\[\] \(expected a non-empty list of distinct positive numbers"),
    (["analysis.betas=[1,-2]"], r"betas=\[1, -2\]"),
    (["analysis.betas=1"], r"betas=1 "),
    (["analysis.betas=[1,1.0]"], r"betas=\[1, 1.0\] \(expected a non-empty list of distinct positive numbers"),
    (["analysis.delta=1e-4"], r"delta=0.0001 \(expected a step in \[0.001, min\(alpha, 1 − alpha\)\]"),
    (["analysis.alpha=1.5"], r"^analysis: alpha=1.5 \(expected a number in \(0, 1\)\)$"),  # not delta too
    (["analysis.max_ingredients=1"], r"needs at least 2 ingredients; max_ingredients=1 keeps 1 of the pool's 3$"),
    (["analysis.eval_set=imagenet"], r"analysis.eval_set='imagenet': expected one of this pool's sets \(val, test, ")])
def test_bad_settings_are_refused_in_one_line_before_any_evaluation(tiny_sweep, tmp_path, monkeypatch, args, message):
    from soups.errors import BadInput
    from soups.evaluation.scorer import PoolScorer
    from soups.jobs.analyze import run_analysis

    tmp, sweep = tiny_sweep
    monkeypatch.setattr(PoolScorer, "individual_metrics", lambda *a, **k: pytest.fail("evaluation started"))
    cfg = compose_cfg("analyze", tmp_path, ["logger=wandb", f"pool.dir={sweep}", "analysis=soup_ensemble", *args])
    with pytest.raises(BadInput, match=message):
        run_analysis(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_off_the_middle_the_soup_and_the_ensemble_weigh_the_better_model_by_one_minus_alpha(tiny_sweep, tmp_path):
    """α = 0.3: the soup is 0.7·θa + 0.3·θb and the ensemble 0.7·fa + 0.3·fb, a the better on held-out (as
    recomputed here from the pool, through the same scorer); the mirrored mix gives another loss."""
    from soups.analyses.soup_ensemble import loss
    from soups.averaging import interpolate
    from soups.evaluation.scorer import EvalSettings, PoolScorer
    from soups.pools import open_pool
    from soups.settings import SoupSettings, checked

    tmp, sweep = tiny_sweep
    tmp = own_cache(tmp, tmp_path)
    record = analyze(sweep, tmp, tmp_path / "gap", "analysis=soup_ensemble", "analysis.alpha=0.3",
                     "analysis.delta=0.1", "analysis.betas=[1]")
    cfg = checked(compose_cfg("analyze", tmp, ["logger=none", f"pool.dir={sweep}"]), SoupSettings)
    pool = open_pool(cfg, torch.device("cpu"))
    scorer = PoolScorer(pool, EvalSettings.of(cfg), torch.device("cpu"))
    by_name = {i.name: i for i in pool.ingredients}
    pair = record["pairs"][0]
    a, b = by_name[pair["a"]], by_name[pair["b"]]
    assert a.held_out >= b.held_out
    labels = scorer.sets["test"].labels
    fa, fb = (scorer.outcomes({"test": scorer.individual_logits(i)["test"]})["test"][0] for i in (a, b))
    assert pair["by_beta"]["1.0"]["ensemble_loss"] == pytest.approx(loss(0.7 * fa.double() + 0.3 * fb.double(), labels, 1.0), abs=1e-12)
    for mix, same in ((0.3, True), (0.7, False)):
        soup = scorer.soup_logits(interpolate(scorer.load(a), scorer.load(b), mix), new_point=True, names=["test"])
        got = loss(scorer.outcomes(soup)["test"][0], labels, 1.0)
        assert (got == pytest.approx(pair["by_beta"]["1.0"]["soup_loss"], abs=1e-5)) is same


@pytest.fixture(scope="module")
def layernorm_sweep(tmp_path_factory):
    """Two fine-tunes of the tiny LayerNorm ViT (forward-mode autograd cannot pass BN running statistics)."""
    from conftest import TINY
    from soups.jobs.finetune import run_finetune

    tmp = tmp_path_factory.mktemp("vit_sweep")
    sweep = tmp / "logs" / "finetune" / "multiruns" / "2000-01-01_00-00-00_000000"
    for i, lr in enumerate(["1e-3", "3e-3"]):
        run_finetune(compose_cfg("finetune", tmp, [*TINY, "model=tiny_vit", f"lr={lr}", f"seed={i}"]), sweep / str(i))
    return tmp, sweep


def test_the_curvature_and_slope_are_the_derivatives_autograd_gives_along_the_path(layernorm_sweep, tmp_path):
    """The central difference of soups at α ± δ against d²L/dα² by double backward through the network along
    θb − θa, and the path's slope against a jvp of the logits: a check of the approximation's inputs that
    shares no code with the analysis. (Not a jvp of a jvp: torch's nested forward-mode derivative of
    layer_norm is wrong, pytorch/pytorch#196700; here it gave -8.20 where double backward and finite
    differences agree on -7.25.)"""
    from torch.func import functional_call, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from soups.analyses.soup_ensemble import confidence_term
    from soups.evaluation.scorer import EvalSettings, PoolScorer
    from soups.pools import open_pool
    from soups.settings import SoupSettings, checked

    tmp, sweep = layernorm_sweep
    args = ["logger=none", f"pool.dir={sweep}", "analysis=soup_ensemble", "analysis.betas=[1]"]
    record = analyze(sweep, tmp, tmp_path / "gap", *args[2:])
    cfg = checked(compose_cfg("analyze", tmp, args), SoupSettings)
    pool = open_pool(cfg, torch.device("cpu"))
    scorer = PoolScorer(pool, EvalSettings.of(cfg), torch.device("cpu"))
    images, labels = next(scorer.sets["test"].batches(10_000))
    model = scorer.model.eval()
    (pair,) = record["pairs"]
    by_name = {i.name: i for i in pool.ingredients}
    a, b = scorer.load(by_name[pair["a"]]), scorer.load(by_name[pair["b"]])
    moving = {k: b[k] - a[k] for k in a if a[k].is_floating_point()}

    def logits_at(alpha):
        return functional_call(model, {k: a[k] + alpha * moving[k] if k in moving else a[k] for k in a}, (images,))

    alpha = torch.tensor(0.5, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention has no forward-mode derivative
        (slope,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits_at(alpha), labels), alpha,
                                       create_graph=True)
        (curvature,) = torch.autograd.grad(slope, alpha)
        with torch.no_grad():
            soup, logit_slope = jvp(logits_at, (torch.tensor(0.5),), (torch.ones(()),))
    gap = pair["by_beta"]["1.0"]
    assert gap["curvature"] == pytest.approx(float(curvature), rel=2e-2)  # δ = 0.05: ~1% truncation here
    assert gap["confidence_path"] == pytest.approx(confidence_term(soup, logit_slope, 1.0), rel=2e-2)
    assert gap["soup_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(soup, labels)), rel=1e-5)
