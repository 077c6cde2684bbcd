"""Fine-tune one model from the shared initialization; `-m` sweeps (one job per fine-tune).

    python src/finetune.py                          # one run with the defaults (the embedded demo)
    python src/finetune.py -m lr=1e-3,3e-3          # a sweep
    python src/finetune.py sweep=demo               # the demo's 8-trial random search
    torchrun --nproc_per_node=4 src/finetune.py hydra.run.dir=logs/my_run   # one run, data-parallel
"""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

# conf/paths resolves the logs and caches from here, whatever the working directory
os.environ.setdefault("SOUPS_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="finetune")
def main(cfg) -> float:
    from soups.errors import said_plainly
    from soups.jobs.finetune import run_finetune
    from soups.names import HELD_OUT

    with said_plainly():  # an input the user can fix: `error: ...`, exit 1, no traceback to read through
        info = run_finetune(cfg, HydraConfig.get().runtime.output_dir)
    if info and info.get("status") == "failed":
        if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep goes on with its other jobs
            sys.exit(f"run failed: {info['failure']} (recorded in {HydraConfig.get().runtime.output_dir}/run.json; "
                     f"delete that run dir to run it again)")
        return None
    return info["metrics"][HELD_OUT] if info else None  # None: a torchrun rank other than 0


if __name__ == "__main__":
    from soups.overrides import check_overrides

    check_overrides(sys.argv[1:], Path(__file__).resolve().parents[1] / "conf", "finetune")  # data=123, methd=...: one line
    main()
