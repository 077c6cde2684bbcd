"""Analyses of a pool: exact geometry on constructed weights, and each analysis end to end on the tiny sweep
(its numbers consistent with the soup job's, a second run served by the evaluation cache)."""
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import compose_cfg, own_cache
from soups.averaging import angles_degrees, displacement_gram


def test_angles_between_displacements_from_the_init_count_weights_only(tmp_path):
    init = {"w": torch.zeros(3), "bn.running_mean": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(0)}
    models = {"a": torch.tensor([1.0, 0, 0]), "b": torch.tensor([0, 2.0, 0]), "c": torch.tensor([3.0, 0, 0]),
              "d": torch.tensor([1.0, 1.0, 0])}
    save_file(init, str(tmp_path / "init.safetensors"))
    for name, w in models.items():  # BN statistics that would change every angle if they were counted
        save_file({"w": w, "bn.running_mean": torch.full((3,), 5.0), "bn.num_batches_tracked": torch.tensor(7)},
                  str(tmp_path / f"{name}.safetensors"))
    gram, count = displacement_gram([tmp_path / f"{n}.safetensors" for n in models], tmp_path / "init.safetensors")
    assert count == 3 and gram[0, 0] == 1.0 and gram[1, 1] == 4.0 and gram[0, 2] == 3.0
    angles = angles_degrees(gram)
    assert angles[0, 1] == pytest.approx(90.0)  # orthogonal
    assert angles[0, 2] == pytest.approx(0.0, abs=1e-6)  # parallel
    assert angles[0, 3] == pytest.approx(45.0) and angles[1, 3] == pytest.approx(45.0)


def analyze(sweep, tmp, out, *overrides):
    from soups.jobs.analyze import run_analysis

    cfg = compose_cfg("analyze", tmp, ["logger=none", f"pool.dir={sweep}", *overrides])
    return run_analysis(cfg, out)


def test_pairs_on_a_sweep_gains_are_midpoints_and_ensembles_minus_the_endpoints_mean(tiny_sweep, tmp_path):
    tmp, sweep = tiny_sweep
    tmp = own_cache(tmp, tmp_path)
    record = analyze(sweep, tmp, tmp_path / "pairs", "analysis=pairs")
    assert len(record["ingredients"]) == 3 and len(record["pairs"]) == 3
    alone = record["individual"]
    for p in record["pairs"]:
        for col in ("val", "test", "avg_shifts"):
            mean = (alone[p["a"]][col] + alone[p["b"]][col]) / 2
            assert p["soup_gain"][col] == pytest.approx(p["midpoint"][col] - mean)
            assert p["ensemble_gain"][col] == pytest.approx(p["ensemble"][col] - mean)
        assert 0 < p["angle"] < 180 and p["differs_most"] in ("lr", "seed")
    assert record["best"] == record["ingredients"][0] and len(record["with_best"]) == 2
    assert json.loads((tmp_path / "pairs" / "pairs.json").read_text())["pairs"] == record["pairs"]
    assert (tmp_path / "pairs" / "pairs.png").stat().st_size > 10_000
    assert record["images_forwarded"] > 0
    again = analyze(sweep, tmp, tmp_path / "again", "analysis=pairs")
    assert again["images_forwarded"] == 0 and again["pairs"] == record["pairs"]  # all from the cache


def test_the_midpoint_is_the_uniform_soup_of_two(tiny_sweep, soup_cfg, tmp_path):
    """The pair's midpoint accuracy is exactly what the soup job reports for a uniform soup of those two."""
    from soups.jobs.soup import run_soup

    tmp, sweep = tiny_sweep
    tmp = own_cache(tmp, tmp_path)
    record = analyze(sweep, tmp, tmp_path / "pairs", "analysis=pairs")
    pair = record["pairs"][0]
    runs = [str(sweep / name.split("/")[-1]) for name in (pair["a"], pair["b"])]
    rows = run_soup(soup_cfg(f"pool.runs=[{','.join(runs)}]", "method=uniform", f"paths.cache_dir={tmp}/cache"),
                    tmp_path / "soup")
    assert rows[-1]["metrics"] == pair["midpoint"]
    assert math.isfinite(pair["angle"])


