"""What FusionBench's DARE merges do with BatchNorm statistics, against this project's, in the peers' venv
(`make peers` runs it): a small BN network, its init and K fine-tunes whose running statistics moved, merged
with p = 0 (nothing dropped, so no masks are involved and DARE-TIES is TIES' election and disjoint mean of
the whole task vectors) by FusionBench's DareTiesMerging (its trim keeping every entry, merge_func mean,
λ = 1) and DareSimpleAverage, and by the project's `recipes.dare.Dare` (drop 0, the same settings).

    bash scripts/peers/setup.sh && .peers/bin/python scripts/peers/buffers.py

Prints, per merge, the largest difference of each BN statistic from two references: the init's value (where
a merge that leaves buffers alone lands) and init + the elected mean of the fine-tunes' displacements (the
formula applied to the buffers as to the weights; the project's DARE moves every float tensor, mergekit's
too). Exits 1 if the project's result is not the formula's.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # soups, without the pinned venv's .pth


def bn_pool(k: int, seed: int):
    """(init, [K fine-tunes]): Linear(8, 6) + BatchNorm1d(6), eval mode; each fine-tune's weights moved by
    1e-2 noise and its running statistics by one train-mode batch of its own scale (num_batches_tracked 1)."""
    torch.manual_seed(seed)
    init = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6)).eval()
    tunes = []
    for i in range(k):
        tune = copy.deepcopy(init).train()
        with torch.no_grad():
            for p in tune.parameters():
                p.add_(1e-2 * torch.randn_like(p))
            tune(torch.randn(64, 8) * (0.5 + i) + i)
        tunes.append(tune.eval())
    return init, tunes


def elected_mean(init: torch.Tensor, tunes: list[torch.Tensor]) -> torch.Tensor:
    """init + the mean of the displacements whose sign is sign(Σ τᵢ) (+1 on a zero sum): TIES' election and
    disjoint mean written out (Yadav et al., 2023, Algorithm 1, without the trim)."""
    tau = torch.stack([t.double() - init.double() for t in tunes])
    sign = torch.where(tau.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(tau) == sign)
    return init.double() + (tau * agree).sum(0) / agree.sum(0).clamp(min=1)


def project(init: nn.Module, tunes: list[nn.Module]) -> dict:
    from soups.recipes.dare import Dare

    states = [t.state_dict() for t in tunes]

    class Shim:  # the Scorer surface DARE uses
        load_init = staticmethod(lambda: init.state_dict())
        load = staticmethod(lambda i: states[i])
        aliases = {}
    return Dare(drop=0.0, merge="mean", sign_election=True, draws=1)(list(range(len(tunes))), Shim()).weights


def fusionbench(name: str, init: nn.Module, tunes: list[nn.Module]) -> dict:
    for package in ("fusion_bench.method.dare", "fusion_bench.method.ties_merging"):  # skip their __init__
        if package not in sys.modules:
            sys.modules[package] = importlib.util.module_from_spec(importlib.util.find_spec(package))
    from fusion_bench.method.dare.simple_average import DareSimpleAverage
    from fusion_bench.method.dare.ties_merging import DareTiesMerging
    from fusion_bench.modelpool import BaseModelPool
    from peer_merge import no_trim  # same folder

    algorithm = DareSimpleAverage(sparsity_ratio=0.0, only_on_linear_weights=False) if name == "DareSimpleAverage" \
        else DareTiesMerging(sparsity_ratio=0.0, only_on_linear_weights=False, rescale=True, scaling_factor=1.0,
                             threshold=no_trim(init.state_dict()), remove_keys=[], merge_func="mean")
    pool = {"_pretrained_": copy.deepcopy(init)} | {f"m{i}": copy.deepcopy(t) for i, t in enumerate(tunes)}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # it prints progress
        return algorithm.run(BaseModelPool(pool)).state_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    init, tunes = bn_pool(args.k, args.seed)
    keys = ("1.running_mean", "1.running_var")
    start, states = init.state_dict(), [t.state_dict() for t in tunes]
    formula = {key: elected_mean(start[key], [s[key] for s in states]) for key in keys}
    merges = {"project Dare(drop=0, sign_election)": project(init, tunes),
              "FusionBench DareTiesMerging": fusionbench("DareTiesMerging", init, tunes),
              "FusionBench DareSimpleAverage": fusionbench("DareSimpleAverage", init, tunes)}
    print(f"BN pool: K={args.k}; init running_var 1, the fine-tunes' "
          f"{min(float(s['1.running_var'].min()) for s in states):.3f}..{max(float(s['1.running_var'].max()) for s in states):.3f}\n")
    print("| merge | statistic | from the init's | from init + elected mean τ | num_batches_tracked |")
    print("|---|---|---:|---:|---:|")
    failed = False
    for name, merged in merges.items():
        for key in keys:
            got = merged[key].double()
            to_formula = float((got - formula[key]).abs().max())
            print(f"| {name} | {key.split('.', 1)[1]} | {float((got - start[key].double()).abs().max()):.3g} | "
                  f"{to_formula:.3g} | {int(merged['1.num_batches_tracked'])} |")
            failed |= name.startswith("project") and to_formula > 1e-6
    if failed:
        sys.exit("the project's DARE does not move the BN statistics by the elected mean of their displacements")


if __name__ == "__main__":
    main()
