"""ImageNet, its held-out split, and the paper's five distribution shifts, read from folders on disk.

Each dataset checks its layout and image count before any work and says what tree it expected and
where to get it. Folder scans happen once per process (cached), not once per model.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import ImageNetInfo
from torch.utils.data import DataLoader, Dataset, Subset

from soups.data.images import checked_rows
from soups.errors import BadInput, MissingInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
WNIDS: list[str] = ImageNetInfo("imagenet-1k").label_names()  # the 1000 classes in index order
WNID_INDEX = {w: i for i, w in enumerate(WNIDS)}

SOURCES = {
    "imagenet": "https://image-net.org/download.php (ILSVRC2012; val sorted into class folders)",
    "imagenet_v2": "https://huggingface.co/datasets/vaishaal/ImageNetV2 (imagenetv2-matched-frequency.tar.gz)",
    "imagenet_sketch": "https://github.com/HaohanWang/ImageNet-Sketch (sketch/ folder)",
    "imagenet_r": "https://github.com/hendrycks/imagenet-r (imagenet-r.tar)",
    "imagenet_a": "https://github.com/hendrycks/natural-adv-examples (imagenet-a.tar)",
    "objectnet": "https://objectnet.dev/download.html (objectnet-1.0.zip)",
}


class DatasetLayoutError(MissingInput):
    """A dataset root that is missing, incomplete or laid out otherwise than expected."""


def layout_error(name: str, problem: str, expected_tree: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{name}: {problem}\nexpected layout:\n{expected_tree}\nget it from: {SOURCES[name]}")


@functools.lru_cache(maxsize=None)
def scan_class_folders(root: str) -> tuple[tuple[str, str], ...]:
    """((path, folder name), ...) sorted like torchvision's ImageFolder: by folder, then by file name."""
    out = []
    for folder in sorted(e.name for e in os.scandir(root) if e.is_dir()):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, folder), followlinks=True)):
            out.extend((os.path.join(dirpath, f), folder) for f in sorted(files)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
    return tuple(out)


def check_count(name: str, found: int, expected: int | None, tree: str) -> None:
    if expected is not None and found != expected:
        raise layout_error(name, f"found {found} images, expected {expected} (incomplete or wrong version?)", tree)


def require_dir(name: str, path: Path, tree: str) -> Path:
    if not path.is_dir():
        raise layout_error(name, f"{path} is a file, expected a folder" if path.exists() else f"missing folder {path}",
                           tree)
    return path


class FileImages(Dataset):
    """Image files through `transform`. `rgb_first`: convert to RGB on load, as torchvision's ImageFolder
    does (the official code's ImageNet, Sketch, R, A, ObjectNet); False leaves it to the transform, after the
    crop, as the official ImageNetV2 loader does (it differs for CMYK, palette and RGBA files)."""

    def __init__(self, paths: list[str], labels: torch.Tensor, transform, crop_border: int = 0,
                 rgb_first: bool = True):
        self.paths, self.labels, self.transform, self.crop_border = paths, labels, transform, crop_border
        self.rgb_first = rgb_first

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB") if self.rgb_first else img.copy()
        if self.crop_border:
            b = self.crop_border
            img = img.crop((b, b, img.width - b, img.height - b))
        return self.transform(img), self.labels[i]


@dataclass
class FileEvalSet:
    """An evaluation set of image files; `project_logits` maps 1000-way logits to the set's classes."""
    name: str
    paths: list[str]
    labels: torch.Tensor
    transform: object
    num_workers: int = 0
    crop_border: int = 0
    project_logits: object = None
    rgb_first: bool = True  # see FileImages

    def __len__(self):
        return len(self.paths)

    @property
    def sample_ids(self) -> list[str]:
        """class folder/file name: the same image wherever the dataset root lives."""
        return ["/".join(Path(p).parts[-2:]) for p in self.paths]

    def batches(self, batch_size: int, shuffle_seed: int | None = None, device=None, rows: range | None = None):
        """Decoded and normalized by DataLoader workers on every pass (see store.py for decode-once); all
        images or the contiguous `rows`."""
        shuffled = shuffle_seed is not None
        images = FileImages(self.paths, self.labels, self.transform, self.crop_border, self.rgb_first)
        if rows is not None:
            images = Subset(images, list(checked_rows(len(self), rows)))
        loader = DataLoader(images,
                            batch_size=batch_size, shuffle=shuffled, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(shuffle_seed) if shuffled else None,
                            pin_memory=torch.device(device or "cpu").type == "cuda")
        for images, labels in loader:
            yield images.to(device or "cpu", non_blocking=True), labels


class ClassSubset:
    """Logits restricted to a subset of ImageNet classes (ImageNet-R and -A have 200)."""

    def __init__(self, indices: list[int]):
        self.indices = torch.tensor(indices)
        self.classes = len(indices)  # the set's own class count: the width of projected logits

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, self.indices]


