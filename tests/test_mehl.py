"""MEHL-Soup: the fold keeps the soup on the hyperplane and equal to the moved center, the coordinate gradient is
autograd's, zero steps give the uniform soup, the held-out loss falls, coefficients may extrapolate, and an
interrupted run resumes to the same coefficients."""
import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import killed_then_resumed
from soups.io.files import load_weights
from soups.jobs.soup import run_soup
from soups.recipes.mehl import MEHLSoup, coordinate_gradient, fold, point, warmup_cosine


def test_fold_moves_the_coefficients_exactly_as_the_center_moves():
    torch.manual_seed(0)
    thetas = torch.randn(5, 7, 3, dtype=torch.float64)  # K = 5 ingredients, 3 blocks of 7 numbers
    alpha = torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.4, 0.2], [0.2, 0.3, 0.3], [0.3, 0.1, 0.1], [-0.1, 0.4, 0.3]],
                         dtype=torch.float64)
    center = torch.einsum("kb,knb->nb", alpha, thetas)
    batch, steps = [3, 0], torch.tensor([[0.7, -1.5, 0.0], [0.2, 0.4, 2.0]], dtype=torch.float64)
    moved = center + sum(steps[i] * (thetas[k] - center) for i, k in enumerate(batch))
    new = fold(alpha, batch, steps)
    torch.testing.assert_close(torch.einsum("kb,knb->nb", new, thetas), moved)
    torch.testing.assert_close(new.sum(0), torch.ones(3, dtype=torch.float64))  # still on the hyperplane
    # the plausible wrong fold, adding the steps without shrinking the others, leaves the hyperplane
    wrong = alpha.clone()
    wrong[batch] += steps
    assert not torch.allclose(wrong.sum(0), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("by_layer", [False, True])
def test_the_coordinate_gradient_is_autograds_through_the_merged_point(by_layer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    names = [n for n, _ in model.named_parameters()]
    blocks = len(names) if by_layer else 1
    block_of = {n: (i if by_layer else 0) for i, n in enumerate(names)}
    center = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = {n: torch.randn(2, *p.shape) for n, p in center.items()}
    x = torch.randn(2, blocks, requires_grad=True)
    inputs, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = lambda params: nn.functional.cross_entropy(functional_call(model, params, (inputs,)), labels)  # noqa: E731
    loss(point(center, x, directions, block_of)).backward()
    params = {n: p.detach().requires_grad_() for n, p in point(center, x.detach(), directions, block_of).items()}
    loss(params).backward()
    got = coordinate_gradient(directions, {n: p.grad for n, p in params.items()}, block_of, blocks)
    torch.testing.assert_close(got, x.grad)


def test_the_schedule_warms_up_linearly_then_decays_as_a_cosine_and_visits_every_ingredient():
    factors = [warmup_cosine(s, 10, 0.2) for s in range(10)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == 1.0 and factors[-1] == pytest.approx(0.5 * (1 + torch.cos(
        torch.tensor(torch.pi * 7 / 8)).item()))
    plan = MEHLSoup(model_batch=3, model_epochs=2).schedule(7)
    assert [len(b) for b in plan] == [3, 3, 1, 3, 3, 1]
    assert sorted(sum(plan[:3], [])) == list(range(7)) and sorted(sum(plan[3:], [])) == list(range(7))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="model_batch"):
        MEHLSoup(model_batch=0)
    with pytest.raises(ValueError, match="warmup"):
        MEHLSoup(warmup=1.0)
    with pytest.raises(ValueError, match="ingredient_dtype"):
        MEHLSoup(ingredient_dtype="int8")
    for bad in (dict(lr=float("inf")), dict(weight_decay=-1.0), dict(weight_decay=float("nan"))):
        with pytest.raises(ValueError, match="lr finite|weight_decay"):
            MEHLSoup(**bad)


def test_a_diverging_run_is_an_error_not_a_nan_soup(tiny_sweep, soup_cfg, tmp_path):
    from soups.errors import BadInput

    _, sweep = tiny_sweep
    with pytest.raises(BadInput, match="diverged"):
        run_soup(soup_cfg(f"pool.dir={sweep}", "method=mehl", "method.mehl.lr=1e30", "method.mehl.grad_clip=0",
                          "method.mehl.epochs=1"), tmp_path / "soup")
    with pytest.raises(BadInput, match="method.ties made weights holding NaN or inf"):  # any recipe: no NaN row
        run_soup(soup_cfg(f"pool.dir={sweep}", "method=ties", "method.ties.scale=1e300"), tmp_path / "ties")


def test_zero_epochs_is_exactly_the_uniform_soup(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    run_soup(soup_cfg(f"pool.dir={sweep}", "method=[uniform,mehl]", "method.mehl.epochs=0",
                      "bn_recalibration=false"), out)
    uniform, mehl = load_weights(out / "uniform" / "model.safetensors"), load_weights(out / "mehl" / "model.safetensors")
    for key, value in uniform.items():
        if value.is_floating_point():
            torch.testing.assert_close(mehl[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("by_layer", [False, True])
def test_the_held_out_loss_falls_and_the_soup_is_the_learned_combination(tiny_sweep, soup_cfg, tmp_path, by_layer):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=mehl", "method.mehl.model_batch=2", "method.mehl.epochs=3",
                             "method.mehl.lr=0.5", "method.mehl.batch_size=32", f"method.mehl.by_layer={by_layer}"), out)
    record = json.loads((out / "mehl" / "soup.json").read_text())
    assert record["held_out_loss"]["learned"] < record["held_out_loss"]["uniform"]
    alpha = torch.tensor(record["coefficients"]["weights"], dtype=torch.float64)
    assert alpha.shape == ((3, len(record["coefficients"]["tensors"])) if by_layer else (3,))
    torch.testing.assert_close(alpha.sum(0), torch.ones(alpha.shape[1:], dtype=torch.float64))
    assert not torch.allclose(alpha, torch.full_like(alpha, 1 / 3))
    runs = [load_weights(sweep / str(i) / "model.safetensors") for i in range(3)]
    soup = load_weights(out / "mehl" / "model.safetensors")
    tensors = record["coefficients"]["tensors"]
    key = next(k for k in soup if k.endswith("conv_stem.weight"))
    a = alpha[:, tensors.index(key)] if by_layer else alpha
    torch.testing.assert_close(soup[key], sum(w * r[key].double() for w, r in zip(a.tolist(), runs)).float())
    assert rows[-1]["row"] == ("mehl soup (by layer)" if by_layer else "mehl soup")
    assert (out / "mehl" / "coefficients.png").stat().st_size > 5_000


def test_an_interrupted_run_resumes_from_its_journal_with_the_same_coefficients(tiny_sweep, soup_cfg, tmp_path,
                                                                               monkeypatch, caplog):
    _, sweep = tiny_sweep
    settings = ("method=mehl", "method.mehl.model_batch=1", "method.mehl.epochs=1", "method.mehl.lr=0.3")
    whole = run_soup(soup_cfg(f"pool.dir={sweep}", *settings, f"paths.cache_dir={tmp_path}/a"), tmp_path / "whole")
    cfg = soup_cfg(f"pool.dir={sweep}", *settings, f"paths.cache_dir={tmp_path}/b")
    with caplog.at_level("INFO"):
        resumed = killed_then_resumed(cfg, tmp_path, monkeypatch, lambda record: record["model_batches"] == 2)
    assert "resuming from its journal after model batch 2" in caplog.text
    read = lambda run: json.loads((tmp_path / run / "mehl" / "soup.json").read_text())  # noqa: E731
    assert read("resumed")["coefficients"]["weights"] == read("whole")["coefficients"]["weights"]
    assert resumed[-1]["metrics"] == whole[-1]["metrics"]
