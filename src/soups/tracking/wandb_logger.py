"""Weights & Biases logging: online when WANDB_API_KEY is set, else offline; never a prompt. A server
that cannot be reached within `init_timeout` seconds means offline logging, said in the log."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from soups.errors import BadInput
from soups.tracking import Logger, Tracker

log = logging.getLogger(__name__)
MODES = ("online", "offline", "disabled")


class WandbTracker(Tracker):
    def __init__(self, run):
        self.run = run

    def log(self, metrics, step=None):
        self.run.log(metrics, step=step)

    def summary(self, metrics):
        self.run.summary.update(metrics)

    def table(self, key, columns, rows):
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def image(self, key, path):
        import wandb

        self.run.log({key: wandb.Image(str(path))})


def run_id(run_dir: str | Path) -> str:
    """The W&B run id of a run dir: the same for every launch of the same job."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


@dataclass
class WandbLogger(Logger):
    project: str = "soups"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None = decide from WANDB_API_KEY / WANDB_MODE
    group: str | None = None  # default: the sweep's folder name
    tags: list = field(default_factory=list)
    init_timeout: float = 90.0  # seconds to reach the W&B server; after that the run logs offline (and says so)
    silent: bool = True  # W&B prints its own banners when False

    def __post_init__(self):
        super().__post_init__()
        if self.mode is not None and self.mode not in MODES:
            raise BadInput(f"mode={self.mode!r}: expected one of {', '.join(MODES)} or null")

    def resolved_mode(self) -> str:
        if self.mode:
            return self.mode
        return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")

    @contextlib.contextmanager
    def open(self, run_dir, name, job_type, config, group):
        import wandb

        mode = self.resolved_mode()
        Path(run_dir).mkdir(parents=True, exist_ok=True)

        def start(mode: str):
            return wandb.init(project=self.project, entity=self.entity, dir=str(run_dir),
                              id=run_id(run_dir), resume="allow",  # a resumed job continues its run, not a second one
                              name=name, job_type=job_type, group=group, config=config, mode=mode,
                              tags=list(self.tags), reinit="finish_previous",
                              settings=wandb.Settings(silent=self.silent,
                                                      init_timeout=self.init_timeout))

        try:
            run = start(mode)
        except wandb.errors.Error as err:  # server unreachable, key refused, ...: the job goes on, offline
            if mode != "online":
                raise
            log.warning("W&B unreachable (%s): logging offline instead", str(err).splitlines()[0])
            wandb.teardown()  # the failed attempt still holds the run id in W&B's service process
            mode = "offline"
            run = start(mode)
        where = run.url if mode == "online" else f"{run.dir}  (upload later: wandb sync {Path(run.dir).parent})"
        log.info("W&B %s run: %s", mode, where)
        try:
            yield WandbTracker(run)
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()
