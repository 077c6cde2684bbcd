"""Device, precision, threads and seeds: set in one place."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {list(PRECISIONS)}")


def autocast(precision: str, device: torch.device):
    check_precision(precision)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def setup(seed: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
