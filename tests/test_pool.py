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


def test_runs_recorded_with_shifts_as_their_own_group_still_soup_with_their_metrics(tiny_sweep, soup_cfg, tmp_path,
                                                                                  monkeypatch):
    """Sweeps made before datasets carried their shifts (`config.shifts` beside `config.data` in run.json) open
    as they are: the shifts move into data, the evaluation key is the same, so no individual is evaluated again."""
    import json
    import shutil

    from conftest import own_cache

    from soups.evaluation.evaluator import Evaluator
    from soups.jobs.soup import run_soup

    tmp, sweep = tiny_sweep
    base = own_cache(tmp, tmp_path)  # the runs' logits, in a cache of this test's own
    old = tmp_path / "old_sweep"
    shutil.copytree(sweep, old)
    for run in old.iterdir():
        info = json.loads((run / "run.json").read_text())
        config = info["config"]
        config["shifts"] = config["data"].pop("shifts")
        (run / "run.json").write_text(json.dumps(info))
    passes, forward = [], Evaluator.forward
    monkeypatch.setattr(Evaluator, "forward", lambda self, model, name: passes.append(name) or forward(self, model, name))
    rows = run_soup(soup_cfg(f"pool.dir={old}", "method=uniform", f"paths.cache_dir={base}/cache"), tmp_path / "soup")
    individuals = [r for r in rows if r["kind"] == "individual"]
    assert len(individuals) == 3 and set(individuals[0]["metrics"]) >= {"digits", "avg_shifts"}
    assert passes.count("test") <= 1  # at most the soup's own: the runs' metrics and logits were reused


def test_runs_of_two_sweeps_are_named_with_their_sweep(tiny_sweep, soup_cfg, tmp_path):
    """`fine-tune 1` alone would hide which sweep a run came from: runs of several folders keep `<sweep>/<job>`."""
    import shutil

    from soups.pools import open_pool

    _, sweep = tiny_sweep
    other = tmp_path / "other_sweep"
    shutil.copytree(sweep / "1", other / "1")
    pool = open_pool(soup_cfg(f"pool.runs=[{sweep}/0,{other}/1]"), "cpu")
    assert [i.label for i in pool.ingredients] == [f"{sweep.name}/0", "other_sweep/1"]
    assert [i.label for i in open_pool(soup_cfg(f"pool.dir={sweep}"), "cpu").ingredients] == [
        "fine-tune 0", "fine-tune 1", "fine-tune 2"]


def test_a_recipe_cannot_overwrite_soup_json_fields_or_write_outside_its_folder():
    import pytest

    from soups.recipes import RecipeResult
    from soups.reporting.records import check_outputs

    check_outputs("ok", RecipeResult({}, [], {"k": 2}, tables={"ranking": [{"a": 1}, {"a": 2}]}))
    for result, said in ((RecipeResult({}, [], {"metrics": 1}), "overwrite soup.json"),
                         (RecipeResult({}, [], tables={"seconds": [{"a": 1}]}), "overwrite soup.json"),
                         (RecipeResult({}, [], figures={"../escaped": print}), "plain file names"),
                         (RecipeResult({}, [], tables={"t": [{"a": 1}, {"b": 2}]}), "different keys")):
        with pytest.raises(ValueError, match=said):
            check_outputs("bad", result)


@pytest.mark.parametrize("choice, message", [
    ("data=imagenet", "data=imagenet, but this pool's ingredients were made with data=mnist (their run.json)"),
    ("model=tiny_vit", "model=tiny_vit, but this pool's ingredients were made with model=tiny_efficientnet")])
def test_a_model_or_data_other_than_the_runs_is_refused_not_silently_unused(tiny_sweep, soup_cfg, choice, message):
    """Run dirs evaluate on the data they describe: `data=imagenet` once printed the MNIST table under it."""
    from soups.errors import BadInput
    from soups.pools import open_pool

    _, sweep = tiny_sweep
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_pool(soup_cfg(f"pool.dir={sweep}", choice), "cpu")
    same = open_pool(soup_cfg(f"pool.dir={sweep}", "model=tiny_efficientnet"), "cpu")
    assert same.run_cfg.model.name == "tiny_efficientnet" and len(same.ingredients) == 3  # the runs' own: accepted
    # the same name under other settings would go unused just as silently (the runs had 10 test images a class)
    with pytest.raises(BadInput, match=r"data=mnist with .*data.test_per_class=5 \(theirs: 10\)"):
        open_pool(soup_cfg(f"pool.dir={sweep}", "data=mnist", "data.test_per_class=5"), "cpu")


def test_a_sharded_evaluation_refuses_another_model_or_data_before_any_job_is_submitted(tiny_sweep, tmp_path):
    """src/evaluate.py -m shards=N data=imagenet once submitted N jobs that each refused: the launching process
    now reads the first run.json (no weights) and says it once."""
    from conftest import compose_cfg
    from soups.jobs.preflight import EvaluationShards

    _, sweep = tiny_sweep
    for choice, said in (("data=imagenet", "data=imagenet, but this pool's ingredients were made with data=mnist"),
                         ("model=tiny_vit", "model=tiny_vit, but this pool's ingredients were made with model=tiny_eff")):
        with pytest.raises(SystemExit, match="^error: " + said):
            EvaluationShards().on_multirun_start(compose_cfg("evaluate", tmp_path, ["shards=2", f"pool.dir={sweep}", choice]))
    EvaluationShards().on_multirun_start(compose_cfg("evaluate", tmp_path, ["shards=2", f"pool.dir={sweep}"]))
