import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SOUPS_ROOT", str(ROOT))
# offline whatever the shell says; the commands a test forks (tests/commands.py) inherit these from import on
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker (and per process a test starts)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Small but real: tiny random-init BN tower, 20 MNIST images per class, one short epoch; the plain
# finetune.yaml values (no demo experiment).
TINY = ["~experiment", "model=tiny_efficientnet", "data.train_per_class=20", "data.val_per_class=10",
        "data.test_per_class=10", "data.bn_recalibration_images=64", "data.shifts.max_images=40",
        "epochs=1", "batch_size=16", "warmup_steps=2", "logger=none", "eval_batch_size=128",
        "head.Cs=[1.0]", "head.max_iter=200"]


def compose_cfg(name: str, tmp_path: Path, overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=[f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache",
                                         *overrides])


@pytest.fixture
def finetune_cfg(tmp_path):
    return lambda *overrides: compose_cfg("finetune", tmp_path, [*TINY, *overrides])


@pytest.fixture
def soup_cfg(tmp_path):
    return lambda *overrides: compose_cfg("soup", tmp_path, ["logger=none", "eval_batch_size=128", *overrides])


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """Three fine-tunes of the tiny model from one shared init, as a sweep folder: (tmp, sweep_dir)."""
    from soups.jobs.finetune import run_finetune

    tmp = tmp_path_factory.mktemp("sweep")
    sweep = tmp / "logs" / "finetune" / "multiruns" / "2000-01-01_00-00-00_000000"
    for i, lr in enumerate(["1e-3", "3e-3", "1e-2"]):
        run_finetune(compose_cfg("finetune", tmp, [*TINY, f"lr={lr}", f"seed={i}"]), sweep / str(i))
    return tmp, sweep


def own_cache(sweep_tmp: Path, tmp_path: Path) -> Path:
    """A base folder for compose_cfg whose cache is a copy of the tiny sweep's (its runs' logits): a test
    that writes soups or analyses there leaves the shared cache as the fine-tunes left it, so no other
    test's forward-pass count depends on the order tests run in."""
    shutil.copytree(sweep_tmp / "cache", tmp_path / "cache", dirs_exist_ok=True)
    return tmp_path


def killed_then_resumed(cfg, tmp_path: Path, monkeypatch, killed_at) -> list[dict]:
    """Runs the soup job `cfg` into tmp_path/killed, interrupted (KeyboardInterrupt, as a killed job) right after
    the first journal record for which `killed_at(record)` holds, then runs it again into tmp_path/resumed;
    returns the resumed run's rows."""
    from soups.evaluation.scorer import PoolScorer
    from soups.jobs.soup import run_soup

    original = PoolScorer.remember

    def remember_then_die(self, key, record):
        original(self, key, record)
        if key.get("journal") and killed_at(record):
            raise KeyboardInterrupt

    monkeypatch.setattr(PoolScorer, "remember", remember_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_soup(cfg, tmp_path / "killed")
    monkeypatch.setattr(PoolScorer, "remember", original)
    return run_soup(cfg, tmp_path / "resumed")
