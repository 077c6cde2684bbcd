"""The shared initialization every fine-tune starts from: pretrained tower (+ BN statistics adapted
to the data) + linear-probe head. Computed once per (model, data, head) config and cached."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import open_clip
from filelock import FileLock
from omegaconf import OmegaConf

from soups.checkpoints import convert_official_file
from soups.data import build_data
from soups.errors import BadInput
from soups.evaluate import Evaluator, format_metrics, recalibrate_bn
from soups.heads import cached_features, fit_linear_probe, zero_shot_head, zero_shot_prompts
from soups.files import atomic_save_safetensors, load_weights, read_json, sha256_file, write_json
from soups.models import build_classifier, classifier_from_clip, create_clip, has_batchnorm
from soups.names import WEIGHTS_NAME, INIT_INFO_NAME

log = logging.getLogger(__name__)


def init_key(cfg) -> str:
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "shifts", "head")}
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
    data = build_data(cfg.data, cfg.shifts, cfg.model, cfg.paths.cache_dir)
    if cfg.head.kind == "linear_probe":
        model, probe = _linear_probe_init(cfg, data, device)
    elif cfg.head.kind == "zero_shot":
        model, probe = _zero_shot_init(cfg, device)
    elif cfg.head.kind == "checkpoint":
        model, probe = _checkpoint_init(cfg, device)
    else:
        raise BadInput(f"head.kind={cfg.head.kind!r}; available: linear_probe, zero_shot, checkpoint")
    evaluator = Evaluator(data.eval_sets(), cfg.eval_batch_size, cfg.precision, device)
    metrics = evaluator.evaluate(model)
    atomic_save_safetensors(model.state_dict(), out / WEIGHTS_NAME, metadata={"kind": "init"})
    write_json({"kind": "init", "model": OmegaConf.to_container(cfg.model, resolve=True),
                "data": OmegaConf.to_container(cfg.data, resolve=True),
                "shifts": OmegaConf.to_container(cfg.shifts, resolve=True),
                "head": {**OmegaConf.to_container(cfg.head, resolve=True), **probe},
                "metrics": metrics, "sha256": sha256_file(out / WEIGHTS_NAME),
                "seconds": round(time.time() - start, 1)}, out / INIT_INFO_NAME)
    log.info("shared init (%s): %s", cfg.head.kind, format_metrics(metrics))


def _linear_probe_init(cfg, data, device):
    model = build_classifier(cfg.model, cfg.data.num_classes, cache_dir=cfg.paths.cache_dir).to(device)
    train, val = data.probe_sets(cfg.head.get("train_per_class"))
    if cfg.head.adapt_bn and has_batchnorm(model):
        # Features on ImageNet BN statistics probe well but fine-tune badly once BN runs in train mode.
        recalibrate_bn(model, train, cfg.eval_batch_size, device)
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")}
    parts |= {"adapt_bn": bool(cfg.head.adapt_bn), "per_class": cfg.head.get("train_per_class"),
              "precision": cfg.precision}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    features_dir = Path(cfg.paths.cache_dir) / "features"
    fx = cached_features(model, train, cfg.eval_batch_size, cfg.precision, device, features_dir / f"{key}-train.npy")
    vx = cached_features(model, val, cfg.eval_batch_size, cfg.precision, device, features_dir / f"{key}-val.npy")
    weight, bias, probe = fit_linear_probe(fx, train.labels.numpy(), vx, val.labels.numpy(),
                                           list(cfg.head.Cs), cfg.head.max_iter)
    model.head.weight.data.copy_(weight)
    model.head.bias.data.copy_(bias)
    return model, probe


def _zero_shot_init(cfg, device):
    clip = create_clip(cfg.model, cache_dir=cfg.paths.cache_dir).to(device)
    classnames, templates = zero_shot_prompts(cfg.head)
    if len(classnames) != cfg.data.num_classes:
        raise BadInput(f"{len(classnames)} class names for {cfg.data.num_classes} classes")
    weight, bias = zero_shot_head(clip, open_clip.get_tokenizer(cfg.model.open_clip_name), classnames, templates,
                                  cfg.head.logit_scale, device)
    model = classifier_from_clip(clip, cfg.model, cfg.data.num_classes).to(device)
    model.head.weight.data.copy_(weight)
    model.head.bias.data.copy_(bias)
    return model, {"classnames": cfg.head.classnames, "templates": cfg.head.templates, "num_templates": len(templates)}


def _checkpoint_init(cfg, device):
    """Start from given weights: a project checkpoint (.safetensors) or an official one (e.g. model_0.pt,
    the paper's linear-probe init)."""
    model = build_classifier(cfg.model, cfg.data.num_classes, load_pretrained=False).to(device)
    path = Path(cfg.head.path).expanduser()
    if path.suffix != ".safetensors":
        path = convert_official_file(path, Path(cfg.paths.cache_dir) / "release", expected=model.state_dict())
    state, expected = load_weights(path), model.state_dict()
    wrong = sorted(set(state) ^ set(expected)) + [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if wrong:
        raise BadInput(f"head.path={path} does not fit model={cfg.model.name} with {cfg.data.num_classes} classes "
                       f"({len(wrong)} tensors missing, extra or of another shape, e.g. {wrong[:3]}): weights of "
                       f"another architecture or dataset?")
    model.load_state_dict(state, strict=True)
    return model, {"path": str(cfg.head.path), "sha256": sha256_file(path)}


def load_shared_init(init_dir: Path, model) -> dict:
    model.load_state_dict(load_weights(Path(init_dir) / WEIGHTS_NAME))
    return read_json(Path(init_dir) / INIT_INFO_NAME)
