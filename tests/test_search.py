import math
from pathlib import Path

import pytest

from soups.training.search import sample

SPACE = {"lr": ["log_uniform", 1e-3, 3e-3], "wd": ["choice", 0.0, 0.1], "epochs": ["int_uniform", 2, 4],
         "label_smoothing": ["uniform", 0.0, 0.2]}


def test_draws_are_deterministic_within_bounds_and_differ_across_trials():
    draws = [sample(SPACE, seed=0, trial=t) for t in range(20)]
    assert draws == [sample(SPACE, seed=0, trial=t) for t in range(20)]
    assert all(1e-3 <= d["lr"] <= 3e-3 and d["wd"] in (0.0, 0.1) and d["epochs"] in (2, 3, 4)
               and 0 <= d["label_smoothing"] <= 0.2 for d in draws)
    assert len({d["lr"] for d in draws}) == 20
    assert sample(SPACE, seed=1, trial=0) != draws[0]


def test_adding_a_field_does_not_change_the_other_draws():
    extended = {**SPACE, "mixup": ["choice", 0.0, 0.2]}
    a, b = sample(SPACE, 0, 3), sample(extended, 0, 3)
    assert all(a[k] == b[k] for k in SPACE)


def test_log_uniform_covers_the_range_in_log_space():
    lrs = [sample({"lr": ["log_uniform", 1e-6, 1e-4]}, 0, t)["lr"] for t in range(400)]
    below = sum(math.log10(x) < -5 for x in lrs) / len(lrs)
    assert 0.4 < below < 0.6


@pytest.mark.parametrize("spec", [["gaussian", 0, 1], ["uniform", 2, 1], ["log_uniform", 0, 1], ["choice"], 3])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ValueError, match="search_space.x"):
        sample({"x": spec}, 0, 0)


def test_paper_random_search_draws_the_papers_distributions_reproducibly():
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    from soups.training.search import draws

    cfg = compose_cfg("finetune", Path("/tmp"), ["sweep=paper_random"])
    assert cfg.search_draws == 71
    space = OmegaConf.to_container(cfg.search_space)
    drawn = draws(space, cfg.search_seed, range(cfg.search_draws))
    assert drawn == draws(space, cfg.search_seed, range(cfg.search_draws)) and len(drawn) == 71
    assert all(1e-6 <= d["lr"] <= 1e-4 and 8.19e-5 <= d["wd"] <= 0.527 and 4 <= d["epochs"] <= 16 for d in drawn)
    assert all(d["label_smoothing"] == 0 or 0 <= d["label_smoothing"] <= 0.25 for d in drawn)
    off = sum(d["randaug"] is None for d in drawn) / len(drawn)
    smoothing_off = sum(d["label_smoothing"] == 0 for d in drawn) / len(drawn)
    assert 0.2 < off < 0.6 and 0.3 < smoothing_off < 0.7
    assert all(d["randaug"] is None or d["randaug"].startswith("rand-m") for d in drawn)


def test_randaugment_n_follows_its_weights_and_without_weights_is_drawn_as_before():
    """The released pool drew N = 0, 1, 2 in 21, 18, 5 of its 44 RandAugment runs (hparam_info.json);
    a weighted spec reproduces those shares, and a spec without weights keeps every earlier draw."""
    import random

    from soups.training.search import _rng

    weighted = [sample({"a": ["randaug", 0.0, 1, 20, 0, 2, [21, 18, 5]]}, 0, t)["a"] for t in range(6000)]
    shares = [sum(d.endswith(f"-n{n}") for d in weighted) / len(weighted) for n in range(3)]
    assert all(abs(s - w / 44) < 0.02 for s, w in zip(shares, [21, 18, 5])), shares
    assert {sample({"a": ["randaug", 0.0, 1, 20, 0, 2, [0, 1, 0]]}, 0, t)["a"][-2:] for t in range(50)} == {"n1"}
    for t in range(50):  # uniform N: the same stream as before weights existed (off, then M, then N)
        rng: random.Random = _rng(0, t, "a")
        off, m, n = rng.random() < 0.4, rng.randint(1, 20), rng.randint(0, 2)
        assert sample({"a": ["randaug", 0.4, 1, 20, 0, 2]}, 0, t)["a"] == (None if off else f"rand-m{m}-n{n}")


@pytest.mark.parametrize("weights", [[1, 1], [1, -1, 1], [0, 0, 0], "1,1,1", [1, 1, 1, 1]])
def test_bad_randaugment_n_weights_are_refused_in_one_line(weights):
    with pytest.raises(ValueError, match=r"search_space.x: randaug's last item gives N's relative weights"):
        sample({"x": ["randaug", 0.4, 1, 20, 0, 2, weights]}, 0, 0)


@pytest.mark.parametrize("spec", [["zero_or_uniform", 1.5, 0, 1], ["randaug", 0.4, 5, 1, 0, 2], ["zero_or_uniform", 0.5]])
def test_bad_mixture_specs_are_refused(spec):
    with pytest.raises(ValueError, match="search_space.x"):
        sample({"x": spec}, 0, 0)
