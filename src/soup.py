"""Soup a pool of fine-tunes, evaluate on held-out, test and shifts, write the table and figure.

    python src/soup.py                              # uniform + greedy on the latest finetune sweep
    python src/soup.py method=greedy pool.dir=logs/finetune/multiruns/<sweep>
"""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

os.environ.setdefault("SOUPS_ROOT", str(Path(__file__).resolve().parents[1]))
# Jobs a launcher starts elsewhere (submitit processes, SLURM nodes, Ray workers) import `soups` too
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent),
                                                       os.environ.get("PYTHONPATH")) if p)


@hydra.main(version_base="1.3", config_path="../conf", config_name="soup")
def main(cfg) -> None:
    from soups.config import ConfigError
    from soups.soup_job import run_soup

    try:
        run_soup(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:  # said plainly, before any work: no traceback to read through
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
