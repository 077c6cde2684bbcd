"""Calibration and significance on constructed predictions, with exact expected values."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap

from soups.evaluation.stats import ece, interval_text, mcnemar_p, nll, p_text, paired_bootstrap


def two_class(confidence: float, n: int, n_correct: int):
    """n images predicted as class 0 with probability `confidence`; the first n_correct are class 0."""
    logits = torch.tensor([[math.log(confidence), math.log(1 - confidence)]] * n, dtype=torch.float64)
    labels = torch.tensor([0] * n_correct + [1] * (n - n_correct))
    return logits, labels


def test_ece_is_zero_when_confidence_matches_accuracy_and_the_gap_otherwise():
    assert ece(*two_class(0.8, 10, 8)) == pytest.approx(0.0, abs=1e-9)
    assert ece(*two_class(0.9, 10, 5)) == pytest.approx(40.0)
    a, b = two_class(0.9, 10, 9), two_class(0.6, 10, 3)  # bins (0.867, 0.933]: gap 0; (0.533, 0.6]: gap 0.3
    mixed = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    assert ece(*mixed) == pytest.approx(0.5 * 0.0 + 0.5 * 30.0)


def test_ece_averages_within_a_bin_before_taking_the_gap():
    a, b = two_class(0.70, 10, 10), two_class(0.72, 10, 4)  # one bin (0.667, 0.733]: acc 0.7, conf 0.71
    assert ece(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) == pytest.approx(1.0)


def test_a_confidence_on_a_bin_edge_is_in_the_lower_bin_as_in_guo_et_al():
    """I_m = ((m-1)/M, m/M] (Guo et al., 2017): equal logits over 3 classes give confidence 1/3 = 5/15, the top
    of bin 5, apart from a confidence of 0.36 (bin 6). torchmetrics' right-open bins put both in bin 6 (15.33)."""
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(0.36 / 0.32), 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])  # the first is right (argmax 0, confidence 1/3), the second wrong (0.36)
    assert ece(logits, labels) == pytest.approx(100 * (0.5 * (1 - 1 / 3) + 0.5 * 0.36))  # 51.33, two bins


def test_nll_is_the_mean_negative_log_probability_of_the_label():
    logits, labels = two_class(0.8, 4, 3)
    assert nll(logits, labels) == pytest.approx(-(3 * math.log(0.8) + math.log(0.2)) / 4)


def test_the_bootstrap_interval_covers_a_known_paired_difference_and_shrinks_with_n():
    def pair(n):  # A right everywhere, B wrong on every 10th image: exactly +10 points
        a = np.ones(n, dtype=bool)
        b = np.arange(n) % 10 != 0
        return paired_bootstrap([a], [b], resamples=2000, seed=0)

    small, large = pair(200), pair(5000)
    for diff, low, high in (small, large):
        assert diff == pytest.approx(10.0) and low < 10.0 < high
    assert (large[2] - large[1]) < (small[2] - small[1]) / 3  # ~sqrt(25) = 5x narrower
    a, b = np.ones(200, dtype=bool), np.arange(200) % 10 != 0  # and it agrees with scipy's percentile bootstrap
    ref = bootstrap(((a.astype(float) - b),), np.mean, n_resamples=2000, method="percentile", random_state=1)
    assert 100 * ref.confidence_interval.low == pytest.approx(small[1], abs=1.0)
    assert 100 * ref.confidence_interval.high == pytest.approx(small[2], abs=1.0)


def test_the_bootstrap_is_seeded_and_averages_strata_unweighted():
    rng = np.random.default_rng(3)
    a = [rng.random(300) < 0.8, rng.random(50) < 0.5]
    b = [rng.random(300) < 0.7, rng.random(50) < 0.5]
    first, again = paired_bootstrap(a, b, seed=7), paired_bootstrap(a, b, seed=7)
    assert first == again
    expected = 100 * ((a[0].mean() - b[0].mean()) + (a[1].mean() - b[1].mean())) / 2
    assert first[0] == pytest.approx(expected)
    assert paired_bootstrap([np.ones(40, bool)], [np.zeros(40, bool)]) == (100.0, 100.0, 100.0)


def test_mcnemar_on_a_constructed_table():
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5, dtype=bool)  # 8 only A, 2 only B, 5 both, 5 neither
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 5, dtype=bool)
    assert mcnemar_p([a], [b]) == pytest.approx(2 * (45 + 10 + 1) / 1024)  # 2 P(X >= 8), X ~ Bin(10, 1/2)
    assert mcnemar_p([a[:10]], [a[:10]]) == 1.0
    assert mcnemar_p([a[:10], a[10:]], [b[:10], b[10:]]) == mcnemar_p([a], [b])  # strata of one size pooled


