"""One analysis job: pool -> analysis (evaluations through the shared cache) -> <name>.json + <name>.png + W&B."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soups.analyses import build_analysis
from soups.settings import SoupSettings, checked
from soups.evaluation.scorer import EvalSettings, PoolScorer, require_init
from soups.io.files import write_json
from soups.pools import open_pool
from soups.runtime import resolve_device, setup
from soups.tracking import build_logger, tracking

log = logging.getLogger(__name__)


def run_analysis(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Every input checked before the first evaluation; returns the analysis record (also <name>.json)."""
    out_dir = Path(out_dir)
    cfg = checked(cfg, SoupSettings)
    analysis, logger = build_analysis(cfg.analysis), build_logger(cfg.logger)
    name = str(cfg.analysis._target_).split(".")[-2]  # the module: pairs, soup_ensemble, ...
    setup(cfg.seed, cfg.get("threads"))
    device = resolve_device(cfg.device)
    pool = open_pool(cfg, device)
    analysis.check(pool.ingredients)  # before any evaluation, and before a W&B run is opened
    require_init(pool, [name] if analysis.needs_init else [])
    scorer = PoolScorer(pool, EvalSettings.of(cfg), device)
    analysis.check_sets(list(scorer.sets))
    for ingredient in pool.ingredients:
        scorer.individual_metrics(ingredient)
    start, forwarded = time.time(), scorer.images_forwarded
    title = f"{name}: {pool.name} ({len(pool.ingredients)} ingredients)"
    with tracking(logger, out_dir, name=f"analyze/{name}/{out_dir.name}", job_type="analysis",
                  config=OmegaConf.to_container(cfg, resolve=True), group=pool.name) as tracker:
        record = analysis(pool, scorer)
        record |= {"analysis": name, "pool": pool.name, "seconds": round(time.time() - start, 1),
                   "images_forwarded": scorer.images_forwarded - forwarded}
        write_json(record, out_dir / f"{name}.json")
        analysis.draw(record, out_dir / f"{name}.png", title)
        tracker.summary({f"{name}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
                        | {f"{name}/{k}": v for k, v in (record.get("correlations") or {}).items() if v is not None})
        tracker.image(f"{name}/figure", out_dir / f"{name}.png")
    summary = analysis.summary(record)
    print(f"\n{title}\n{summary}\n{record['images_forwarded']:,} examples forwarded in {record['seconds']:.0f} s "
          f"(the rest from the evaluation cache)\nwritten to {out_dir}")
    return record
