"""`launcher=slurm` against a real SLURM cluster: the one-node cluster of scripts/local_slurm.sh (root: it
installs slurm-wlm and munge with apt). `make test-cluster` starts it and runs these; `.ci/run` does so after
`make test`. Without a cluster they are skipped, unless SOUPS_CLUSTER_TESTS=1 (CI), where that fails.

What they prove, each through sbatch, squeue and scontrol: the README's sweep command runs as one job array
within array_parallelism and writes its run dirs and offline W&B runs; a relaunch skips finished jobs; a job
requeued mid-training resumes and ends with the weights of an uninterrupted run; a job that keeps hitting its
time limit ends, after max_num_timeout requeues, with one plain line and its training state kept; a pool
evaluated as an array leaves the soup job no image to forward for its individual models."""
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY
from soups.io.files import read_json
from soups.names import STATE_NAME

pytestmark = pytest.mark.cluster
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
# a CPU node of 2 CPUs: no GPU, one CPU and 1 GB a job (conf/launcher/slurm.yaml asks for a GPU node)
SMALL_NODE = ["launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
              "hydra.launcher.mem_gb=1", "threads=1"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """The local cluster (ClusterName soups-local) or a skip; never a real cluster's queue."""
    answer = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30) \
        if shutil.which("scontrol") else None
    if answer is None or answer.returncode != 0 or not re.search(r"ClusterName\s*=\s*soups-local", answer.stdout):
        why = "the local SLURM cluster does not answer (start it: sudo bash scripts/local_slurm.sh start)"
        if os.environ.get("SOUPS_CLUSTER_TESTS") == "1":
            pytest.fail(why)
        pytest.skip(why)


def submitted(folder: Path, pattern: str = ".submitit/*") -> set[str]:
    """SLURM job ids under `folder`, from submitit's folders `<id>` and `<id>_<task>`."""
    return {p.name.split("_")[0] for p in folder.glob(pattern) if re.fullmatch(r"\d+(_\d+)?", p.name)}


def cancel_jobs_under(folder: Path) -> None:
    """scancel every job a test submitted (found in its .submitit folders): a failed or timed-out test leaves
    no task holding the node's CPUs."""
    ids = submitted(folder, "**/.submitit/*")
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True)


@pytest.fixture(autouse=True)
def no_job_left(tmp_path):
    yield
    cancel_jobs_under(tmp_path)


def finetune(tmp_path: Path, sweep: Path, *overrides: str, node=tuple(SMALL_NODE)) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("logger=")]
    return [sys.executable, str(ROOT / "src" / "finetune.py"), "-m", *node, *tiny,
            f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}",
            *overrides]


def job_id(sweep: Path) -> str:
    """The SLURM job id of the sweep (one job array; one job for a sweep of one), from submitit's folders
    `<id>` and `<id>_<task>`."""
    ids = submitted(sweep)
    assert len(ids) == 1, ids
    return ids.pop()


def job_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").rglob("*_log.*")))


