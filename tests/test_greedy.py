"""Greedy soup on constructed cases: each ingredient is one number, a soup's 'held-out accuracy' is a
known function of the average, so every decision can be checked by hand."""
from pathlib import Path

import pytest
import torch

from soups.pools.ingredient import Ingredient
from soups.recipes.greedy import GreedySoup
from soups.recipes.uniform import UniformSoup


class ScalarScorer:
    def __init__(self, values, score):
        self.values, self.score, self.calls = values, score, 0

    def load(self, ingredient):
        return {"x": torch.tensor([self.values[ingredient.name]], dtype=torch.float64)}

    def held_out(self, state, acceptable=None):
        self.calls += 1
        return self.score(state["x"].item())


def ingredient(name, held_out):
    return Ingredient(name, Path(name) / "model.safetensors", {"metrics": {"val": held_out}})


def names(result):
    return [i.name for i in result.ingredients]


def test_ranks_by_held_out_and_rejects_a_bad_ingredient():
    # soup accuracy peaks when the average is near 1.0; "bad" drags the average far away
    pool = [ingredient("c", 80.0), ingredient("bad", 70.0), ingredient("a", 90.0), ingredient("b", 85.0)]
    scorer = ScalarScorer({"a": 1.2, "b": 0.8, "c": 1.0, "bad": 10.0}, lambda x: 100 - 10 * abs(x - 1.0))
    result = GreedySoup()(pool, scorer)
    assert names(result) == ["a", "b", "c"]
    assert [t["run"].split("/")[-1] for t in result.record["trace"]] == ["a", "b", "c", "bad"]
    assert [t["accepted"] for t in result.record["trace"]] == [True, True, True, False]
    assert result.weights["x"].item() == pytest.approx(1.0)
    assert scorer.calls == 3  # one evaluation per candidate after the first


def test_tie_is_accepted_by_paper_comparator_and_rejected_by_released_code_comparator():
    pool = [ingredient("a", 90.0), ingredient("b", 80.0)]
    flat = ScalarScorer({"a": 1.0, "b": 3.0}, lambda x: 90.0)  # the average scores exactly the same
    assert names(GreedySoup(comparator=">=")(pool, flat)) == ["a", "b"]
    assert names(GreedySoup(comparator=">")(pool, flat)) == ["a"]


def test_ties_in_ranking_keep_pool_order():
    pool = [ingredient("first", 90.0), ingredient("second", 90.0)]
    result = GreedySoup()(pool, ScalarScorer({"first": 1.0, "second": 2.0}, lambda x: 0.0))
    assert names(result) == ["first"]
    assert result.record["trace"][1]["run"].endswith("second")


def test_greedy_compares_against_the_running_soup_not_the_first_model():
    # b raises the soup to 95; c would give 92 (> a's 90 but < 95): rejected
    scores = {1.0: 90.0, 1.5: 95.0, (1.0 + 2.0 + 0.0) / 3: 92.0}
    pool = [ingredient("a", 90.0), ingredient("b", 85.0), ingredient("c", 84.0)]
    scorer = ScalarScorer({"a": 1.0, "b": 2.0, "c": 0.0}, lambda x: scores[round(x, 6)])
    result = GreedySoup()(pool, scorer)
    assert names(result) == ["a", "b"]
    assert result.record["held_out"] == 95.0


def test_unknown_comparator_is_refused_at_construction():
    with pytest.raises(ValueError, match="comparator"):
        GreedySoup(comparator="=>")


def test_uniform_soup_averages_every_ingredient():
    pool = [ingredient("a", 1.0), ingredient("b", 2.0), ingredient("c", 3.0)]
    result = UniformSoup()(pool, ScalarScorer({"a": 1.0, "b": 2.0, "c": 6.0}, lambda x: 0.0))
    assert result.weights["x"].item() == pytest.approx(3.0)
    assert len(result.ingredients) == 3


class EvaluatingScorer(ScalarScorer):
    def evaluate(self, state, new_point):
        x = state["x"].item()
        return {"val": self.score(x), "test": 50.0 + x}


def test_random_orders_are_seeded_permutations_reported_as_mean_and_std():
    import statistics

    pool = [ingredient(n, 90.0 - i) for i, n in enumerate("abcde")]
    values = {"a": 1.0, "b": 1.4, "c": 0.7, "d": 3.0, "e": 1.1}
    scorer = EvaluatingScorer(values, lambda x: 100 - 10 * abs(x - 1.0))
    result = GreedySoup(order="random", orders=4, seed=3)(pool, scorer)
    records = result.record["orders"]
    assert len(records) == 4 and len({tuple(r["order"]) for r in records}) > 1
    for r in records:
        assert sorted(r["order"]) == list("abcde") and r["chosen"][0] == r["order"][0]
        assert [t["run"] for t in r["trace"]] == r["order"]  # visited in the drawn order
        mean_x = sum(values[n] for n in r["chosen"]) / len(r["chosen"])
        assert r["metrics"]["test"] == pytest.approx(50.0 + mean_x)
    for col in ("val", "test"):
        column = [r["metrics"][col] for r in records]
        assert result.record["mean"][col] == pytest.approx(statistics.fmean(column))
        assert result.record["std"][col] == pytest.approx(statistics.pstdev(column))
    saved = records[result.record["saved_order"]]
    assert saved["held_out"] == max(r["held_out"] for r in records)
    assert result.sizes == result.record["sizes"] == [len(r["chosen"]) for r in records]
    assert names(result) == saved["chosen"]
    assert result.weights["x"].item() == pytest.approx(sum(values[n] for n in saved["chosen"]) / len(saved["chosen"]))
    again = GreedySoup(order="random", orders=4, seed=3)(pool, scorer).record["orders"]
    assert [r["order"] for r in again] == [r["order"] for r in records]  # the same draw from the same seed
    other = GreedySoup(order="random", orders=4, seed=4)(pool, scorer).record["orders"]
    assert [r["order"] for r in other] != [r["order"] for r in records]


