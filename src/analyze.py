"""Analyze a pool of fine-tunes: the paper's figures beyond its table.

    python src/analyze.py                             # analysis=pairs on the latest finetune sweep
    python src/analyze.py analysis=pairs pool.dir=logs/finetune/multiruns/<sweep>
"""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

# conf/paths resolves the logs and caches from here, whatever the working directory
os.environ.setdefault("SOUPS_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
def main(cfg) -> None:
    from soups.jobs.analyze import run_analysis
    from soups.errors import said_plainly

    with said_plainly():  # an input the user can fix: `error: ...`, exit 1, no traceback to read through
        run_analysis(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from soups.overrides import check_overrides

    check_overrides(sys.argv[1:], Path(__file__).resolve().parents[1] / "conf", "analyze")  # data=123, methd=...: one line
    main()
