"""Every input error a user can fix ends the real command with one plain `error: ...` and exit status 1,
no traceback; SOUPS_FULL_ERROR=1 brings the traceback back. Each kind is a UserError in process
(tests/test_errors.py); here the commands themselves, each its own process (tests/commands.py)."""
import json
import shutil
from pathlib import Path

from PIL import Image

import commands
from conftest import TINY
from soups.data.folders import WNIDS
from soups.io.files import write_json


def command(script, args, tmp_path, **env):
    return commands.project(f"src/{script}.py", *args, tmp=tmp_path, env=env, timeout=300)


def assert_plain(proc, message):
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output[-3000:]
    assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr, proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr[-3000:]


def pool_copy(tiny_sweep, dst: Path, edit) -> Path:
    shutil.copytree(tiny_sweep[1], dst, ignore=shutil.ignore_patterns("wandb"))
    for run in sorted(dst.iterdir()):
        info = json.loads((run / "run.json").read_text())
        edit(run.name, info)
        write_json(info, run / "run.json")
    return dst


def fake_train_tree(root: Path, classes: list[str]) -> Path:
    for wnid in classes:
        (root / "train" / wnid).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / "train" / wnid / f"{wnid}_0.JPEG")
    return root


IMAGENET = ["experiment=finetune_vit_b32"]  # the data are checked before any model is built


def test_empty_pool(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_plain(command("soup", [f"pool.dir={tmp_path}/empty", "logger=none"], tmp_path), "the pool is empty")


def test_pool_folder_that_does_not_exist(tmp_path):
    assert_plain(command("soup", [f"pool.dir={tmp_path}/nowhere", "logger=none"], tmp_path), "does not exist")


def test_missing_dataset_root(tmp_path):
    proc = command("finetune", [*IMAGENET, f"paths.data_dir={tmp_path}/nowhere"], tmp_path)
    assert_plain(proc, f"imagenet: missing folder {tmp_path}/nowhere/train")
    assert "get it from: https://image-net.org" in proc.stderr


def test_dataset_with_the_wrong_layout(tmp_path):
    root = fake_train_tree(tmp_path / "imagenet", WNIDS[:3])
    assert_plain(command("finetune", [*IMAGENET, f"paths.data_dir={root}"], tmp_path),
                 "has 3 class folders, expected the 1000 WordNet ids")


def test_dataset_with_the_wrong_count(tmp_path):
    root = fake_train_tree(tmp_path / "imagenet", WNIDS)
    assert_plain(command("finetune", [*IMAGENET, f"paths.data_dir={root}"], tmp_path),
                 "found 1000 images, expected 1281167")


def test_pool_mixing_architectures(tiny_sweep, tmp_path):
    def other_arch(name, info):
        if name == "1":
            info["config"]["model"]["open_clip_name"] = "efficientnet-lite0-clip"
    pool = pool_copy(tiny_sweep, tmp_path / "pool", other_arch)
    assert_plain(command("soup", [f"pool.dir={pool}", "logger=none"], tmp_path), "mixed architectures in the pool")


def test_pool_whose_shared_init_is_gone(tiny_sweep, tmp_path):
    def gone(name, info):
        info["init"]["dir"] = str(tmp_path / "cleaned-cache" / "init")
    pool = pool_copy(tiny_sweep, tmp_path / "pool", gone)
    assert_plain(command("soup", [f"pool.dir={pool}", "method=[uniform,wise_ft]", "logger=none"], tmp_path),
                 "interpolate with the pool's shared initialization")
    assert not (tmp_path / "cache" / "eval").exists()  # refused before any evaluation


def test_missing_init_checkpoint(tmp_path):
    tiny = [arg for arg in TINY if not arg.startswith("head.")]  # the linear probe's settings
    proc = command("finetune", [*tiny, "head=checkpoint", f"head.path={tmp_path}/model_0.pt"], tmp_path)
    assert_plain(proc, f"missing checkpoint {tmp_path}/model_0.pt")


def test_bad_search_space(tmp_path):  # bad settings of every kind: test_errors.py, in process
    assert_plain(command("finetune", [*TINY, "trial=0", "+search_space.lr=[cubic,1,2]"], tmp_path),
                 "search_space.lr=['cubic', 1, 2]: expected [kind, ...]")


def test_full_traceback_on_request(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = command("soup", [f"pool.dir={tmp_path}/empty", "logger=none"], tmp_path, SOUPS_FULL_ERROR="1")
    assert proc.returncode == 1 and "BadInput: the pool is empty" in proc.stderr
