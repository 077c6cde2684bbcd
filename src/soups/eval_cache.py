"""Evaluation done once. For each model (weights sha256) under one evaluation config:
metrics in `<digest>.json`, and logits per set in `<digest>/<set>.safetensors` whose rows are keyed by
sample id (a hash of the image's id), so a set in another order or a subset of it is still served."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from soups.io import atomic_save_safetensors, load_weights, read_json, write_json


def evaluation_key(run_cfg, precision: str, batch_size: int, compiled: bool = False) -> str:
    """What the numbers depend on besides the weights: data, shifts, model config (input pipeline,
    feature normalization), precision, batch size (BN statistics are recomputed in batches) and
    whether the forward is compiled (fused kernels round differently)."""
    parts = {k: OmegaConf.to_container(run_cfg[k], resolve=True) for k in ("data", "shifts", "model")}
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


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes: the identity of in-memory weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


class EvaluationCache:
    def __init__(self, cache_dir: str | Path, key: str):
        self.dir = Path(cache_dir) / "eval" / key

    def get(self, digest: str) -> dict | None:
        path = self.dir / f"{digest}.json"
        return read_json(path)["metrics"] if path.is_file() else None

    def put(self, digest: str, metrics: dict) -> None:
        write_json({"sha256": digest, "metrics": metrics}, self.dir / f"{digest}.json")

    def get_record(self, key: dict) -> dict | None:
        path = self._record_path(key)
        return read_json(path)["record"] if path.is_file() else None

    def put_record(self, key: dict, record: dict) -> None:
        write_json({"key": key, "record": record}, self._record_path(key))

    def _record_path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return self.dir / "recipes" / f"{digest[:32]}.json"

    def get_logits(self, digest: str, set_name: str, ids: torch.Tensor) -> torch.Tensor | None:
        """Logits for the samples `ids` (hash_ids), in that order; None unless every one is cached."""
        path = self.dir / digest / f"{set_name}.safetensors"
        if not path.is_file():
            return None
        stored = load_weights(path)
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
