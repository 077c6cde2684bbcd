"""Within-run averages of one fine-tune, the baselines soups are reported next to (DiWA, Model Ratatouille):
an exponential moving average of its weights (timm's `ModelEmaV3`, as timm's train.py keeps it) and the
weights at its last checkpoints, taken at epoch ends or every `checkpoint_every_steps` updates (averaged by
`method=last_k`, SWA-style). Both are saved with the run and
their state is part of the training state, so a resumed run ends with the same EMA."""
from __future__ import annotations

from pathlib import Path

import torch
from timm.utils import ModelEmaV3

from soups.io.files import atomic_save_safetensors

CHECKPOINTS = "checkpoints"  # <run>/checkpoints/step_<updates done>.safetensors
EMA_NAME = "model_ema.safetensors"


class WithinRun:
    """Keeps the EMA (if `cfg.ema_decay`) and the last `cfg.keep_checkpoints` checkpoints of `model`'s weights,
    taken every `cfg.checkpoint_every_steps` updates or, if that is null, at every epoch end."""

    def __init__(self, model: torch.nn.Module, cfg, run_dir: Path | None, is_main: bool = True):
        decay = cfg.get("ema_decay")
        self.ema = ModelEmaV3(model, decay=float(decay), use_warmup=bool(cfg.get("ema_warmup"))) if decay else None
        self.keep = int(cfg.get("keep_checkpoints") or 0)
        self.every = int(cfg.get("checkpoint_every_steps") or 0)
        self.folder = Path(run_dir) / CHECKPOINTS if run_dir else None
        self.is_main = is_main

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        """`step`: optimizer updates done so far (timm's warm-up counts them from 1)."""
        if self.ema is not None:
            self.ema.update(model, step=step)
        if self.every and step % self.every == 0:
            self._checkpoint(model, step)

    def after_epoch(self, model: torch.nn.Module, step: int) -> None:
        """At an epoch's end, `step` updates done."""
        if not self.every:
            self._checkpoint(model, step)

    def _checkpoint(self, model: torch.nn.Module, step: int) -> None:
        """Saves the weights after `step` updates and deletes those older than the last `keep`."""
        if not self.keep or self.folder is None or not self.is_main:
            return
        atomic_save_safetensors(model.state_dict(), self.folder / f"step_{step}.safetensors",
                                metadata={"kind": "checkpoint", "step": str(step)})
        for old in self.saved()[:-self.keep]:
            old.unlink()

    def saved(self) -> list[Path]:
        """The kept checkpoints, oldest first."""
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("step_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))

    def state_dict(self) -> dict | None:
        return self.ema.module.state_dict() if self.ema is not None else None
