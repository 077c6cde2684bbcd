"""Datasets by config: a training set, the held-out `val` set, `test`, and the shift sets."""
from __future__ import annotations

from dataclasses import dataclass

from timm.data import create_transform

from soups.data.digits import SHIFTS as MNIST_SHIFTS
from soups.data.digits import make_shift, mnist_splits, subsample
from soups.data.images import EvalSet, ImageArray, TransformedImages

__all__ = ["Data", "load_data", "eval_sets", "bn_recalibration_set", "train_dataset", "EvalSet", "ImageArray"]


@dataclass
class Data:
    train: ImageArray
    val: ImageArray
    test: ImageArray
    shifts: dict[str, ImageArray]

    def eval_arrays(self) -> dict[str, ImageArray]:
        return {"val": self.val, "test": self.test, **self.shifts}


def load_data(data_cfg, shifts_cfg) -> Data:
    if data_cfg.name != "mnist":
        raise ValueError(f"unknown data.name={data_cfg.name!r}; available: mnist")
    splits = mnist_splits(data_cfg.train_per_class, data_cfg.val_per_class, data_cfg.test_per_class,
                          data_cfg.split_seed)
    names = list(shifts_cfg.names)
    unknown = [n for n in names if n not in MNIST_SHIFTS]
    if unknown:
        raise ValueError(f"unknown shifts {unknown}; MNIST shifts are {list(MNIST_SHIFTS)}")
    shifts = {n: subsample(make_shift(n, splits["test"], shifts_cfg.seed), shifts_cfg.max_images, shifts_cfg.seed)
              for n in names}
    return Data(splits["train"], splits["val"], splits["test"], shifts)


def eval_sets(arrays: dict[str, ImageArray], model_cfg) -> dict[str, EvalSet]:
    return {name: EvalSet(a, model_cfg.image_size, model_cfg.mean, model_cfg.std) for name, a in arrays.items()}


def bn_recalibration_set(data: Data, data_cfg, model_cfg) -> EvalSet:
    """The fixed training sample on which BN statistics of every model (individual or soup) are recomputed."""
    sample = subsample(data.train, data_cfg.bn_recalibration_images, data_cfg.split_seed)
    return EvalSet(sample, model_cfg.image_size, model_cfg.mean, model_cfg.std)


def train_dataset(train: ImageArray, model_cfg, randaug: str | None, crop_scale: float) -> TransformedImages:
    """timm's training transform: random-resized crop (no flips: digits have a handedness) + RandAugment."""
    transform = create_transform(
        input_size=model_cfg.image_size, is_training=True, scale=(crop_scale, 1.0), ratio=(1.0, 1.0),
        hflip=0.0, vflip=0.0, color_jitter=0.0, auto_augment=randaug or None, interpolation="bilinear",
        mean=tuple(model_cfg.mean), std=tuple(model_cfg.std), re_prob=0.0)
    return TransformedImages(train, transform)
