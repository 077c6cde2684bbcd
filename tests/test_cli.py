"""The commands as a user types them, in subprocesses: a -m sweep, then a soup of the latest sweep."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = [arg for arg in TINY if arg != "logger=none"]  # W&B stays on (offline) here


def run(args, tmp_path, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, *args, f"paths.log_dir={tmp_path}/logs",
                           f"paths.cache_dir={tmp_path}/cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_multirun_sweep_then_greedy_soup_of_that_sweep(tmp_path):
    run(["src/finetune.py", "-m", "lr=1e-3,3e-3", *TINY_ARGS], tmp_path)
    sweeps = list((tmp_path / "logs" / "finetune" / "multiruns").iterdir())
    assert len(sweeps) == 1
    runs = sorted(p.name for p in sweeps[0].iterdir() if (p / "run.json").is_file())
    assert runs == ["0", "1"]
    lrs = [json.loads((sweeps[0] / r / "run.json").read_text())["hparams"]["lr"] for r in runs]
    assert lrs == [1e-3, 3e-3]
    # W&B, offline: one run per fine-tune, files inside the run dir
    assert list((sweeps[0] / "0" / "wandb").glob("offline-run-*/run-*.wandb"))

    proc = run(["src/soup.py", "method=greedy"], tmp_path)
    assert "| **greedy soup** |" in proc.stdout
    soup_dirs = list((tmp_path / "logs" / "soup" / "runs").iterdir())
    record = json.loads((soup_dirs[0] / "greedy" / "soup.json").read_text())
    assert {Path(p).parent for p in record["ingredients"]} == {sweeps[0]}
    assert list((soup_dirs[0] / "wandb").glob("offline-run-*/run-*.wandb"))
    # results are readable as the umask allows, as with open() (the atomic writes once made them 0o600)
    umask = os.umask(0o022)
    os.umask(umask)
    written = [p for d in (sweeps[0] / "0", soup_dirs[0]) for p in d.rglob("*")
               if p.suffix in (".json", ".safetensors", ".md", ".csv") and "wandb" not in p.parts]
    assert len(written) >= 8 and {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o666 & ~umask}


@pytest.mark.slow  # two real sweeps (~50 s); make test-slow runs it
def test_second_sweep_gets_its_own_folder_and_becomes_the_latest(tmp_path):
    for lr in ("1e-3", "2e-3"):
        run(["src/finetune.py", "-m", f"lr={lr}", *TINY_ARGS, "logger=none"], tmp_path)
    sweeps = sorted((tmp_path / "logs" / "finetune" / "multiruns").iterdir())
    assert len(sweeps) == 2
    proc = run(["src/soup.py", "method=uniform", "logger=none"], tmp_path)
    assert sweeps[1].name in proc.stdout and sweeps[0].name not in proc.stdout


def test_vit_demo_sweep_and_soups_on_tiny_data(tmp_path):
    """`experiment=demo_vit sweep=demo` as `make demo` runs it, on 4 digits per class: the real DINOv2
    ViT-S/14 at 56 px from its linear-probe init, two random-search draws, then uniform + greedy soups."""
    tiny = ["data.train_per_class=4", "data.val_per_class=4", "data.test_per_class=4", "data.shifts.max_images=8",
            "batch_size=8", "head.Cs=[1.0]", "logger=none"]
    run(["src/finetune.py", "experiment=demo_vit", "sweep=demo", "search_draws=2", *tiny], tmp_path)
    sweep = next((tmp_path / "logs" / "finetune" / "multiruns").iterdir())
    infos = [json.loads((sweep / str(i) / "run.json").read_text()) for i in range(2)]
    for info in infos:
        assert info["config"]["model"]["name"] == "vit_s14_dinov2" and info["config"]["model"]["image_size"] == 56
        assert 8e-6 <= info["hparams"]["lr"] <= 4e-5 and info["hparams"]["epochs"] == 1
        assert info["environment"]["cpu_capability"]
    assert infos[0]["init"]["sha256"] == infos[1]["init"]["sha256"]

    run(["src/soup.py", "logger=none"], tmp_path)
    results = next((tmp_path / "logs" / "soup" / "runs").glob("*/results.json"))
    rows = {r["row"]: r for r in json.loads(results.read_text())}
    best = next(r for r in rows.values() if r["kind"] == "best_individual")
    assert rows["greedy soup"]["metrics"]["val"] >= best["metrics"]["val"]
    assert rows["uniform soup"]["ingredients"] == 2
    assert json.loads((results.parent / "uniform" / "soup.json").read_text())["bn_recalibrated"] is False  # LayerNorm
