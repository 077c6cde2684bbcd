"""Time the demo's stages (sweep, soups) on this machine and print a Markdown row for BENCHMARKS.md.

    .venv/bin/python scripts/time_demo.py [--experiment demo_efficientnet] [extra overrides for both commands,
                                          e.g. paths.log_dir=/tmp/x]

The time is that of a first run: the shared init is built in a fresh cache folder (a temporary one, removed
kept and named at the end, unless paths.cache_dir is given); nothing of an existing cache is deleted, so the sweeps
already made keep their init.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from soups.runtime import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str]) -> float:
    start = time.time()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", help="a demo experiment, e.g. demo_efficientnet (default: the default demo)")
    args, extra = parser.parse_known_args()
    demo = [f"experiment={args.experiment}"] if args.experiment else []  # the soup job reads the runs' own
    scratch = None
    if not any(a.startswith("paths.cache_dir=") for a in extra):
        scratch = tempfile.mkdtemp(prefix="time-demo-cache-")
        extra = [*extra, f"paths.cache_dir={scratch}"]
    sweep = timed(["src/finetune.py", "sweep=demo", *demo, *extra])
    soup = timed(["src/soup.py", *extra])
    if scratch:  # the timed sweep's init lives there (WiSE-FT and the analyses of that sweep read it)
        print(f"\nthe timed runs' cache (their shared init): {scratch}")
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print("\n| machine | sweep (init + 8 fine-tunes) | soups (uniform + greedy) | total |")
    print("|---|---:|---:|---:|")
    print(f"| {machine} | {sweep:.0f} s | {soup:.0f} s | {sweep + soup:.0f} s ({(sweep + soup) / 60:.1f} min) |")


if __name__ == "__main__":
    main()