def test_ingredients_curve_random_subsets_and_the_greedy_soups_prefixes(tiny_sweep, soup_cfg, tmp_path):
    from soups.jobs.soup import run_soup

    tmp, sweep = tiny_sweep
    tmp = own_cache(tmp, tmp_path)
    record = analyze(sweep, tmp, tmp_path / "ingredients", "analysis=ingredients", "analysis.draws=3")
    assert [p["k"] for p in record["random"]] == [1, 2, 3]
    assert [len(p["draws"]) for p in record["random"]] == [3, 3, 1]  # C(3, 3) = 1 subset of size 3
    for point in record["random"]:
        assert all(len(set(d["members"])) == point["k"] for d in point["draws"])
        values = [d["metrics"]["test"] for d in point["draws"]]
        assert point["mean"]["test"] == pytest.approx(sum(values) / len(values))
    individual = {d["members"][0]: d["metrics"] for d in record["random"][0]["draws"]}
    assert len(individual) == 3  # the k=1 draws: each of the three fine-tunes
    # each drawn subset also gets its own greedy soup and best individual (the same draws: paired)
    for point in record["random"]:
        for d in point["draws"]:
            assert d["best"]["metrics"]["val"] == max(individual[m]["val"] for m in d["members"])
            assert set(d["greedy"]["members"]) <= set(d["members"]) and d["greedy"]["members"][0] == d["best"]["members"][0]
            assert d["greedy"]["metrics"]["val"] >= d["best"]["metrics"]["val"]  # greedy starts at the best, never drops
            if point["k"] == 1:
                assert d["greedy"]["metrics"] == d["best"]["metrics"] == d["metrics"]
        for what in ("greedy", "best"):
            values = [d[what]["metrics"]["test"] for d in point["draws"]]
            assert point[what]["mean"]["test"] == pytest.approx(sum(values) / len(values))
    rows = {r["row"].split(" (")[0]: r for r in run_soup(soup_cfg(f"pool.dir={sweep}", "method=[uniform,greedy]",
                                                                  f"paths.cache_dir={tmp}/cache"), tmp_path / "soup")}
    assert record["random"][-1]["draws"][0]["metrics"] == rows["uniform soup"]["metrics"]  # k = K: the uniform soup
    assert record["random"][-1]["draws"][0]["greedy"]["metrics"] == rows["greedy soup"]["metrics"]  # and the greedy
    assert record["random"][-1]["draws"][0]["best"]["metrics"] == rows["best individual"]["metrics"]
    assert record["greedy"][-1]["metrics"] == rows["greedy soup"]["metrics"]  # the last prefix: the greedy soup
    assert len(record["greedy"]) == rows["greedy soup"]["ingredients"]
    assert (tmp_path / "ingredients" / "ingredients.png").stat().st_size > 10_000


def test_ingredients_compares_greedy_best_and_uniform_on_the_same_subsets_as_computed_by_hand():
    from types import SimpleNamespace

    from soups.analyses.ingredients import Ingredients
    from soups.pools.ingredient import Ingredient

    # each ingredient is one number; a soup's accuracy is a known function of the average (as in test_greedy)
    values = {"a": 1.2, "b": 0.8, "c": 1.0, "bad": 10.0}
    score = lambda x: 100 - 10 * abs(x - 1.0)  # noqa: E731

    class Scorer:
        def load(self, ingredient):
            return {"x": torch.tensor([values[ingredient.name]], dtype=torch.float64)}

        def held_out(self, state, acceptable=None):
            return score(state["x"].item())

        def evaluate(self, state, new_point):
            x = state["x"].item()
            return {"val": score(x), "test": 50 + x, "avg_shifts": 10 * x}

        def individual_metrics(self, ingredient):
            return self.evaluate(self.load(ingredient), new_point=False)

    pool = SimpleNamespace(ingredients=[Ingredient(n, Path(n) / "model.safetensors", {"metrics": {"val": v}})
                                        for n, v in (("c", 80.0), ("bad", 70.0), ("a", 90.0), ("b", 85.0))])
    record = Ingredients(draws=6, sizes=[2, 4])(pool, Scorer())
    pairs, whole = record["random"]
    assert len(pairs["draws"]) == 6 and len(whole["draws"]) == 1  # every pair; the one 4-subset
    full = whole["draws"][0]
    assert full["metrics"]["val"] == pytest.approx(score((1.2 + 0.8 + 1.0 + 10.0) / 4))  # uniform: 77.5
    assert full["greedy"]["members"] == ["a", "b", "c"] and full["greedy"]["metrics"]["val"] == pytest.approx(100.0)
    assert full["best"]["members"] == ["a"] and full["best"]["metrics"]["val"] == pytest.approx(98.0)
    by_pair = {tuple(sorted(d["members"])): d for d in pairs["draws"]}
    assert by_pair[("a", "b")]["greedy"]["members"] == ["a", "b"]       # avg 1.0 scores 100 >= 98: accepted
    assert by_pair[("a", "bad")]["greedy"]["members"] == ["a"]          # avg 5.6 scores 54 < 98: rejected
    assert by_pair[("b", "c")]["greedy"]["members"] == ["b", "c"]       # avg 0.9 scores 99 >= 98 (b's own)
    assert by_pair[("a", "c")]["best"]["members"] == ["a"]
    for stats, column in ((pairs, [d["metrics"]["test"] for d in pairs["draws"]]),
                          *((pairs[w], [d[w]["metrics"]["test"] for d in pairs["draws"]]) for w in ("greedy", "best"))):
        assert stats["mean"]["test"] == pytest.approx(sum(column) / 6)
    assert Ingredients(draws=6, sizes=[2], considered=False)(pool, Scorer())["random"][0].keys() == {
        "k", "draws", "mean", "std"}


