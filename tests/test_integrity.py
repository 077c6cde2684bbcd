"""Faults injected on purpose: damaged or unfinished runs stay out of pools (named, with the reason), a
NaN run is marked failed, a save interrupted by a full disk or a kill leaves the previous file intact,
damaged caches are measured again, and nothing is unpickled."""
import builtins
import errno
import functools
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import commands
from conftest import ROOT, compose_cfg
from soups.evaluation.cache import EvaluationCache, hash_ids
from soups.io.files import atomic_save_safetensors, read_json, sha256_file, write_json
from soups.training.resume import load_train_state
from soups.jobs.soup import run_soup
from test_resume import finetune_command

TINY_RUN = ["epochs=1", "logger=none"]


def damaged_pool(sweep, pool):
    """Runs 0 and 2 intact; 1 bit-flipped, 3 truncated, 4 unfinished, 5 failed, 6 without weights."""
    shutil.copytree(sweep, pool, ignore=shutil.ignore_patterns("wandb"))
    weights = pool / "1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside a tensor: the file still parses
    weights.write_bytes(bytes(data))
    for copy in ("3", "4", "5", "6"):
        shutil.copytree(pool / "0", pool / copy)
    truncated = pool / "3" / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    (pool / "4" / "run.json").unlink()
    failed = read_json(pool / "5" / "run.json") | {"status": "failed", "failure": "non-finite training loss"}
    write_json(failed, pool / "5" / "run.json")
    (pool / "6" / "model.safetensors").unlink()
    return pool


def test_a_pool_takes_only_finished_intact_runs_and_names_what_it_skipped(tiny_sweep, soup_cfg, tmp_path):
    pool = damaged_pool(tiny_sweep[1], tmp_path / "pool")
    rows = run_soup(soup_cfg(f"pool.dir={pool}", "method=uniform"), tmp_path / "out")
    # rows by the runs' short names; the full path in the record (and in every soup.json)
    individuals = [r for r in rows if r["kind"] == "individual"]
    assert [r["row"] for r in individuals] == ["fine-tune 0", "fine-tune 2"]
    assert [r["source"] for r in individuals] == [str(pool / "0"), str(pool / "2")]
    report = (tmp_path / "out" / "report.md").read_text()
    expected = {"1": "does not match the sha256", "3": "truncated or damaged", "4": "unfinished: no run.json",
                "5": "failed: non-finite training loss", "6": "missing checkpoint"}
    for run, why in expected.items():
        assert f"- {pool / run}: " in report and why in report.split(f"- {pool / run}: ")[1].splitlines()[0], run
    assert f"Computed with torch {torch.__version__}" in report


def test_a_pool_with_nothing_finished_says_why_for_each_run(tiny_sweep, soup_cfg, tmp_path):
    pool = damaged_pool(tiny_sweep[1], tmp_path / "pool")
    for intact in ("0", "2"):
        shutil.rmtree(pool / intact)
    with pytest.raises(ValueError, match=r"pool is empty: no finished runs among 5 run dirs:\n.*/1: .*sha256"):
        run_soup(soup_cfg(f"pool.dir={pool}", "method=uniform"), tmp_path / "out")


def test_a_nan_run_is_marked_failed_stops_early_and_stays_out_of_pools(tmp_path):
    run = tmp_path / "sweep" / "0"
    command = finetune_command(tmp_path, *TINY_RUN, "lr=1e30", f"hydra.run.dir={run}")  # diverges for real
    done = commands.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "run failed: non-finite training loss (nan)" in done.stderr
    info = read_json(run / "run.json")
    assert info["status"] == "failed" and "non-finite" in info["failure"] and "metrics" not in info
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "finetune.log", "run.json"]  # no weights, no state
    from soups.pools.run_dirs import load_pool
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match="failed: non-finite training loss"):
        load_pool(OmegaConf.create({"dir": str(run.parent), "glob": None, "runs": None}), tmp_path)


