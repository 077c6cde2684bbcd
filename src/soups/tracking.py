"""Weights & Biases logging: online when WANDB_API_KEY is set, else offline; never a prompt. A server
that cannot be reached within `logger.init_timeout` seconds means offline logging, said in the log.

`tracking(...)` always closes its run, also when the job fails: Hydra multirun jobs share a process.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from soups.errors import BadInput

log = logging.getLogger(__name__)


class NullTracker:
    def log(self, metrics: dict, step: int | None = None) -> None: ...
    def summary(self, metrics: dict) -> None: ...
    def table(self, key: str, columns: list[str], rows: list[list]) -> None: ...
    def image(self, key: str, path: str | Path) -> None: ...


class WandbTracker(NullTracker):
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


def wandb_mode(logger_cfg) -> str:
    if logger_cfg.get("mode"):
        return logger_cfg.mode
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def run_id(run_dir: str | Path) -> str:
    """The W&B run id of a run dir: the same for every launch of the same job."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


@contextlib.contextmanager
def tracking(logger_cfg, run_dir: str | Path, name: str, job_type: str, config: dict, group: str | None):
    if logger_cfg.kind == "none":
        yield NullTracker()
        return
    if logger_cfg.kind != "wandb":
        raise BadInput(f"logger.kind={logger_cfg.kind!r}; expected wandb or none")
    import wandb

    mode = wandb_mode(logger_cfg)
    Path(run_dir).mkdir(parents=True, exist_ok=True)

    def start(mode: str):
        return wandb.init(project=logger_cfg.project, entity=logger_cfg.get("entity"), dir=str(run_dir),
                          id=run_id(run_dir), resume="allow",  # a resumed job continues its run, not a second one
                          name=name, job_type=job_type, group=group, config=config, mode=mode,
                          tags=list(logger_cfg.get("tags") or []), reinit="finish_previous",
                          settings=wandb.Settings(silent=bool(logger_cfg.get("silent", True)),
                                                  init_timeout=float(logger_cfg.get("init_timeout", 90))))

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
