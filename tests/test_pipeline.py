"""The real entry functions end to end on a tiny model: sweep -> pool -> soups -> report."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soups.jobs.finetune import run_finetune
from soups.io.files import load_weights
from soups.jobs.soup import run_soup


def test_finetune_run_dir_is_self_describing(tiny_sweep):
    _, sweep = tiny_sweep
    run = sweep / "0"
    info = json.loads((run / "run.json").read_text())
    assert info["hparams"]["lr"] == 1e-3 and info["config"]["model"]["name"] == "tiny_efficientnet"
    assert set(info["metrics"]) == {"val", "test", "digits", "rotate", "invert", "blur", "avg_shifts"}
    shifts = [info["metrics"][k] for k in ("digits", "rotate", "invert", "blur")]
    assert info["metrics"]["avg_shifts"] == pytest.approx(sum(shifts) / 4)
    weights = load_file(str(run / "model.safetensors"))
    assert all(k.startswith(("visual.", "head.")) for k in weights)  # image tower + head only
    assert info["history"] and info["history"][-1]["step"] > 0
    assert len(info["sha256"]) == 64
    # every run of the sweep started from the same cached init
    assert len({json.loads((sweep / str(i) / "run.json").read_text())["init"]["sha256"] for i in range(3)}) == 1


def test_soup_run_writes_weights_records_table_and_figure(tiny_sweep, soup_cfg, tmp_path):
    tmp, sweep = tiny_sweep
    out = tmp_path / "soup"
    rows = run_soup(soup_cfg(f"pool.dir={sweep}"), out)
    kinds = [r["kind"] for r in rows]
    assert kinds == ["init", "individual", "individual", "individual", "best_individual", "soup", "soup"]
    for method in ("uniform", "greedy"):
        record = json.loads((out / method / "soup.json").read_text())
        assert record["method"] == method and set(record["metrics"]) >= {"val", "test", "avg_shifts"}
        assert (out / method / "model.safetensors").is_file() and (out / method / "run.json").is_file()
    greedy = json.loads((out / "greedy" / "soup.json").read_text())
    best_val = max(r["metrics"]["val"] for r in rows if r["kind"] == "individual")
    assert greedy["trace"][0]["individual_held_out"] == best_val
    # the trace names runs as the report does (`fine-tune 2`); soup.json's ingredients are their full paths
    assert len(greedy["trace"]) == 3 and greedy["trace"][0]["run"].startswith("fine-tune ")
    assert greedy["ingredients"][0].endswith("/" + greedy["trace"][0]["run"].split(" ")[-1])
    # greedy is never worse than the best individual on the held-out set
    assert greedy["metrics"]["val"] >= best_val - 1e-9
    assert "| **greedy soup** |" in (out / "report.md").read_text()
    assert (out / "figure.png").stat().st_size > 10_000 and (out / "report.csv").is_file()


def test_individuals_measured_under_other_settings_are_evaluated_again(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    cfg = soup_cfg(f"pool.dir={sweep}", "method=uniform", "eval_batch_size=32")
    rows = run_soup(cfg, tmp_path / "soup")
    digests = [json.loads((sweep / str(i) / "run.json").read_text())["sha256"] for i in range(3)]
    for digest in digests:  # metrics and every set's logits, once per individual
        assert len(list((tmp_path / "cache" / "eval").glob(f"*/{digest}.json"))) == 1
        assert len(list((tmp_path / "cache" / "eval").glob(f"*/{digest}/*.safetensors"))) == 6
    recorded = json.loads((sweep / "0" / "run.json").read_text())["metrics"]
    assert rows[1]["metrics"]["val"] == pytest.approx(recorded["val"], abs=2.0)
    # the initialization's row too: measured again under the soup's settings, not the fine-tunes' init.json
    init = json.loads((sweep / "0" / "run.json").read_text())["init"]
    key = json.loads((tmp_path / "soup" / "uniform" / "soup.json").read_text())["evaluation"]["key"]
    assert init["evaluation_key"] != key and rows[0]["row"] == "initialization"
    measured = json.loads((tmp_path / "cache" / "eval" / key / f"{init['sha256']}.json").read_text())["metrics"]
    assert rows[0]["metrics"] == measured
    saved_init = json.loads((tmp_path / "soup" / "uniform" / "run.json").read_text())["init"]  # a soup's own run.json
    assert saved_init["metrics"] == rows[0]["metrics"] and saved_init["evaluation_key"] == key
    # the same settings as the fine-tunes: their run.json metrics (and the init's) are used as they are
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=uniform", f"paths.cache_dir={tmp_path}/cache2"),
                    tmp_path / "s2")
    assert not any((tmp_path / "cache2" / "eval").glob(f"*/{digests[0]}*"))
    assert not any((tmp_path / "cache2" / "eval").glob(f"*/{init['sha256']}*")) and rows[0]["metrics"] == init["metrics"]


def test_uniform_soup_weights_are_the_exact_average(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    run_soup(soup_cfg(f"pool.dir={sweep}", "method=uniform", "bn_recalibration=false"), out)
    soup = load_weights(out / "uniform" / "model.safetensors")
    runs = [load_weights(sweep / str(i) / "model.safetensors") for i in range(3)]
    for key, value in soup.items():
        if value.is_floating_point():  # summed in float32, in pool order, then divided: mergekit's linear
            assert torch.equal(value, (runs[0][key] + runs[1][key] + runs[2][key]) / 3), key
            exact = sum(r[key].double() for r in runs) / 3  # and within float32 round-off of the exact mean:
            scale = max(r[key].abs().max().item() for r in runs)  # 2 additions + 1 division, each <= 1/2 ulp
            assert (value.double() - exact).abs().max().item() <= 2 ** -22 * scale, key
        else:
            assert torch.equal(value, runs[0][key]), key


def test_soup_of_a_bn_model_recomputes_statistics_and_saves_what_it_evaluated(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    run_soup(soup_cfg(f"pool.dir={sweep}", "method=uniform"), out)
    soup = load_weights(out / "uniform" / "model.safetensors")
    runs = [load_weights(sweep / str(i) / "model.safetensors") for i in range(3)]
    stat = next(k for k in soup if k.endswith("running_mean"))
    weight = next(k for k in soup if k.endswith("conv_stem.weight"))
    assert not torch.allclose(soup[stat], sum(r[stat] for r in runs) / 3)  # recomputed, not averaged
    assert torch.equal(soup[weight], (runs[0][weight] + runs[1][weight] + runs[2][weight]) / 3)
    assert json.loads((out / "uniform" / "soup.json").read_text())["bn_recalibrated"] is True


@pytest.mark.parametrize("n, batch_size, sizes", [(10, 4, [3, 3, 4]), (200, 64, [50, 50, 50, 50]), (7, 64, [7])])
def test_bn_statistics_weigh_every_image_alike_in_near_equal_batches(n, batch_size, sizes):
    """update_bn averages per-batch statistics: with batches of 4, 4 and 2 the last 2 images would count as 4.
    Near-equal batches make the running mean the sample's mean over images (exactly, for equal sizes)."""
    from soups.data.images import EvalSet, ImageArray
    from soups.evaluation.evaluator import near_equal_sizes, recalibrate_bn

    images = torch.randint(0, 256, (n, 2, 2, 3), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    sample = EvalSet(ImageArray("s", images, torch.zeros(n, dtype=torch.long)), 2, (0.0,) * 3, (1.0,) * 3)
    seen = []
    bn = torch.nn.BatchNorm2d(3)
    bn.register_forward_pre_hook(lambda _, x: seen.append(len(x[0])))
    passes, batches = [], sample.batches
    sample.batches = lambda *a, **k: passes.append(a) or batches(*a, **k)
    recalibrate_bn(bn, sample, batch_size, torch.device("cpu"))
    assert seen == near_equal_sizes(n, batch_size) and sorted(seen) == sizes
    assert passes == [(batch_size,)]  # one pass over the set (one DataLoader)
    sample.batches = batches
    x = torch.cat([b for b, _ in sample.batches(n)])  # [n, 3, 2, 2], as normalized for the model
    if len(set(sizes)) == 1:  # equal sizes: exactly the mean over every pixel of every image
        torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-5)
    else:  # sizes 3, 3, 4: the mean of the three batch means
        bounds = [0, 3, 6, 10]
        means = torch.stack([x[a:b].mean(dim=(0, 2, 3)) for a, b in zip(bounds, bounds[1:])])
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-6, atol=1e-5)


