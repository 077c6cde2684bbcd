"""Evaluate every ingredient of a pool once, into the evaluation cache that src/soup.py reads, as parallel
jobs through any launcher (a SLURM job array with launcher=slurm):

    python src/evaluate.py -m launcher=slurm shards=8 pool.dir=logs/finetune/multiruns/<sweep>
    python src/evaluate.py pool=files "pool.glob='ckpts/*.pt'" model=vit_b32 data=imagenet   # one process

The pool, model, data and evaluation settings are src/soup.py's (conf/evaluate.yaml reads conf/soup.yaml):
give both commands the same ones, and the soup job then forwards no image for the individual models.
"""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

# conf/paths resolves the logs and caches from here, whatever the working directory
os.environ.setdefault("SOUPS_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg) -> None:
    import logging

    from hydra.types import RunMode

    from soups.errors import said_plainly
    from soups.jobs.evaluate import run_evaluate

    if HydraConfig.get().mode != RunMode.MULTIRUN and isinstance(cfg.get("shards"), int) and cfg.shards > 1:
        logging.getLogger(__name__).warning(
            "shards=%s without -m: this process evaluates shard %s only; add -m to run every shard as a job",
            cfg.shards, cfg.get("shard"))
    with said_plainly():  # an input the user can fix: `error: ...`, exit 1, no traceback to read through
        run_evaluate(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from soups.overrides import check_overrides

    soup_only = "it fills the evaluation cache and makes no soup: give it to src/soup.py"
    check_overrides(sys.argv[1:], Path(__file__).resolve().parents[1] / "conf", "evaluate",  # data=123, methd=...: one line
                    unread={"method": soup_only, "greedy_rule": soup_only, "statistics": soup_only, "reference": soup_only,
                            "logger": "it has nothing to log: the numbers of the pool's models are the soup job's rows, "
                                      "and its evaluate.json"})
    main()
