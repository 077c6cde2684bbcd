import json

import pytest
import wandb
from omegaconf import OmegaConf

from soups.tracking import build_logger, tracking
from soups.tracking.wandb_logger import WandbLogger

WANDB = OmegaConf.load("conf/logger/wandb.yaml")


def test_offline_without_a_key_and_online_with_one(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert WandbLogger().resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger().resolved_mode() == "online"
    assert WandbLogger(mode="disabled").resolved_mode() == "disabled"


def test_run_is_closed_when_the_job_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking(build_logger(WANDB), tmp_path, name="t", job_type="test", config={"a": 1},
                      group=None) as tracker:
            tracker.log({"loss": 1.0}, step=1)
            raise RuntimeError("boom")
    assert wandb.run is None
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    # the next job in the same process starts cleanly
    with tracking(build_logger(WANDB), tmp_path, name="t2", job_type="test", config={}, group=None) as tracker:
        tracker.summary({"final/val": 1.0})
    assert wandb.run is None


def test_an_unreachable_server_means_offline_logging_said_in_the_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_MODE", raising=False)
    online = OmegaConf.merge(WANDB, {"mode": "online", "init_timeout": 3})
    with tracking(build_logger(online), tmp_path, name="t", job_type="test", config={}, group=None) as tracker:
        tracker.log({"loss": 1.0}, step=1)
    assert "W&B unreachable" in caplog.text and "logging offline instead" in caplog.text
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


class RecordingTracker:
    """Collects what the soup job hands to the tracker (the W&B calls themselves are tested above)."""

    def __init__(self):
        self.logged, self.tables, self.images = {}, {}, {}

    def log(self, metrics, step=None):
        self.logged.update(metrics)

    def summary(self, metrics): ...

    def table(self, key, columns, rows):
        self.tables[key] = (columns, rows)

    def image(self, key, path):
        self.images[key] = path


def test_each_recipe_logs_metrics_trace_curve_and_plot(tiny_sweep, soup_cfg, tmp_path, monkeypatch):
    import contextlib

    from soups.jobs import soup as soup_job

    recorder, opened = RecordingTracker(), {}
    monkeypatch.setattr(soup_job, "tracking", lambda *a, **k: opened.update(k) or contextlib.nullcontext(recorder))
    _, sweep = tiny_sweep
    soup_job.run_soup(soup_cfg(f"pool.dir={sweep}", "method=[greedy,greedy_random,learned,wise_ft]",
                               "method.greedy_random.orders=4", "method.learned.epochs=1",
                               "method.wise_ft.alphas=[0.0,1.0]", "eval_batch_size=null"), tmp_path / "soup")
    # the run's config: the command's, and what was used where it left a choice (the pool's batch size, model)
    evaluation = json.loads((tmp_path / "soup" / "greedy" / "soup.json").read_text())["evaluation"]
    assert opened["config"]["eval_batch_size"] is None and opened["config"]["used"]["evaluation"] == evaluation
    assert evaluation["batch_size"] == 128 and opened["config"]["used"]["model"]["name"] == "tiny_efficientnet"
    assert opened["config"]["used"]["pool"] == {"name": sweep.name, "ingredients": 3}
    for name in ("greedy", "greedy_random", "learned", "wise_ft"):
        assert {f"{name}/val", f"{name}/test", f"{name}/avg_shifts"} <= set(recorder.logged)
    # W&B says what the report's row says: for greedy_random the mean over orders (it once logged the saved
    # order's own numbers under the same name), its std, and the saved weights' metrics apart
    rows = {r["method"]: r for r in json.loads((tmp_path / "soup" / "results.json").read_text()) if r.get("method")}
    for name in ("greedy", "greedy_random", "learned", "wise_ft"):
        assert {k: recorder.logged[f"{name}/{k}"] for k in rows[name]["metrics"]} == rows[name]["metrics"], name
    saved = json.loads((tmp_path / "soup" / "greedy_random" / "soup.json").read_text())
    assert {k: recorder.logged[f"greedy_random/std/{k}"] for k in saved["std"]} == saved["std"] == rows["greedy_random"]["std"]
    assert {k: recorder.logged[f"greedy_random/saved/{k}"] for k in saved["metrics"]} == saved["metrics"]
    assert saved["metrics"] != saved["mean"]  # this pool's orders differ, so the two would be told apart
    columns, rows = recorder.tables["greedy/trace"]
    assert columns[0] == "run" and len(rows) == 3
    assert len(recorder.tables["greedy_random/orders"][1]) == 4
    assert [r[0] for r in recorder.tables["wise_ft/curve"][1]] == [0.0, 1.0]
    assert recorder.images["learned/coefficients"].name == "coefficients.png"
    assert set(recorder.images) >= {"soups/figure"} and "soups/table" in recorder.tables