def wait_for(condition, driver: subprocess.Popen, seconds: float = 300) -> bool:
    """Polls `condition` every 0.05 s until it holds (True), the driver exits or time runs out (False)."""
    deadline = time.time() + seconds
    while time.time() < deadline and driver.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class QueueLog(threading.Thread):
    """Polls squeue every 0.5 s while a sweep runs: its jobs' states and pending reasons, and the most of its
    tasks running at once. Releases its requeued job's 120 s hold (BeginTime) at once, as an admin would."""

    def __init__(self, sweep: Path):
        super().__init__(daemon=True)
        self.sweep, self.stop, self.seen, self.most_running = sweep, threading.Event(), [], 0

    def run(self):
        while not self.stop.is_set():
            out = subprocess.run(["squeue", "-h", "-o", "%A|%F|%T|%r"], capture_output=True, text=True).stdout
            mine = submitted(self.sweep)
            rows = [(job, state, reason) for job, array, state, reason in
                    (line.split("|") for line in out.splitlines() if line) if array in mine or job in mine]
            self.seen += rows
            self.most_running = max(self.most_running, sum(state == "RUNNING" for _, state, _ in rows))
            for job, state, reason in rows:
                if state == "PENDING" and reason == "BeginTime":
                    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
            time.sleep(0.5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.join()


@pytest.fixture(scope="module")
def sweep_of_three(tmp_path_factory):
    """The README's sweep command (3 learning rates, array_parallelism=2, W&B offline), run once."""
    tmp = tmp_path_factory.mktemp("slurm_sweep")
    command = finetune(tmp, tmp / "sweep", "logger=wandb", "hydra.launcher.array_parallelism=1",
                       "lr=1e-3,3e-3,1e-2")
    with QueueLog(tmp / "sweep") as queue:
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    yield tmp, command, done, queue
    cancel_jobs_under(tmp)


def test_the_readme_sweep_runs_as_one_job_array_within_its_parallelism(sweep_of_three):
    tmp, _, done, queue = sweep_of_three
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp / "sweep"
    runs = [read_json(sweep / str(i) / "run.json") for i in range(3)]
    assert [r["status"] for r in runs] == ["finished"] * 3
    assert [r["hparams"]["lr"] for r in runs] == [1e-3, 3e-3, 1e-2]
    assert all(list((sweep / str(i) / "wandb").glob("offline-run-*/run-*.wandb")) for i in range(3))
    job = job_id(sweep)
    script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text()
    assert "#SBATCH --array=0-2%1" in script
    assert queue.most_running == 1  # 2 CPUs, a CPU each: only the array's limit keeps the second waiting
    assert any(reason == "JobArrayTaskLimit" for _, state, reason in queue.seen if state == "PENDING")
    # no accounting on this cluster: followed with squeue, without an error line per poll
    assert "sacct" not in done.stderr and "Bypassing" not in done.stderr


def test_a_relaunched_sweep_skips_its_finished_jobs(sweep_of_three):
    tmp, command, _, _ = sweep_of_three
    sweep = tmp / "sweep"
    before = [(sweep / str(i) / "run.json").read_bytes() for i in range(3)]
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [(sweep / str(i) / "run.json").read_bytes() for i in range(3)] == before
    assert job_logs(sweep).count("finished before (run.json): skipped") >= 3


def test_a_job_requeued_mid_training_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # ~1300 steps (~20 s here): the requeue (SIGTERM, bypassed by submitit, then SIGKILL KillWait = 5 s later) must
    # land mid-training; 30 epochs ran to the end within those 5 s on a fast CPU
    overrides = ["logger=none", "epochs=100", "state_every_steps=10", "lr=1e-3"]
    whole = subprocess.run(finetune(tmp_path, tmp_path / "whole", *overrides, node=["threads=1"]), env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    sweep = tmp_path / "requeued"
    with QueueLog(sweep):
        driver = subprocess.Popen(finetune(tmp_path, sweep, *overrides), env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: (sweep / "0" / STATE_NAME).is_file(), driver), "no training state was saved"
        subprocess.run(["scontrol", "requeue", job_id(sweep)], check=True)  # mid-training, as a preemption
        _, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-3000:]
    logs = job_logs(sweep)
    resumed = re.search(r"resuming from \S+: epoch (\d+) after (\d+) of its batches, (\d+) steps done", logs)
    assert resumed and int(resumed.group(3)) > 0, logs[-3000:]
    a, b = load_file(str(tmp_path / "whole" / "0" / "model.safetensors")), load_file(str(sweep / "0" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(sweep / "0" / "run.json")["history"] == read_json(tmp_path / "whole" / "0" / "run.json")["history"]


def test_a_job_that_keeps_timing_out_ends_with_a_plain_reason_and_its_state_kept(tmp_path):
    # The signal SLURM sends at `signal_delay_s` before the time limit (--signal=USR2@...), sent here once the
    # job has saved a state and again once it has resumed from it, as submitit's own tests send it (SLURM's
    # timing is up to a minute early). With a limit this short submitit counts each one as a timeout: the job
    # is requeued once (max_num_timeout=1) and stopped at the second.
    sweep = tmp_path / "sweep"
    command = finetune(tmp_path, sweep, "logger=none", "epochs=200", "state_every_steps=5", "lr=1e-3",
                       "hydra.launcher.timeout_min=5", "hydra.launcher.max_num_timeout=1")
    with QueueLog(sweep):
        driver = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: (sweep / "0" / STATE_NAME).is_file(), driver), "no training state was saved"
        subprocess.run(["scancel", "--signal=USR2", job_id(sweep)], check=True)
        assert wait_for(lambda: "resuming from" in job_logs(sweep), driver), "the requeued job did not resume"
        subprocess.run(["scancel", "--signal=USR2", job_id(sweep)], check=True)
        _, stderr = driver.communicate(timeout=600)
    done = subprocess.CompletedProcess(command, driver.returncode, "", stderr)
    assert done.returncode == 1
    assert "error: job #0 stopped without finishing: it hit its time limit 2 times" in done.stderr
    assert "Traceback" not in done.stderr
    assert job_logs(sweep).count("this job is timed-out") >= 2  # two timeouts
    assert (sweep / "0" / STATE_NAME).is_file() and not (sweep / "0" / "run.json").exists()


def test_a_pool_evaluated_as_an_array_leaves_the_soup_nothing_to_forward(tmp_path, caplog):
    from conftest import compose_cfg
    from soups.jobs.soup import run_soup
    from test_foreign import MNIST, write_timm_train

    write_timm_train(tmp_path / "train", n=4)
    pool = ["pool=files", f"pool.glob={tmp_path}/train/*/model_best.pth.tar", "model=timm",
            "model.timm_name=test_vit", "model.timm_kwargs={img_size:32}", "model.image_size=32",
            *[o for o in MNIST if o != "logger=none"]]
    sweep = tmp_path / "evaluation"
    done = subprocess.run([sys.executable, str(ROOT / "src" / "evaluate.py"), "-m", *SMALL_NODE, "shards=2", *pool,
                           f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache",
                           f"hydra.sweep.dir={sweep}"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "#SBATCH --array=0-1" in (sweep / ".submitit" / job_id(sweep) / f"{job_id(sweep)}_submission.sh").read_text()
    shards = [read_json(sweep / str(i) / "evaluate.json") for i in range(2)]
    assert [len(s["metrics"]) for s in shards] == [2, 2] and all(s["images_forwarded"] > 0 for s in shards)
    measured = shards[0]["metrics"] | shards[1]["metrics"]

    caplog.set_level("INFO", logger="soups.jobs.soup")
    rows = run_soup(compose_cfg("soup", tmp_path, [*pool, "logger=none", "method=ensemble"]), tmp_path / "soup")
    assert "individual models: 0 images forwarded for 4 models" in caplog.text
    assert {r["row"]: r["metrics"] for r in rows if r["kind"] == "individual"} == measured


def test_a_job_that_can_never_start_or_is_cancelled_ends_the_sweep_with_one_plain_line(tmp_path):
    # more CPUs than the node has: pending (PartitionConfig) forever unless the launcher gives up on it
    never = subprocess.run(finetune(tmp_path, tmp_path / "never", "logger=none", "hydra.launcher.cpus_per_task=64"),
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert never.returncode == 1 and "Traceback" not in never.stderr
    assert "error: a job of this sweep cannot start on this cluster (SLURM: CANNOT_START (PartitionConfig))" in never.stderr
    assert not subprocess.run(["squeue", "-h", "-j", job_id(tmp_path / "never")], capture_output=True, text=True).stdout.strip()
    # cancelled mid-training: reported (not awaited forever), its state kept for a relaunch. submitit's job
    # bypasses scancel's SIGTERM until SIGKILL comes KillWait (5 s) later: with 30 epochs a fast CPU finished
    # the run in that time and the sweep rightly succeeded, so the run is made far longer than that
    sweep = tmp_path / "cancelled"
    driver = subprocess.Popen(finetune(tmp_path, sweep, "logger=none", "epochs=1000", "state_every_steps=10"), env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (sweep / "0" / STATE_NAME).is_file(), driver), "no training state was saved"
    subprocess.run(["scancel", job_id(sweep)], check=True)
    _, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "error: a job of this sweep ended without finishing (state: CANCELLED" in stderr
    assert (sweep / "0" / STATE_NAME).is_file()
