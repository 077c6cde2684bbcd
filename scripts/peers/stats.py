"""The report's statistics against the libraries that ship them, in the peers' venv (`make peers` runs it):
ECE (soups.evaluation.stats.ece, 15 equal-width bins) against torchmetrics' `multiclass_calibration_error`
(norm="l1"), and the exact McNemar p-value (`mcnemar_p`, one stratum) against statsmodels' `mcnemar(exact=True)`.

    bash scripts/peers/setup.sh && .peers/bin/python scripts/peers/stats.py [--cases 300]

Prints the largest absolute difference of each over seeded random cases (sizes 5..400, 2..20 classes, logits
from near-uniform to near-certain); exits 1 where one is above its tolerance: 1e-4 percentage points for ECE
(torchmetrics bins in float32), 1e-12 for the p-value.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # soups, without the pinned venv's .pth


def main() -> None:
    from statsmodels.stats.contingency_tables import mcnemar
    from torchmetrics.functional.classification import multiclass_calibration_error

    from soups.evaluation.stats import ECE_BINS, ece, mcnemar_p

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    g, rng = torch.Generator().manual_seed(args.seed), np.random.default_rng(args.seed)
    ece_gap = p_gap = 0.0
    for _ in range(args.cases):
        n, c = int(torch.randint(5, 401, (1,), generator=g)), int(torch.randint(2, 21, (1,), generator=g))
        logits = torch.randn(n, c, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g) * 8)
        labels = torch.randint(0, c, (n,), generator=g)
        theirs = 100 * float(multiclass_calibration_error(torch.softmax(logits, -1), labels, num_classes=c,
                                                          n_bins=ECE_BINS, norm="l1"))
        ece_gap = max(ece_gap, abs(ece(logits, labels) - theirs))
        a, b = rng.random(n) < rng.random(), rng.random(n) < rng.random()
        table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
        theirs = mcnemar(table, exact=True).pvalue if table[0][1] + table[1][0] else 1.0
        p_gap = max(p_gap, abs(mcnemar_p([a], [b]) - float(theirs)))
    print(f"ECE ({ECE_BINS} bins) vs torchmetrics multiclass_calibration_error: max |difference| "
          f"{ece_gap:.2e} percentage points over {args.cases} cases")
    print(f"McNemar exact p vs statsmodels mcnemar(exact=True): max |difference| {p_gap:.2e}")
    if ece_gap > 1e-4 or p_gap > 1e-12:
        sys.exit("the statistics disagree with the peers beyond tolerance")


if __name__ == "__main__":
    main()
