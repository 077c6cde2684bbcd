"""Speed and memory, each measured side by side with a reference in the same run; prints ratios
(results go to BENCHMARKS.md, never into tests).

    python scripts/benchmark.py                      # every benchmark (~28 min on 2 CPU cores)
    python scripts/benchmark.py --only eval --images 1000 --passes 3
    python scripts/benchmark.py --only greedy,training --out results.json
    python scripts/benchmark.py --only eval,training --precision bf16   # where the CPU/GPU has bf16 units

eval      repeated evaluation passes: the project's evaluator on the uint8 store vs a reference loop in
          the official style (PIL decode + transforms every pass, fp32, DataLoader workers) and the
          compute-bound rate; ViT-B/32 and the demo model on real-photo JPEGs (bench/evaluation.py)
greedy    greedy soup wall time over 8 real fine-tunes vs a naive official-style greedy loop (bench/greedy.py)
memory    peak RSS of uniform and greedy soups at K = 4 and 16 ViT-B/32 ingredients (bench/memory.py)
learned   peak RSS of the learned soup over 8 ViT-B/32 ingredients vs ingredients that carry gradients
scaling   peak RSS and time of the learned soup vs MEHL-Soup at K = 8 and 24 ViT-B/32 ingredients
training  training steps/s of `finetune` vs an fp32 reference loop, with the reference's time by phase
          (bench/training.py)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine  # scripts/bench (this script's folder is on sys.path)

BENCHMARKS = ("eval", "greedy", "memory", "learned", "scaling", "training")


def run(name: str, args) -> list[dict]:
    if name == "eval":
        from bench.evaluation import bench_eval
        return bench_eval(args)
    if name == "greedy":
        from bench.greedy import bench_greedy
        return bench_greedy(args)
    if name == "memory":
        from bench.memory import bench_memory
        return bench_memory(args)
    if name == "learned":
        from bench.memory import bench_learned_memory
        return bench_learned_memory(args)
    if name == "scaling":
        from bench.memory import bench_learned_scaling
        return bench_learned_scaling(args)
    from bench.training import bench_training
    return bench_training(args)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated: {', '.join(BENCHMARKS)}")
    parser.add_argument("--images", type=int, default=1000, help="JPEG files per evaluation set")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for decoding")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="eval, training: the project's precision (the references stay fp32)")
    parser.add_argument("--repeats", type=int, default=3, help="greedy: timed runs of each side")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {', '.join(BENCHMARKS)}")
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(report), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="soups-benchmark-"))
    tempfile.tempdir = str(scratch)  # every benchmark's files (JPEGs, ingredients: GBs) go here and are removed
    try:
        for name in wanted:
            start = time.perf_counter()
            report[name] = run(name, args)
            print(f"# {name}: {time.perf_counter() - start:.0f} s", flush=True)
            if args.out:  # rewritten after each benchmark, atomically: a kill keeps the last complete file
                partial = args.out.with_name(f".{args.out.name}.tmp")
                partial.write_text(json.dumps(report, indent=2) + "\n")
                os.replace(partial, args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
