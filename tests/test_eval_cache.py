"""Evaluation done once: logits keyed by sample id, metrics by weights digest, forward passes counted."""
import json
import torch

from soups.evaluation.cache import EvaluationCache, hash_ids
from soups.io.files import state_digest
from soups.evaluation.evaluator import Evaluator
from soups.jobs.soup import run_soup


def test_logits_are_served_by_sample_id_in_any_order_and_subset(tmp_path):
    cache = EvaluationCache(tmp_path, "key")
    ids = [f"class{i % 3}/img{i}.jpg" for i in range(6)]
    logits = torch.arange(12, dtype=torch.float32).view(6, 2)
    cache.put_logits("abc", "val", hash_ids(ids), logits)
    assert torch.equal(cache.get_logits("abc", "val", hash_ids(ids)), logits)
    order = [4, 0, 5]
    assert torch.equal(cache.get_logits("abc", "val", hash_ids([ids[i] for i in order])), logits[order])
    assert cache.get_logits("abc", "val", hash_ids(["class0/unseen.jpg"])) is None  # not cached: recompute
    assert cache.get_logits("abc", "test", hash_ids(ids)) is None


def test_state_digest_changes_with_any_value_name_or_dtype():
    state = {"w": torch.ones(2, 2), "n": torch.tensor(3)}
    base = state_digest(state)
    assert state_digest({k: v.clone() for k, v in state.items()}) == base
    assert state_digest({**state, "w": torch.ones(2, 2).add_(1e-7)}) != base
    assert state_digest({"v": state["w"], "n": state["n"]}) != base
    assert state_digest({**state, "w": torch.ones(2, 2, dtype=torch.float64)}) != base
    assert state_digest({**state, "w": torch.ones(4)}) != base  # the same bytes in another shape are other weights
    assert state_digest({**state, "e": torch.zeros(0)}) != base  # an empty tensor is named too


def count_forward_passes(monkeypatch) -> list:
    calls = []
    original = Evaluator.logits
    monkeypatch.setattr(Evaluator, "logits", lambda self, model, name: calls.append(name) or original(self, model, name))
    return calls


def test_weights_are_keyed_as_loaded_so_a_state_whose_tied_copies_differ_is_never_served_the_old_numbers():
    """Before tied copies were set from their first name, load_state_dict let the last copy win; a cache
    entry keyed by such a state's own digest holds the numbers of that other model. The key is now the
    digest of the state as loaded: equal for states that differ only in a copy, new for the old ones."""
    from soups.evaluation.scorer import PoolScorer

    scorer = PoolScorer.__new__(PoolScorer)
    scorer.aliases, scorer.bn_sample = {"copy": "w"}, None
    merged = {"w": torch.tensor([1.0, 2.0]), "copy": torch.tensor([0.5, 0.5])}  # a recipe that merged the copy otherwise
    as_loaded = {"w": merged["w"], "copy": merged["w"]}
    assert scorer._weights_key(merged, new_point=True) == scorer._weights_key(as_loaded, True) == state_digest(as_loaded)
    assert scorer._weights_key(merged, new_point=True) != state_digest(merged)  # the old key is not read
    scorer.aliases = {}
    assert scorer._weights_key(merged, new_point=True) == state_digest(merged)  # untied models keep their keys


def test_ensembles_read_the_fine_tunes_logits_without_a_forward_pass(tiny_sweep, soup_cfg, tmp_path, monkeypatch):
    tmp, sweep = tiny_sweep
    calls = count_forward_passes(monkeypatch)
    # the fine-tunes wrote their logits into this cache when they were evaluated
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", f"paths.cache_dir={tmp}/cache", "method=[ensemble,greedy_ensemble]"),
                    tmp_path / "soup")
    assert calls == [] and [r["kind"] for r in rows[-2:]] == ["ensemble", "ensemble"]