class MaxOverGroups:
    """Each target class's logit is the max over the ImageNet logits mapped to it (ObjectNet)."""

    def __init__(self, groups: list[list[int]]):
        if any(not g for g in groups):
            raise BadInput("every target class needs at least one ImageNet class")
        width = max(len(g) for g in groups)
        self.index = torch.tensor([g + [g[0]] * (width - len(g)) for g in groups])  # pad by repeating
        self.classes = len(groups)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, self.index].amax(dim=-1)


# ---- ImageNet and the held-out split -------------------------------------------------------------

IMAGENET_TREE = "  <root>/train/n01440764/*.JPEG ... (1000 class folders)\n  <root>/val/n01440764/*.JPEG ..."


def imagenet_split(root: Path, split: str, expected: int | None) -> tuple[list[str], torch.Tensor]:
    folder = require_dir("imagenet", root / split, IMAGENET_TREE)
    samples = scan_class_folders(str(folder))
    folders = sorted({f for _, f in samples})
    if folders != WNIDS:
        raise layout_error("imagenet", f"{folder} has {len(folders)} class folders, expected the 1000 WordNet ids",
                           IMAGENET_TREE)
    check_count("imagenet", len(samples), expected, IMAGENET_TREE)
    return [p for p, _ in samples], torch.tensor([WNID_INDEX[f] for _, f in samples])


def held_out_mask(labels: torch.Tensor, idxs_file: str | None, per_class: int, seed: int,
                  paths: list[str] | None = None) -> np.ndarray:
    """Boolean mask over ImageNet train (ImageFolder order): True = held out (never trained on).

    With the official `imagenet_98_idxs.npy` (0/1 per image, 1 = held out, 26 per class) the split is
    the paper's; otherwise `per_class` images per class are drawn with `seed` (not the same images).
    """
    n = len(labels)
    if idxs_file:
        if not Path(idxs_file).is_file():
            raise MissingInput(f"held-out split file {idxs_file} not found: fetch it with "
                               f"scripts/download_checkpoints.py, or set data.held_out.idxs_file=null for "
                               f"a seeded split of the same size")
        mask = np.load(idxs_file, allow_pickle=False)
        if mask.shape != (n,) or not np.isin(mask, (0, 1)).all():
            raise BadInput(f"{idxs_file}: expected a 0/1 mask over the {n} ImageNet train images "
                           f"(ImageFolder order), got {mask.dtype} {mask.shape}")
        held = mask.astype(bool)
        if paths is not None and held.sum() > 1000:
            first = np.flatnonzero(held)[1000]
            if not paths[first].endswith("n01675722_4108.JPEG"):  # the official repo's sanity check
                raise BadInput(f"held-out image 1000 is {paths[first]}, expected n01675722_4108.JPEG: "
                               f"the train folder does not match the official split's ordering")
        return held
    rng = np.random.default_rng(seed)
    held = np.zeros(n, dtype=bool)
    labels_np = labels.numpy()
    for cls in np.unique(labels_np):
        idx = np.flatnonzero(labels_np == cls)
        if len(idx) <= per_class:
            raise BadInput(f"class {cls} has {len(idx)} training images, cannot hold out {per_class}")
        held[rng.choice(idx, size=per_class, replace=False)] = True
    return held
