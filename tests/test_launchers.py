"""Sweeps through Hydra launchers given as configs (conf/launcher/): a 2-job submitit_local sweep end to
end, and the composed launcher configs of the others (what `--cfg hydra` prints)."""
import os

import pytest
from hydra import compose, initialize_config_dir

import commands
from conftest import ROOT, TINY
from soups.io.files import read_json


def test_a_two_job_submitit_local_sweep_runs_end_to_end(tmp_path):
    sweep = tmp_path / "sweep"
    commands.succeeded(commands.project("src/finetune.py", "-m", "launcher=submitit_local", *TINY, "lr=1e-3,3e-3",
                                        f"hydra.sweep.dir={sweep}", tmp=tmp_path))
    runs = [read_json(sweep / job / "run.json") for job in ("0", "1")]
    assert [r["hparams"]["lr"] for r in runs] == [1e-3, 3e-3]
    assert all(0 <= r["metrics"]["val"] <= 100 for r in runs)
    assert list((sweep / ".submitit").iterdir())  # ran as submitit jobs


@pytest.mark.parametrize("launcher, target, settings", [
    ("basic", "BasicLauncher", {}),
    ("joblib", "JoblibLauncher", {"n_jobs": 2}),
    ("submitit_local", "LocalLauncher", {"gpus_per_node": 0}),
    ("slurm", "SlurmLauncher", {"gpus_per_node": 1, "array_parallelism": 8, "max_num_timeout": 3}),
])
def test_launcher_configs_compose(launcher, target, settings):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert {k: cfg.hydra.launcher[k] for k in settings} == settings


def test_a_two_task_submitit_job_trains_data_parallel(tmp_path):
    """tasks_per_node=2: the job's two processes join one gloo group (what 2 GPUs per SLURM task do)."""
    sweep = tmp_path / "sweep"
    commands.succeeded(commands.project("src/finetune.py", "-m", "launcher=submitit_local",
                                        "hydra.launcher.tasks_per_node=2", *TINY, "model=tiny_vit", "lr=1e-3",
                                        f"hydra.sweep.dir={sweep}", tmp=tmp_path))
    assert 0 <= read_json(sweep / "0" / "run.json")["metrics"]["val"] <= 100
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "rank 1 of 2" in logs


def test_without_accounting_jobs_are_followed_by_squeue_and_one_that_left_the_queue_is_done(tmp_path, monkeypatch):
    """QueueWatcher on squeue's own output (a stand-in squeue on PATH prints it; the real one runs in
    tests/test_slurm.py): array tasks pending as a range, and a job gone from the queue without a result."""
    from soups.jobs.launchers import LEFT_QUEUE, QueueWatcher

    answer = tmp_path / "answer.txt"
    (tmp_path / "squeue").write_text(f"#!/bin/sh\ncat {answer}\n")
    (tmp_path / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    watcher = QueueWatcher(delay_s=60)
    for job in ("7_0", "7_1", "7_2", "8"):
        watcher.register_job(job)
    answer.write_text("7_[1-2%1]|PENDING|\n7_0|CONFIGURING|vm\n8|RUNNING|vm\n")  # 7_0: its node boots
    watcher.update()
    assert [watcher.get_state(j, mode="cache") for j in ("7_0", "7_1", "7_2", "8")] == \
        ["RUNNING", "PENDING", "PENDING", "RUNNING"]
    assert not any(watcher.is_done(j, mode="cache") for j in ("7_0", "7_1", "7_2", "8"))
    answer.write_text("7_0|COMPLETED|vm\n7_1|RUNNING|vm\n7_2|PENDING||JobArrayTaskLimit\n")  # 8 purged since
    watcher.update()
    assert watcher.get_state("8", mode="cache") == LEFT_QUEUE and watcher.is_done("8", mode="cache")
    assert watcher.is_done("7_0", mode="cache") and not watcher.is_done("7_2", mode="cache")
    # asks for more than any node has: never starts; cancelled and reported, not waited on forever
    cancelled = tmp_path / "cancelled.txt"
    (tmp_path / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {cancelled}\n")
    (tmp_path / "scancel").chmod(0o755)
    watcher.register_job("9")
    answer.write_text("9|PENDING||PartitionConfig\n7_2|PENDING||Priority\n")
    watcher.update()
    assert watcher.get_state("9", mode="cache") == "CANNOT_START (PartitionConfig)" and watcher.is_done("9", mode="cache")
    assert cancelled.read_text().split() == ["9"] and not watcher.is_done("7_2", mode="cache")


def test_a_job_stopped_for_good_is_one_plain_line():
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf
    from submitit.core.utils import UncompletedJobError

    from soups.jobs.launchers import stopped_jobs

    stopped, finished = JobReturn(), JobReturn()
    stopped.status, stopped._return_value = JobStatus.FAILED, UncompletedJobError("Job not requeued because: "
                                                                                  "timed-out too many times.")
    stopped.hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": 3}, "runtime": {"output_dir": "/sweep/3"}}})
    finished.status, finished._return_value = JobStatus.COMPLETED, 91.0
    lines = stopped_jobs([finished, stopped], "/sweep", max_num_timeout=3)
    assert lines == ["error: job #3 stopped without finishing: it hit its time limit 4 times "
                     "(hydra.launcher.max_num_timeout=3). What it saved is kept in /sweep/3: relaunch the same "
                     "command with hydra.sweep.dir=/sweep and a longer hydra.launcher.timeout_min to go on from there."]


def test_a_job_ended_without_a_result_is_one_plain_line():
    from submitit.core.utils import UncompletedJobError

    from soups.jobs.launchers import ended_line

    said = UncompletedJobError("Job 5_1 (task: 0) with path /s/.submitit/5_1/5_1_0_result.pkl\nhas not produced any "
                               "output (state: FAILED)\nError stream produced:\n----\nerror: pool.dir=/x does not exist\n")
    assert ended_line(said, "/s").splitlines()[0] == "error: pool.dir=/x does not exist"
    killed = UncompletedJobError("Job 5_0 (task: 0) with path /s/x.pkl\nhas not produced any output (state: CANCELLED)\n")
    assert ended_line(killed, "/s").startswith("error: a job of this sweep ended without finishing (state: CANCELLED)")
    never = UncompletedJobError("Job 6 ... has not produced any output (state: CANNOT_START (PartitionConfig))\n")
    assert "cannot start on this cluster (SLURM: CANNOT_START (PartitionConfig))" in ended_line(never, "/s")


@pytest.mark.parametrize("shard, shards, why", [(2, 2, "shard=2"), (0, 0, "shards=0"), (-1, 3, "shard=-1"),
                                                ("0", 2, "shard='0'")])
def test_a_shard_outside_the_pool_evaluation_is_refused(shard, shards, why):
    from omegaconf import OmegaConf

    from soups.errors import BadInput
    from soups.jobs.evaluate import shard_of

    with pytest.raises(BadInput, match=why):
        shard_of(OmegaConf.create({"shard": shard, "shards": shards}))


def test_a_sharded_evaluation_of_the_latest_sweep_is_refused(tmp_path):
    """Each job would resolve "latest" when it starts: a sweep made in between would split another pool."""
    from conftest import compose_cfg
    from soups.errors import BadInput
    from soups.jobs.evaluate import run_evaluate

    with pytest.raises(BadInput, match="name it: pool.dir=<sweep>"):
        run_evaluate(compose_cfg("evaluate", tmp_path, ["shards=2", "shard=1"]), tmp_path / "out")
