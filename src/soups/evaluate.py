"""Accuracy of a model on the held-out set, the test set and the shifts; BN recalibration."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

from soups.data import EvalSet
from soups.runtime import autocast

HELD_OUT = "val"
TEST = "test"


class Evaluator:
    def __init__(self, sets: dict[str, EvalSet], batch_size: int, precision: str, device: torch.device,
                 progress: bool = True):
        if HELD_OUT not in sets or TEST not in sets:
            raise ValueError(f"evaluation needs '{HELD_OUT}' and '{TEST}' sets, got {list(sets)}")
        self.sets = sets
        self.batch_size = batch_size
        self.precision = precision
        self.device = device
        self.progress = progress

    @property
    def shift_names(self) -> list[str]:
        return [n for n in self.sets if n not in (HELD_OUT, TEST)]

    @torch.no_grad()  # not inference_mode: bf16 autocast under it was slower on CPU
    def logits(self, model: nn.Module, name: str) -> torch.Tensor:
        model.eval()
        data = self.sets[name]
        out = []
        batches = data.batches(self.batch_size)
        if self.progress:
            batches = tqdm(batches, total=-(-len(data) // self.batch_size), desc=f"eval {name}", leave=False, disable=None)
        for images, _ in batches:
            with autocast(self.precision, self.device):
                out.append(model(images.to(self.device, non_blocking=True)).float().cpu())
        return torch.cat(out)

    def accuracy_of_logits(self, name: str, logits: torch.Tensor) -> float:
        data = self.sets[name]
        project = getattr(data, "project_logits", None)  # class subsets (ImageNet-R/A), ObjectNet's max-merge
        preds = (project(logits) if project else logits).argmax(-1)
        return 100.0 * (preds == data.labels).float().mean().item()

    def accuracy(self, model: nn.Module, name: str) -> float:
        return self.accuracy_of_logits(name, self.logits(model, name))

    def evaluate(self, model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
        """Top-1 % per set, plus `avg_shifts` (unweighted mean over the shift sets, as in the paper)."""
        names = list(self.sets) if names is None else names
        return self.with_average({n: self.accuracy(model, n) for n in names})

    def all_logits(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: self.logits(model, n) for n in self.sets}

    def metrics_of(self, logits: dict[str, torch.Tensor]) -> dict[str, float]:
        """What `evaluate` returns, from logits already computed (e.g. cached, or an ensemble's mean)."""
        return self.with_average({n: self.accuracy_of_logits(n, v) for n, v in logits.items()})

    def with_average(self, metrics: dict[str, float]) -> dict[str, float]:
        shifts = [metrics[n] for n in self.shift_names if n in metrics]
        if shifts:
            metrics["avg_shifts"] = sum(shifts) / len(shifts)
        return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in metrics.items())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, sample: EvalSet, batch_size: int, device: torch.device) -> None:
    """Recompute BatchNorm running statistics on a fixed sample (cumulative average, as SWA does)."""
    update_bn((images.to(device) for images, _ in sample.batches(batch_size)), model, device=None)
