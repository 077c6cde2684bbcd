"""The full demo as `make demo` runs it (about 8-10 minutes on 2 CPU cores): slow."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_soups_work(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    paths = [f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache"]
    for cmd in (["src/finetune.py", "sweep=demo"], ["src/soup.py"]):
        subprocess.run([sys.executable, *cmd, *paths], cwd=ROOT, env=env, check=True, timeout=1800)
    results = next((tmp_path / "logs" / "soup" / "runs").glob("*/results.json"))
    rows = {r["row"]: r for r in json.loads(results.read_text())}
    individuals = [r for r in rows.values() if r["kind"] == "individual"]
    best = next(r for r in rows.values() if r["kind"] == "best_individual")
    assert len(individuals) == 8
    greedy, uniform = rows["greedy soup"], rows["uniform soup"]
    assert greedy["metrics"]["val"] >= best["metrics"]["val"]
    assert greedy["ingredients"] >= 2
    mean_val = sum(r["metrics"]["val"] for r in individuals) / len(individuals)
    assert uniform["metrics"]["val"] >= mean_val  # no collapse: at least the average model
