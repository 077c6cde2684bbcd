"""One merge by a peer library, for scripts/peers/compare.py: load the state dicts, call the
PEER'S OWN public merge function, save the result, print one JSON line (the last line of stdout):

    .peers/bin/python scripts/peers/peer_merge.py mergekit|fusionbench METHOD --inputs a.safetensors ...
        [--base init.safetensors] [--weights 1 2 ...] [--lam 0.3] [--stats stats.safetensors] --out out.safetensors
    -> {"seconds": least merge wall time of --repeat, "peak_rss_mb": peak RSS while merging,
        "merge_rss_mb": that peak minus the RSS before the merge}  (see `measured`)
    .peers/bin/python scripts/peers/peer_merge.py check      # imports every entry point (setup.sh runs it)

Runs in .peers (scripts/peers/setup.sh), never in the project's .venv. Methods:
    uniform          mergekit `linear` (weights 1)        | FusionBench SimpleAverageAlgorithm(inplace=False)
    weighted         mergekit `linear` (weight per input) | FusionBench WeightedAverageAlgorithm(normalize=True)
    model_stock      mergekit `model_stock`               | FusionBench ModelStock
    task_arithmetic  mergekit `task_arithmetic` (lambda)  | FusionBench TaskArithmeticAlgorithm(scaling_factor)
    ties             mergekit `ties` (density, weight 1)  | FusionBench TiesMergingAlgorithm.run's steps: its
                                                            state_dict_to_vector, ties_merging(reset_thresh=
                                                            density, merge_func="mean"), vector_to_state_dict
    fisher           -                                    | FusionBench merging_with_fisher_weights
    regmean          -                                    | FusionBench merging_with_regmean_weights
    dare_mean        -                                    | FusionBench DareSimpleAverage(sparsity_ratio=drop)
    dare_sum         -                                    | FusionBench DareTaskArithmetic(scaling_factor=lambda)
    dare_linear      mergekit `dare_linear` (weight 1,    | -
                     density 1 - drop, lambda)
    dare_ties        mergekit `dare_ties` (same)          | -
    dare_ties_mean   -                                    | FusionBench DareTiesMerging(rescale=True, merge_func=
                                                            "mean", scaling_factor=1, threshold: no trim, below)
    dare_ties_sum    -                                    | the same with merge_func="sum", scaling_factor=lambda
DARE draws random masks: `--stats` holds the project's ("mask/<i>/<key>", uint8) and the peer's own random
call (mergekit's torch.bernoulli, FusionBench's torch.rand_like) is answered with them, found by the task
vector it is asked for (`injected_masks`), so that the peer's own drop, rescale and merge code runs on the
same masks; the lookup hashes each vector inside the clock, so compare.py times DARE with --own-masks.
`--stats` holds "fisher/<i>/<key>" (a Fisher diagonal per model i and tensor) and "gram/<i>/<key>" (a Gram
[in, in] per model i and linear weight) tensors, and the scalars "eps" (the Fisher floor) and "alpha"
(RegMean's off-diagonal scale). Inputs and statistics are cast to `--dtype` (float32: the pools' dtype;
the peers compute in their inputs' dtype) before the clock starts.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import resource
import sys
import time

import torch
from safetensors.torch import load_file, save_file

MERGEKIT = ("uniform", "weighted", "model_stock", "task_arithmetic", "ties", "dare_linear", "dare_ties")
FUSIONBENCH = MERGEKIT[:5] + ("fisher", "regmean", "dare_mean", "dare_sum", "dare_ties_mean", "dare_ties_sum")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def measured(merge, fresh_inputs, repeat: int = 3):
    """(result, {"seconds", "peak_rss_mb", "merge_rss_mb"}): the least wall time of `repeat` merges, each of
    fresh copies of the inputs (some peers write into their inputs); memory from the first: the process's
    peak RSS while merging and the merge's own growth above the RSS before it. Read from /proc (VmHWM,
    reset before the merge through clear_refs), not getrusage: a child's ru_maxrss keeps its parent's RSS
    across exec (compare.py holds the whole pool), and cannot be reset. Used by compare.py's worker too."""
    times, record, result = [], {}, None
    for attempt in range(repeat):
        args = fresh_inputs()
        if attempt == 0:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                before = _status_mb("VmRSS")
            except OSError:  # no /proc: the whole run's peak, inputs and imports included
                before = None
        start = time.perf_counter()
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # the peers print progress and profiles
            result = merge(*args)
        times.append(time.perf_counter() - start)
        if attempt == 0:
            peak = _status_mb("VmHWM") if before is not None else \
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            record = {"peak_rss_mb": round(peak, 1), "merge_rss_mb": round(peak - (before or 0), 1)}
        del args
    return result, {"seconds": round(min(times), 4), **record}