@pytest.mark.parametrize("sizes, said", [
    (3, "analysis.sizes=3: expected null"), ([], "analysis.sizes=[]: expected null"),
    ("abc", "analysis.sizes='abc': expected null"), ([1, 1], "repeated sizes"), ([True], "not: [True]"),
    ([0, 2], "not: [0]"), ([5], "not: [5]")])
def test_ingredients_sizes_other_than_a_list_of_distinct_sizes_are_refused_in_one_line(sizes, said):
    from types import SimpleNamespace

    from soups.analyses.ingredients import Ingredients
    from soups.errors import BadInput
    from soups.pools.ingredient import Ingredient

    pool = SimpleNamespace(ingredients=[Ingredient(n, Path(n), {"metrics": {"val": 1.0}}) for n in "abcd"])
    with pytest.raises(BadInput, match=re.escape(said)):
        Ingredients(sizes=sizes)(pool, None)
    with pytest.raises(BadInput, match=r"^draws=0 \(expected an integer >= 1\)$"):
        Ingredients(draws=0)
    with pytest.raises(BadInput, match=r"^ties='x' \(expected pool or official\)$"):
        Ingredients(ties="x")


def test_ingredients_best_individual_is_the_soup_jobs_on_a_held_out_tie_whatever_the_tie_order():
    """The best individual row takes the first in pool order among equal held-out accuracies; the analysis's
    best of a subset follows it under ties=official too (greedy's own first pick is then the last)."""
    from types import SimpleNamespace

    from soups.analyses.ingredients import Ingredients
    from soups.pools.ingredient import Ingredient, best_individual
    from soups.reporting.records import baseline_rows

    class Scorer:
        def individual_metrics(self, ingredient):
            return ingredient.info["metrics"]

        def load(self, ingredient):
            return {"x": torch.tensor([1.0])}

        def held_out(self, state, acceptable=None):
            return 50.0  # every soup below the models: greedy keeps its first pick

        def evaluate(self, state, new_point):
            return {"val": 50.0, "test": 50.0, "avg_shifts": 50.0}

    pool = SimpleNamespace(ingredients=[Ingredient(n, Path(n), {"metrics": {"val": 90.0, "test": t, "avg_shifts": 0.0}})
                                        for n, t in (("a", 70.0), ("b", 80.0))])
    record = Ingredients(draws=1, sizes=[2], ties="official")(pool, Scorer())
    draw = record["random"][0]["draws"][0]
    assert draw["greedy"]["members"] == ["b"]  # the released code's tie order: reverse pool order
    row = next(r for r in baseline_rows(pool.ingredients, None) if r["kind"] == "best_individual")
    assert draw["best"]["members"] == row["members"] == ["a"] == [best_individual(pool.ingredients).name]
    assert record["sizes"] == [2] and record["considered"] is True


