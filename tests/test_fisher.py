"""Fisher merging: the exact diagonal Fisher against its closed form for a softmax-linear model (and the
squared-gradient-of-a-sum shortcut shown to be another quantity), the sampled estimator converging to it,
the weighted mean on constructed cases, and `python src/soup.py method=fisher` on the tiny sweep."""
import shutil

import pytest
import torch

from conftest import compose_cfg, own_cache
from soups.errors import BadInput
from soups.recipes.fisher import FisherSoup, diagonal_fisher, fisher_average


def linear_case(n=6, d=3, k=4):
    torch.manual_seed(0)
    model = torch.nn.Linear(d, k)
    x = torch.randn(n, d)
    return model, x


def test_the_exact_estimator_is_the_closed_form_fisher_of_a_softmax_linear_model():
    # logits z = Wx + b: d log p_c / d W_kj = (1[k=c] - p_k) x_j, so
    # F_W[k, j] = mean_x sum_c p_c (1[k=c] - p_k)^2 x_j^2 = mean_x p_k (1 - p_k) x_j^2, F_b[k] = mean_x p_k (1 - p_k)
    model, x = linear_case()
    got = diagonal_fisher(model, [(x, torch.zeros(len(x)))], examples=len(x))
    p = torch.softmax(model(x), dim=-1).detach()
    v = p * (1 - p)  # [n, k]
    torch.testing.assert_close(got["weight"], (v.unsqueeze(2) * x.pow(2).unsqueeze(1)).mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["bias"], v.mean(0), atol=1e-6, rtol=1e-5)
    # the squared gradient of the summed log-likelihood (over examples and classes) is another number
    model.zero_grad()
    torch.log_softmax(model(x), dim=-1).sum().backward()
    shortcut = model.bias.grad.pow(2) / len(x)
    assert not torch.allclose(shortcut, got["bias"], rtol=0.1)


def test_the_sampled_estimator_converges_to_the_exact_one():
    model, x = linear_case(n=1)
    exact = diagonal_fisher(model, [(x, None)], examples=1)
    many = torch.cat([x] * 4000)
    sampled = diagonal_fisher(model, [(many, None)], examples=len(many), estimator="sampled", seed=1)
    torch.testing.assert_close(sampled["bias"], exact["bias"], atol=0.01, rtol=0.05)


def test_the_fisher_weighted_mean_on_constructed_cases():
    a, b = {"w": torch.tensor([0.0, 0.0, 0.0]), "n": torch.tensor(3)}, {"w": torch.tensor([1.0, 1.0, 1.0]), "n": torch.tensor(7)}
    fa, fb = {"w": torch.tensor([3.0, 0.0, 0.0])}, {"w": torch.tensor([1.0, 0.0, 2.0])}
    got = fisher_average([a, b], [fa, fb], floor=1e-6)
    # (3*0 + 1*1)/4 = 0.25; no Fisher anywhere: the uniform mean 0.5; (0*0 + 2*1)/2 = 1 (up to the floor)
    torch.testing.assert_close(got["w"], torch.tensor([0.25, 0.5, 1.0]), atol=1e-6, rtol=0)
    assert int(got["n"]) == 3  # non-float tensors from the first
    # normalized: fa / mean(fa) = [3, 0, 0] / 1 and fb / 1 = fb: the same here; scaled fb is not
    big = {"w": fb["w"] * 100}
    torch.testing.assert_close(fisher_average([a, b], [fa, big], 1e-6, normalize=True)["w"], got["w"], atol=1e-6, rtol=0)
    assert fisher_average([a, b], [fa, big], 1e-6)["w"][0] > 0.9  # unnormalized, b dominates


def test_settings_are_checked():
    for bad in ({"estimator": "empirical"}, {"examples": 0}, {"floor": 0.0}, {"floor": float("nan")},
                {"floor": float("inf")}):
        with pytest.raises(BadInput, match=f"fisher: {next(iter(bad))}="):  # the wrong setting, alone
            FisherSoup(**bad)


def test_fisher_soup_through_soup_py(tiny_sweep, tmp_path):
    from soups.jobs.soup import run_soup

    sweep_tmp, sweep = tiny_sweep
    base = own_cache(sweep_tmp, tmp_path)
    cfg = compose_cfg("soup", base, ["logger=none", "eval_batch_size=128", f"pool.dir={sweep}",
                                     "method=[uniform,fisher]", "method.fisher.examples=8"])
    rows = {r["row"]: r for r in run_soup(cfg, tmp_path / "out")}
    assert "fisher soup" in rows and rows["fisher soup"]["ingredients"] == 3
    assert (tmp_path / "out" / "fisher" / "soup.json").is_file()
    shutil.rmtree(tmp_path / "out")
