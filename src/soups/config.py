"""Schemas of the entry points' own top-level settings: each field's type (an OmegaConf structured config) and
its allowed values, checked before any work. Every problem is named in one ValueError, with the field,
the value given and what was expected.

Config groups (model, data, method, ...) are checked by Hydra itself: `method=median` fails at
composition with the options that exist; `lr=1e-3` on a misspelled key (`lrr=...`) fails as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ValidationError

from soups.errors import BadInput
from soups.runtime import PRECISIONS


class ConfigError(BadInput):
    """A setting of the wrong type or out of range; the entry points print it without a traceback."""


def rule(check, expected: str, default=None):
    """A field's constraint on its (type-converted) value, and how to say what was expected."""
    return field(default=default, metadata={"check": check, "expected": expected})


def _device(name) -> bool:
    """A device name torch knows, and (for cuda) one this machine has."""
    if name == "auto":
        return True
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return True


def positive(x) -> bool:
    return math.isfinite(x) and x > 0


def non_negative(x) -> bool:
    return math.isfinite(x) and x >= 0


@dataclass
class CommonSettings:
    device: str = rule(_device, "auto, cpu, or a torch device this machine has (cuda, cuda:<index>, ...)", "auto")
    threads: Optional[int] = rule(lambda x: x is None or x >= 1, "null or an integer >= 1")
    eval_batch_size: int = rule(lambda x: x >= 1, "an integer >= 1", 256)
    precision: str = rule(lambda x: x in PRECISIONS, f"one of {list(PRECISIONS)}", "fp32")
    compile: bool = rule(lambda x: True, "true or false", False)
    cache_logits: bool = rule(lambda x: True, "true or false", True)
    seed: int = rule(lambda x: x >= 0, "an integer >= 0", 0)


@dataclass
class FinetuneSettings(CommonSettings):
    num_workers: int = rule(lambda x: x >= 0, "an integer >= 0", 0)
    lr: float = rule(positive, "a finite number > 0", 1e-3)
    wd: float = rule(non_negative, "a finite number >= 0", 0.0)
    epochs: int = rule(lambda x: x >= 1, "an integer >= 1", 1)
    batch_size: int = rule(lambda x: x >= 1, "an integer >= 1", 1)
    warmup_steps: int = rule(lambda x: x >= 0, "an integer >= 0", 0)
    grad_clip: float = rule(non_negative, "a finite number >= 0 (0 = off)", 0.0)
    label_smoothing: float = rule(lambda x: 0 <= x < 1, "a number in [0, 1)", 0.0)
    mixup: float = rule(non_negative, "a finite number >= 0 (0 = off)", 0.0)
    randaug: Optional[str] = rule(lambda x: x is None or x.startswith("rand-"),
                                  "null or a timm RandAugment string such as rand-m9-n2")
    crop_scale: float = rule(lambda x: 0 < x <= 1, "a number in (0, 1]", 1.0)
    trial: Optional[int] = rule(lambda x: x is None or x >= 0, "null or an integer >= 0")
    search_seed: int = rule(lambda x: x >= 0, "an integer >= 0", 0)
    state_every_steps: Optional[int] = rule(lambda x: x is None or x >= 1, "null or an integer >= 1")
    search_draws: Optional[int] = rule(lambda x: x is None or x >= 1, "null or an integer >= 1")


@dataclass
class SoupSettings(CommonSettings):
    # null: the pool's own (its runs' eval_batch_size), so the soup measures like they did and reuses their logits
    eval_batch_size: Optional[int] = rule(lambda x: x is None or x >= 1, "null or an integer >= 1")
    bn_recalibration: Any = rule(lambda x: x == "auto" or isinstance(x, bool), "auto, true or false", "auto")


def model_problems(model_cfg) -> list[str]:
    """What is wrong with the model group's input settings (they size every evaluation set)."""
    if OmegaConf.is_dict(model_cfg) and OmegaConf.is_missing(model_cfg, "timm_name"):
        return ["model.timm_name is required for model=timm (a timm.create_model name, e.g. vit_base_patch16_224)"]
    if model_cfg.get("text_encoder"):
        length = model_cfg.get("max_length")
        good = isinstance(length, int) and not isinstance(length, bool) and length >= 2
        return [] if good else [f"model.max_length={length!r} (expected an integer >= 2, in tokens)"]
    problems = []
    from_timm = bool(model_cfg.get("timm_name"))  # model=timm: null means timm's data config for the model
    size = model_cfg.get("image_size")
    if (size is not None or not from_timm) and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        problems.append(f"model.image_size={size!r} (expected an integer >= 1, in px)")
    for name, ok in (("mean", lambda v: True), ("std", lambda v: v > 0)):
        values = model_cfg.get(name)
        if values is None and from_timm:
            continue
        try:
            good = len(values) == 3 and all(math.isfinite(float(v)) and ok(float(v)) for v in values)
        except (TypeError, ValueError):
            good = False
        if not good:
            expected = "3 finite numbers" + (" > 0" if name == "std" else "")
            problems.append(f"model.{name}={values!r} (expected {expected}, one per RGB channel)")
    return problems


def check(cfg, schema: type) -> None:
    """Raise one ConfigError naming every field of `schema` that `cfg` sets to a wrong type or value;
    otherwise store the converted values in `cfg` (a quoted "3e-5" becomes the float 3e-5)."""
    typed = OmegaConf.structured(schema)
    problems = []
    for spec in fields(schema):
        value = cfg.get(spec.name, spec.default)
        try:
            typed[spec.name] = value  # type-checked and converted (e.g. "3" -> 3 for an int)
            ok = spec.metadata["check"](typed[spec.name])
        except (ValidationError, TypeError, AttributeError):
            ok = False
        if not ok:
            problems.append(f"{spec.name}={value!r} (expected {spec.metadata['expected']})")
    if not problems and schema is FinetuneSettings and typed.mixup > 0 and typed.batch_size % 2:
        problems.append(f"mixup needs an even batch_size, got batch_size={typed.batch_size}")
    text = cfg.get("model") is not None and cfg.model.get("text_encoder")
    if not problems and schema is FinetuneSettings and text:
        image_only = {"mixup": typed.mixup > 0, "randaug": typed.randaug is not None, "crop_scale": typed.crop_scale < 1}
        problems += [f"{k}={typed[k]!r} (expected {dict(mixup=0, randaug='null', crop_scale=1.0)[k]} for a text model: "
                     f"an image augmentation)" for k, used in image_only.items() if used]
    if cfg.get("model") is not None:
        problems += model_problems(cfg.model)
    if problems:
        raise ConfigError("bad config: " + "; ".join(problems))
    with open_dict(cfg):
        for spec in fields(schema):
            if spec.name in cfg:
                cfg[spec.name] = typed[spec.name]
