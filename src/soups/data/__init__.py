"""Datasets by config. `build_data(data_cfg, shifts_cfg, model_cfg, cache_dir)` returns an object with

    eval_sets()           {"val": held-out, "test": ..., <shift>: ...}, each with .labels and .batches(bs)
    train_set(randaug, crop_scale)   the fine-tuning Dataset (timm training transform)
    probe_sets()          (train, val) evaluation-style sets for fitting a linear probe
    bn_set()              the fixed training sample for recomputing BatchNorm statistics
"""
from __future__ import annotations

import torch
from timm.data import create_transform

from soups.data.digits import SHIFTS as MNIST_SHIFTS
from soups.data.digits import make_shift, mnist_splits, subsample
from soups.data.images import EvalSet, ImageArray, TransformedImages
from soups.errors import BadInput
from soups.names import HELD_OUT, TEST

__all__ = ["build_data", "MnistData", "EvalSet", "ImageArray", "train_transform"]


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most `per_class` items of every class, drawn with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for cls in labels.unique():
        idx = (labels == cls).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def build_data(data_cfg, shifts_cfg, model_cfg, cache_dir=None):
    """`cache_dir`: where file-based evaluation sets are stored decoded (soups.data.store); None: decode
    on every pass."""
    if data_cfg.name == "mnist":  # in memory already
        return MnistData(data_cfg, shifts_cfg, model_cfg)
    if data_cfg.name == "imagenet":
        from soups.data.imagenet_data import ImageNetData

        return ImageNetData(data_cfg, shifts_cfg, model_cfg, cache_dir)
    raise BadInput(f"unknown data.name={data_cfg.name!r}; available: mnist, imagenet")


def train_transform(model_cfg, randaug: str | None, crop_scale: float, hflip: float = 0.0,
                    interpolation: str = "bilinear", ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """timm's training transform: random-resized crop + RandAugment (no colour jitter, no erasing)."""
    return create_transform(
        input_size=model_cfg.image_size, is_training=True, scale=(crop_scale, 1.0), ratio=ratio,
        hflip=hflip, vflip=0.0, color_jitter=0.0, auto_augment=randaug or None, interpolation=interpolation,
        mean=tuple(model_cfg.mean), std=tuple(model_cfg.std), re_prob=0.0)


class MnistData:
    """The embedded default: in-memory digits, resized once to the model's input size."""

    def __init__(self, data_cfg, shifts_cfg, model_cfg):
        unknown = [n for n in shifts_cfg.names if n not in MNIST_SHIFTS]
        if unknown:
            raise BadInput(f"unknown shifts {unknown}; MNIST shifts are {list(MNIST_SHIFTS)}")
        self.cfg, self.model_cfg = data_cfg, model_cfg
        splits = mnist_splits(data_cfg.train_per_class, data_cfg.val_per_class, data_cfg.test_per_class,
                              data_cfg.split_seed)
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]
        self.shifts = {n: subsample(make_shift(n, self.test, shifts_cfg.seed), shifts_cfg.max_images, shifts_cfg.seed)
                       for n in shifts_cfg.names}

    def _eval(self, images: ImageArray) -> EvalSet:
        return EvalSet(images, self.model_cfg.image_size, self.model_cfg.mean, self.model_cfg.std)

    def eval_sets(self) -> dict[str, EvalSet]:
        return {name: self._eval(a) for name, a in {HELD_OUT: self.val, TEST: self.test, **self.shifts}.items()}

    def train_set(self, randaug: str | None, crop_scale: float) -> TransformedImages:
        # square crops, no flips: digits have a handedness
        transform = train_transform(self.model_cfg, randaug, crop_scale, hflip=0.0, ratio=(1.0, 1.0))
        return TransformedImages(self.train, transform)

    def probe_sets(self, per_class: int | None = None) -> tuple[EvalSet, EvalSet]:
        train = self.train
        if per_class:
            take = per_class_subset(train.labels, per_class, self.cfg.split_seed)
            train = ImageArray(train.name, train.images[take], train.labels[take], train.ids[take])
        return self._eval(train), self._eval(self.val)

    def bn_set(self) -> EvalSet:
        return self._eval(subsample(self.train, self.cfg.bn_recalibration_images, self.cfg.split_seed))
