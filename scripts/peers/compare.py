"""Side by side: this project's merge arithmetic against two peer libraries, each in its own environment:
mergekit 0.1.5 and FusionBench 0.2.33.

    make venv && bash scripts/peers/setup.sh          # .peers/, once
    .venv/bin/python scripts/peers/compare.py         # a constructed pool (K=4 fine-tunes of a small net)
    .venv/bin/python scripts/peers/compare.py --pool-dir logs/finetune/multiruns/<time>   # a real sweep

Writes the pool (fine-tunes, their shared init, and one set of merge statistics: a Fisher diagonal per model
and tensor, a Gram per model and linear weight) to a temporary folder, merges it once per method with this
project's own code (src/soups: averaging.average, recipes.model_stock.ModelStock, recipes.ties.TiesMerging,
recipes.fisher.fisher_average, recipes.regmean.regmean_merge, recipes.dare.Dare) and once per peer (scripts/peers/peer_merge.py under .peers/bin/python), each
in a subprocess of its own, so that wall time and peak RSS are measured alike, and prints a markdown table:
the largest absolute difference to the project's result, and the peer/project ratios of merge time (the
least of --repeat merges) and of peak RSS while merging (the whole process: interpreter, libraries, inputs;
in brackets: the ratio of the merges' own growth above the RSS before them; see peer_merge.measured).
Statistics are the same numbers for both sides (the project reads them as float64/32, the peers in float32),
so only the merge steps are compared, not how each library estimates a Fisher or a Gram. DARE's random masks
are the project's (recipes.dare.drop_mask, draw 0 of --seed), written beside the statistics and handed to the
peers' own random draws, so that their drop, rescale and merge code runs on the same masks (the difference);
DARE's time and memory come from a second peer run that draws its own masks (no lookup in the clock).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / ".peers" / "bin" / "python"
PEER_MERGE = ROOT / "scripts" / "peers" / "peer_merge.py"
FISHER_FLOOR, REGMEAN_ALPHA, PROJECT_RIDGE = 1e-6, 0.9, 1e-4  # the project's defaults (recipes/fisher.py, regmean.py)
# DARE rows: the project's settings (recipes/dare.py) that make each peer method; scale None = --lam
DARE = {"dare_mean": {"merge": "mean", "rescale": "inverse", "scale": 1.0},
        "dare_sum": {"merge": "sum", "rescale": "inverse", "scale": None},
        "dare_linear": {"merge": "sum", "rescale": "l1", "scale": None},
        "dare_ties": {"merge": "sum", "rescale": "l1", "sign_election": True, "scale": None},
        "dare_ties_mean": {"merge": "mean", "rescale": "inverse", "sign_election": True, "scale": 1.0},
        "dare_ties_sum": {"merge": "sum", "rescale": "inverse", "sign_election": True, "scale": None}}

# (row name, method, peers, project options, why a difference is expected)
ROWS = [
    ("uniform", "uniform", ("mergekit", "fusionbench"), {}, "same formula"),
    ("weighted", "weighted", ("mergekit", "fusionbench"), {}, "same formula"),
    ("model_stock", "model_stock", ("mergekit",), {},
     "same formula (mean pairwise cosine per tensor), but mergekit divides by max(|dᵢ||dⱼ|, 1e-6): "
     "tensors that barely moved get cosines pulled toward 0"),
    ("model_stock", "model_stock", ("fusionbench",), {},
     "expected: FusionBench averages pairwise *angles* (t from cos(mean θ), not mean cos θ), "
     "and adds 1e-8 to |dᵢ||dⱼ|"),
    ("task_arithmetic", "task_arithmetic", ("mergekit", "fusionbench"), {},
     "same formula (project: no recipe; init + λ Σ (θᵢ − init) via averaging.weighted_sum)"),
    ("ties (per tensor)", "ties", ("mergekit",), {"scope": "tensor"},
     "same formula: per tensor keep max(1, ⌊density·n⌋) largest |τ|, elect sign(Σ τ̂), disjoint mean; "
     "where two |τ| tie at the k-th magnitude the project keeps both, mergekit's argsort one"),
    ("ties (global)", "ties", ("fusionbench",), {"scope": "global"},
     "expected: FusionBench keeps |τ| ≥ the (n − ⌊density·n⌋)-th smallest of a model's n entries, i.e. "
     "⌊density·n⌋ + 1 of them (as the authors' released code), one more than the paper's top-k% "
     "(the project keeps ⌊density·n⌋)"),
    ("fisher", "fisher", ("fusionbench",), {},
     f"same formula: ε={FISHER_FLOOR:g} added to every Fisher on both sides (normalize off)"),
    ("regmean (ridge 0)", "regmean", ("fusionbench",), {"ridge": 0.0},
     "same formula (FusionBench inverts Σ G̃ without a ridge; project solves with ridge=0)"),
    (f"regmean (ridge {PROJECT_RIDGE:g}, project default)", "regmean", ("fusionbench",), {"ridge": PROJECT_RIDGE},
     "expected: project adds a ridge toward the plain mean (λI left, λW̄ᵀ right, λ = ridge × mean diag(Σ G̃)); FusionBench has none"),
    ("dare (mean, 1/(1−p))", "dare_mean", ("fusionbench",), {},
     "same formula (DareSimpleAverage: init + (1/K) Σ m ⊙ τᵢ/(1−p)), the same masks"),
    ("dare (sum, 1/(1−p), λ)", "dare_sum", ("fusionbench",), {},
     "same formula (DareTaskArithmetic: init + λ Σ m ⊙ τᵢ/(1−p)), the same masks"),
    ("dare (sum, l1 rescale, λ)", "dare_linear", ("mergekit",), {},
     "same formula (dare_linear: each dropped tensor rescaled to its L1 norm, init + λ Σ), the same masks"),
    ("dare-ties (sum, l1 rescale, λ)", "dare_ties", ("mergekit",), {},
     "same formula (dare_ties: sign of the summed dropped vectors elected, the agreeing ones summed), the same masks"),
    ("dare-ties (mean, 1/(1−p))", "dare_ties_mean", ("fusionbench",), {},
     "same formula (DareTiesMerging, its trim keeping every entry: init + the mean of the agreeing m ⊙ τᵢ/(1−p)), "
     "the same masks"),
    ("dare-ties (sum, 1/(1−p), λ)", "dare_ties_sum", ("fusionbench",), {},
     "same formula (DareTiesMerging, merge_func sum: init + λ Σ of the agreeing m ⊙ τᵢ/(1−p)), the same masks"),
]


# ---------------------------------------------------------------- the pool and its statistics

def constructed_pool(k: int, width: int, depth: int, seed: int):
    """(init, [fine-tunes]): a small residual MLP (stem, `depth` blocks of LayerNorm + fc1 [4w, w] + fc2
    [w, 4w], head) and K fine-tunes init + 1e-3 (c·shared + noise_i) per tensor, with c varying per tensor,
    so that the displacements agree more in some tensors than in others (Model Stock's ratios differ)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"stem.weight": (width, 64), "stem.bias": (width,)}
    for b in range(depth):
        shapes |= {f"blocks.{b}.norm.weight": (width,), f"blocks.{b}.norm.bias": (width,),
                   f"blocks.{b}.fc1.weight": (4 * width, width), f"blocks.{b}.fc1.bias": (4 * width,),
                   f"blocks.{b}.fc2.weight": (width, 4 * width), f"blocks.{b}.fc2.bias": (width,)}
    shapes |= {"head.weight": (10, width), "head.bias": (10,)}
    init = {key: torch.randn(shape, generator=g) * (0.02 if len(shape) > 1 else 0.1) for key, shape in shapes.items()}
    shared = {key: torch.randn(t.shape, generator=g) for key, t in init.items()}
    agreement = {key: float(torch.rand((), generator=g)) * 2 for key in init}
    tunes = [{key: t + 1e-3 * (agreement[key] * shared[key] + torch.randn(t.shape, generator=g))
              for key, t in init.items()} for _ in range(k)]
    return init, tunes


def run_dir_pool(folder: str, k: int | None):
    """(init, [fine-tunes]) from this project's run dirs (soups.pools.run_dirs.load_pool: finished runs only,
    sha256 checked); the init is run.json's init.dir/model.safetensors."""
    from types import SimpleNamespace

    from soups.names import WEIGHTS_NAME
    from soups.pools.run_dirs import load_pool

    ingredients, skipped = load_pool(SimpleNamespace(dir=folder, glob=None, runs=None), log_dir=".")
    for run_dir, why in skipped.items():
        print(f"skipped {run_dir}: {why}", file=sys.stderr)
    ingredients = ingredients[:k] if k else ingredients
    init_dir = ingredients[0].info["init"].get("dir")
    if not init_dir:
        raise SystemExit(f"{ingredients[0].run_dir}/run.json names no init.dir: Model Stock and task "
                         f"arithmetic need the init")
    return load_file(Path(init_dir) / WEIGHTS_NAME), [load_file(i.weights) for i in ingredients]


def statistics(init, tunes, seed: int, max_gram_dim: int):
    """One set of merge statistics, the same for every library: Fisher diagonals (log-normal, spanning
    ~1e-7..1e-1 so that the floor ε matters for some entries) for every float tensor of every model, and a
    Gram G = XᵀX/n (float64; X correlated, n = 2·in rows: well conditioned) for every 2-D `.weight` with
    at most `max_gram_dim` inputs."""
    g = torch.Generator().manual_seed(seed + 1)
    stats = {"eps": torch.tensor(FISHER_FLOOR), "alpha": torch.tensor(REGMEAN_ALPHA)}
    for i, state in enumerate(tunes):
        for key, t in state.items():
            if not t.is_floating_point():
                continue
            stats[f"fisher/{i}/{key}"] = (torch.randn(t.shape, generator=g) * 2 - 9).exp().float()
            if key.endswith(".weight") and t.dim() == 2 and t.shape[1] <= max_gram_dim:
                n = 2 * t.shape[1]
                mix = torch.eye(t.shape[1], dtype=torch.float64) + 0.3 * torch.randn(
                    t.shape[1], t.shape[1], generator=g, dtype=torch.float64) / t.shape[1] ** 0.5
                x = torch.randn(n, t.shape[1], generator=g, dtype=torch.float64) @ mix
                stats[f"gram/{i}/{key}"] = x.T @ x / n
    return stats


# ---------------------------------------------------------------- the project's side (a worker process)

def dare_masks(init, tunes, drop: float, seed: int) -> dict:
    """{"mask/<i>/<key>": uint8}: the masks recipes.dare.Dare draws (draw 0) for the pool's float tensors."""
    from soups.recipes.dare import drop_mask

    return {f"mask/{i}/{key}": drop_mask(t.shape, drop, seed, 0, i, key).to(torch.uint8)
            for i, state in enumerate(tunes) for key, t in state.items() if t.is_floating_point()}


def project_merge(method, states, base, weights, lam, stats, ridge, scope="tensor", density=0.2, drop=0.5, seed=0):
    """The project's result for `method`, from its own code."""
    from soups.averaging import average, weighted_sum

    k = len(states)

    class Shim:  # the Scorer surface the init-relative recipes use: the shared init, one ingredient, tied keys
        load_init = staticmethod(lambda: base)
        load = staticmethod(lambda i: states[i])
        aliases = {}
    split = lambda kind: [{name.split("/", 2)[2]: t for name, t in stats.items()  # noqa: E731
                           if name.startswith(f"{kind}/{i}/")} for i in range(k)]
    if method == "uniform":
        return average(states)
    if method == "weighted":
        return average(states, weights)
    if method == "model_stock":
        from soups.recipes.model_stock import ModelStock

        return ModelStock()(list(range(k)), Shim()).weights
    if method == "ties":
        from soups.recipes.ties import TiesMerging

        return TiesMerging(density=density, scope=scope)(list(range(k)), Shim()).weights
    if method in DARE:
        from soups.recipes.dare import Dare

        settings = DARE[method] | {"scale": lam if DARE[method]["scale"] is None else DARE[method]["scale"]}
        return Dare(drop=drop, seed=seed, draws=1, **settings)(list(range(k)), Shim()).weights
    if method == "task_arithmetic":  # no recipe in src/soups: init + λ Σ (θᵢ − init) with averaging.weighted_sum
        return weighted_sum([(base, 1.0 - k * lam), *((s, lam) for s in states)])
    if method == "fisher":
        from soups.recipes.fisher import fisher_average
        return fisher_average(states, split("fisher"), float(stats["eps"]), normalize=False)
    if method == "regmean":
        from soups.recipes.regmean import regmean_merge
        return regmean_merge(states, split("gram"), float(stats["alpha"]), ridge)
    raise SystemExit(f"unknown method {method}")


def worker(argv: list[str]) -> None:
    """`compare.py --worker METHOD ...`: peer_merge.py's command line, measurement and JSON line, for the
    project's code."""
    from peer_merge import measured  # same folder; it needs only torch and safetensors

    p = argparse.ArgumentParser()
    p.add_argument("method")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--base")
    p.add_argument("--weights", nargs="+", type=float)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--stats")
    p.add_argument("--ridge", type=float, default=0.0)
    p.add_argument("--scope", default="tensor")
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--drop", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    # imported before the clock, as peer_merge.py imports the peers'
    import soups.recipes.dare, soups.recipes.fisher, soups.recipes.model_stock, soups.recipes.regmean, soups.recipes.ties  # noqa: E401, F401
    states = [load_file(x) for x in a.inputs]
    base = load_file(a.base) if a.base else None
    stats = load_file(a.stats) if a.stats else {}
    copy = lambda s: {k: v.clone() for k, v in s.items()} if s is not None else None  # noqa: E731
    fresh = lambda: (a.method, [copy(s) for s in states], copy(base), a.weights, a.lam, stats, a.ridge,  # noqa: E731
                     a.scope, a.density, a.drop, a.seed)
    merged, record = measured(project_merge, fresh, a.repeat)
    save_file(merged, a.out)
    print(json.dumps(record))


# ---------------------------------------------------------------- driver

def run(cmd: list[str], threads: int) -> dict:
    """Run one merge process with `threads` intra-op threads; its last stdout line is the JSON record (or
    raise with its stderr's tail)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_abs_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise RuntimeError(f"different keys: {sorted(set(a) ^ set(b))[:3]}")
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        return worker(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool-dir", help="a sweep folder of this project's run dirs (default: a constructed pool)")
    p.add_argument("--k", type=int, help="fine-tunes (constructed pool: 4; --pool-dir: all)")
    p.add_argument("--width", type=int, default=256, help="constructed pool: width (256: ~4 MB per model)")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--lam", type=float, default=0.3, help="task arithmetic's λ")
    p.add_argument("--density", type=float, default=0.2, help="TIES: the fraction of each task vector kept")
    p.add_argument("--drop", type=float, default=0.5, help="DARE: the drop probability p")
    p.add_argument("--max-gram-dim", type=int, default=1024, help="RegMean: Grams only for weights this wide")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="time the least of this many merges")
    p.add_argument("--threads", type=int, default=1, help="torch threads per merge process (1: a core busy "
                   "with another job stalls a 2-thread barrier on a small machine, 30x slower here)")
    p.add_argument("--keep", help="write the pool and the results here instead of a temporary folder")
    args = p.parse_args()
    if not PEER_PYTHON.exists():
        raise SystemExit(f"no {PEER_PYTHON.relative_to(ROOT)}: run `bash scripts/peers/setup.sh` first")

    init, tunes = run_dir_pool(args.pool_dir, args.k) if args.pool_dir else \
        constructed_pool(args.k or 4, args.width, args.depth, args.seed)
    k = len(tunes)
    weights = [float(i + 1) for i in range(k)]  # 1, 2, ..., K (normalized by every side)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        inputs = [str(folder / f"m{i}.safetensors") for i in range(k)]
        for path, state in zip(inputs, tunes):
            save_file(state, path)
        save_file(init, folder / "init.safetensors")
        save_file(statistics(init, tunes, args.seed, args.max_gram_dim) | dare_masks(init, tunes, args.drop, args.seed),
                  folder / "stats.safetensors")
        size_mb = sum(t.numel() * t.element_size() for t in init.values()) / 2**20
        common = ["--inputs", *inputs, "--base", str(folder / "init.safetensors"), "--weights", *map(str, weights),
                  "--lam", str(args.lam), "--stats", str(folder / "stats.safetensors"), "--repeat", str(args.repeat),
                  "--density", str(args.density), "--drop", str(args.drop)]
        print(f"pool: {args.pool_dir or 'constructed'}, K={k}, {size_mb:.1f} MB per model, "
              f"λ={args.lam}, weights={weights}, {args.threads} thread(s), in {folder}\n", file=sys.stderr)

        lines = ["| method | peer | max abs difference to the project | time ratio peer/project | "
                 "peak-RSS ratio (merge's growth ratio) | expected |", "|---|---|---:|---:|---:|---|"]
        project = {}  # (method, options): (record, result)
        for name, method, peers, options, why in ROWS:
            ridge, scope = options.get("ridge", 0.0), options.get("scope", "tensor")
            if (method, ridge, scope) not in project:
                out = folder / f"project_{method}_{ridge:g}_{scope}.safetensors"
                worker_cmd = [sys.executable, __file__, "--worker", method, *common, f"--ridge={ridge}",
                              f"--scope={scope}", f"--seed={args.seed}"]
                record = run([*worker_cmd, "--out", str(out)], args.threads)
                project[method, ridge, scope] = record, load_file(out)
            mine, ours = project[method, ridge, scope]
            for peer in peers:
                peer_out = folder / f"{peer}_{method}.safetensors"
                try:
                    theirs = run([str(PEER_PYTHON), str(PEER_MERGE), peer, method, *common, "--out", str(peer_out)],
                                 args.threads)
                    diff = max_abs_difference(ours, load_file(peer_out))
                    if method in DARE:  # the difference on the project's masks; time and memory as the peer runs
                        theirs = run([str(PEER_PYTHON), str(PEER_MERGE), peer, method, *common, "--own-masks",
                                      "--out", str(folder / f"{peer}_{method}_own_masks.safetensors")], args.threads)
                except RuntimeError as err:
                    lines.append(f"| {name} | {peer} | failed: {str(err)[:120]} | | | {why} |")
                    continue
                growth = lambda r: max(r["merge_rss_mb"], 0.1)  # noqa: E731
                time_ratio = theirs["seconds"] / max(mine["seconds"], 1e-4)
                rss_ratio, growth_ratio = theirs["peak_rss_mb"] / mine["peak_rss_mb"], growth(theirs) / growth(mine)
                lines.append(f"| {name} | {peer} | {diff:.3g} | {time_ratio:.2f} | "
                             f"{rss_ratio:.2f} ({growth_ratio:.2f}) | {why} |")
                print(f"{name:>40} {peer:>11}: diff {diff:.3g}, peer {theirs}, project {mine}", file=sys.stderr)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