def test_layernorm_model_needs_no_recalibration(finetune_cfg, soup_cfg, tmp_path):
    sweep = tmp_path / "vit_sweep"
    for i, lr in enumerate(["1e-3", "2e-3"]):
        run_finetune(finetune_cfg("model=tiny_vit", f"lr={lr}"), sweep / str(i))
    out = tmp_path / "soup"
    run_soup(soup_cfg(f"pool.dir={sweep}", "method=uniform"), out)
    assert json.loads((out / "uniform" / "soup.json").read_text())["bn_recalibrated"] is False


def test_random_search_trial_draws_into_the_config(finetune_cfg, tmp_path):
    cfg = finetune_cfg("trial=2", "search_space={lr:[log_uniform,1e-4,1e-3],wd:[choice,0.0,0.5]}")
    info = run_finetune(cfg, tmp_path / "run")
    assert 1e-4 <= info["hparams"]["lr"] <= 1e-3 and info["hparams"]["wd"] in (0.0, 0.5)
    assert info["config"]["lr"] == info["hparams"]["lr"] and info["hparams"]["seed"] == 2


def test_mixup_randaugment_and_bf16_train(finetune_cfg, tmp_path):
    info = run_finetune(finetune_cfg("mixup=0.2", "label_smoothing=0.1", "randaug=rand-m9-n2",
                                     "crop_scale=0.8", "precision=bf16"), tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in info["history"])


