"""Runs that resume: a fine-tune killed with SIGKILL goes on from its last saved state (an epoch end, or
mid-epoch with `state_every_steps`) and ends with the
weights of an uninterrupted run; a relaunched sweep skips finished jobs; the W&B run is one run."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import commands
from conftest import ROOT, TINY
from soups.io.files import read_json
from soups.names import STATE_NAME
from soups.tracking.wandb_logger import run_id



def finetune_command(tmp_path: Path, *overrides: str) -> list[str]:
    tiny = [o for o in TINY if not o.startswith(("epochs=", "logger="))]
    return [sys.executable, str(ROOT / "src" / "finetune.py"), *tiny, f"paths.log_dir={tmp_path}/logs",
            f"paths.cache_dir={tmp_path}/cache", *overrides]


@pytest.mark.parametrize("saves", [["epochs=4"], ["epochs=2", "state_every_steps=4"]],
                         ids=["at_an_epoch_end", "mid_epoch"])
def test_a_killed_fine_tune_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, saves):
    overrides = [*saves, "logger=wandb", "randaug=rand-m5-n1", "mixup=0.2",  # RNG-heavy on purpose
                 "ema_decay=0.9", "ema_warmup=true", "keep_checkpoints=2"]  # and the EMA is part of the state
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    commands.run(finetune_command(tmp_path, *overrides, f"hydra.run.dir={whole}"), check=True, capture_output=True)
    proc = subprocess.Popen(finetune_command(tmp_path, *overrides, f"hydra.run.dir={killed}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / STATE_NAME).is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # right after the first state was saved
    proc.wait()
    assert (killed / STATE_NAME).is_file() and not (killed / "run.json").exists()
    state = torch.load(killed / STATE_NAME, weights_only=True)
    if "state_every_steps=4" in saves:  # 12 batches an epoch: killed within the first epoch
        assert state["epoch"] == 0 and 0 < state["batches_done"] < 12
    else:
        assert state["epoch"] >= 1 and state["batches_done"] == 0
    done = commands.run(finetune_command(tmp_path, *overrides, f"hydra.run.dir={killed}"), check=True,
                        capture_output=True, text=True)
    assert "resuming from" in done.stderr + done.stdout
    kept = sorted(str(p.relative_to(whole)) for p in (whole / "checkpoints").iterdir())
    assert len(kept) == 2 and kept == sorted(str(p.relative_to(killed)) for p in (killed / "checkpoints").iterdir())
    for name in ["model.safetensors", "model_ema.safetensors", *kept]:
        a, b = load_file(str(whole / name)), load_file(str(killed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert read_json(killed / "run.json")["history"] == read_json(whole / "run.json")["history"]
    assert not (killed / STATE_NAME).exists()  # finished: the training state is gone
    runs = [p.name for p in (killed / "wandb").glob("offline-run-*")]
    assert len(runs) == 2 and all(r.endswith(run_id(killed)) for r in runs)  # one W&B run, launched twice


def test_a_relaunched_sweep_skips_finished_jobs_and_lists_its_draws(tmp_path):
    sweep = tmp_path / "sweep"
    command = finetune_command(tmp_path, "sweep=paper_random", "search_draws=2", "search_space.epochs=[choice,1]",
                               "warmup_steps=2", "logger=none", f"hydra.sweep.dir={sweep}")
    commands.run(command, check=True, capture_output=True)
    listing = read_json(sweep / "search_draws.json")
    assert [d["trial"] for d in listing["draws"]] == [0, 1]
    for job in ("0", "1"):
        drawn = read_json(sweep / job / "run.json")["hparams"]
        assert drawn["lr"] == listing["draws"][int(job)]["lr"]
    finished = (sweep / "0" / "model.safetensors").stat().st_mtime_ns
    (sweep / "1" / "run.json").unlink()  # job 1 as if killed before it finished
    (sweep / "1" / "model.safetensors").unlink()
    commands.run(command, check=True, capture_output=True)
    assert (sweep / "0" / "model.safetensors").stat().st_mtime_ns == finished  # skipped
    assert (sweep / "1" / "run.json").is_file()  # ran again
    # relaunched into the same folder with other draws: once skipped, its old weights passed for the new lr
    other = commands.run([*command, "search_seed=7"], capture_output=True, text=True)
    said = [line for line in other.stderr.splitlines() if line.startswith("error:")]
    assert other.returncode == 1 and "Traceback" not in other.stderr, other.stderr
    assert len(said) == 1 and "already holds a run made under other settings (lr: " in said[0], other.stderr
    assert (sweep / "0" / "model.safetensors").stat().st_mtime_ns == finished


def test_a_state_saved_under_other_settings_is_refused_naming_what_changed(tmp_path):
    import pytest
    import torch
    from omegaconf import OmegaConf

    from soups.errors import BadInput
    from soups.training.resume import load_train_state, save_train_state, training_settings

    cfg = OmegaConf.create({"model": {"name": "hf"}, "lora": {"r": 4, "alpha": 16}, "lr": 1e-3, "seed": 0})
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_train_state(tmp_path, model=model, optimizer=opt, scheduler=sched, epoch_generator_state=torch.Generator().get_state(),
                     epoch=0, batches_done=3, step=3, history=[], pending=[], settings=training_settings(cfg))
    same = load_train_state(tmp_path, model=model, optimizer=opt, scheduler=sched, generator=torch.Generator(),
                            settings=training_settings(cfg))
    assert same["step"] == 3
    changed = OmegaConf.merge(cfg, {"lora": {"alpha": 64}, "lr": 3e-3})
    with pytest.raises(BadInput, match=r"saved under other settings \(lora, lr changed\)"):
        load_train_state(tmp_path, model=model, optimizer=opt, scheduler=sched, generator=torch.Generator(),
                         settings=training_settings(changed))


def test_a_setting_added_later_is_compared_both_ways_and_old_states_read_as_its_default(tmp_path):
    # wd_1d came after training states and run.json files existed: a state without it was made under false
    from omegaconf import OmegaConf

    from soups.training.resume import changed_settings, load_train_state, save_train_state, training_settings

    cfg = OmegaConf.create({"lr": 1e-3, "wd": 0.1, "wd_1d": False})
    assert changed_settings({"lr": 1e-3, "wd": 0.1, "wd_1d": True}, training_settings(cfg)) == ["wd_1d: True -> False"]
    assert changed_settings({"lr": 1e-3, "wd": 0.1}, training_settings(cfg)) == []  # an older run: not compared
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    old = {k: v for k, v in training_settings(cfg).items() if k != "wd_1d"}
    save_train_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler,
                     epoch_generator_state=torch.Generator().get_state(), epoch=0, batches_done=1, step=1,
                     history=[], pending=[], settings=old)
    assert load_train_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler,
                            generator=torch.Generator(), settings=training_settings(cfg))["step"] == 1
    with pytest.raises(Exception, match="wd_1d"):
        load_train_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, generator=torch.Generator(),
                         settings=training_settings(OmegaConf.create({"lr": 1e-3, "wd": 0.1, "wd_1d": True})))
