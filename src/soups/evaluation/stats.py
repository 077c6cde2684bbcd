"""Calibration and significance from per-sample predictions: NLL and expected calibration error of one
model, and a model's accuracy difference to another on the same images (paired bootstrap interval,
McNemar test). Inputs are torch tensors or numpy arrays; outputs are plain floats."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.stats import binomtest

from soups.errors import BadInput
from soups.names import AVG_SHIFTS, HELD_OUT
from soups.settings import Settings

ECE_BINS = 15  # equal-width confidence bins, as commonly reported (Guo et al., 2017)
P_DRAWS = 100_000  # null draws of McNemar's test over strata of different sizes: p >= 1/100,001


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels (nats per example: image or sentence). logits [N, C] float, labels [N] int."""
    return float(torch.nn.functional.cross_entropy(logits.double(), labels.long()))


def ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (%) of the top-1 prediction: sum over `bins` equal-width confidence bins
    (0, 1/bins], ... of |B|/N * |accuracy(B) - mean confidence(B)| (Guo et al., 2017, eq. 3; Naeini et
    al., 2015). Confidence = the max softmax probability. logits [N, C], labels [N]."""
    probs = torch.softmax(logits.double(), dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).double()
    which = torch.clamp(torch.ceil(confidence * bins).long() - 1, 0, bins - 1)  # bin (k/bins, (k+1)/bins]
    gap = (torch.zeros(bins, dtype=torch.float64).index_add_(0, which, correct)
           - torch.zeros(bins, dtype=torch.float64).index_add_(0, which, confidence))
    return float(100.0 * gap.abs().sum() / len(labels))


def paired_bootstrap(a_correct: list, b_correct: list, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high) in percentage points: accuracy of A minus accuracy of B on the same images,
    and its percentile bootstrap interval (Efron & Tibshirani, 1993, ch. 13) over `resamples` resamplings
    of the images, A and B resampled together (paired). Each argument is a list of strata, one boolean
    array [N_s] per evaluation set; the statistic is the unweighted mean over strata of the per-stratum
    difference (so the avg-shifts difference resamples each shift within itself). Seeded: reproducible."""
    diffs = [np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) for a, b in zip(a_correct, b_correct)]
    if not diffs or any(len(d) == 0 for d in diffs) or len(a_correct) != len(b_correct):
        raise ValueError("paired_bootstrap needs the same non-empty strata for A and B")
    point = 100.0 * float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for d in diffs:
        step = max(1, 2_000_000 // len(d))  # resamples per chunk: ~16 MB of indices at a time
        for start in range(0, resamples, step):
            rows = min(step, resamples - start)
            draws[start:start + rows] += d[rng.integers(0, len(d), size=(rows, len(d)))].mean(axis=1)
    draws *= 100.0 / len(diffs)
    tail = 100.0 * (1.0 - level) / 2
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return point, float(low), float(high)


def mcnemar_p(a_correct: list, b_correct: list, draws: int = P_DRAWS, seed: int = 0) -> float:
    """Two-sided p-value of A's accuracy minus B's on the same examples, McNemar's test (McNemar, 1947): given
    the examples only one model gets right, under H0 each is equally likely to be A's or B's. Each argument is
    a list of strata, one boolean array [N_s] per set; the tested statistic is the one `paired_bootstrap`
    reports, the unweighted mean over strata of the per-stratum difference.
    - One stratum, or strata of one size (the mean is then the pooled difference over that size): exact,
      binomial(n_discordant, 1/2).
    - Strata of different sizes (ImageNet's shifts: 7,500 to 50,889 images): pooling would weigh each shift by
      its size, so the null distribution of the unweighted mean is drawn instead: `draws` seeded sign flips
      of each stratum's discordant examples (Binomial(m_s, 1/2) each); p = (1 + #{|T*| >= |T|}) / (1 + draws)
      (Phipson & Smyth, 2010), never below 1 / (1 + draws).
    1.0 when the two models disagree on no example."""
    a = [np.asarray(x, dtype=bool) for x in a_correct]
    b = [np.asarray(x, dtype=bool) for x in b_correct]
    only_a = np.array([int((x & ~y).sum()) for x, y in zip(a, b)])
    only_b = np.array([int((~x & y).sum()) for x, y in zip(a, b)])
    discordant = only_a + only_b
    if discordant.sum() == 0:
        return 1.0
    sizes = np.array([len(x) for x in a], dtype=np.float64)
    if len(set(sizes)) == 1:
        return float(binomtest(int(only_a.sum()), int(discordant.sum()), 0.5).pvalue)
    observed = abs(float(np.sum((only_a - only_b) / sizes)))
    rng = np.random.default_rng(seed)
    null = np.zeros(draws)
    for m, n in zip(discordant, sizes):
        null += (2.0 * rng.binomial(m, 0.5, size=draws) - m) / n
    extreme = int((np.abs(null) >= observed * (1 - 1e-12)).sum())  # the tolerance: sums in another order
    return (1 + extreme) / (1 + draws)


def interval_text(diff: float, low: float, high: float) -> str:
    """e.g. '+0.85 [+0.30, +1.40]' (percentage points)."""
    return f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"


P_THRESHOLDS = (0.05, 0.01, 0.001)


def p_text(p: float) -> str:
    """A p-value to 2 significant digits, with more where 2 would round it across 0.05, 0.01 or 0.001
    (0.0496 → '0.0496', not '0.05'); e.g. '0.081', '5.5e-15'; '<0.05' where 6 digits still round up to it."""
    for digits in range(2, 7):
        text = f"{p:.{digits}g}"
        crossed = [t for t in P_THRESHOLDS if (float(text) < t) != (p < t)]
        if not crossed:
            return text
    return f"<{min(crossed):g}"


@dataclass
class Statistics(Settings):
    """soup.yaml `statistics`: how each soup's and ensemble's report row is qualified."""
    ece_bins: int = ECE_BINS
    resamples: int = 1000  # paired bootstrap resamplings of the images
    level: float = 0.95    # the interval's coverage
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.ece_bins < 1 or self.resamples < 100 or not 0 < self.level < 1:
            raise BadInput(f"statistics: ece_bins={self.ece_bins} (>= 1), resamples={self.resamples} (>= 100), "
                           f"level={self.level} (between 0 and 1) expected")

    def calibration(self, outcomes: dict, shifts: list[str]) -> dict[str, dict[str, float]]:
        """{set: {"nll": nats, "ece": %}} from {set: (logits [N, C], labels [N])} (Evaluator.outcomes), and
        avg_shifts: the unweighted mean over the `shifts` sets."""
        out = {n: {"nll": nll(logits, labels), "ece": ece(logits, labels, self.ece_bins)}
               for n, (logits, labels) in outcomes.items()}
        if shifts:
            out[AVG_SHIFTS] = {k: float(np.mean([out[s][k] for s in shifts])) for k in ("nll", "ece")}
        return out

    def caption(self) -> str:
        return (f"NLL in nats per example; ECE in % ({self.ece_bins} equal-width confidence bins); differences to the "
                f"best individual in percentage points with a paired bootstrap {100 * self.level:g}% interval over "
                f"examples ({self.resamples:,} resamples, seed {self.seed}) and a McNemar p-value (avg shifts: each "
                f"shift resampled within itself; the p-value exact for shifts of one size, else from "
                f"{P_DRAWS:,} sign flips of each shift's discordant examples); held-out, which chose the best "
                f"individual and the soups, is not compared")

    def versus(self, outcomes: dict, reference: dict, shifts: list[str]) -> dict[str, dict[str, float]]:
        """{set or avg_shifts: {"diff", "low", "high" (percentage points), "p" (McNemar)}}: these predictions'
        accuracy minus the reference's (the best individual's) on the same images; every set but held-out."""
        right = {n: (logits.argmax(-1) == labels).numpy() for n, (logits, labels) in outcomes.items()}
        ref = {n: (logits.argmax(-1) == labels).numpy() for n, (logits, labels) in reference.items()}
        # held-out chose the reference and the soups: an interval there would not be inference
        groups = {n: [n] for n in right if n != HELD_OUT} | ({AVG_SHIFTS: shifts} if shifts else {})
        out = {}
        for name, members in groups.items():
            a, b = [right[m] for m in members], [ref[m] for m in members]
            diff, low, high = paired_bootstrap(a, b, self.resamples, self.seed, self.level)
            out[name] = {"diff": diff, "low": low, "high": high, "p": mcnemar_p(a, b, seed=self.seed)}
        return out


def build_statistics(node) -> Statistics:
    """soup.yaml's `statistics` (None: the defaults). Raises BadInput for an unknown or bad setting."""
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    unknown = sorted(set(values) - {f.name for f in fields(Statistics)})
    if unknown:
        raise BadInput(f"statistics.{unknown[0]}: unknown; expected {[f.name for f in fields(Statistics)]}")
    return Statistics(**values)