def test_checkpoint_round_trip_reproduces_the_recorded_accuracy(tiny_sweep):
    from omegaconf import OmegaConf

    from soups.data import build_data
    from soups.evaluation.evaluator import Evaluator
    from soups.models.classifier import build_classifier

    _, sweep = tiny_sweep
    info = json.loads((sweep / "1" / "run.json").read_text())
    cfg = OmegaConf.create(info["config"])
    model = build_classifier(cfg.model, cfg.data.num_classes, load_pretrained=False)
    model.load_state_dict(load_weights(sweep / "1" / "model.safetensors"))
    evaluator = Evaluator(build_data(cfg.data, cfg.model).eval_sets(), 128, "fp32",
                          torch.device("cpu"))
    assert evaluator.evaluate(model) == info["metrics"]


def test_model_stock_and_wise_ft_run_through_soup(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=[model_stock,wise_ft]", "method.wise_ft.alphas=[0.0,0.5,1.0]"),
                    tmp_path / "soup")
    record = json.loads((tmp_path / "soup" / "model_stock" / "soup.json").read_text())
    assert [r["row"] for r in rows[-2:]] == ["model_stock soup", "wise_ft soup"]
    assert -1.0 <= record["mean_ratio"] <= 2.0 and len(record["ratios"]) > 10
    wise = json.loads((tmp_path / "soup" / "wise_ft" / "soup.json").read_text())
    assert [p["alpha"] for p in wise["curve"]] == [0.0, 0.5, 1.0]
    best = next(r for r in rows if r["kind"] == "best_individual")
    assert wise["curve"][2]["val"] == best["metrics"]["val"]  # alpha = 1 is the fine-tuned model itself
    init = rows[0]["metrics"]
    assert wise["curve"][0]["val"] == init["val"]  # alpha = 0 is the initialization itself


def test_ensemble_metrics_are_those_of_the_mean_logits(tiny_sweep, soup_cfg, tmp_path):
    from omegaconf import OmegaConf

    from soups.data import build_data
    from soups.evaluation.evaluator import Evaluator
    from soups.models.classifier import build_classifier

    _, sweep = tiny_sweep
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=[ensemble,greedy_ensemble]"), tmp_path / "soup")
    ensemble = next(r for r in rows if r["row"] == "ensemble")
    assert ensemble["kind"] == "ensemble" and ensemble["cost"] == 3
    assert not (tmp_path / "soup" / "ensemble" / "model.safetensors").exists()
    assert "| **ensemble** |" in (tmp_path / "soup" / "report.md").read_text()
    cfg = OmegaConf.create(json.loads((sweep / "0" / "run.json").read_text())["config"])
    evaluator = Evaluator(build_data(cfg.data, cfg.model).eval_sets(), 128, "fp32", torch.device("cpu"))
    model = build_classifier(cfg.model, cfg.data.num_classes, load_pretrained=False)
    for name in ("val", "test", "rotate"):
        logits = []
        for i in range(3):
            model.load_state_dict(load_weights(sweep / str(i) / "model.safetensors"))
            logits.append(evaluator.logits(model, name))
        assert ensemble["metrics"][name] == evaluator.accuracy_of_logits(name, torch.stack(logits).mean(0))
    greedy = json.loads((tmp_path / "soup" / "greedy_ensemble" / "soup.json").read_text())
    assert greedy["kind"] == "ensemble" and greedy["metrics"]["val"] >= max(
        r["metrics"]["val"] for r in rows if r["kind"] == "individual")


