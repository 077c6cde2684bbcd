import math

import pytest

from soups.search import sample

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
