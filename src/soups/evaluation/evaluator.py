"""Forward passes and accuracy of a model on the held-out set, the test set and the shifts; BN recalibration.
Every method returns what it measured (a `Pass` where a pass can stop early); nothing is handed back
through attributes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

from soups.data import EvalSet
from soups.distributed import SINGLE, Group, gather_shards, shard_rows, sum_over_ranks
from soups.errors import BadInput
from soups.names import HELD_OUT, TEST, AVG_SHIFTS
from soups.runtime import autocast


@dataclass(frozen=True)
class Pass:
    """What one pass over a set measured. `accuracy`: top-1 %, None if the pass stopped early (rejected);
    `logits` [N, C]: a completed single-process pass's (None when stopped, or under several ranks);
    `stopped_at`: {correct, seen, n}, the counts an early stop rested on."""
    accuracy: float | None
    logits: torch.Tensor | None = None
    stopped_at: dict | None = None


class Evaluator:
    """Under torchrun (`group`), each rank forwards its shard of every set: `accuracy` sums the counts
    over the ranks (every rank gets the single-process number), `logits` gathers them on rank 0 (None on
    the others)."""

    def __init__(self, sets: dict[str, EvalSet], batch_size: int, precision: str, device: torch.device,
                 progress: bool = True, compile: bool = False, group: Group = SINGLE):
        if HELD_OUT not in sets or TEST not in sets:
            raise BadInput(f"evaluation needs '{HELD_OUT}' and '{TEST}' sets, got {list(sets)}")
        small = {n: len(s) for n, s in sets.items() if len(s) < group.world_size}
        if small:
            raise BadInput(f"sets {small} have fewer images than the {group.world_size} ranks sharing them")
        self.sets = sets
        self.batch_size = batch_size
        self.precision = precision
        self.device = device
        self.progress = progress
        self.group = group
        self.compile = compile  # torch.compile the forward: pays a compilation up front (see BENCHMARKS.md)
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # (model, its compiled forward)
        self.images_forwarded = 0  # a running count, read by benchmarks and analyses

    def runner(self, model: nn.Module) -> nn.Module:
        """What runs the forward pass: the model, or its compiled twin (same parameters, loaded in place)."""
        if not self.compile:
            return model
        if self._compiled is None or self._compiled[0] is not model:
            self._compiled = (model, torch.compile(model))
        return self._compiled[1]

    @property
    def shift_names(self) -> list[str]:
        return [n for n in self.sets if n not in (HELD_OUT, TEST)]

    @torch.no_grad()  # not inference_mode: bf16 autocast under it was slower on CPU
    def forward(self, model: nn.Module, name: str):
        """Yields (logits, labels) batch by batch of this rank's shard; counts the images forwarded."""
        model.eval()
        run = self.runner(model)
        data = self.sets[name]
        rows = shard_rows(len(data), self.group)
        batches = data.batches(self.batch_size, device=self.device, rows=rows if self.group.active else None)
        if self.progress:
            batches = tqdm(batches, total=-(-len(rows) // self.batch_size), desc=f"eval {name}", leave=False,
                           disable=None if self.group.is_main else True)
        for images, labels in batches:
            with autocast(self.precision, self.device):
                logits = run(images).float().cpu()
            self.images_forwarded += len(labels)
            yield logits, labels

    @torch.no_grad()
    def sample_logits(self, model: nn.Module, data, max_images: int, shuffle_seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n, C], labels [n]) of the first `max_images` (n = at most that) of a `shuffle_seed`-shuffled
        pass over `data`, any set with `.batches` (e.g. training images); counted in `images_forwarded`."""
        model.eval()
        run, parts, labels_seen, seen = self.runner(model), [], [], 0
        for images, labels in data.batches(self.batch_size, shuffle_seed=shuffle_seed, device=self.device):
            take = min(len(labels), max_images - seen)
            with autocast(self.precision, self.device):
                parts.append(run(images[:take]).float().cpu())
            labels_seen.append(labels[:take].cpu())
            seen += take
            self.images_forwarded += take
            if seen >= max_images:
                break
        return torch.cat(parts), torch.cat(labels_seen)

    def logits(self, model: nn.Module, name: str) -> torch.Tensor | None:
        part = [logits for logits, _ in self.forward(model, name)]
        return gather_shards(self.group, torch.cat(part), len(self.sets[name]))

    def projected(self, name: str, logits: torch.Tensor) -> torch.Tensor:
        """[N, C] logits -> [N, C_set] over the set's own classes (ImageNet-R/A: their 200-class subsets,
        ObjectNet: the max over each class's ImageNet classes); the labels index these. Logits already over
        the set's classes (an ensemble's mean of projected logits) are returned as they are."""
        project = getattr(self.sets[name], "project_logits", None)
        if project is None or self.projects_once(name) and logits.shape[-1] == project.classes:
            return logits
        return project(logits)

    def projects_once(self, name: str) -> bool:
        """Whether set `name`'s projection says its width (`.classes`), so projected logits are told from raw
        ones: ensembles then average projected logits; a projection without it gets raw ones."""
        return getattr(getattr(self.sets[name], "project_logits", None), "classes", None) is not None

    def averaged_form(self, name: str, logits: torch.Tensor) -> torch.Tensor:
        """One member's logits as an ensemble averages them: over the set's own classes where they can be told
        from raw ones (the released ensemble code), else raw."""
        return self.projected(name, logits) if self.projects_once(name) else logits

    def correct(self, name: str, logits: torch.Tensor, labels: torch.Tensor) -> int:
        return int((self.projected(name, logits).argmax(-1) == labels).sum())

    def outcomes(self, logits: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{set: (projected logits [N, C_set], labels [N])}: what calibration and per-image correctness read."""
        return {n: (self.projected(n, v), self.sets[n].labels) for n, v in logits.items()}

    def accuracy_of_logits(self, name: str, logits: torch.Tensor) -> float:
        data = self.sets[name]
        return 100.0 * self.correct(name, logits, data.labels) / len(data)

    def measure(self, model: nn.Module, name: str, acceptable=None) -> Pass:
        """One pass over set `name`. With `acceptable(score) -> bool`, it stops as soon as even all-correct
        remaining images could not make the score acceptable (exact: the same decision as the full pass, fewer
        images). Sharded over ranks, every rank counts its part in full and the counts are summed."""
        n = len(self.sets[name])
        if self.group.active:
            correct = sum_over_ranks(self.group, sum(self.correct(name, logits, labels)
                                                     for logits, labels in self.forward(model, name)))
            score = 100.0 * correct / n
            return Pass(None if acceptable is not None and not acceptable(score) else score)
        correct, seen, parts = 0, 0, []
        for logits, labels in self.forward(model, name):
            correct, seen = correct + self.correct(name, logits, labels), seen + len(labels)
            parts.append(logits)
            if acceptable is not None and not acceptable(best_reachable(correct, seen, n)):
                return Pass(None, stopped_at={"correct": correct, "seen": seen, "n": n})
        return Pass(100.0 * correct / n, torch.cat(parts))

    def accuracy(self, model: nn.Module, name: str) -> float:
        """Top-1 % on set `name` (every rank gets the single-process number)."""
        return self.measure(model, name).accuracy

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
            metrics[AVG_SHIFTS] = sum(shifts) / len(shifts)
        return metrics


