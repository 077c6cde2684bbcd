"""Following SLURM jobs on a cluster without accounting. submitit follows its jobs with `sacct`, which
answers "Slurm accounting storage is disabled" on a cluster that keeps none (common on small ones):
submitit then warns on every poll and, for a job killed before it wrote its result (out of memory,
`scancel`), can wait forever. `launcher=slurm` (hydra_plugins/soups_launchers) follows the jobs with
`squeue` there instead (`QueueWatcher`); with accounting it is submitit's launcher as it is.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess

from hydra.core.utils import JobStatus
from submitit.slurm import slurm as submitit_slurm

log = logging.getLogger(__name__)
LEFT_QUEUE = "LEFT_QUEUE"  # the state of a job that ended out of squeue's sight; submitit counts it as done


# squeue shows states sacct never does; submitit counts every state outside its "incomplete" list as ended
LIVE = {"CONFIGURING": "RUNNING", "RESIZING": "RUNNING", "SIGNALING": "RUNNING", "STAGE_OUT": "RUNNING",
        "STOPPED": "RUNNING", "SUSPENDED": "RUNNING", "REQUEUE_HOLD": "PENDING", "REQUEUE_FED": "PENDING",
        "RESV_DEL_HOLD": "PENDING", "SPECIAL_EXIT": "PENDING"}
STOPPED_FOR_GOOD = "timed-out too many times"  # submitit's reason once max_num_timeout is used up
CANNOT_START = "CANNOT_START"  # pending for a reason that never clears: more than any node or the partition has
NEVER = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints")


def keeps_accounting() -> bool:
    """Whether `sacct` can answer on this cluster: AccountingStorageType (`scontrol show config`) is set and
    not none (SLURM <= 23.02 prints accounting_storage/none, later ones (null) for an unset plugin). Unknown
    (scontrol missing or failing) counts as yes: submitit as it is."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    for line in config.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "AccountingStorageType":
            return value.strip() not in ("accounting_storage/none", "(null)", "none", "")
    return True


class QueueWatcher(submitit_slurm.SlurmInfoWatcher):
    """Job states from `squeue --states=all`: pending, running, requeued and, for the controller's MinJobAge
    (300 s by default), ended jobs. A job seen before and gone from the queue since is reported as
    LEFT_QUEUE: ended; its result file (written by every job that ran to its end or raised) says how. A job
    pending for a reason that never clears (NEVER: it asks for more than the partition or any node has) is
    cancelled and reported as CANNOT_START, instead of being waited on forever."""

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "--noheader", "--states=all", "--user", str(os.getuid()), "--format=%i|%T|%N|%r"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList|Reason\n" + text)  # sacct's --parsable2 layout
        for job_id, stats in info.items():  # e.g. CONFIGURING while a cloud node boots: alive, not ended
            stats["State"] = LIVE.get(stats.get("State", ""), stats.get("State", ""))
            if stats["State"] == "PENDING" and stats.get("Reason") in NEVER:
                stats["State"] = f"{CANNOT_START} ({stats['Reason']})"
                try:
                    subprocess.run(["scancel", job_id.split("_")[0]], capture_output=True, timeout=60)
                except (OSError, subprocess.SubprocessError):
                    pass  # still reported: the user's scancel is named in the message
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


def ended_line(err: Exception, sweep: str) -> str:
    """One plain line for a job that ended without a result (submitit's UncompletedJobError: killed, cancelled,
    out of memory, a user error that exited, or one that could not start): the job's own `error: ...` line
    when it printed one, else its state, where its log is and how to go on."""
    text = str(err)
    said = next((line.strip() for line in text.splitlines() if line.strip().startswith("error: ")), None)
    if said:
        return f"{said}\n(said by a job of this sweep; its log: {sweep}/.submitit/)"
    state = re.search(r"state: ([^)]*\)?)", text)
    state = state.group(1) if state else text.splitlines()[0][:200]
    if CANNOT_START in state:
        return (f"error: a job of this sweep cannot start on this cluster (SLURM: {state}): it asks for more CPUs, "
                f"memory, GPUs or time than the partition or any node has; it was cancelled. Check "
                f"hydra.launcher.cpus_per_task, mem_gb, gpus_per_node and timeout_min (`sinfo -N -l` lists the nodes).")
    return (f"error: a job of this sweep ended without finishing (state: {state}). Its log is under "
            f"{sweep}/.submitit/; what it saved is kept in its run dir: relaunch the same command with "
            f"hydra.sweep.dir={sweep} to go on from there.")


def stopped_line(job: str, where: str, sweep: str, max_num_timeout) -> str:
    times = max_num_timeout + 1 if isinstance(max_num_timeout, int) else "too many"
    return (f"error: job {job} stopped without finishing: it hit its time limit {times} times "
            f"(hydra.launcher.max_num_timeout={max_num_timeout}). What it saved is kept in {where}: relaunch the "
            f"same command with hydra.sweep.dir={sweep} and a longer hydra.launcher.timeout_min to go on from there.")


def stopped_jobs(results, sweep: str, max_num_timeout) -> list[str]:
    """One plain line per job that submitit stopped for good (its reason "timed-out too many times" in its
    Hydra result: it hit its time limit more than max_num_timeout times), saying where its state is."""
    lines = []
    for result in results:
        err = getattr(result, "_return_value", None)
        if result.status != JobStatus.FAILED or STOPPED_FOR_GOOD not in str(err):
            continue
        try:
            job, where = f"#{result.hydra_cfg.hydra.job.num}", str(result.hydra_cfg.hydra.runtime.output_dir)
        except AttributeError:
            job, where = repr(" ".join(result.overrides or [])), "its run dir"
        lines.append(stopped_line(job, where, sweep, max_num_timeout))
    return lines
