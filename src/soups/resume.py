"""A fine-tune's training state at an epoch boundary, so a killed run goes on where it stopped and ends
with the weights an uninterrupted run would have (on CPU; tested by SIGKILL).

Saved after every epoch, atomically: model, optimizer, scheduler, the global RNGs (python, numpy,
torch, CUDA), the DataLoader's generator (next epoch's order and worker seeds follow from it), the
step counter and the logged history. Read back with `torch.load(weights_only=True)`: tensors and plain
values only, nothing is unpickled.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from soups.io import atomic_write

log = logging.getLogger(__name__)
STATE_NAME = "train_state.pt"


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


def save_train_state(folder: Path, *, model, optimizer, scheduler, generator: torch.Generator, epoch: int,
                     step: int, history: list[dict], pending: list[float]) -> None:
    """After `epoch` epochs (and `step` steps): everything the next epoch depends on."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": _rng_states(), "generator": generator.get_state(), "epoch": epoch, "step": step,
             "history": history, "pending": pending}
    atomic_write(Path(folder) / STATE_NAME, lambda tmp: torch.save(state, tmp))


def load_train_state(folder: Path, *, model, optimizer, scheduler, generator: torch.Generator) -> dict | None:
    """Restores a saved state into these objects; returns {epoch, step, history, pending}, or None."""
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable state means: start over, loudly
        log.warning("training state %s unreadable (%s); starting from the beginning", path, err)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    _set_rng_states(state["rng"])
    log.info("resuming from %s: %d epochs, %d steps done", path, state["epoch"], state["step"])
    return {k: state[k] for k in ("epoch", "step", "history", "pending")}


def clear_train_state(folder: Path) -> None:
    (Path(folder) / STATE_NAME).unlink(missing_ok=True)
