"""Experiment logging, chosen by conf/logger/<key>.yaml (`_target_`): `wandb` (wandb_logger.py) or `none`.
Add a logger: one file here with a `Logger` subclass + one YAML. Jobs see only a `Tracker`.

`tracking(...)` always closes its run, also when the job fails: Hydra multirun jobs share a process.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from soups.settings import Settings, build


class Tracker:
    """What a job hands its metrics, tables and figures to. This base logs nothing (logger=none)."""

    def log(self, metrics: dict, step: int | None = None) -> None: ...
    def summary(self, metrics: dict) -> None: ...
    def table(self, key: str, columns: list[str], rows: list[list]) -> None: ...
    def image(self, key: str, path: str | Path) -> None: ...


class Logger(Settings, ABC):
    """Base of every logger: a dataclass whose fields are the logger config's settings."""

    @abstractmethod
    def open(self, run_dir: Path, name: str, job_type: str, config: dict, group: str | None
             ) -> contextlib.AbstractContextManager[Tracker]:
        """A run for one job (a fine-tune or a soup job) writing under `run_dir`; closed on exit, also
        when the job fails. `config` is the job's resolved config; `group` e.g. the sweep's folder name."""


@dataclass
class NoLogger(Logger):
    def open(self, run_dir, name, job_type, config, group):
        return contextlib.nullcontext(Tracker())


def build_logger(logger_cfg) -> Logger:
    """The Logger that `logger._target_` names (built before a job's work, so a bad setting fails first).
    Raises BadInput for any other target or a bad setting."""
    return build(logger_cfg, "logger", "soups.tracking", Logger)


@contextlib.contextmanager
def tracking(logger: Logger | None, run_dir: str | Path, name: str, job_type: str, config: dict,
             group: str | None) -> Iterator[Tracker]:
    """The job's Tracker (logger None: log nothing)."""
    with (logger or NoLogger()).open(Path(run_dir), name, job_type, config, group) as tracker:
        yield tracker