def test_a_full_disk_during_a_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    atomic_save_safetensors({"w": torch.ones(4)}, path)
    before = sha256_file(path)

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("soups.io.files.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_save_safetensors({"w": torch.zeros(4)}, path)
    assert sha256_file(path) == before and os.listdir(tmp_path) == ["model.safetensors"]  # no temp left


KILLED_WRITER = """
import sys, time
from pathlib import Path
from soups.io.files import atomic_write
def write(tmp):
    Path(tmp).write_bytes(b"the new checkpoint, half written")
    Path(sys.argv[2]).touch()  # tell the test we are mid-write
    time.sleep(600)
atomic_write(Path(sys.argv[1]), write)
"""


def test_a_kill_during_a_save_leaves_the_previous_file_intact(tmp_path):
    path, midway = tmp_path / "run.json", tmp_path / "midway"
    write_json({"metrics": {"val": 1.0}}, path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(midway)],
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.time() + 60
    while not midway.exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert midway.exists() and read_json(path) == {"metrics": {"val": 1.0}}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, monkeypatch, umask):
    """mkstemp makes its files 0o600; a result written through it kept that mode, unreadable to a team's group."""
    monkeypatch.setattr("soups.io.files.UMASK", umask)
    write_json({"a": 1}, tmp_path / "run.json")
    atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    for name in ("run.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_damaged_cache_entries_are_measured_again(tmp_path):
    cache, ids = EvaluationCache(tmp_path, "key"), hash_ids(["a", "b", "c"])
    cache.put("digest", {"val": 50.0})
    cache.put_logits("digest", "val", ids, torch.randn(3, 5))
    (cache.dir / "digest.json").write_text('{"sha256": "digest", "metr')  # cut short
    logits = cache.dir / "digest" / "val.safetensors"
    logits.write_bytes(logits.read_bytes()[:40])
    assert cache.get("digest") is None and cache.get_logits("digest", "val", ids) is None
    (cache.dir / "digest.json").write_text("")
    logits.write_bytes(b"")
    assert cache.get("digest") is None and cache.get_logits("digest", "val", ids) is None
    mismatched = cache.dir / "digest" / "test.safetensors"
    save_file({"ids": ids, "logits": torch.randn(2, 5)}, str(mismatched))  # rows do not match the ids
    assert cache.get_logits("digest", "test", ids) is None


def test_a_damaged_feature_cache_is_extracted_again(tmp_path):
    from soups.data import EvalSet, ImageArray
    from soups.heads.linear_probe import cached_features

    class Features(torch.nn.Module):
        def features(self, x):
            return x.mean(dim=(2, 3))

    data = EvalSet(ImageArray("d", torch.randint(0, 255, (6, 8, 8), dtype=torch.uint8), torch.arange(6)), 8,
                   (0.5,) * 3, (0.25,) * 3)
    cache = tmp_path / "features.npy"
    fresh = cached_features(Features(), data, 4, "fp32", torch.device("cpu"), cache)
    for damaged in (cache.read_bytes()[:100], b""):  # cut short; empty
        cache.write_bytes(damaged)
        again = cached_features(Features(), data, 4, "fp32", torch.device("cpu"), cache)
        assert (again == fresh).all() and os.listdir(tmp_path) == ["features.npy"]


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('PWNED_MARKER', '/tmp/pwned')}",))