def test_greedy_refuses_unknown_order():
    with pytest.raises(ValueError, match="order"):
        GreedySoup(order="alphabetical")


def test_early_rejection_makes_the_same_choices_with_fewer_forward_passes(tiny_sweep, soup_cfg, tmp_path):
    import json

    from soups.evaluation.evaluator import Evaluator
    from soups.jobs.soup import run_soup

    _, sweep = tiny_sweep
    forwarded = {}
    original = Evaluator.forward

    def counting(self, model, name):
        for logits, labels in original(self, model, name):
            forwarded[run] = forwarded.get(run, 0) + len(labels)
            yield logits, labels

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Evaluator, "forward", counting)
        traces = {}
        for run, early in (("full", "false"), ("early", "true")):
            out = tmp_path / run
            run_soup(soup_cfg(f"pool.dir={sweep}", "method=greedy", f"method.greedy.early_rejection={early}",
                              "eval_batch_size=16", f"paths.cache_dir={tmp_path}/cache_{run}"), out)
            traces[run] = json.loads((out / "greedy" / "soup.json").read_text())
    assert traces["early"]["ingredients"] == traces["full"]["ingredients"]
    assert [t["accepted"] for t in traces["early"]["trace"]] == [t["accepted"] for t in traces["full"]["trace"]]
    stopped = [t for t in traces["early"]["trace"] if t["soup_held_out"] is None]
    assert all(not t["accepted"] for t in stopped)
    if stopped:
        assert forwarded["early"] < forwarded["full"]
    else:
        assert forwarded["early"] == forwarded["full"]


def test_early_rejection_stops_exactly_when_the_bar_is_out_of_reach():
    from soups.data import EvalSet, ImageArray
    from soups.evaluation.evaluator import Evaluator

    labels = torch.tensor([1] * 50 + [0] * 50)  # the model below always says 0: wrong on the first half
    images = ImageArray("val", torch.zeros(100, 4, 4, dtype=torch.uint8), labels)
    sets = {n: EvalSet(images, 4, [0.5] * 3, [0.5] * 3) for n in ("val", "test")}
    evaluator = Evaluator(sets, batch_size=10, precision="fp32", device=torch.device("cpu"), progress=False)
    always_zero = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    with torch.no_grad():
        always_zero[1].weight.zero_()
        always_zero[1].bias.copy_(torch.tensor([1.0, 0.0]))
    full = evaluator.measure(always_zero, "val", acceptable=lambda s: s >= 50.0)
    assert full.accuracy == 50.0 and full.logits.shape == (100, 2) and full.stopped_at is None
    assert evaluator.images_forwarded == 100
    # bar 60: after 5 batches (50 wrong) at most 50% is reachable; the pass says where it stopped
    stopped = evaluator.measure(always_zero, "val", acceptable=lambda s: s >= 60.0)
    assert stopped.accuracy is None and stopped.logits is None and stopped.stopped_at == {"correct": 0, "seen": 50, "n": 100}
    assert evaluator.images_forwarded == 100 + 50
    # the released code's strict ">": 50% can never beat 50%, known after 5 batches too
    assert evaluator.measure(always_zero, "val", acceptable=lambda s: s > 50.0).accuracy is None
    assert evaluator.images_forwarded == 150 + 50


