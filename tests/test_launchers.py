"""Sweeps through Hydra launchers given as configs (conf/launcher/): a 2-job submitit_local sweep end to
end, and the composed launcher configs of the others (what `--cfg hydra` prints)."""
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, TINY
from soups.io.files import read_json
from test_resume import ENV


def test_a_two_job_submitit_local_sweep_runs_end_to_end(tmp_path):
    sweep = tmp_path / "sweep"
    subprocess.run([sys.executable, str(ROOT / "src" / "finetune.py"), "-m", "launcher=submitit_local",
                    *TINY, "lr=1e-3,3e-3", f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache",
                    f"hydra.sweep.dir={sweep}"], env=ENV, check=True, capture_output=True)
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
    subprocess.run([sys.executable, str(ROOT / "src" / "finetune.py"), "-m", "launcher=submitit_local",
                    "hydra.launcher.tasks_per_node=2", *TINY, "model=tiny_vit", "lr=1e-3",
                    f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}"],
                   env=ENV, check=True, capture_output=True)
    assert 0 <= read_json(sweep / "0" / "run.json")["metrics"]["val"] <= 100
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "rank 1 of 2" in logs