def test_a_training_state_holding_code_is_refused_not_run(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARKER", str(marker))
    with open(tmp_path / "train_state.pt", "wb") as f:
        torch.save({"model": RunsCode()}, f)  # a pickle that would run a command when unpickled
    model = torch.nn.Linear(1, 1)
    state = load_train_state(tmp_path, model=model, optimizer=None, scheduler=None, generator=torch.Generator())
    assert state is None and "unreadable" in caplog.text and "starting from the beginning" in caplog.text
    assert not marker.exists()


def test_a_config_cannot_name_code_to_run(soup_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"method.greedy._target_='os.system': expected a Recipe class in soups.recipes"):
        run_soup(soup_cfg("method=greedy", "method.greedy._target_=os.system"), tmp_path / "out")
    with pytest.raises(ValueError, match=r"_target_='soups.recipes.RecipeResult': expected a Recipe"):  # not a Recipe
        run_soup(soup_cfg("method=greedy", "method.greedy._target_=soups.recipes.RecipeResult"), tmp_path / "out")
    with pytest.raises(ValueError, match=r"_target_='soups.recipes.greedy.logging.os.system': expected a Recipe"):
        run_soup(soup_cfg("method=greedy", "method.greedy._target_=soups.recipes.greedy.logging.os.system"),
                 tmp_path / "out")
    with pytest.raises(ValueError, match=r"method.greedy.comparator._target_='subprocess.call'"):
        run_soup(soup_cfg("method=greedy", "method.greedy.comparator={_target_:subprocess.call}"), tmp_path / "out")
    with pytest.raises(ValueError, match=r"logger._target_='os.system': expected a Logger class in soups.tracking"):
        run_soup(soup_cfg("logger._target_=os.system"), tmp_path / "out")
    with pytest.raises(ValueError, match=r"pool._target_='soups.pools.run_dirs.globlib.glob': expected a Pool"):
        run_soup(soup_cfg("pool._target_=soups.pools.run_dirs.globlib.glob"), tmp_path / "out")
    from soups.jobs.analyze import run_analysis

    with pytest.raises(ValueError, match=r"analysis._target_='os.system': expected an? Analysis class in soups.analyses"):
        run_analysis(compose_cfg("analyze", tmp_path, ["logger=none", "analysis._target_=os.system"]), tmp_path / "a")


def test_a_fine_tuning_config_cannot_name_code_to_run(finetune_cfg, tmp_path):
    from soups.jobs.finetune import run_finetune

    with pytest.raises(ValueError, match=r"head._target_='os.system': expected a Head class in soups.heads"):
        run_finetune(finetune_cfg("head._target_=os.system"), tmp_path / "run")
    with pytest.raises(ValueError, match=r"head._target_='soups.heads.linear_probe.np.load': expected a Head"):
        run_finetune(finetune_cfg("head._target_=soups.heads.linear_probe.np.load"), tmp_path / "run")
    with pytest.raises(ValueError, match=r"logger._target_='soups.tracking.Tracker': expected a Logger"):
        run_finetune(finetune_cfg("logger._target_=soups.tracking.Tracker"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any work


def test_ingredients_that_differ_in_keys_shapes_or_dtypes_are_refused(tiny_sweep, soup_cfg, tmp_path):
    def matrix(w):
        return next(k for k, v in w.items() if v.ndim == 2)

    for change, message in [(lambda w: w.pop(matrix(w)), "different tensors"),
                            (lambda w: w.update({matrix(w): w[matrix(w)].half()}), "differ in shape/dtype"),
                            (lambda w: w.update({matrix(w): w[matrix(w)][:1]}), "differ in shape/dtype")]:
        pool = tmp_path / "pool"
        shutil.rmtree(pool, ignore_errors=True)
        shutil.copytree(tiny_sweep[1], pool, ignore=shutil.ignore_patterns("wandb"))
        weights = load_file(str(pool / "1" / "model.safetensors"))
        change(weights)
        atomic_save_safetensors(weights, pool / "1" / "model.safetensors")
        info = read_json(pool / "1" / "run.json")
        write_json(info | {"sha256": sha256_file(pool / "1" / "model.safetensors")}, pool / "1" / "run.json")
        with pytest.raises(ValueError, match=message):
            run_soup(soup_cfg(f"pool.dir={pool}", "method=uniform"), tmp_path / "out")


@pytest.fixture
def write_protected(tmp_path):
    """A folder nobody may write into: chmod for a normal user; immutable (chattr +i) for root. None
    where neither works (root on a file system without chattr): then only the file-in-path case runs."""
    folder = tmp_path / "protected"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        yield None
        return
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_folders_are_refused_before_any_work(tmp_path, write_protected):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    command = finetune_command(tmp_path, *TINY_RUN)
    command = [c for c in command if not c.startswith(("paths.log_dir=", "paths.cache_dir="))]
    log_dir = write_protected or tmp_path
    done = commands.run([*command, f"paths.log_dir={log_dir}/logs", f"paths.cache_dir={a_file}/cache"],
                        capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"paths.cache_dir={a_file}/cache: {a_file} is a file, not a folder" in done.stderr
    if write_protected is not None:
        assert f"hydra.run.dir={write_protected}/logs/finetune/runs/" in done.stderr
        assert "is not writable" in done.stderr and list(write_protected.iterdir()) == []


def test_same_config_and_seed_give_the_same_weights_and_record_what_computed_them(finetune_cfg, tmp_path):
    from soups.jobs.finetune import run_finetune
    from soups.runtime import git_commit

    first = run_finetune(finetune_cfg("randaug=rand-m5-n1", "mixup=0.2"), tmp_path / "a")
    second = run_finetune(finetune_cfg("randaug=rand-m5-n1", "mixup=0.2"), tmp_path / "b")
    assert first["sha256"] == second["sha256"] and first["history"] == second["history"]
    env = first["environment"]
    assert env["torch"] == torch.__version__ and env["timm"] and env["open_clip_torch"]
    assert env["git"] == git_commit() and (env["git"]["commit"] is None or len(env["git"]["commit"]) == 40)
    # the machine, since weights differ between CPUs: its name and torch's kernel level (e.g. AVX2, AVX512)
    assert env["cpu"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["threads"] >= 1


def test_every_guarantee_in_the_docs_names_a_test_that_exists():
    import ast
    import re

    page = (ROOT / "docs" / "guarantees.md").read_text()
    section = page.split("# Guarantees", 1)[1]  # the page is the guarantees table under its title
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", section)
    assert len(named) >= 20
    for file, test in named:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        assert test in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, f"{file}::{test}"


def test_the_readme_is_a_front_door():
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    contents = re.search(r"^#+ .*Contents.*\n+((?:.*\]\(.*\n?)+)", readme, re.MULTILINE)
    assert contents, "a heading with 'Contents' followed by links"
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "the docs pages the README links to"
    @functools.cache
    def anchors(page):  # GitHub's heading ids: lower case, punctuation but '-' dropped, spaces to '-'
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+\s+(.*)$", page.read_text(), re.MULTILINE)}

    for page in [ROOT / "README.md", ROOT / "BENCHMARKS.md", *pages]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # no links inside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path, _, anchor = target.partition("#")
            if re.match(r"[a-z][a-z0-9+.-]*:", path):  # a URL
                continue
            linked = (page.parent / path) if path else page
            assert linked.exists(), f"{page.relative_to(ROOT)}: {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in anchors(linked), f"{page.relative_to(ROOT)}: {target} names no heading"


def test_a_run_whose_last_update_diverges_is_failed_not_finished(finetune_cfg, tmp_path):
    """One step (200 images, batch 200) at lr 1e30: the loss before it was finite, the weights after are not."""
    from soups.jobs.finetune import run_finetune

    info = run_finetune(finetune_cfg("batch_size=200", "lr=1e30", "warmup_steps=0"), tmp_path / "run")
    assert info["status"] == "failed" and "weights hold NaN or inf after training" in info["failure"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_non_finite_weights_enter_no_pool_from_any_source(tiny_sweep, tmp_path):
    from omegaconf import OmegaConf

    from soups.io.checkpoints import convert_official_state_dict
    from soups.pools.run_dirs import load_pool

    _, sweep = tiny_sweep
    pool = tmp_path / "pool"
    for i in ("0", "1"):
        shutil.copytree(sweep / i, pool / i)
    weights = load_file(str(pool / "1" / "model.safetensors"))
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key][0] = float("inf")
    save_file(weights, str(pool / "1" / "model.safetensors"))  # with its sha256 recorded: only the values tell
    info = read_json(pool / "1" / "run.json")
    write_json({**info, "sha256": sha256_file(pool / "1" / "model.safetensors")}, pool / "1" / "run.json")
    ingredients, skipped = load_pool(OmegaConf.create({"dir": str(pool), "glob": None, "runs": None}), tmp_path)
    assert [i.run_dir for i in ingredients] == [pool / "0"] and "hold NaN or inf" in skipped[str(pool / "1")]
    with pytest.raises(ValueError, match="NaN or inf in 1 tensors"):  # release and imported checkpoints
        convert_official_state_dict({"model.visual.proj": torch.tensor([float("nan")]),
                                     "classification_head.weight": torch.ones(2, 1), "classification_head.bias": torch.ones(2)})


def test_opening_a_pool_reads_each_weights_file_once(tiny_sweep, tmp_path, monkeypatch):
    """The sha256 check and the NaN/inf scan share one read (a pool on a network disk is read once)."""
    from omegaconf import OmegaConf

    from soups.pools.run_dirs import load_pool

    _, sweep = tiny_sweep
    reads, read_bytes, opened, real_open = [], Path.read_bytes, [], builtins.open
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or read_bytes(self))
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    ingredients, _ = load_pool(OmegaConf.create({"dir": str(sweep), "glob": None, "runs": None}), tmp_path)
    assert len(ingredients) >= 2 and reads == ["model.safetensors"] * len(ingredients)
    assert not [f for f in opened if f.endswith(".safetensors")]  # no second pass through Python's open
    for ingredient in ingredients:  # and the digest is the file's, as recorded
        assert sha256_file(ingredient.weights) == ingredient.info["sha256"]


@pytest.mark.parametrize("field, value", [("image_size", 48), ("mean", [0.4, 0.4, 0.4]), ("normalize_features", True)])
def test_a_pool_mixing_preprocessing_is_refused_with_the_difference_named(tiny_sweep, tmp_path, field, value):
    from omegaconf import OmegaConf

    from soups.pools.run_dirs import load_pool

    _, sweep = tiny_sweep
    pool = tmp_path / "pool"
    for i in ("0", "1"):
        shutil.copytree(sweep / i, pool / i)
    info = read_json(pool / "1" / "run.json")
    info["config"]["model"][field] = value
    write_json(info, pool / "1" / "run.json")
    with pytest.raises(ValueError, match=f"different preprocessing \\(model.{field}: "):
        load_pool(OmegaConf.create({"dir": str(pool), "glob": None, "runs": None}), tmp_path)


def test_the_same_weights_and_metadata_give_the_same_bytes(tmp_path):
    """safetensors writes metadata from a Rust HashMap (random order per map): without the canonical header,
    two saves of one state with three metadata entries differed in bytes, so in sha256, the cache's key."""
    from safetensors.torch import load_file

    from soups.io.files import atomic_save_safetensors, sha256_file

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    meta = {"kind": "foreign", "source": "model_best.pth.tar", "source_sha256": "ab" * 32, "step": "7"}
    digests = set()
    for i in range(12):
        atomic_save_safetensors(state, tmp_path / f"{i}.safetensors", metadata=meta)
        digests.add(sha256_file(tmp_path / f"{i}.safetensors"))
    assert len(digests) == 1
    from safetensors import safe_open
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == meta
    loaded = load_file(str(tmp_path / "0.safetensors"))
    assert all(torch.equal(loaded[k], state[k]) for k in state)
