"""In-memory image sets: raw uint8 arrays, resized once to the model's input size for evaluation,
and a timm-transformed view of them for training (RandAugment etc. work on PIL images)."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset


@dataclass
class ImageArray:
    """`images`: uint8 [N,H,W] (grey) or [N,H,W,3]; `labels`: int64 [N]; `ids`: int64 [N], each image's
    index in its source (default 0..N-1), so cached predictions follow an image through any subset."""
    name: str
    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor | None = None

    def __post_init__(self):
        if self.ids is None:
            self.ids = torch.arange(len(self.labels))
        if self.images.dtype != torch.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(f"{self.name}: expected uint8 images [N,H,W] or [N,H,W,3], "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self):
        return len(self.labels)


def checked_rows(n: int, rows: range | None) -> range:
    """All of 0..n-1, or `rows` (e.g. one rank's shard), which must be a contiguous part of it."""
    rows = range(n) if rows is None else rows
    if rows.step != 1 or not 0 <= rows.start <= rows.stop <= n:
        raise ValueError(f"rows must be a contiguous range within 0..{n}, got {rows}")
    return rows


def batch_indices(n: int, batch_size: int, shuffle_seed: int | None = None, rows: range | None = None):
    """Index tensors of consecutive batches over 0..n-1 (or its contiguous `rows`): in order, or a
    seeded permutation."""
    rows = checked_rows(n, rows)
    order = torch.arange(rows.start, rows.stop) if shuffle_seed is None else \
        rows.start + torch.randperm(len(rows), generator=torch.Generator().manual_seed(shuffle_seed))
    yield from order.split(batch_size)


def serve_batches(index_batches: Iterable[torch.Tensor], fetch: Callable, normalize: Callable,
                  device: torch.device | str | None = None, prefetch: int | None = None):
    """(normalize(images on `device`), labels) per index batch, where `fetch(indices)` -> (uint8 images,
    labels) on the CPU. uint8 crosses to the device (4x fewer bytes than float) and is normalized there.
    `prefetch` batches ahead are read (and copied into pinned memory, for CUDA) by two threads while the
    device computes; default 4 on an accelerator, 0 on the CPU (whose cores are the compute)."""
    device = torch.device(device or "cpu")
    prefetch = (0 if device.type == "cpu" else 4) if prefetch is None else prefetch

    def read(take):
        images, labels = fetch(take)
        if device.type == "cuda":  # one copy, straight from the source (e.g. a memory map) into pinned memory
            images = torch.empty(images.shape, dtype=images.dtype, pin_memory=True).copy_(images)
        return images, labels

    def moved(images, labels):
        return normalize(images.to(device, non_blocking=True)), labels

    if prefetch <= 0:
        for take in index_batches:
            yield moved(*read(take))
        return
    with ThreadPoolExecutor(2) as readers:
        pending = deque()
        for take in index_batches:
            pending.append(readers.submit(read, take))
            if len(pending) > prefetch:
                yield moved(*pending.popleft().result())
        while pending:
            yield moved(*pending.popleft().result())


class EvalSet:
    """An image set decoded and resized once (uint8 [N,3,R,R]); batches are normalized on the fly."""

    def __init__(self, source: ImageArray, image_size: int, mean, std):
        # Images are indexed by `sample_ids` (stable across subsets), never by batch position.
        x = source.images
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        resized = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear",
                                antialias=True, align_corners=False)
        self.name = source.name
        self.images = resized.round().clamp(0, 255).to(torch.uint8)
        self.labels = source.labels
        self.sample_ids = [str(i) for i in source.ids.tolist()]
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255.0
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self):
        return len(self.labels)

    def normalize(self, batch_u8: torch.Tensor) -> torch.Tensor:
        mean, std = self._on_device.setdefault(batch_u8.device, (self.mean.to(batch_u8.device),
                                                                 self.std.to(batch_u8.device)))
        return ((batch_u8.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    def batches(self, batch_size: int, shuffle_seed: int | None = None, device=None, rows: range | None = None):
        """Yields (normalized images on `device`, labels): in a fixed order, or shuffled by `shuffle_seed`;
        all images or the contiguous `rows`."""
        yield from serve_batches(batch_indices(len(self), batch_size, shuffle_seed, rows),
                                 lambda take: (self.images[take], self.labels[take]), self.normalize, device)


class TransformedImages(Dataset):
    """Training view: each item is a PIL RGB image through a (timm) transform."""

    def __init__(self, source: ImageArray, transform):
        self.source = source
        self.transform = transform

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        img = Image.fromarray(self.source.images[i].numpy()).convert("RGB")
        return self.transform(img), self.source.labels[i]
