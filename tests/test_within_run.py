"""Within-run averages: the EMA kept during fine-tuning is timm's ModelEmaV3 recurrence step by step, runs save
it and their last epoch-end checkpoints with sha256s, `pool.ema=true` soups the EMAs (measured afresh, not
under the final weights' metrics), `method=ema` / `method=last_k` are the best run's EMA and checkpoint
average, and a pool without them is one plain error."""
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from conftest import TINY, compose_cfg
from soups.averaging import average
from soups.errors import BadInput
from soups.io.files import load_weights, read_json
from soups.jobs.finetune import run_finetune
from soups.jobs.soup import run_soup
from soups.training.loop import finetune
from soups.training.within_run import WithinRun

WITHIN = ["ema_decay=0.9", "ema_warmup=true", "keep_checkpoints=2", "checkpoint_every_steps=8", "epochs=3"]


def test_the_ema_is_timms_recurrence_over_every_optimizer_step(tmp_path):
    cfg = compose_cfg("finetune", tmp_path, [*TINY, "ema_decay=0.95", "ema_warmup=true", "batch_size=8"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = TensorDataset(torch.randn(40, 3, 2, 2), torch.arange(40) % 3)
    seen = []

    class Recording(WithinRun):
        def after_step(self, model, step):
            seen.append((step, {k: v.detach().double().clone() for k, v in model.state_dict().items()}))
            super().after_step(model, step)

    within = Recording(model, cfg, None)
    finetune(model, data, cfg, 3, torch.device("cpu"), within=within)
    assert [s for s, _ in seen] == list(range(1, 6))  # 40 // 8 updates, numbered from 1
    ema = None
    for step, weights in seen:  # e_1 = θ_1; e_t = d_t e_(t-1) + (1 - d_t) θ_t, d_t = min(0.95, 1 - t^(-2/3))
        decay = 0.0 if step == 1 else min(0.95, 1 - (1 + (step - 1)) ** (-2 / 3))
        ema = weights if ema is None else {k: decay * ema[k] + (1 - decay) * weights[k] for k in ema}
    got = within.ema.module.state_dict()
    for k in ema:
        torch.testing.assert_close(got[k].double(), ema[k], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got["1.weight"].double(), seen[-1][1]["1.weight"])  # not just the last weights


@pytest.fixture(scope="module")
def within_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("within")
    sweep = tmp / "logs" / "finetune" / "multiruns" / "2000-01-01_00-00-00_000000"
    for i, lr in enumerate(["3e-3", "1e-2"]):
        run_finetune(compose_cfg("finetune", tmp, [*TINY, *WITHIN, f"lr={lr}", f"seed={i}"]), sweep / str(i))
    return tmp, sweep


def test_runs_keep_their_ema_and_last_checkpoints_with_digests(within_sweep):
    _, sweep = within_sweep
    info = read_json(sweep / "0" / "run.json")
    assert info["ema"]["weights"] == "model_ema.safetensors" and info["ema"]["decay"] == 0.9
    # 12 updates an epoch, a checkpoint every 8: the last 2 of steps 8, 16, 24, 32; and the last epoch end
    assert [c["step"] for c in info["checkpoints"]] == [24, 32]
    assert sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir()) == ["step_24.safetensors",
                                                                               "step_32.safetensors"]
    final, ema = load_weights(sweep / "0" / "model.safetensors"), load_weights(sweep / "0" / "model_ema.safetensors")
    key = next(k for k in final if k.endswith("conv_stem.weight"))
    assert not torch.equal(final[key], ema[key])
    assert not torch.equal(load_weights(sweep / "0" / "checkpoints" / "step_32.safetensors")[key], final[key])


def test_method_ema_and_last_k_are_the_best_runs_within_run_averages(within_sweep, soup_cfg, tmp_path):
    _, sweep = within_sweep
    out = tmp_path / "soup"
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=[ema,last_k]"), out)
    held_out = {i: read_json(sweep / str(i) / "run.json")["metrics"]["val"] for i in range(2)}
    best = max(held_out, key=held_out.get)
    names = [r["row"] for r in rows]
    assert f"EMA (fine-tune {best})" in names and f"last-2 average (fine-tune {best})" in names
    expected = average(load_weights(sweep / str(best) / "checkpoints" / f"step_{s}.safetensors") for s in (24, 32))
    got = load_weights(out / "last_k" / "model.safetensors")
    key = next(k for k in got if k.endswith("conv_stem.weight"))
    torch.testing.assert_close(got[key], expected[key])
    ema = load_weights(sweep / str(best) / "model_ema.safetensors")
    assert torch.equal(load_weights(out / "ema" / "model.safetensors")[key], ema[key])
    assert json.loads((out / "last_k" / "soup.json").read_text())["run"] == f"fine-tune {best}"


def test_a_pool_of_emas_is_measured_afresh(within_sweep, soup_cfg, tmp_path):
    _, sweep = within_sweep
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "pool.ema=true", "method=uniform"), tmp_path / "soup")
    individuals = {r["row"]: r["metrics"] for r in rows if r["kind"] == "individual"}
    assert set(individuals) == {"fine-tune 0 (EMA)", "fine-tune 1 (EMA)"}
    finals = [read_json(sweep / str(i) / "run.json")["metrics"] for i in range(2)]
    assert all(individuals[f"fine-tune {i} (EMA)"] != finals[i] for i in range(2))


def test_a_pool_without_them_is_one_plain_error(tiny_sweep, soup_cfg, tmp_path):
    _, sweep = tiny_sweep
    for method, hint in (("ema", "ema_decay=0.999"), ("last_k", "keep_checkpoints=3")):
        with pytest.raises(BadInput, match=f"have no .*fine-tune with {hint}"):
            run_soup(soup_cfg(f"pool.dir={sweep}", f"method={method}"), tmp_path / method)
    with pytest.raises(BadInput, match="(?s)no finished runs.*kept no EMA"):
        run_soup(soup_cfg(f"pool.dir={sweep}", "pool.ema=true", "method=uniform"), tmp_path / "emas")


def test_asking_for_more_than_was_kept_says_how_many_were(within_sweep, soup_cfg, tmp_path):
    _, sweep = within_sweep
    with pytest.raises(BadInput, match="fewer than k=5 kept checkpoints .*: 2\\); fine-tune with keep_checkpoints=5"):
        run_soup(soup_cfg(f"pool.dir={sweep}", "method=last_k", "method.last_k.k=5"), tmp_path / "soup")
    with pytest.raises(BadInput, match="already the runs' EMAs"):  # method=ema of EMAs would repeat a row
        run_soup(soup_cfg(f"pool.dir={sweep}", "pool.ema=true", "method=ema"), tmp_path / "again")


def test_checkpoints_that_would_never_be_taken_are_refused(tmp_path):
    with pytest.raises(BadInput, match="checkpoint_every_steps=1000 exceeds the run's 12 updates"):
        run_finetune(compose_cfg("finetune", tmp_path, [*TINY, "keep_checkpoints=2", "checkpoint_every_steps=1000"]),
                     tmp_path / "run")


def test_lora_with_within_run_averages_is_refused(tmp_path):
    with pytest.raises(BadInput, match="ema_decay and keep_checkpoints"):
        run_finetune(compose_cfg("finetune", tmp_path, [*TINY, "ema_decay=0.9", "lora=default"]), tmp_path / "run")
