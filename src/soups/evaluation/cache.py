"""Evaluation done once. For each model (weights sha256) under one evaluation config:
metrics in `<digest>.json`, and logits per set in `<digest>/<set>.safetensors` whose rows are keyed by
sample id (a hash of the image's id), so a set in another order or a subset of it is still served.
Every entry is written atomically; one found unreadable (damaged by hand or by the disk) is measured again."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from soups.io.files import atomic_save_safetensors, load_weights, read_json, write_json

log = logging.getLogger(__name__)


def _readable(path: Path, read):
    """read(path), or None when the entry is absent or damaged (then it is computed again)."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except (ValueError, KeyError, TypeError) as err:
        log.warning("evaluation cache entry %s is damaged (%s): measuring again", path, err)
        return None


def config_parts(cfg, names: tuple[str, ...]) -> dict:
    """{name: resolved container} of `cfg`'s groups (`names` holds "data"), with the dataset's shifts as their own
    part "shifts" (as they were before datasets carried them), so keys made before and after that change agree."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in names if k != "shifts"}
    parts["data"] = dict(parts["data"])
    parts["shifts"] = parts["data"].pop("shifts", None)
    return parts


def evaluation_key(run_cfg, precision: str, batch_size: int, compiled: bool = False) -> str:
    """What the numbers depend on besides the weights: data, shifts, model config (input pipeline,
    feature normalization), precision, batch size (BN statistics are recomputed in batches) and
    whether the forward is compiled (fused kernels round differently)."""
    parts = config_parts(run_cfg, ("data", "shifts", "model"))
    # version 2: accuracy = 100 * correct / n in float64 (an exact function of the count, which exact
    # early rejection relies on); version-1 numbers differ in the 7th digit and are re-measured
    parts |= {"precision": precision, "batch_size": int(batch_size), "version": 2}
    if compiled:  # only then: keys of eager runs stay as they were
        parts["compiled"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def hash_ids(sample_ids: list[str]) -> torch.Tensor:
    """int64 [N]: the first 8 bytes of each id's blake2b digest."""
    raw = b"".join(hashlib.blake2b(s.encode(), digest_size=8).digest() for s in sample_ids)
    return torch.frombuffer(bytearray(raw), dtype=torch.int64).clone()


class EvaluationCache:
    def __init__(self, cache_dir: str | Path, key: str):
        self.dir = Path(cache_dir) / "eval" / key

    def get(self, digest: str) -> dict | None:
        return _readable(self.dir / f"{digest}.json", lambda p: dict(read_json(p)["metrics"]))

    def put(self, digest: str, metrics: dict) -> None:
        write_json({"sha256": digest, "metrics": metrics}, self.dir / f"{digest}.json")

    def get_record(self, key: dict) -> dict | None:
        return _readable(self._record_path(key), lambda p: dict(read_json(p)["record"]))

    def put_record(self, key: dict, record: dict) -> None:
        write_json({"key": key, "record": record}, self._record_path(key))

    def _record_path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return self.dir / "recipes" / f"{digest[:32]}.json"

    def get_logits(self, digest: str, set_name: str, ids: torch.Tensor) -> torch.Tensor | None:
        """Logits for the samples `ids` (hash_ids), in that order; None unless every one is cached."""
        stored = _readable(self.dir / digest / f"{set_name}.safetensors", _load_logits)
        if stored is None:
            return None
        if torch.equal(stored["ids"], ids):
            return stored["logits"]
        row = {int(i): r for r, i in enumerate(stored["ids"].tolist())}
        rows = [row.get(int(i)) for i in ids.tolist()]
        return None if None in rows else stored["logits"][torch.tensor(rows, dtype=torch.long)]

    def put_all_logits(self, digest: str, logits: dict[str, torch.Tensor], ids: dict[str, torch.Tensor]) -> None:
        """One model's logits on every set; `ids`: each set's hash_ids."""
        for name, values in logits.items():
            self.put_logits(digest, name, ids[name], values)

    def put_logits(self, digest: str, set_name: str, ids: torch.Tensor, logits: torch.Tensor) -> None:
        if len(ids) != len(logits):
            raise ValueError(f"{set_name}: {len(ids)} sample ids for {len(logits)} rows of logits")
        atomic_save_safetensors({"ids": ids, "logits": logits.float()}, self.dir / digest / f"{set_name}.safetensors")


def _load_logits(path: Path) -> dict[str, torch.Tensor]:
    stored = load_weights(path)
    if stored["ids"].ndim != 1 or stored["logits"].ndim != 2 or len(stored["ids"]) != len(stored["logits"]):
        raise ValueError(f"ids {tuple(stored['ids'].shape)} do not index logits {tuple(stored['logits'].shape)}")
    return stored
