"""Following SLURM jobs on a cluster without accounting. submitit follows its jobs with `sacct`, which
answers "Slurm accounting storage is disabled" on a cluster that keeps none (common on small ones):
submitit then warns on every poll and, for a job killed before it wrote its result (out of memory,
`scancel`), can wait forever. `launcher=slurm` (hydra_plugins/soups_launchers) follows the jobs with
`squeue` there instead (`QueueWatcher`); with accounting it is submitit's launcher as it is.
"""
from __future__ import annotations

import contextlib
import getpass
import logging
import subprocess

from hydra.core.utils import JobStatus
from submitit.core.utils import UncompletedJobError
from submitit.slurm import slurm as submitit_slurm

log = logging.getLogger(__name__)
LEFT_QUEUE = "LEFT_QUEUE"  # the state of a job that ended out of squeue's sight; submitit counts it as done


def keeps_accounting() -> bool:
    """Whether `sacct` can answer on this cluster (`scontrol show config`: AccountingStorageType is not
    accounting_storage/none). Unknown (scontrol missing or failing) counts as yes: submitit as it is."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    for line in config.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "AccountingStorageType":
            return value.strip() != "accounting_storage/none"
    return True


class QueueWatcher(submitit_slurm.SlurmInfoWatcher):
    """Job states from `squeue --states=all`: pending, running, requeued and, for the controller's MinJobAge
    (300 s by default), ended jobs. A job seen before and gone from the queue since is reported as
    LEFT_QUEUE: ended; its result file (written by every job that ran to its end or raised) says how."""

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "--noheader", "--states=all", "--user", getpass.getuser(), "--format=%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)  # sacct's --parsable2 layout
        for job_id in self._registered - self._finished:
            if job_id not in info and job_id in self._info_dict:
                info[job_id] = {"JobID": job_id, "State": LEFT_QUEUE, "NodeList": ""}
        return info


@contextlib.contextmanager
def followed():
    """While launching: submitit's SLURM jobs followed by squeue if the cluster keeps no accounting (submitit
    polls through one watcher, a class attribute of SlurmJob), else by sacct as submitit does."""
    if keeps_accounting():
        yield
        return
    log.info("this cluster keeps no job accounting (sacct): following the jobs with squeue")
    before = submitit_slurm.SlurmJob.watcher
    submitit_slurm.SlurmJob.watcher = QueueWatcher(delay_s=60)
    try:
        yield
    finally:
        submitit_slurm.SlurmJob.watcher = before


def stopped_jobs(results, max_num_timeout) -> list[str]:
    """One plain line per job that submitit stopped for good (`UncompletedJobError` in its Hydra result: it
    hit its time limit more than max_num_timeout times), saying where its state is and how to go on."""
    lines = []
    for result in results:
        err = getattr(result, "_return_value", None)
        if result.status != JobStatus.FAILED or not isinstance(err, UncompletedJobError):
            continue
        try:
            job, where = f"#{result.hydra_cfg.hydra.job.num}", str(result.hydra_cfg.hydra.runtime.output_dir)
        except AttributeError:
            job, where = repr(" ".join(result.overrides or [])), "its run dir"
        times = max_num_timeout + 1 if isinstance(max_num_timeout, int) else "too many"
        lines.append(f"error: job {job} stopped without finishing: it hit its time limit {times} times "
                     f"(hydra.launcher.max_num_timeout={max_num_timeout}; submitit: {err}). What it saved is kept "
                     f"in {where}: relaunch the same command with hydra.sweep.dir=<this sweep> and a longer "
                     f"hydra.launcher.timeout_min to go on from there.")
    return lines