def best_reachable(correct: int, seen: int, n: int) -> float:
    """The accuracy (%) if every one of the n - seen images not yet seen were right."""
    return 100.0 * (correct + n - seen) / n


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in metrics.items())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, sample: EvalSet, batch_size: int, device: torch.device) -> None:
    """Recompute BatchNorm running statistics on a fixed sample (cumulative average, as SWA does), in the
    k = ⌈n / batch_size⌉ batches the sample needs, of sizes ⌊n/k⌋ or ⌈n/k⌉: update_bn weighs every batch
    alike, so plain batches of 64 over 200 images would give the last 8 images the weight of 64."""
    sizes = near_equal_sizes(len(sample), batch_size)
    update_bn(rechunked((images for images, _ in sample.batches(batch_size, device=device)), sizes), model,
              device=None)


def near_equal_sizes(n: int, batch_size: int) -> list[int]:
    """k = ⌈n / batch_size⌉ batch sizes of ⌊n/k⌋ or ⌈n/k⌉ summing to n, the larger last (10 at 4: 3, 3, 4)."""
    k = max(1, -(-n // batch_size))
    bounds = [i * n // k for i in range(k + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def rechunked(batches, sizes: list[int]):
    """The images of `batches` ([B, ...] tensors, in order) regrouped into batches of `sizes`: one pass over
    the set (one DataLoader for image files), at most two batches held."""
    wanted, held = iter(sizes), None
    size = next(wanted, None)
    for batch in batches:
        held = batch if held is None else torch.cat([held, batch])
        while size is not None and len(held) >= size:
            yield held[:size]
            held, size = held[size:], next(wanted, None)
