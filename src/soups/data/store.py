"""Evaluation sets decoded once. Each image goes through the eval transform up to the tensor
conversion (resize, crop, RGB) and is stored as uint8 [N,3,R,R] in a memory-mapped .npy under
`<cache_dir>/evalsets/<key>/`; batches are normalized on the fly with the same operations as
torchvision's ToTensor + Normalize, so the model sees bit-identical inputs to the JPEG path, while
greedy and learned soups' repeated passes decode nothing.

The key covers the set's name, its sample ids, the transform and the border crop: change any and the
store is rebuilt. A build writes a temporary file, renames it, and writes `meta.json` last, so an
interrupted build is never read; concurrent builders wait on a file lock.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader
from torchvision import transforms as T

from soups.data.images import batch_indices, serve_batches
from soups.data.folders import FileEvalSet, FileImages
from soups.errors import Unavailable
from soups.io.files import read_json, write_json

log = logging.getLogger(__name__)
VERSION = 1


def split_transform(transform) -> tuple[T.Compose, tuple, tuple]:
    """(the PIL part of an eval transform, mean, std) from Compose([..., ToTensor(), Normalize(m, s)])."""
    steps = list(getattr(transform, "transforms", []))
    cut = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)  # open_clip: MaybeToTensor
    if cut is None or cut + 2 != len(steps) or not isinstance(steps[cut + 1], T.Normalize):
        raise ValueError(f"cannot store this eval transform: expected Compose([..., ToTensor(), Normalize()]) "
                         f"ending there, got {transform}")
    normalize = steps[cut + 1]
    return T.Compose(steps[:cut]), tuple(normalize.mean), tuple(normalize.std)


def _to_uint8(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def reserve(path: Path, name: str) -> None:
    """Allocate the whole (sparse) file now. A memory map written past the free disk space kills the
    process with SIGBUS; allocating first turns a full disk into one plain error before any write.

    Raises Unavailable when the disk (or quota) has too little room; file systems without fallocate keep
    the sparse file."""
    size = path.stat().st_size
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return  # e.g. EOPNOTSUPP: nothing to reserve with
        free = shutil.disk_usage(path.parent).free
        raise Unavailable(f"{name}: the eval-set store needs {size / 1e9:.2f} GB in {path.parent} and only "
                          f"{free / 1e9:.2f} GB are free; free some space, point paths.cache_dir at a larger "
                          f"disk, or set data.store_eval_sets=false") from err


class StoredEvalSet:
    """A FileEvalSet served from its uint8 store (built on first use)."""

    def __init__(self, source: FileEvalSet, cache_dir: str | Path, build_batch_size: int = 64):
        self.source, self.name, self.labels = source, source.name, source.labels
        self.project_logits = source.project_logits
        self.sample_ids = source.sample_ids
        self.pil_transform, mean, std = split_transform(source.transform)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.build_batch_size = build_batch_size
        key = {"name": self.name, "version": VERSION, "crop_border": source.crop_border,
               "transform": repr(self.pil_transform),
               "ids": hashlib.sha256("\n".join(self.sample_ids).encode()).hexdigest()}
        if not source.rgb_first:  # (only then: stores built before this key existed stay valid)
            key["rgb"] = "after the crop"
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / "evalsets" / f"{self.name}-{digest}"
        self.key = key
        self._array: np.ndarray | None = None

    def __len__(self):
        return len(self.labels)

    @property
    def array(self) -> np.ndarray:
        """uint8 [N,3,R,R], a read-only memory map: pages load on demand."""
        if self._array is None:
            opened = self._open()
            self._array = opened if opened is not None else self._build()
        return self._array

    def _open(self) -> np.ndarray | None:
        meta, path = self.dir / "meta.json", self.dir / "images.npy"
        if not meta.is_file() or not path.is_file() or read_json(meta).get("key") != self.key:
            return None
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # empty, truncated or damaged: rebuilt
            log.warning("%s: eval-set store %s unreadable (%s); rebuilding", self.name, path, err)
            return None
        if array.dtype != np.uint8 or array.ndim != 4 or len(array) != len(self):
            return None
        return array

    def _build(self) -> np.ndarray:
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / ".lock")):
            opened = self._open()  # another process may have built it meanwhile
            if opened is not None:
                return opened
            (self.dir / "meta.json").unlink(missing_ok=True)
            src = self.source
            images = FileImages(src.paths, src.labels, T.Compose([self.pil_transform, _to_uint8]), src.crop_border,
                                src.rgb_first)
            loader = DataLoader(images, batch_size=self.build_batch_size, num_workers=src.num_workers)
            log.info("%s: decoding %d images once into %s", self.name, len(self), self.dir)
            tmp = self.dir / f".images.npy.{os.getpid()}.tmp"
            array, start = None, 0
            try:
                for batch, _ in loader:
                    if array is None:
                        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(self), *batch.shape[1:]))
                        reserve(tmp, self.name)
                    array[start:start + len(batch)] = batch.numpy()
                    start += len(batch)
                array.flush()
                del array
                os.replace(tmp, self.dir / "images.npy")
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            write_json({"key": self.key, "images": len(self)}, self.dir / "meta.json")  # last: marks it complete
        return self._open()

    def normalize(self, batch_u8: torch.Tensor) -> torch.Tensor:
        # ToTensor's x / 255, then Normalize's (x - mean) / std: the very same float operations
        mean, std = self._on_device.setdefault(batch_u8.device, (self.mean.to(batch_u8.device),
                                                                 self.std.to(batch_u8.device)))
        return batch_u8.float().div(255).sub(mean).div(std)

    def batches(self, batch_size: int, shuffle_seed: int | None = None, device=None, rows: range | None = None):
        """Yields (normalized images on `device`, labels) of all images or the contiguous `rows`; uint8 is
        moved, then normalized there."""
        array = self.array

        def fetch(take):
            rows = take.sort().values  # memory-map reads in file order
            first, last = int(rows[0]), int(rows[-1])
            if last - first + 1 == len(rows):  # a run of rows: a view of the map, copied once by the consumer
                with warnings.catch_warnings():  # read-only map: nothing writes into the view
                    warnings.simplefilter("ignore", UserWarning)
                    return torch.from_numpy(array[first:last + 1]), self.labels[rows]
            return torch.from_numpy(array[rows.numpy()]), self.labels[rows]

        yield from serve_batches(batch_indices(len(self), batch_size, shuffle_seed, rows), fetch, self.normalize, device)
