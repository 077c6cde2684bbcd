import pytest
from omegaconf import OmegaConf

from soups.pools.run_dirs import latest_sweep, resolve_run_dirs


def make_runs(root, sweep, n):
    for i in range(n):
        (root / "finetune" / "multiruns" / sweep / str(i)).mkdir(parents=True)
        (root / "finetune" / "multiruns" / sweep / str(i) / "run.json").write_text("{}")
    return root / "finetune" / "multiruns" / sweep


def pool(**kw):
    return OmegaConf.create({"dir": None, "glob": None, "runs": None, **kw})


def test_sources_dir_glob_runs_and_latest(tmp_path):
    old = make_runs(tmp_path, "2026-01-01_00-00-00_000000", 2)
    new = make_runs(tmp_path, "2026-01-02_00-00-00_000000", 12)
    assert latest_sweep(tmp_path) == new
    assert [p.name for p in resolve_run_dirs(pool(), tmp_path)] == [str(i) for i in range(12)]  # numeric order
    assert resolve_run_dirs(pool(dir=str(old)), tmp_path) == [old / "0", old / "1"]
    assert [p.name for p in resolve_run_dirs(pool(glob=f"{new}/[0-3]"), tmp_path)] == ["0", "1", "2", "3"]
    assert resolve_run_dirs(pool(runs=[str(old / "1")]), tmp_path) == [old / "1"]
    with pytest.raises(ValueError, match="one pool source"):
        resolve_run_dirs(pool(dir=str(old), glob="x"), tmp_path)
    with pytest.raises(ValueError, match="pool is empty"):
        resolve_run_dirs(pool(glob=f"{tmp_path}/nothing*"), tmp_path)
