"""One pool-evaluation job: the ingredients of one shard of a pool, each evaluated once into the evaluation
cache that the soup job reads (metrics and, with cache_logits, logits per set). With `-m` and a launcher,
`shards` jobs share the pool: ingredient i (pool order) is evaluated by job i % shards."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from soups.errors import BadInput
from soups.evaluation.scorer import EvalSettings, PoolScorer
from soups.io.files import write_json
from soups.pools import open_pool
from soups.runtime import resolve_device, setup
from soups.settings import SoupSettings, checked, no_training_settings

log = logging.getLogger(__name__)


def shard_of(cfg) -> tuple[int, int]:
    """(shard, shards) from the config; BadInput unless 0 <= shard < shards."""
    shard, shards = cfg.get("shard"), cfg.get("shards")
    if not (isinstance(shards, int) and not isinstance(shards, bool) and shards >= 1):
        raise BadInput(f"shards={shards!r}; expected the number of evaluation jobs, an integer >= 1")
    if not (isinstance(shard, int) and not isinstance(shard, bool) and 0 <= shard < shards):
        raise BadInput(f"shard={shard!r}; expected this job's index, an integer in [0, {shards - 1}] "
                       f"(with -m it is set for each job: python src/evaluate.py -m shards={shards})")
    return shard, shards


def named_pool(cfg, shards: int) -> None:
    """BadInput when several jobs would each look up "the latest sweep" (a sweep made in between would split
    another pool), or the named run-dir folder does not exist."""
    pool = cfg.get("pool") or {}
    if not str(pool.get("_target_", "")).endswith("RunDirs"):
        return
    if shards > 1 and not (pool.get("dir") or pool.get("glob") or pool.get("runs")):
        raise BadInput("shards > 1 with the latest sweep as the pool: each job would look for the latest sweep when "
                       "it starts, and a sweep made in between would split another pool; name it: pool.dir=<sweep>")
    if pool.get("dir") and not Path(str(pool.get("dir"))).exists():
        raise BadInput(f"pool.dir={pool.get('dir')} does not exist")


def run_evaluate(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Evaluates this shard's ingredients (and, in shard 0, the pool's init: a released init file, or a run-dir
    pool's init whose run.json numbers were measured under other settings) unless the cache or their run.json
    holds them already; writes evaluate.json in `out_dir` ({ingredient: metrics}, images forwarded,
    seconds) and returns it."""
    cfg = checked(cfg, SoupSettings)
    no_training_settings(cfg, "src/evaluate.py")
    shard, shards = shard_of(cfg)
    named_pool(cfg, shards)
    setup(cfg.seed, cfg.get("threads"))
    device = resolve_device(cfg.device)
    pool = open_pool(cfg, device)
    scorer = PoolScorer(pool, EvalSettings.of(cfg), device)
    mine = [ingredient for i, ingredient in enumerate(pool.ingredients) if i % shards == shard]
    if shard == 0 and pool.release_init is not None:
        mine.append(pool.release_init)
    start, metrics = time.time(), {}
    for ingredient in mine:
        metrics[ingredient.name] = scorer.individual_metrics(ingredient)
        if scorer.cache_logits:  # what ensembles and the soups' comparisons with the best individual read
            scorer.individual_logits(ingredient)
    init = pool.template()["init"] if shard == 0 and pool.release_init is None else {}
    if init.get("metrics"):  # a run-dir pool's init, measured again where run.json's are under other settings
        metrics["initialization"] = scorer.init_record(init)["metrics"]
    record = {"pool": pool.name, "ingredients": [i.name for i in pool.ingredients], "shard": shard,
              "shards": shards, "metrics": metrics,
              "images_forwarded": scorer.images_forwarded, "seconds": round(time.time() - start, 1)}
    write_json(record, Path(out_dir) / "evaluate.json")
    log.info("shard %d of %d: %d of %d models, %d images forwarded in %.0f s", shard, shards, len(mine),
             len(pool.ingredients), record["images_forwarded"], record["seconds"])
    return record