def bare_package(name: str) -> None:
    """Make package `name` importable without running its __init__: fusion_bench.method.fisher_merging and
    .regmean import their CLIP variants there (which need `datasets`, and break on transformers 5); the
    generic merge steps in those packages do not need them."""
    if name not in sys.modules:
        sys.modules[name] = importlib.util.module_from_spec(importlib.util.find_spec(name))


def as_module(state: dict[str, torch.Tensor], trainable: bool = False) -> torch.nn.Module:
    """A module whose state_dict() is `state` (FusionBench pools hold nn.Modules): one empty submodule per
    dotted prefix, float tensors as parameters (frozen unless `trainable`: FusionBench's DARE subtracts the init
    from trainable ones only; DareSimpleAverage / DareTaskArithmetic sum only those too), the rest as buffers. The tensors are shared."""
    root = torch.nn.Module()
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        if tensor.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=trainable))
        else:
            module.register_buffer(leaf, tensor)
    return root


def per_model(stats: dict[str, torch.Tensor], kind: str, k: int) -> list[dict[str, torch.Tensor]]:
    """[{key: tensor} for model i] from the "kind/i/key" entries of a stats file."""
    out = [{} for _ in range(k)]
    for name, tensor in stats.items():
        if name.startswith(kind + "/"):
            _, index, key = name.split("/", 2)
            out[int(index)][key] = tensor
    return out