def test_mcnemar_over_strata_of_other_sizes_tests_the_unweighted_mean_not_the_pooled_count():
    # A small set where A is clearly better (30 vs 10 discordant of 200) and a large one where B is slightly
    # better (100 vs 160 of 10,000): the unweighted mean difference is +4.70 points; pooling the examples
    # (130 vs 170) would test the opposite sign (p = 0.024 for B).
    def table(only_a, only_b, n):
        a = np.zeros(n, bool); b = np.zeros(n, bool)
        a[:only_a] = True; b[only_a:only_a + only_b] = True
        return a, b
    (a1, b1), (a2, b2) = table(30, 10, 200), table(100, 160, 10_000)
    p = mcnemar_p([a1, a2], [b1, b2], draws=100_000, seed=0)
    # exact, by enumerating both binomials: P(|(2K1 - 40)/200 + (2K2 - 260)/10000| >= |20/200 - 60/10000|)
    from scipy.stats import binom
    k1, k2 = np.arange(41), np.arange(261)
    null = (2 * k1[:, None] - 40) / 200 + (2 * k2[None, :] - 260) / 10_000
    mass = binom.pmf(k1, 40, 0.5)[:, None] * binom.pmf(k2, 260, 0.5)[None, :]
    exact = float(mass[np.abs(null) >= abs(20 / 200 - 60 / 10_000) - 1e-12].sum())
    assert 0.001 < exact < 0.01
    assert p == pytest.approx(exact, abs=4 * math.sqrt(exact / 100_000))  # 4 Monte Carlo standard errors
    assert mcnemar_p([a1, a2], [b1, b2], draws=100_000, seed=0) == p  # seeded
    assert mcnemar_p([a1, a2], [a1, a2]) == 1.0
    # nothing drawn is as extreme: the floor 1 / (1 + draws), never 0
    (c1, d1), (c2, d2) = table(300, 0, 1000), table(200, 0, 500)
    assert mcnemar_p([c1, c2], [d1, d2], draws=1000) == 1 / 1001


def test_interval_text():
    assert interval_text(0.85, 0.3, 1.4) == "+0.85 [+0.30, +1.40]"


def test_p_text_keeps_two_digits_unless_they_round_across_a_threshold():
    assert [p_text(p) for p in (0.081, 0.76, 5.5e-15, 0.0031)] == ["0.081", "0.76", "5.5e-15", "0.0031"]
    assert p_text(0.0496) == "0.0496"      # .2g would print 0.05: read as not significant at 5 %
    assert p_text(0.00996) == "0.00996"
    assert p_text(0.000999) == "0.000999"  # .2g: 0.001
    assert p_text(0.0499999999) == "<0.05"  # no 6-digit form stays below it


def test_every_soup_row_carries_calibration_and_an_interval_consistent_with_its_accuracy(tiny_sweep, soup_cfg,
                                                                                         tmp_path):
    from soups.jobs.soup import run_soup

    _, sweep = tiny_sweep
    rows = run_soup(soup_cfg(f"pool.dir={sweep}", "method=[uniform,greedy,ensemble]", "statistics.resamples=200"),
                    tmp_path / "soup")
    best = next(r for r in rows if r["kind"] == "best_individual")
    sets = set(best["metrics"])  # val, test, the shifts, avg_shifts
    assert set(best["calibration"]) == sets and "vs_best" not in best
    for row in [r for r in rows if r["kind"] in ("soup", "ensemble")]:
        # held-out chose the best individual and the soups: calibrated, never compared
        assert set(row["calibration"]) == sets and set(row["vs_best"]) == sets - {"val"}
        for name, v in row["vs_best"].items():  # the point estimate is the table's own difference
            assert v["diff"] == pytest.approx(row["metrics"][name] - best["metrics"][name], abs=1e-9)
            assert v["low"] <= v["diff"] <= v["high"] and 0 <= v["p"] <= 1
        assert all(c["nll"] > 0 and 0 <= c["ece"] <= 100 for c in row["calibration"].values())
    report = (tmp_path / "soup" / "report.md").read_text()
    assert "paired bootstrap 95% interval" in report and "| uniform soup |" in report
    saved = json.loads((tmp_path / "soup" / "uniform" / "soup.json").read_text())
    assert saved["vs_best"]["test"] == next(r for r in rows if r["row"] == "uniform soup")["vs_best"]["test"]


def test_bad_statistics_settings_are_named(soup_cfg, tmp_path):
    from soups.errors import BadInput
    from soups.jobs.soup import run_soup

    with pytest.raises(BadInput, match="resamples=10"):
        run_soup(soup_cfg("statistics.resamples=10"), tmp_path / "soup")
    with pytest.raises(BadInput, match="statistics.bins: unknown"):
        run_soup(soup_cfg("+statistics.bins=10"), tmp_path / "soup")
