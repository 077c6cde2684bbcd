"""`data=imagenet`: fine-tune on ImageNet train minus the held-out split; evaluate on the held-out split
(`val`), ImageNet val (`test`) and the shifts. All layouts and counts are checked up front."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch

from soups.data.base import TaskData, per_class_subset, train_transform
from soups.data.folders import FileEvalSet, FileImages, held_out_mask, imagenet_split
from soups.data.imagenet_shifts import BUILDERS
from soups.data.store import StoredEvalSet
from soups.models.classifier import eval_transform
from soups.names import HELD_OUT, TEST


@dataclass
class ImageNetData(TaskData):
    root: str = "data"
    train_dir: str = "train"
    val_dirs: list = field(default_factory=lambda: ["val_in_folder", "val"])  # first that exists
    expected_train_images: int = 1281167
    expected_val_images: int = 50000
    held_out: dict = field(default_factory=lambda: {"idxs_file": None, "per_class": 26, "seed": 0})
    num_workers: int = 8
    store_eval_sets: bool = True
    known_shifts: ClassVar[tuple[str, ...]] = tuple(BUILDERS)
    shift_settings: ClassVar[tuple[str, ...]] = ("names", "folders", "alt_folders", "expected", "objectnet_crop_border")
    bn_recalibration_images: int = 2048

    def load(self, model_cfg, cache_dir=None) -> "ImageNetData":
        shifts, held_out = self.shifts, self.held_out
        self.model_cfg = model_cfg
        self.store_dir = cache_dir if self.store_eval_sets else None
        root = Path(self.root).expanduser()
        self.eval_transform = eval_transform(model_cfg)
        paths, labels = imagenet_split(root, self.train_dir, self.expected_train_images)
        held = held_out_mask(labels, held_out.get("idxs_file"), held_out["per_class"], held_out["seed"], paths)
        self.train_paths = [p for p, h in zip(paths, held) if not h]
        self.train_labels = labels[~held]
        self.held_paths = [p for p, h in zip(paths, held) if h]
        self.held_labels = labels[held]
        val_dir = next((d for d in self.val_dirs if (root / d).is_dir()), self.val_dirs[0])
        self.test_paths, self.test_labels = imagenet_split(root, val_dir, self.expected_val_images)
        self.shift_sets = {}
        for name in shifts["names"]:
            folders = [shifts["folders"][name], *shifts.get("alt_folders", {}).get(name, [])]
            folder = next((f for f in folders if (root / f).is_dir()), folders[0])
            extra = {"crop_border": shifts["objectnet_crop_border"]} if name == "objectnet" else {}
            self.shift_sets[name] = BUILDERS[name](root / folder, self.eval_transform, shifts["expected"][name],
                                                   self.num_workers, **extra)
        return self

    def _eval(self, name, paths, labels) -> FileEvalSet:
        return FileEvalSet(name, paths, labels, self.eval_transform, self.num_workers)

    def _stored(self, files: FileEvalSet):
        """Decoded once into a uint8 store when there is a cache dir (soups.data.store)."""
        return StoredEvalSet(files, self.store_dir) if self.store_dir else files

    def eval_sets(self) -> dict:
        sets = {HELD_OUT: self._eval(HELD_OUT, self.held_paths, self.held_labels),
                TEST: self._eval(TEST, self.test_paths, self.test_labels), **self.shift_sets}
        return {name: self._stored(files) for name, files in sets.items()}

    def train_set(self, randaug: str | None, crop_scale: float) -> FileImages:
        transform = train_transform(self.model_cfg, randaug, crop_scale, hflip=0.5, interpolation="bicubic")
        return FileImages(self.train_paths, self.train_labels, transform)

    def probe_sets(self, per_class: int | None = None) -> tuple[FileEvalSet, FileEvalSet]:
        """(fine-tuning split, capped at `per_class` images per class if given; the held-out split)."""
        take = (per_class_subset(self.train_labels, per_class, self.held_out["seed"]) if per_class
                else torch.arange(len(self.train_paths)))
        train = self._eval("probe_train", [self.train_paths[i] for i in take], self.train_labels[take])
        return train, self._eval(HELD_OUT, self.held_paths, self.held_labels)

    def bn_set(self) -> FileEvalSet:
        rng = np.random.default_rng(self.held_out["seed"])
        take = np.sort(rng.choice(len(self.train_paths), size=self.bn_recalibration_images, replace=False))
        return self._stored(self._eval("bn", [self.train_paths[i] for i in take], self.train_labels[take]))