def _digest(tau: torch.Tensor) -> str:
    return hashlib.sha256(repr(tuple(tau.shape)).encode() + tau.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def mask_table(states, base, masks) -> dict:
    """{sha256 of a task vector θᵢ[key] − θ₀[key]: its mask} from masks["mask/<i>/<key>"], built before the
    clock. A vector of zeros (a tensor nobody moved) takes any mask (the product is zero whatever it is); two
    equal non-zero vectors with different masks are marked None (ambiguous: a lookup of them fails)."""
    table = {}
    for i, state in enumerate(states):
        for key, value in state.items():
            if not value.is_floating_point():
                continue
            tau, mask = value - base[key], masks[f"mask/{i}/{key}"].bool()
            digest = _digest(tau)
            if digest not in table:
                table[digest] = mask
            elif table[digest] is not None and bool(tau.any()) and not torch.equal(table[digest], mask):
                table[digest] = None
    return table


@contextlib.contextmanager
def injected_masks(peer: str, table: dict):
    """Within: the peer's random draw for a task vector returns its mask from `table` (`mask_table`: found
    by the vector's bytes, which the peers compute with the same subtraction in the same dtype). mergekit
    0.1.5 draws in sparsify.bernoulli (torch.bernoulli of a tensor of densities: the mask itself),
    FusionBench 0.2.33 in dare.utils.param_random_drop_ (torch.rand_like(τ) > p: the mask as 1.0/0.0).
    On leaving, every vector of the table must have been asked for: a peer that drew its masks some other way
    (its own random numbers) fails here instead of agreeing by chance."""
    used = set()

    def mask_for(tau):
        digest = _digest(tau)
        if table.get(digest) is None:
            raise SystemExit(f"no single injected mask for a task vector of shape {tuple(tau.shape)} "
                             f"({'two inputs share it' if digest in table else 'not one of the inputs'})")
        used.add(digest)
        return table[digest]

    if peer == "mergekit":
        import mergekit.sparsify as sparsify
        original = sparsify.bernoulli

        def bernoulli(tensor, density, rescale_norm=None):
            mask, real = mask_for(tensor), torch.bernoulli
            torch.bernoulli = lambda p, *a, **k: mask.to(p.dtype)  # mergekit's own rescale and casts run
            try:
                return original(tensor, density, rescale_norm)
            finally:
                torch.bernoulli = real
        sparsify.bernoulli = bernoulli
        restore = lambda: setattr(sparsify, "bernoulli", original)  # noqa: E731
    else:
        real = torch.rand_like
        torch.rand_like = lambda tau, *a, **k: mask_for(tau).to(tau.dtype)  # 1.0 > p keeps, 0.0 > p drops
        restore = lambda: setattr(torch, "rand_like", real)  # noqa: E731
    try:
        yield
    finally:
        restore()
    if used != set(table):
        raise SystemExit(f"{peer} asked for {len(used)} of the {len(table)} injected masks: it drew the others "
                         f"itself, so its result is not on the project's masks")


def no_trim(state: dict[str, torch.Tensor]) -> float:
    """A DareTiesMerging `threshold` under which its TIES trim keeps every entry: its topk_values_mask keeps
    |τ̂| >= the k-th smallest of a model's d entries, k = d − int(d·K); K = 1 − 1/(2d) gives d·K = d − ½, so
    k = 1 and the bar is the smallest |τ̂| itself. K = 1 fails there (kthvalue with k = 0)."""
    d = sum(t.numel() for t in state.values())
    return 1 - 1 / (2 * d)


def mergekit_merge(method, states, base, weights, lam, stats, dtype, density=0.2, drop=0.5):
    from mergekit.merge_methods import merge_state_dicts  # mergekit/merge_methods/api.py

    named = {f"m{i}": s for i, s in enumerate(states)}
    if method == "uniform":
        return merge_state_dicts(states, "linear", parameters={"weight": 1.0}, dtype=dtype)
    if method == "weighted":
        return merge_state_dicts(states, "linear", parameters={"weight": list(weights)}, dtype=dtype)
    if method == "model_stock":
        return merge_state_dicts({"base": base, **named}, "model_stock", base="base", dtype=dtype)
    if method == "task_arithmetic":
        return merge_state_dicts({"base": base, **named}, "task_arithmetic", base="base", dtype=dtype,
                                 parameters={"weight": 1.0, "lambda": lam})
    if method == "ties":  # normalize (the disjoint mean) is mergekit's default for ties; lambda 1
        return merge_state_dicts({"base": base, **named}, "ties", base="base", dtype=dtype,
                                 parameters={"weight": 1.0, "density": density})
    if method in ("dare_linear", "dare_ties"):  # rescale (keep each tensor's L1 norm) is their default
        with injected_masks("mergekit", stats["masks"]) if stats.get("masks") is not None else contextlib.nullcontext():
            return merge_state_dicts({"base": base, **named}, method, base="base", dtype=dtype,
                                     parameters={"weight": 1.0, "density": 1 - drop, "lambda": lam})
    raise SystemExit(f"mergekit 0.1.5 has no {method!r} merge of given statistics (methods: {MERGEKIT})")


def fusionbench_merge(method, states, base, weights, lam, stats, dtype, density=0.2, drop=0.5):
    from fusion_bench.modelpool import BaseModelPool

    if method in ("dare_mean", "dare_sum"):  # task vectors from trainable parameters only
        bare_package("fusion_bench.method.dare")
        from fusion_bench.method.dare.simple_average import DareSimpleAverage
        from fusion_bench.method.dare.task_arithmetic import DareTaskArithmetic
        pool = {f"m{i}": as_module(s, trainable=True) for i, s in enumerate(states)}
        algorithm = (DareSimpleAverage(sparsity_ratio=drop, only_on_linear_weights=False) if method == "dare_mean"
                     else DareTaskArithmetic(scaling_factor=lam, sparsity_ratio=drop, only_on_linear_weights=False))
        with injected_masks("fusionbench", stats["masks"]) if stats.get("masks") is not None else contextlib.nullcontext():
            merged = algorithm.run(BaseModelPool(pool | {"_pretrained_": as_module(base, trainable=True)}))
        return {k: v.detach() for k, v in merged.state_dict().items()}
    if method in ("dare_ties_mean", "dare_ties_sum"):  # DARE, then TIES' trim, election and disjoint merge
        bare_package("fusion_bench.method.dare")
        bare_package("fusion_bench.method.ties_merging")
        from fusion_bench.method.dare.ties_merging import DareTiesMerging
        algorithm = DareTiesMerging(sparsity_ratio=drop, only_on_linear_weights=False, rescale=True,
                                    scaling_factor=1.0 if method == "dare_ties_mean" else lam,
                                    threshold=no_trim(states[0]), remove_keys=[], merge_func=method.rsplit("_", 1)[1])
        pool = {f"m{i}": as_module(s, trainable=True) for i, s in enumerate(states)}
        with injected_masks("fusionbench", stats["masks"]) if stats.get("masks") is not None else contextlib.nullcontext():
            merged = algorithm.run(BaseModelPool(pool | {"_pretrained_": as_module(base, trainable=True)}))
        return {k: v.detach() for k, v in merged.state_dict().items()}

    # Several algorithms write the merge into a pool model (WeightedAverage into the first, ModelStock into
    # _pretrained_): every merge here gets fresh copies of the inputs (`measured`), so that harms nothing.
    pool = {f"m{i}": as_module(s) for i, s in enumerate(states)}
    if base is not None:
        pool["_pretrained_"] = as_module(base)
    if method == "uniform":
        from fusion_bench.method import SimpleAverageAlgorithm
        return SimpleAverageAlgorithm(inplace=False).run(BaseModelPool(pool)).state_dict()
    if method == "weighted":
        from fusion_bench.method import WeightedAverageAlgorithm
        algorithm = WeightedAverageAlgorithm(normalize=True, weights=list(weights), verbose=False)
        return algorithm.run(BaseModelPool(pool)).state_dict()
    if method == "model_stock":
        from fusion_bench.method.model_stock.model_stock import ModelStock
        return ModelStock().run(BaseModelPool(pool)).state_dict()
    if method == "task_arithmetic":
        from fusion_bench.method import TaskArithmeticAlgorithm
        return TaskArithmeticAlgorithm(scaling_factor=lam, inplace=False).run(BaseModelPool(pool)).state_dict()
    if method == "ties":  # TiesMergingAlgorithm.run's own steps (its module imports `datasets` via compat pools)
        bare_package("fusion_bench.method.ties_merging")
        from fusion_bench.method.ties_merging.ties_merging_utils import (state_dict_to_vector, ties_merging,
                                                                          vector_to_state_dict)
        flat = torch.vstack([state_dict_to_vector(s, []) for s in states])
        flat_base = state_dict_to_vector(base, [])
        merged = flat_base + 1.0 * ties_merging(flat - flat_base, reset_thresh=density, merge_func="mean")
        return vector_to_state_dict(merged, base, remove_keys=[])
    floats = {key: [s[key] for s in states] for key in states[0] if states[0][key].is_floating_point()}
    others = {key: t for key, t in states[0].items() if key not in floats}  # integer buffers: the first's
    if method == "fisher":
        bare_package("fusion_bench.method.fisher_merging")
        from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights
        merged = merging_with_fisher_weights(floats, per_model(stats, "fisher", len(states)),
                                             fisher_scaling_coefficients=torch.ones(len(states), dtype=dtype),
                                             normalize_fisher_weight=False,
                                             minimal_fisher_weight=float(stats["eps"]))
        return {**merged, **others}
    if method == "regmean":
        bare_package("fusion_bench.method.regmean")
        from fusion_bench.method.regmean.regmean import merging_with_regmean_weights
        grams = [{key.removesuffix(".weight"): g for key, g in model.items()}  # keyed by module name
                 for model in per_model(stats, "gram", len(states))]
        merged = merging_with_regmean_weights(floats, grams, reduce_non_diagonal_ratio=float(stats["alpha"]))
        return {**merged, **others}
    raise SystemExit(f"unknown method {method!r} (FusionBench methods here: {FUSIONBENCH})")


def import_peer(peer: str) -> None:
    """Import what `peer`'s merges call, before the clock starts (the merge functions' own imports are then
    cache hits)."""
    if peer == "mergekit":
        from mergekit.merge_methods import merge_state_dicts  # noqa: F401
        return
    from fusion_bench.method import (SimpleAverageAlgorithm, TaskArithmeticAlgorithm,  # noqa: F401
                                     WeightedAverageAlgorithm)
    bare_package("fusion_bench.method.dare")  # its __init__ imports DARE-TIES, whose TIES imports `datasets`
    from fusion_bench.method.dare.simple_average import DareSimpleAverage  # noqa: F401
    from fusion_bench.method.dare.task_arithmetic import DareTaskArithmetic  # noqa: F401
    bare_package("fusion_bench.method.ties_merging")
    from fusion_bench.method.dare.ties_merging import DareTiesMerging  # noqa: F401
    from fusion_bench.method.model_stock.model_stock import ModelStock  # noqa: F401
    from fusion_bench.modelpool import BaseModelPool  # noqa: F401
    bare_package("fusion_bench.method.fisher_merging")
    bare_package("fusion_bench.method.regmean")
    from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights  # noqa: F401
    from fusion_bench.method.regmean.regmean import merging_with_regmean_weights  # noqa: F401
    bare_package("fusion_bench.method.ties_merging")
    from fusion_bench.method.ties_merging.ties_merging_utils import ties_merging  # noqa: F401


def check() -> None:
    """Import every entry point used above; print the versions and where torch comes from."""
    import importlib.metadata as md

    import_peer("mergekit")
    import_peer("fusionbench")
    import statsmodels.stats.contingency_tables  # noqa: F401  (scripts/peers/stats.py)
    import torchmetrics.functional.classification  # noqa: F401
    print(f"peers ready: mergekit {md.version('mergekit')}, fusion-bench {md.version('fusion-bench')}, "
          f"torch {torch.__version__} from {torch.__file__.rsplit('/torch/', 1)[0]}")


def main() -> None:
    if sys.argv[1:] == ["check"]:
        return check()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=["mergekit", "fusionbench"])
    parser.add_argument("method", choices=sorted(set(MERGEKIT + FUSIONBENCH)))
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--base")
    parser.add_argument("--weights", nargs="+", type=float)
    parser.add_argument("--lam", type=float, default=1.0, help="task arithmetic's scaling of the summed task vectors")
    parser.add_argument("--stats")
    parser.add_argument("--density", type=float, default=0.2, help="TIES: the fraction of each task vector kept")
    parser.add_argument("--drop", type=float, default=0.5, help="DARE: the drop probability p (masks: --stats)")
    parser.add_argument("--own-masks", action="store_true", help="DARE: the peer draws its own masks (for timing: "
                        "no lookup of injected masks in the clock; the result is another draw)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=3, help="time the least of this many merges")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cast = lambda s: {k: v.to(dtype) if v.is_floating_point() else v for k, v in s.items()}  # noqa: E731
    states = [cast(load_file(p)) for p in args.inputs]
    base = cast(load_file(args.base)) if args.base else None
    stats = cast(load_file(args.stats)) if args.stats else {}  # Fishers and Grams in the merge's dtype too
    if args.method.startswith("dare"):  # the project's masks, unless --own-masks (then timed as the peer runs)
        stats["masks"] = None if args.own_masks else mask_table(states, base, stats)
    merge = mergekit_merge if args.peer == "mergekit" else fusionbench_merge
    with contextlib.redirect_stdout(sys.stderr):
        import_peer(args.peer)  # before the clock
    copy = lambda s: {k: v.clone() for k, v in s.items()} if s is not None else None  # noqa: E731
    fresh = lambda: (args.method, [copy(s) for s in states], copy(base),  # noqa: E731
                     args.weights, args.lam, stats, dtype, args.density, args.drop)
    merged, record = measured(merge, fresh, args.repeat)
    save_file({k: v.detach().contiguous() for k, v in merged.items()}, args.out)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
