"""What a dataset provides (`TaskData`), and the helpers the dataset families share.

A dataset family is one module in this package with one `TaskData` subclass, chosen by its config's
`_target_` (conf/data/<name>.yaml) and built the way every plug-in is (soups.settings.build): its fields are the
config's settings, checked by type (a misspelled key is refused); then `load(model_cfg, cache_dir)` reads it.
A dataset brings its own shifts: the `shifts` field ({names: [...], their settings}).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from timm.data import create_transform

from soups.errors import BadInput
from soups.settings import Settings


@dataclass
class TaskData(Settings, ABC):
    """Evaluation sets are keyed by name: soups.names.HELD_OUT (ranks and selects, never trained on),
    soups.names.TEST, then one per distribution shift. Each set has `.labels` (int64 [N]), `.sample_ids`
    (N strings naming the images or sentences) and `.batches(batch_size, shuffle_seed=None, device=None)` yielding
    (model inputs, labels [B]): float images [B, 3, H, W] normalized for the model, or a padded
    soups.models.text.TokenBatch for text (soups/data/text.py); a set covering fewer classes than the
    model may have `.project_logits` ([B, C] -> [B, C'], with `.classes` = C' so that logits already
    projected, an ensemble's mean, are not projected twice). Subclasses are dataclasses of their settings; `load`
    checks the files up front (soups.errors: a missing root is a MissingInput) and reads them."""

    modality: ClassVar[str] = "image"  # or "text": which models it serves (soups.models.classifier.modality)
    known_shifts: ClassVar[tuple[str, ...] | None] = None  # the shifts a family can make; None: any (it checks)
    shift_settings: ClassVar[tuple[str, ...]] = ("names", "max_images", "seed")  # the `shifts` keys it reads
    class_names: ClassVar[tuple[str, ...]] = ()  # class i's name, where the family knows it (checked against a
                                                 # transformers checkpoint's id2label); (): unknown
    name: str = "data"
    num_classes: int = 0
    shifts: dict | None = None  # the dataset's own: {names: [...], their settings}; required

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.shifts, dict) or not isinstance(self.shifts.get("names"), list):
            raise BadInput(f"{self.name} names no shifts: give conf/data/{self.name}.yaml a `shifts:` node with "
                           f"`names`, a list (its shift sets; `shifts: {{names: []}}` for none), got {self.shifts!r}")
        names, most, seed = self.shifts["names"], self.shifts.get("max_images"), self.shifts.get("seed", 0)
        wrong = []
        if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            wrong.append(f"data.shifts.names={names!r} (expected distinct names)")
        if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
            wrong.append(f"data.shifts.max_images={most!r} (expected an integer >= 1, or null for all)")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            wrong.append(f"data.shifts.seed={seed!r} (expected an integer >= 0)")
        unread = [k for k in self.shifts if k not in self.shift_settings]  # +data.shifts.max_image=50: never read
        if unread:
            wrong.append(f"data.shifts.{unread[0]}: not a setting of {type(self).__name__}'s shifts (its settings: "
                         f"{list(self.shift_settings)})")
        unknown = [n for n in names if self.known_shifts is not None and n not in self.known_shifts]
        if unknown:
            wrong.append(f"data.shifts.names: unknown shifts {unknown} (expected some of {list(self.known_shifts)})")
        if wrong:
            raise BadInput("; ".join(wrong))

    def load(self, model_cfg, cache_dir=None) -> "TaskData":
        """Reads the data for `model_cfg` (input size, normalization, tokenizer); `cache_dir`: where file-based
        evaluation sets are stored decoded (soups.data.store; None: decode every pass). Returns self."""
        return self

    @abstractmethod
    def eval_sets(self) -> dict:
        """{HELD_OUT: ..., TEST: ..., <shift>: ...}"""

    @abstractmethod
    def train_set(self, randaug: str | None, crop_scale: float) -> torch.utils.data.Dataset:
        """The fine-tuning set: (image tensor [3, H, W], label) items through the training transform, or
        (token ids, label) items with a `collate` method that pads a batch (text)."""

    @abstractmethod
    def probe_sets(self, per_class: int | None = None) -> tuple:
        """(train, held-out) evaluation-style sets for fitting the linear-probe head; `per_class` caps train."""

    @abstractmethod
    def bn_set(self):
        """A fixed sample of training images (evaluation transform) for recomputing BatchNorm statistics;
        None where no model of the family has BatchNorm (text)."""


class GivenSets(TaskData):
    """Evaluation sets given as they are, {name: set} with held-out and test first (benchmarks and tests bring
    synthetic ones to soups.evaluation.scorer.PoolScorer); `bn_sample`: the set BN statistics are recomputed on."""

    def __init__(self, sets: dict, bn_sample=None):
        super().__init__(name="given", shifts={"names": [n for n in sets][2:]})
        self.sets, self.bn_sample = sets, bn_sample

    def eval_sets(self) -> dict:
        return self.sets

    def bn_set(self):
        return self.bn_sample

    def train_set(self, randaug, crop_scale):
        raise TypeError("given evaluation sets have no training set")

    def probe_sets(self, per_class=None):
        raise TypeError("given evaluation sets have no probe sets")


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most `per_class` items of every class, drawn with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for cls in labels.unique():
        idx = (labels == cls).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def train_transform(model_cfg, randaug: str | None, crop_scale: float, hflip: float = 0.0,
                    interpolation: str = "bilinear", ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """timm's training transform: random-resized crop + RandAugment (no colour jitter, no erasing)."""
    return create_transform(
        input_size=model_cfg.image_size, is_training=True, scale=(crop_scale, 1.0), ratio=ratio,
        hflip=hflip, vflip=0.0, color_jitter=0.0, auto_augment=randaug or None, interpolation=interpolation,
        mean=tuple(model_cfg.mean), std=tuple(model_cfg.std), re_prob=0.0)
