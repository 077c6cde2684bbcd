"""The shared initialization every fine-tune starts from, made as the `head` config says (soups/heads/:
a linear probe on the pretrained tower, CLIP's zero-shot head, or given weights). Computed once per
(model, data, shifts, head) config and cached."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from filelock import FileLock
from omegaconf import OmegaConf

from soups.data import build_data
from soups.errors import BadInput
from soups.evaluation.cache import config_parts, evaluation_key
from soups.evaluation.evaluator import Evaluator, format_metrics
from soups.io.files import atomic_save_safetensors, load_weights, read_json, sha256_file, write_json
from soups.heads import build_head
from soups.models.hf import HFClassifier, hf_processor_dir, save_pretrained_soup
from soups.names import WEIGHTS_NAME, INIT_INFO_NAME

log = logging.getLogger(__name__)


def init_key(cfg) -> str:
    parts = config_parts(cfg, ("model", "data", "shifts", "head"))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def shared_init(cfg, device) -> Path:
    """Directory holding the init's weights and init.json; built under a file lock if absent."""
    out = Path(cfg.paths.cache_dir) / "init" / f"{cfg.model.name}-{cfg.data.name}-{init_key(cfg)}"
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".lock")):  # parallel sweep jobs: one builds, the rest wait and reuse
        if not (out / INIT_INFO_NAME).is_file():
            _build_init(cfg, device, out)
    info = read_json(out / INIT_INFO_NAME)
    if sha256_file(out / WEIGHTS_NAME) != info["sha256"]:
        raise BadInput(f"cached init {out} does not match its recorded sha256; delete the folder to rebuild")
    return out


def _build_init(cfg, device, out: Path) -> None:
    start = time.time()
    head = build_head(cfg.head)  # its settings checked before any work
    data = build_data(cfg.data, cfg.model, cfg.paths.cache_dir)
    model, probe = head(cfg, data, device)
    evaluator = Evaluator(data.eval_sets(), cfg.eval_batch_size, cfg.precision, device)
    metrics = evaluator.evaluate(model)
    atomic_save_safetensors(model.state_dict(), out / WEIGHTS_NAME, metadata={"kind": "init"})
    if isinstance(model, HFClassifier):  # a transformers folder too: the base LoRA adapters are saved on
        save_pretrained_soup(model, model.state_dict(), out / "hf", hf_processor_dir(cfg.model))
    write_json({"kind": "init", "model": OmegaConf.to_container(cfg.model, resolve=True),
                "data": OmegaConf.to_container(cfg.data, resolve=True),
                "head": {**OmegaConf.to_container(cfg.head, resolve=True), **probe},
                "metrics": metrics, "sha256": sha256_file(out / WEIGHTS_NAME),
                "evaluation_key": evaluation_key(cfg, cfg.precision, cfg.eval_batch_size),
                "seconds": round(time.time() - start, 1)}, out / INIT_INFO_NAME)
    log.info("shared init (%s): %s", cfg.head._target_, format_metrics(metrics))


def load_shared_init(init_dir: Path, model) -> dict:
    model.load_state_dict(load_weights(Path(init_dir) / WEIGHTS_NAME))
    return read_json(Path(init_dir) / INIT_INFO_NAME)