def test_a_second_soup_run_evaluates_nothing_again(tiny_sweep, soup_cfg, tmp_path, monkeypatch):
    _, sweep = tiny_sweep
    calls = count_forward_passes(monkeypatch)
    cfg = soup_cfg(f"pool.dir={sweep}", "method=[uniform,greedy,ensemble,greedy_ensemble]", "eval_batch_size=64")
    first = run_soup(cfg, tmp_path / "first")
    # other evaluation settings than the fine-tunes': each individual and the init are evaluated once, on each set
    sets = ["val", "test", "digits", "rotate", "invert", "blur"]
    assert sum(calls.count(s) for s in sets[1:]) >= 4 * 5 and calls.count("test") == 3 + 1 + 2  # + uniform, greedy
    calls.clear()
    second = run_soup(cfg, tmp_path / "second")
    assert calls == []
    assert [r["metrics"] for r in second] == [r["metrics"] for r in first]


def test_a_pool_evaluated_by_the_evaluate_job_leaves_the_soup_nothing_to_forward_init_included(
        tiny_sweep, soup_cfg, tmp_path, monkeypatch, caplog):
    """src/evaluate.py under other settings than the fine-tunes' measures the run-dir pool's init too (it once
    left it to the soup job, whose log then counted the init's images as the individual models')."""
    from conftest import compose_cfg

    from soups.jobs.evaluate import run_evaluate

    _, sweep = tiny_sweep
    record = run_evaluate(compose_cfg("evaluate", tmp_path, [f"pool.dir={sweep}", "eval_batch_size=64"]), tmp_path / "e")
    assert sorted(record["metrics"]) == [f"{sweep.name}/{i}" for i in range(3)] + ["initialization"]
    calls = count_forward_passes(monkeypatch)
    caplog.set_level("INFO", logger="soups.jobs.soup")
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=ensemble", "eval_batch_size=64"), tmp_path / "soup")
    assert calls == [] and "individual models: 0 images forwarded for 3 models" in caplog.text
    assert "the initialization:" not in caplog.text and rows[0]["row"] == "initialization"
    assert rows[0]["metrics"] == record["metrics"]["initialization"]


def test_by_default_a_soup_measures_at_its_pools_batch_size_and_reuses_the_runs_metrics(tiny_sweep, soup_cfg,
                                                                                         tmp_path, monkeypatch):
    tmp, sweep = tiny_sweep  # fine-tuned with eval_batch_size=128 (TINY), logits in tmp/cache
    calls = count_forward_passes(monkeypatch)
    cfg = soup_cfg(f"pool.dir={sweep}", "method=uniform", "eval_batch_size=null", f"paths.cache_dir={tmp}/cache")
    run_soup(cfg, tmp_path / "soup")
    # the soup only: individuals' metrics from run.json, the best one's logits (its row's intervals) from the cache
    evaluation = json.loads((tmp_path / "soup" / "uniform" / "soup.json").read_text())["evaluation"]
    assert evaluation["batch_size"] == 128 and calls.count("test") == 1
    assert cfg.eval_batch_size is None  # the config given is not edited in place


def test_a_soup_whose_held_out_accuracy_is_known_is_only_run_on_the_other_sets(tiny_sweep, soup_cfg, tmp_path,
                                                                                monkeypatch):
    """A greedy soup's held-out accuracy was measured while choosing it: its final evaluation skips that set,
    and the metrics equal a full evaluation's."""
    from soups.averaging import average
    from soups.recipes import build_recipes
    from soups.pools import open_pool
    from soups.evaluation.scorer import EvalSettings, PoolScorer

    _, sweep = tiny_sweep
    cfg = soup_cfg(f"pool.dir={sweep}", "method=uniform")
    device = torch.device("cpu")
    pool = open_pool(cfg, device)
    scorer = PoolScorer(pool, EvalSettings.of(cfg), device)
    state = average(scorer.load(i) for i in pool.ingredients)
    passes, forward = [], Evaluator.forward
    monkeypatch.setattr(Evaluator, "forward", lambda self, model, name: passes.append(name) or forward(self, model, name))
    held_out = scorer.held_out(state)
    metrics = scorer.evaluate(state, new_point=True)
    assert passes.count("val") == 1 and passes.count("test") == 1 and metrics["val"] == held_out
    full = scorer.evaluator.evaluate(scorer.materialize(state, new_point=True))
    assert metrics == full
