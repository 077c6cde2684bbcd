"""Checks Hydra runs before any job starts (conf/hydra/default.yaml, `hydra.callbacks`): folders the
run will write to must be writable, so a wrong path fails at once with its name, not after hours of
training when the weights are saved."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be written to (creating it if needed), or None. A real write is tried:
    permission bits say nothing for root, nor for read-only or immutable file systems."""
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent  # the nearest folder that exists: create nothing but a probe
    try:
        if not probe_in.is_dir():
            return f"{probe_in} is a file, not a folder"
        fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{probe_in} is not writable ({err.strerror or err})"
    return None


def check_writable(folders: dict[str, str | Path]) -> None:
    problems = [f"{name}={path}: {why}" for name, path in folders.items()
                if (why := unwritable(Path(path).expanduser().absolute()))]
    if problems:
        raise SystemExit("error: cannot write where this run must write:\n  " + "\n  ".join(problems) +
                         "\nchoose writable folders, e.g. paths.log_dir=... paths.cache_dir=... (or hydra.run.dir=...)")


class WritableFolders(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable({"hydra.run.dir": config.hydra.run.dir, "paths.cache_dir": config.paths.cache_dir})

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable({"hydra.sweep.dir": config.hydra.sweep.dir, "paths.cache_dir": config.paths.cache_dir})


class EvaluationShards(Callback):
    """src/evaluate.py -m: the shards and the pool checked in the launching process, before any job is
    submitted (a job's own error would surface only after the scheduler ran it)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from soups.errors import UserError
        from soups.jobs.evaluate import shard_of, named_pool
        from soups.pools import Pool
        from soups.settings import build

        shards = config.get("shards")
        try:
            shard_of({"shards": shards, "shard": 0})
            named_pool(config, shards)
            build(config.pool, "pool", "soups.pools", Pool).check_choices(config)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None