@pytest.mark.parametrize("alpha", [0.5, 1.5, 1.0])
def test_a_wise_ft_row_and_its_saved_weights_are_the_curve_point_it_chose(tiny_sweep, soup_cfg, tmp_path, alpha):
    """A BN model between (or beyond) init and fine-tune gets recomputed statistics on the curve, in the
    table row and in the saved weights alike; alpha = 1 is the fine-tune itself, recalibrated nowhere."""
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=wise_ft", f"method.wise_ft.alphas=[{alpha}]"), out)
    record = json.loads((out / "wise_ft" / "soup.json").read_text())
    point = {k: v for k, v in record["curve"][0].items() if k != "alpha"}
    assert rows[-1]["metrics"] == point == record["metrics"]
    assert record["bn_recalibrated"] is (alpha != 1.0)
    saved = load_weights(out / "wise_ft" / "model.safetensors")
    base = load_weights(Path(record["ingredients"][0]) / "model.safetensors")
    stat = next(k for k in saved if k.endswith("running_mean"))
    assert torch.equal(saved[stat], base[stat]) is (alpha == 1.0)


def test_a_one_ingredient_greedy_soup_is_that_model_and_says_nothing_was_recalibrated(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    out = tmp_path / "soup"
    rows = run_soup(soup_cfg(f"pool.runs=[{sweep / '0'}]", "method=greedy"), out)
    record = json.loads((out / "greedy" / "soup.json").read_text())
    assert record["bn_recalibrated"] is False and len(record["ingredients"]) == 1
    assert rows[-1]["metrics"] == rows[1]["metrics"]  # the individual, as measured


def test_fp16_training_scales_the_loss_and_keeps_the_scale_in_the_training_state(finetune_cfg, tmp_path):
    """Without loss scaling most small fp16 gradients underflow to exactly 0; the GradScaler's state is
    part of the resumable training state."""
    from omegaconf import OmegaConf

    from soups.data import build_data
    from soups.models.classifier import build_classifier
    from soups.training.loop import finetune

    cfg = finetune_cfg("precision=fp16", "model=tiny_vit")
    model = build_classifier(cfg.model, cfg.data.num_classes)
    data = build_data(cfg.data, cfg.model)
    OmegaConf.set_struct(cfg, False)
    history = finetune(model, data.train_set(None, 1.0), cfg, cfg.data.num_classes, torch.device("cpu"),
                       state_dir=tmp_path)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 1.0  # the loss was scaled up (initial scale 2**16)


def test_the_lr_curve_is_the_official_schedule_and_each_step_logs_the_lr_its_update_used(finetune_cfg):
    """wise-ft's cosine_lr (src/models/utils.py, which model-soups' finetune.py uses): update i (from 0) runs at
    base·(i+1)/warmup during warmup, then base·½(1 + cos(π·(i − warmup)/(T − warmup))). The curve's point at
    step s (s updates done) is update s−1's lr; it once read the scheduler after stepping, one update late."""
    import math

    from soups.data import build_data
    from soups.models.classifier import build_classifier
    from soups.training.loop import finetune

    cfg = finetune_cfg("model=tiny_vit", "epochs=2", "warmup_steps=3", "lr=1e-3")
    model = build_classifier(cfg.model, cfg.data.num_classes)
    data = build_data(cfg.data, cfg.model)
    history = finetune(model, data.train_set(None, 1.0), cfg, cfg.data.num_classes, torch.device("cpu"), log_every=1)
    total, warmup = len(history), 3
    assert total == 2 * (200 // 16) and [r["step"] for r in history] == list(range(1, total + 1))

    def official(i):
        if i < warmup:
            return 1e-3 * (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup))) * 1e-3
    assert [r["lr"] for r in history] == pytest.approx([official(s - 1) for s in range(1, total + 1)], rel=1e-12)
    assert history[0]["lr"] == pytest.approx(1e-3 / 3) and history[-1]["lr"] > 0  # the last update's lr, not 0


def test_weight_decay_skips_1d_tensors_unless_wd_1d_as_the_official_finetune_py():
    from soups.training.loop import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    default, every = (make_optimizer(model, 1e-3, 0.1, torch.device("cpu"), d) for d in (False, True))
    assert [(len(g["params"]), g["weight_decay"]) for g in default.param_groups] == [(1, 0.1), (3, 0.0)]
    assert [(len(g["params"]), g["weight_decay"]) for g in every.param_groups] == [(4, 0.1), (0, 0.0)]
