"""Metrics of individual models cached by (weights sha256, evaluation config): a model is evaluated once."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from soups.io import read_json, write_json


def evaluation_key(run_cfg, precision: str, batch_size: int) -> str:
    """What the numbers depend on besides the weights: data, shifts, model config (input pipeline,
    feature normalization), precision, and batch size (BN statistics are recomputed in batches)."""
    parts = {k: OmegaConf.to_container(run_cfg[k], resolve=True) for k in ("data", "shifts", "model")}
    parts |= {"precision": precision, "batch_size": int(batch_size)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class MetricsCache:
    def __init__(self, cache_dir: str | Path, key: str):
        self.dir = Path(cache_dir) / "eval" / key

    def get(self, weights_sha256: str) -> dict | None:
        path = self.dir / f"{weights_sha256}.json"
        return read_json(path)["metrics"] if path.is_file() else None

    def put(self, weights_sha256: str, metrics: dict) -> None:
        write_json({"sha256": weights_sha256, "metrics": metrics}, self.dir / f"{weights_sha256}.json")
