"""A fine-tune's training state, so a killed run goes on where it stopped and ends with the weights an
uninterrupted run would have (on CPU; tested by SIGKILL at an epoch boundary and mid-epoch).

Saved after every epoch and, with `state_every_steps`, every that many steps, atomically: model,
optimizer, scheduler, the global RNGs (python, numpy, torch, CUDA), the DataLoader generator's state at
the start of the epoch in progress (the epoch's order and worker seeds follow from it) with the number
of its batches already done, the step counter and the logged history. Read back with
`torch.load(weights_only=True)`: tensors and plain values only, nothing is unpickled.

Mid-epoch resume is bit-exact with `num_workers=0`. With workers, the resumed epoch has the same batches
in the same order, but the workers' random streams differ: they were not advanced by the skipped
batches, and batches go to other workers, so the random augmentations of the remaining batches differ.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from soups.errors import BadInput
from soups.io.files import atomic_write
from soups.names import STATE_NAME
from soups.settings import flat_config

log = logging.getLogger(__name__)


def _rng_states() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": {"version": version, "internal": list(internal), "gauss": python_gauss}}


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


# settings added after training states were first saved: such a state was made under their default
SETTINGS_BEFORE = {"wd_1d": False}
RESUME_KEYS = ("model", "data", "head", "lora", "lr", "wd", "wd_1d", "epochs", "batch_size", "warmup_steps", "grad_clip",
               "label_smoothing", "mixup", "randaug", "crop_scale", "precision", "seed", "ema_decay", "ema_warmup")


def training_settings(cfg) -> dict:
    """What a training state depends on (as plain JSON values): resuming under other settings would finish a
    run that is neither the old one nor the new one."""
    from omegaconf import OmegaConf

    return json.loads(json.dumps({k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg.get(k))
                                  else cfg.get(k) for k in RESUME_KEYS}, default=str))


def changed_settings(recorded: dict, settings: dict) -> list[str]:
    """`key: recorded -> now` for every training setting (nested ones by dotted key, e.g. `model.image_size`)
    that `recorded` (a run's config) holds and `settings` (training_settings) gives another value; a setting
    the recorded run did not know (an older version) is not compared."""
    theirs = flat_config({k: recorded[k] for k in RESUME_KEYS if k in recorded})
    ours = flat_config(settings)
    return [f"{k}: {theirs[k]!r} -> {ours[k]!r}" for k in theirs if k in ours and theirs[k] != ours[k]]


def save_train_state(folder: Path, *, model, optimizer, scheduler, epoch_generator_state: torch.Tensor,
                     epoch: int, batches_done: int, step: int, history: list[dict], pending: list[float],
                     scaler=None, settings: dict | None = None, ema: dict | None = None) -> None:
    """In epoch `epoch` (0-based) after `batches_done` of its batches, `step` steps in all: everything the
    rest of the run depends on. `epoch_generator_state`: the loader generator's state when the epoch began;
    `scaler`: fp16's torch.amp.GradScaler (its loss scale and growth tracker); `ema`: the EMA's state dict."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": _rng_states(), "generator": epoch_generator_state, "epoch": epoch,
             "batches_done": batches_done, "step": step, "history": history, "pending": pending,
             "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
             "settings": json.dumps(settings or {}, sort_keys=True), "ema": ema or {}}
    atomic_write(Path(folder) / STATE_NAME, lambda tmp: torch.save(state, tmp))


def load_train_state(folder: Path, *, model, optimizer, scheduler, generator: torch.Generator,
                     scaler=None, settings: dict | None = None, ema=None) -> dict | None:
    """Restores a saved state into these objects (the generator as the saved epoch began; `ema`, a module,
    gets the saved EMA weights); returns
    {epoch, batches_done, step, history, pending}, or None. Raises BadInput when `settings` differ from the
    ones the state was saved under (training_settings), naming what changed."""
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable state means: start over, loudly
        if type(err).__module__.startswith("submitit"):  # its signal handler stopping the job: not the file
            raise
        log.warning("training state %s unreadable (%s); starting from the beginning", path, err)
        return None
    saved = json.loads(state.get("settings") or "{}")
    saved = {**SETTINGS_BEFORE, **saved} if saved else saved
    if saved and settings is not None:
        changed = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
        if changed:
            raise BadInput(f"{path} was saved under other settings ({', '.join(changed)} changed): resume with the "
                           f"settings it was started with, or delete it to start this run over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if not state.get("ema"):
            raise BadInput(f"{path} holds no EMA of the weights: it was saved by a run without ema_decay; delete "
                           f"it to start this run over")
        ema.load_state_dict(state["ema"])
    _set_rng_states(state["rng"])
    state.setdefault("batches_done", 0)  # states saved at epoch ends only
    log.info("resuming from %s: epoch %d after %d of its batches, %d steps done", path, state["epoch"],
             state["batches_done"], state["step"])
    return {k: state[k] for k in ("epoch", "batches_done", "step", "history", "pending")}


def clear_train_state(folder: Path) -> None:
    (Path(folder) / STATE_NAME).unlink(missing_ok=True)
