"""Device, precision, threads and seeds: set in one place; and what a result was computed with."""
from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from soups.errors import BadInput

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BadInput(f"precision={precision!r}; expected one of {list(PRECISIONS)}")


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


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_commit(root: str | Path | None = None) -> dict:
    """The code's commit and whether the checkout had uncommitted changes (None outside a git checkout)."""
    root = Path(root or os.environ.get("SOUPS_ROOT") or Path(__file__).resolve().parents[2])

    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "uncommitted_changes": bool(changes) if commit else None}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions of what computed a result, recorded with it (run.json, soup reports), and the machine:
    float kernels, hence trained weights, differ between CPUs of another instruction-set level
    (`cpu_capability`: torch's kernel level, e.g. AVX2 or AVX512)."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            **{name: _version(name) for name in ("torchvision", "open_clip_torch", "timm", "hydra-core", "numpy")},
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
            platform.processor() or platform.machine(), "cpu": cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "git": git_commit()}
