import pytest
import wandb
from omegaconf import OmegaConf

from soups.tracking import tracking, wandb_mode

WANDB = OmegaConf.load("conf/logger/wandb.yaml")


def test_offline_without_a_key_and_online_with_one(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(WANDB) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(WANDB) == "online"
    assert wandb_mode(OmegaConf.merge(WANDB, {"mode": "disabled"})) == "disabled"


def test_run_is_closed_when_the_job_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking(WANDB, tmp_path, name="t", job_type="test", config={"a": 1}, group=None) as tracker:
            tracker.log({"loss": 1.0}, step=1)
            raise RuntimeError("boom")
    assert wandb.run is None
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    # the next job in the same process starts cleanly
    with tracking(WANDB, tmp_path, name="t2", job_type="test", config={}, group=None) as tracker:
        tracker.summary({"final/val": 1.0})
    assert wandb.run is None