def test_an_early_rejection_is_journaled_and_replayed_without_a_forward_pass(tmp_path):
    from omegaconf import OmegaConf

    from soups.data import EvalSet, GivenSets, ImageArray
    from soups.evaluation.scorer import EvalSettings, PoolScorer
    from soups.pools import OpenPool

    labels = torch.tensor([1] * 50 + [0] * 50)  # the model below always says 0: wrong on the first half
    images = ImageArray("val", torch.zeros(100, 4, 4, dtype=torch.uint8), labels)
    always_zero = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    state = {"1.weight": torch.zeros(2, 48), "1.bias": torch.tensor([1.0, 0.0])}

    def scorer():  # a fresh job (e.g. a rerun after a kill) on the same cache
        sets = GivenSets({n: EvalSet(images, 4, [0.5] * 3, [0.5] * 3) for n in ("val", "test")})
        run_cfg = OmegaConf.create({"data": {"name": "given", "shifts": {"names": []}}, "model": {"name": "linear"}})
        pool = OpenPool([], run_cfg, always_zero, "given", {}, None)
        return PoolScorer(pool, EvalSettings(batch_size=10, cache_dir=str(tmp_path)), torch.device("cpu"), sets,
                          progress=False)

    first = scorer()
    assert first.held_out(state, acceptable=lambda s: s >= 60.0) is None
    assert first.images_forwarded == 50
    rerun = scorer()
    assert rerun.held_out(state, acceptable=lambda s: s >= 60.0) is None  # replayed from the journal
    assert rerun.held_out(state, acceptable=lambda s: s > 55.0) is None   # a bar it still rules out
    assert rerun.images_forwarded == 0
    assert rerun.held_out(state, acceptable=lambda s: s >= 50.0) == 50.0  # a lower bar: evaluated for real
    assert rerun.images_forwarded == 100


@pytest.mark.parametrize("ties, expected", [
    ("pool", ["e", "a", "b", "c", "d"]),
    ("official", ["e", "a", "d", "c", "b"]),  # the released code: ascending sort, then reversed
])
def test_tie_order_of_the_held_out_ranking(ties, expected):
    from soups.recipes.greedy import by_held_out

    pool = [ingredient("a", 60.0), ingredient("b", 50.0), ingredient("c", 50.0), ingredient("d", 50.0),
            ingredient("e", 70.0)]
    assert [i.name for i in by_held_out(pool, ties)] == expected
    pair = [ingredient("a", 50.0), ingredient("b", 50.0)]
    assert [i.name for i in by_held_out(pair, ties)] == (["a", "b"] if ties == "pool" else ["b", "a"])


def test_the_official_tie_order_decides_which_of_two_equals_starts_the_soup():
    pool = [ingredient("first", 90.0), ingredient("second", 90.0)]
    scorer = ScalarScorer({"first": 1.0, "second": 2.0}, lambda x: 0.0)
    result = GreedySoup(ties="official")(pool, scorer)
    assert names(result) == ["second"] and result.record["ties"] == "official"
    with pytest.raises(ValueError, match="ties"):
        GreedySoup(ties="sorted")


def test_the_paper_experiment_uses_the_released_codes_greedy_rule(soup_cfg):
    from hydra.utils import instantiate

    cfg = soup_cfg("experiment=paper_vit_b32", "method=[greedy,greedy_ensemble]")
    for name in ("greedy", "greedy_ensemble"):
        recipe = instantiate(cfg.method[name])
        assert (recipe.comparator, recipe.ties) == (">", "official")
    default = instantiate(soup_cfg("method=greedy").method.greedy)
    assert (default.comparator, default.ties) == (">=", "pool")


def test_a_row_of_random_orders_shows_the_range_of_their_sizes_not_the_saved_orders():
    """The row's accuracies are the mean over orders, so its #ingredients is theirs too: the EfficientNet
    pool's five orders kept 3, 6, 3, 1 and 1 ingredients, and the row once said 3 (the saved order's)."""
    from soups.recipes import RecipeResult
    from soups.reporting.records import recipe_row

    chosen = [ingredient(n, 90.0) for n in "abc"]
    draws = RecipeResult({}, chosen, mean={"test": 1.0}, std={"test": 0.0}, sizes=[3, 6, 3, 1, 1])
    assert recipe_row("greedy_random", draws, {"test": 2.0}, Path("x"))["ingredients"] == "1–6"
    same = RecipeResult({}, chosen, mean={"test": 1.0}, std={"test": 0.0}, sizes=[3, 3])
    assert recipe_row("greedy_random", same, {"test": 2.0}, Path("x"))["ingredients"] == 3
    assert recipe_row("greedy", RecipeResult({}, chosen), {"test": 2.0}, Path("x"))["ingredients"] == 3


def test_the_report_says_whether_greedy_chose_the_released_ingredients():
    from omegaconf import OmegaConf

    from soups.reporting.report import member_lines

    reference = OmegaConf.create({"members": {"greedy": ["m43", "m44", "m32"], "best_individual": ["m43"],
                                              "uniform": ["m1"]}})

    def rows(greedy, best="m43"):
        return [{"row": "greedy soup", "kind": "soup", "members": greedy},
                {"row": f"best individual ({best})", "kind": "best_individual", "members": [best]},
                {"row": "uniform soup", "kind": "soup", "mean": {}, "std": {}}]  # draws: no members, left out

    assert member_lines(rows(["m43", "m44", "m32"]), reference) == [
        "- greedy: the released choice, in its order (m43, m44, m32)",
        "- best_individual: the released choice, in its order (m43)"]
    assert member_lines(rows(["m43", "m32", "m44"], best="m44"), reference) == [
        "- greedy: 3 of the released 3 (m43, m44, m32) (the same set in another order)",
        "- best_individual: 0 of the released 1 (m43); ours adds m44"]
    assert member_lines(rows(["m43", "m7"]), reference)[0] == "- greedy: 1 of the released 3 (m43, m44, m32); ours adds m7"