def test_the_plane_is_orthonormal_and_passes_through_the_three_models():
    from soups.averaging import Plane

    gen = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen), "n": torch.tensor(5)}
    first = {k: (v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in init.items()}
    second = {k: (v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in init.items()}
    plane = Plane(init, first, second)
    dot = lambda a, b: sum(float((a[k] * b[k]).sum()) for k in a)  # noqa: E731
    assert dot(plane.u, plane.u) == pytest.approx(1.0) and dot(plane.v, plane.v) == pytest.approx(1.0)
    assert dot(plane.u, plane.v) == pytest.approx(0.0, abs=1e-12)
    for name, model in (("init", init), ("first", first), ("second", second)):
        point = plane.point(*plane.coordinates[name])
        assert all(torch.allclose(point[k].double(), model[k].double(), atol=1e-6) for k in ("w", "b"))
        assert point["n"] == 5  # integer buffers from the init
    with pytest.raises(ValueError, match="one line"):
        Plane(init, first, {k: (2 * first[k] - init[k] if v.is_floating_point() else v) for k, v in init.items()})


def test_bn_statistics_on_the_plane_follow_the_models_so_their_points_are_those_models():
    """Without BN recalibration a point's running statistics are the same affine mix as its weights: the points
    at the fine-tunes are the fine-tunes, the midpoint is their 2-soup (they were the init's statistics, so the
    landscape's marks were not those models: held-out error 88 vs the model's own 47 on a tiny BN sweep)."""
    from soups.averaging import Plane

    gen = torch.Generator().manual_seed(1)
    init = {"w": torch.randn(4, 3, generator=gen), "bn.running_mean": torch.randn(3, generator=gen),
            "bn.running_var": torch.rand(3, generator=gen) + 0.5, "bn.num_batches_tracked": torch.tensor(7)}
    first = {k: v + torch.rand(v.shape, generator=gen) if v.is_floating_point() else torch.tensor(9) for k, v in init.items()}
    second = {k: v + torch.rand(v.shape, generator=gen) if v.is_floating_point() else torch.tensor(11) for k, v in init.items()}
    plane = Plane(init, first, second)
    midpoint = tuple((a + b) / 2 for a, b in zip(plane.coordinates["first"], plane.coordinates["second"]))
    soup = {k: (first[k] + second[k]) / 2 for k in init if init[k].is_floating_point()}
    for coordinates, model in ((plane.coordinates["first"], first), (plane.coordinates["second"], second),
                               (plane.coordinates["init"], init), (midpoint, soup)):
        point = plane.point(*coordinates)
        for k in model:
            if k != "bn.num_batches_tracked":
                assert torch.allclose(point[k], model[k], atol=1e-6), k
        assert point["bn.num_batches_tracked"] == 7  # integer buffers: the init's
    far = plane.point(-10 * plane.coordinates["first"][0], 0.0)  # a = -10: a negative variance would be NaN
    assert (far["bn.running_var"] >= 0).all() and (far["bn.running_var"] == 0).any()


def test_landscape_on_a_sweep_marks_the_models_and_reads_its_grid_back(tiny_sweep, tmp_path):
    tmp, sweep = tiny_sweep
    tmp = own_cache(tmp, tmp_path)
    args = ("analysis=landscape", "analysis.grid=3", "analysis.max_images=20")
    record = analyze(sweep, tmp, tmp_path / "landscape", *args)
    assert len(record["xs"]) == 3 and len(record["held_out_error"]) == 3 and len(record["held_out_error"][0]) == 3
    assert record["points"]["init"] == [0.0, 0.0] and record["points"]["first"][1] == 0.0
    assert record["samples"] == {"train_loss": 20, "held_out_error": 20, "test_error": 20}
    assert all(0 <= e <= 100 for row in record["test_error"] for e in row)
    assert record["bn_recalibrated"] is True and record["images_forwarded"] == 9 * 3 * 20  # BN tower; 9 points
    again = analyze(sweep, tmp, tmp_path / "again", *args)
    assert again["images_forwarded"] == 0 and again["test_error"] == record["test_error"]
    copied = tmp_path / "copied_sweep"  # the same weights under other names: recalled, named as they are now
    shutil.copytree(sweep, copied)
    renamed = analyze(copied, tmp, tmp_path / "renamed", *args)
    assert renamed["images_forwarded"] == 0 and renamed["test_error"] == record["test_error"]
    assert [m.split("/")[0] for m in renamed["models"]] == ["copied_sweep"] * 2  # before: the first sweep's names
    assert (tmp_path / "landscape" / "landscape.png").stat().st_size > 10_000
    # another BN handling, or the same fine-tunes on another init, is another surface: measured, not recalled
    plain = analyze(sweep, tmp, tmp_path / "plain", *args, "bn_recalibration=false")
    assert plain["bn_recalibrated"] is False and plain["images_forwarded"] > 0
    (init_dir,) = {json.loads(r.read_text())["init"]["dir"] for r in sweep.glob("*/run.json")}
    init = str(Path(init_dir) / "model.safetensors")
    original = Path(init).read_bytes()  # restored byte for byte: the sweep's run.json records its sha256
    state = load_file(init)
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, init)
    try:
        moved = analyze(sweep, tmp, tmp_path / "moved", *args)
    finally:
        Path(init).write_bytes(original)
    assert moved["images_forwarded"] == 9 * 3 * 20 and moved["points"]["first"] != record["points"]["first"]


@pytest.mark.parametrize("args, message", [(["analysis=landscape"], "the landscape needs two fine-tunes"),
                                           (["analysis=pairs"], "pairs needs at least 2 ingredients"),
                                           (["analysis=ingredients", "analysis.sizes=[1,2]"], r"sizes=\[1, 2\]: .*\(not: \[2\]\)"),
                                           (["analysis=landscape", "analysis.models=[0,0]"], "names one model twice")])
def test_a_pool_an_analysis_cannot_use_is_refused_before_any_evaluation_or_w_and_b_run(tiny_sweep, tmp_path,
                                                                                   monkeypatch, args, message):
    from soups.errors import BadInput
    from soups.evaluation.scorer import PoolScorer
    from soups.jobs.analyze import run_analysis

    tmp, sweep = tiny_sweep
    monkeypatch.setattr(PoolScorer, "__init__", lambda *a, **k: pytest.fail("evaluation started"))
    cfg = compose_cfg("analyze", tmp_path, ["logger=wandb", f"pool.runs=[{sweep}/0]", *args])
    with pytest.raises(BadInput, match=message):
        run_analysis(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no W&B run, no empty folder


def test_landscape_models_resolve_by_name_label_or_a_unique_last_part_and_refuse_an_ambiguous_one():
    from soups.analyses.landscape import Landscape
    from soups.errors import BadInput
    from soups.plots import tick_labels
    from soups.pools.ingredient import Ingredient

    runs = [Ingredient("sweep/3", Path("w"), {}, short_name="fine-tune 3"), Ingredient("sweep/5", Path("w"), {})]
    files = [Ingredient(f"run{k}/model_best.pth.tar", Path("w"), {}) for k in range(3)]
    assert [i.name for i in Landscape(models=[3, "fine-tune 3"])._named(runs)] == ["sweep/3", "sweep/3"]
    assert [i.name for i in Landscape(models=["sweep/5", 3])._named(runs)] == ["sweep/5", "sweep/3"]
    assert [i.name for i in Landscape(models=["run0/model_best.pth.tar", "run2/model_best.pth.tar"])._named(files)] \
        == ["run0/model_best.pth.tar", "run2/model_best.pth.tar"]
    # before: the last ingredient ending in model_best.pth.tar (run2) was taken silently
    with pytest.raises(BadInput, match=r"'model_best.pth.tar' names 3 ingredients .* give the whole name"):
        Landscape(models=["run0/model_best.pth.tar", "model_best.pth.tar"])._named(files)
    with pytest.raises(BadInput, match="'7' not in the pool"):
        Landscape(models=[3, 7])._named(runs)
    crossed = [Ingredient("s/x", Path("w"), {}, short_name="y"), Ingredient("s/y", Path("w"), {})]
    with pytest.raises(BadInput, match=r"'y' names 2 ingredients"):  # one's label, the other's last part
        Landscape(models=["y", "s/x"])._named(crossed)
    # figures: the last part where it is unique, else the whole name (every pairs tick read model_best.pth.tar)
    assert tick_labels(["sweep/3", "sweep/5"]) == ["3", "5"]
    assert tick_labels([i.name for i in files] + ["x/epoch_2.pt"]) == [i.name for i in files] + ["epoch_2.pt"]


def test_soup_and_ensemble_gain_of_a_constructed_pair(tmp_path):
    """Two models each right on half of four images, wrong on the other half with a small margin: their logit
    mean is right on all four (ensemble gain +50 points); the midpoint's accuracy is what the scorer says
    (here 75%, soup gain +25). The angle of their displacements is 90 degrees by construction."""
    from types import SimpleNamespace

    from soups.analyses.pairs import Pairs
    from soups.evaluation.evaluator import Evaluator
    from soups.pools.ingredient import Ingredient

    save_file({"w": torch.zeros(2)}, str(tmp_path / "init.safetensors"))
    save_file({"w": torch.tensor([1.0, 0.0])}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.tensor([0.0, 1.0])}, str(tmp_path / "b.safetensors"))
    labels = torch.tensor([0, 0, 1, 1])
    logits = {"a": torch.tensor([[2.0, 0.0], [0.0, 0.5], [0.0, 2.0], [0.5, 0.0]]),  # right on images 0 and 2
              "b": torch.tensor([[0.0, 0.5], [2.0, 0.0], [0.5, 0.0], [0.0, 2.0]])}  # right on images 1 and 3
    class Images(SimpleNamespace):
        def __len__(self):
            return len(self.labels)

    sets = {name: Images(labels=labels) for name in ("val", "test")}
    evaluator = Evaluator.__new__(Evaluator)
    evaluator.sets = sets

    def ingredient(name):
        return Ingredient(name, tmp_path / f"{name}.safetensors", {"hparams": {"lr": 1e-5 if name == "a" else 1e-4},
                                                                   "metrics": {"val": 50.0 if name == "a" else 49.0}})

    pool = SimpleNamespace(ingredients=[ingredient("a"), ingredient("b")])
    scorer = SimpleNamespace(
        init_weights=tmp_path / "init.safetensors", metrics_of=evaluator.metrics_of, aliases={},
        individual_metrics=lambda i: evaluator.metrics_of({n: logits[i.name] for n in sets}),
        load=lambda i: load_file(str(i.weights)),
        evaluate=lambda state, new_point: {"val": 75.0, "test": 75.0},  # the midpoint, as measured
        ensemble_logits=lambda members: {n: sum(logits[m.name] for m in members) / len(members) for n in sets})
    record = Pairs()(pool, scorer)
    (pair,) = record["pairs"]
    assert pair["angle"] == pytest.approx(90.0) and pair["differs_most"] == "lr"
    assert record["individual"]["a"]["test"] == 50.0 and pair["ensemble"]["test"] == 100.0
    assert pair["ensemble_gain"]["test"] == 50.0 and pair["soup_gain"]["test"] == 25.0
    assert record["with_best"] == [{"other": "b", "midpoint_held_out": 75.0, "over_best": 25.0}]


def test_differs_most_scores_each_setting_against_the_members_that_record_it():
    from types import SimpleNamespace

    from soups.analyses.pairs import differs_most

    def member(**hparams):
        return SimpleNamespace(info={"hparams": hparams})

    # lr at the pool's extremes (score 1) vs label smoothing 0 vs 0.01 in a 0..0.2 pool (linear: 0.05)
    a, b = member(lr=1e-6, label_smoothing=0.0), member(lr=1e-4, label_smoothing=0.01)
    pool = [a, b, member(lr=1e-5, label_smoothing=0.2)]
    assert differs_most(a, b, pool) == "lr"
    # lr 1e-5 vs 2e-5 in a 1e-6..1e-4 pool (log: 0.15) vs smoothing 0 vs 0.2 (linear: 1)
    a, b = member(lr=1e-5, label_smoothing=0.0), member(lr=2e-5, label_smoothing=0.2)
    assert differs_most(a, b, [a, b, member(lr=1e-6, label_smoothing=0.1), member(lr=1e-4, label_smoothing=0.1)]) \
        == "label_smoothing"
    # a member without hyperparameters (the released pool's model_0) does not take lr and epochs off their scale
    a, b = member(lr=1e-6, epochs=4), member(lr=1e-4, epochs=5)
    pool = [SimpleNamespace(info={"hparams": {"info": "LP initialization"}}), a, b, member(lr=3e-5, epochs=10)]
    assert differs_most(a, b, pool) == "lr"  # lr: 1 (the extremes); epochs 4 vs 5 in 4..10: log 0.12
    # a seed or a string differs fully but yields to a number at the same score; equal on all: none
    a, b = member(lr=1e-6, seed=0, randaug="rand-m9"), member(lr=1e-4, seed=1, randaug="rand-m5")
    assert differs_most(a, b, [a, b]) == "lr"
    assert differs_most(a, member(lr=1e-6, seed=3, randaug="rand-m9"), [a, b]) == "seed"
    assert differs_most(a, a, [a, b]) == "none" and differs_most(a, SimpleNamespace(info={}), [a]) == "unknown"
