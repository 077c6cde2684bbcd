"""Learned soups: mixing math, the uniform start, a falling loss, the by-layer shape, the saved record."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import killed_then_resumed
from soups.data import build_data
from soups.io.files import load_weights
from soups.models.classifier import build_classifier
from soups.recipes.learned import LOSS_ORDER_SEED, LearnedSoup, _Mix
from soups.jobs.soup import run_soup


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mix_is_the_weighted_sum_and_its_gradient(dtype):
    torch.manual_seed(0)
    stack = torch.randn(11, 3, 4).to(dtype)  # 11 > one chunk of 8
    weights = torch.rand(11, requires_grad=True)
    out = _Mix.apply(weights, stack)
    reference_weights = weights.detach().clone().requires_grad_(True)
    reference = (reference_weights.view(11, 1, 1) * stack.float()).sum(0)
    torch.testing.assert_close(out, reference)
    grad = torch.randn(3, 4)
    out.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(weights.grad, reference_weights.grad)


def test_learned_soup_refuses_bad_settings():
    with pytest.raises(ValueError, match="ingredient_dtype"):
        LearnedSoup(ingredient_dtype="int8")
    with pytest.raises(ValueError, match="lr > 0"):
        LearnedSoup(lr=0.0)


def held_out_loss_with_batch_statistics(weights_file, run_cfg, batch_size):
    model = build_classifier(run_cfg.model, run_cfg.data.num_classes, load_pretrained=False)
    model.load_state_dict(load_weights(weights_file))
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    held_out = build_data(run_cfg.data, run_cfg.model).eval_sets()["val"]
    with torch.no_grad():
        total = sum(F.cross_entropy(model(x), y).item() * len(y) for x, y in held_out.batches(batch_size, shuffle_seed=LOSS_ORDER_SEED))
    return total / len(held_out)


def test_learned_soup_starts_at_the_uniform_soup_and_lowers_the_held_out_loss(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=[uniform,learned]", "method.learned.epochs=3",
                             "method.learned.batch_size=32"), out)
    record = json.loads((out / "learned" / "soup.json").read_text())
    run_cfg = OmegaConf.create(json.loads((sweep / "0" / "run.json").read_text())["config"])
    uniform_loss = held_out_loss_with_batch_statistics(out / "uniform" / "model.safetensors", run_cfg, 32)
    assert record["held_out_loss"]["uniform"] == pytest.approx(uniform_loss, rel=1e-4)
    assert record["held_out_loss"]["learned"] < record["held_out_loss"]["uniform"]
    weights = torch.tensor(record["coefficients"]["weights"])
    assert weights.shape == (3,) and weights.sum().item() == pytest.approx(1.0) and (weights > 0).all()
    assert record["temperature"] > 0 and rows[-1]["row"] == "learned soup"
    # the saved soup is the learned mix of the ingredients (conv weights: BN statistics are recomputed)
    soup = load_weights(out / "learned" / "model.safetensors")
    runs = [load_weights(sweep / str(i) / "model.safetensors") for i in range(3)]
    key = next(k for k in soup if k.endswith("conv_stem.weight"))
    expected = sum(w * r[key].double() for w, r in zip(weights.double().tolist(), runs)).float()
    torch.testing.assert_close(soup[key], expected)
    assert (out / "learned" / "coefficients.png").stat().st_size > 5_000


def test_one_adamw_step_moves_the_temperature_by_lr_in_its_own_parametrisation(tiny_sweep, soup_cfg, tmp_path):
    # one batch holding the whole held-out set = one AdamW step; Adam's first step moves every parameter by
    # lr against the sign of its gradient. Both start at t = 1, so the gradients (and the mixing weights
    # after the step) agree: log moves t to exp(∓lr), linear (the official script's beta) to 1 ∓ lr.
    _, sweep = tiny_sweep
    records = {}
    for parametrisation in ("log", "linear"):
        out = tmp_path / parametrisation
        run_soup(soup_cfg(f"pool.dir={sweep}", "method=learned", "method.learned.epochs=1",
                          "method.learned.batch_size=100000", "method.learned.lr=0.05",
                          f"method.learned.temperature={parametrisation}"), out)
        records[parametrisation] = json.loads((out / "learned" / "soup.json").read_text())
    log_t, linear_t = records["log"]["temperature"], records["linear"]["temperature"]
    assert records["linear"]["temperature_parametrisation"] == "linear"
    direction = 1 if log_t > 1 else -1
    assert log_t == pytest.approx(math.exp(direction * 0.05), rel=1e-5)
    assert linear_t == pytest.approx(1 + direction * 0.05, rel=1e-5)
    assert records["log"]["coefficients"]["weights"] == pytest.approx(records["linear"]["coefficients"]["weights"],
                                                                       rel=1e-6)
    with pytest.raises(ValueError, match="temperature='softplus'"):
        LearnedSoup(temperature="softplus")


def test_zero_epochs_is_exactly_the_uniform_soup(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    run_soup(soup_cfg(f"pool.dir={sweep}", "method=[uniform,learned]", "method.learned.epochs=0",
                      "bn_recalibration=false"), out)
    uniform, learned = load_weights(out / "uniform" / "model.safetensors"), load_weights(out / "learned" / "model.safetensors")
    for key, value in uniform.items():
        if key.endswith(("weight", "bias")):
            torch.testing.assert_close(learned[key], value, rtol=1e-6, atol=1e-7)


def test_by_layer_coefficients_have_one_weight_per_ingredient_and_tensor(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    run_soup(soup_cfg(f"pool.dir={sweep}", "method=learned_bylayer", "method.learned_bylayer.epochs=1",
                      "method.learned_bylayer.ingredient_dtype=bfloat16"), out)
    record = json.loads((out / "learned_bylayer" / "soup.json").read_text())
    tensors = record["coefficients"]["tensors"]
    model_cfg = OmegaConf.create(json.loads((sweep / "0" / "run.json").read_text())["config"])
    model = build_classifier(model_cfg.model, 10, load_pretrained=False)
    assert tensors == [n for n, _ in model.named_parameters()]
    weights = torch.tensor(record["coefficients"]["weights"])
    assert weights.shape == (3, len(tensors))
    torch.testing.assert_close(weights.sum(0), torch.ones(len(tensors), dtype=weights.dtype))
    assert not torch.allclose(weights, torch.full_like(weights, 1 / 3))  # it learned something
    assert (out / "learned_bylayer" / "coefficients.png").is_file()


def test_a_second_run_reuses_the_learned_weights(tiny_sweep, soup_cfg, tmp_path, monkeypatch):
    _, sweep = tiny_sweep
    cfg = soup_cfg(f"pool.dir={sweep}", "method=learned", "method.learned.epochs=1")
    first = run_soup(cfg, tmp_path / "first")
    monkeypatch.setattr(LearnedSoup, "_learn", lambda *a, **k: pytest.fail("learned again"))
    second = run_soup(cfg, tmp_path / "second")
    assert second[-1]["metrics"] == first[-1]["metrics"]
    assert torch.equal(load_weights(tmp_path / "first" / "learned" / "model.safetensors")["head.weight"],
                       load_weights(tmp_path / "second" / "learned" / "model.safetensors")["head.weight"])
    with pytest.raises(pytest.fail.Exception, match="learned again"):  # other settings: learned anew
        run_soup(soup_cfg(f"pool.dir={sweep}", "method=learned", "method.learned.epochs=1", "method.learned.lr=0.1"),
                 tmp_path / "other")


def test_an_interrupted_learned_soup_resumes_from_its_journal_with_the_same_weights(tiny_sweep, soup_cfg, tmp_path,
                                                                                    monkeypatch, caplog):
    _, sweep = tiny_sweep
    settings = ("method=learned", "method.learned.epochs=3")
    whole = run_soup(soup_cfg(f"pool.dir={sweep}", *settings, f"paths.cache_dir={tmp_path}/a"), tmp_path / "whole")
    cfg = soup_cfg(f"pool.dir={sweep}", *settings, f"paths.cache_dir={tmp_path}/b")
    with caplog.at_level("INFO"):
        resumed = killed_then_resumed(cfg, tmp_path, monkeypatch, lambda record: record["epoch"] == 2)
    assert "resuming from its journal after epoch 2" in caplog.text
    read = lambda run: json.loads((tmp_path / run / "learned" / "soup.json").read_text())  # noqa: E731
    assert read("resumed")["coefficients"]["weights"] == read("whole")["coefficients"]["weights"]
    assert read("resumed")["held_out_loss"] == read("whole")["held_out_loss"]
    assert resumed[-1]["metrics"] == whole[-1]["metrics"]
