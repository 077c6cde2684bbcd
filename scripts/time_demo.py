"""Time the demo's stages (sweep, soups) on this machine and print a Markdown row for BENCHMARKS.md.

    .venv/bin/python scripts/time_demo.py [--experiment demo_efficientnet] [extra overrides for both commands,
                                          e.g. paths.log_dir=/tmp/x]

The shared init is rebuilt (its cache is cleared first) so the time is that of a first run.
"""
import os
import shutil
import subprocess
import sys
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
    extra = sys.argv[1:]
    demo = []  # the demo's experiment is a fine-tuning config; the soup job reads the runs' own
    if "--experiment" in extra:
        at = extra.index("--experiment")
        demo, extra = [f"experiment={extra[at + 1]}"], extra[:at] + extra[at + 2:]
    cache = next((Path(a.split("=", 1)[1]) for a in extra if a.startswith("paths.cache_dir=")), ROOT / ".cache")
    shutil.rmtree(cache / "init", ignore_errors=True)
    sweep = timed(["src/finetune.py", "sweep=demo", *demo, *extra])
    soup = timed(["src/soup.py", *extra])
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print("\n| machine | sweep (init + 8 fine-tunes) | soups (uniform + greedy) | total |")
    print("|---|---:|---:|---:|")
    print(f"| {machine} | {sweep:.0f} s | {soup:.0f} s | {sweep + soup:.0f} s ({(sweep + soup) / 60:.1f} min) |")


if __name__ == "__main__":
    main()
