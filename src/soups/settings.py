"""Settings, checked before any work: the one way every plug-in is built and every entry point's own
settings are validated.

- Plug-ins (`method`, `pool`, `head`, `logger`, `data`, `analysis`, `statistics`) choose their code by
  `_target_` (a class path), as Hydra's instantiate does. `build` accepts a target only if it names a
  subclass of the group's base class defined inside the group's package, so a config cannot make the
  project import or run other code; the class is a dataclass deriving from `Settings`, whose int, float,
  bool and str fields are converted and checked on construction (`lr=abc` is a BadInput naming the field).
- The entry points' top-level settings (`device`, `lr`, `eval_batch_size`, ...) are typed schemas
  (`FinetuneSettings`, `SoupSettings`): `checked(cfg, schema)` names every problem in one ConfigError and
  returns the converted values without editing the config.

Before Hydra composes anything, soups.overrides checks the command line and the experiment files it chooses:
an unknown group option (`method=median`), a name nothing reads (`+lrr=1`, `+greedy_rule.tie=...`), an
experiment without `# @package _global_`, each one plain line.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ValidationError

from soups.errors import BadInput, nearest
from soups.runtime import PRECISIONS


def flat_config(node: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested dict (`{"model": {"image_size": 64}}` -> `{"model.image_size": 64}`;
    lists kept whole): how settings are compared and named in messages."""
    out = {}
    for key, value in node.items():
        out |= flat_config(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def class_in(path: str, package: str, base: type) -> type | None:
    """The class `path` names if it is a subclass of `base` defined in `package` (e.g. "soups.data"), else None."""
    prefix = package + "."
    if not str(path).startswith(prefix):
        return None
    try:
        found = get_object(str(path))  # e.g. soups.recipes.greedy.logging.os.system reaches os.system: refused below
    except Exception:  # noqa: BLE001 - not found: no such class
        return None
    home = isinstance(found, type) and (found.__module__ == package or found.__module__.startswith(prefix))
    ok = home and issubclass(found, base)
    return found if ok else None


def build(node, where: str, package: str, base: type):
    """The object config `node` describes: its `_target_` (and any nested one) must be a `base` class in
    `package`. Raises BadInput naming `where` (e.g. "head") for a refused target or a bad setting."""
    check_targets(where, node, package, base)
    if not OmegaConf.is_dict(node) or node.get("_target_") is None:
        raise BadInput(f"{where}: expected a config with _target_ (naming a {base.__name__} class in {package})")
    missing = [k for k in node if OmegaConf.is_missing(node, k)]
    if missing:  # `???` in the YAML: a setting the user must give
        raise BadInput(f"{where}: give {', '.join(f'{where}.{k}' for k in missing)} (required, no default)")
    cls = class_in(node._target_, package, base)
    if dataclasses.is_dataclass(cls):  # a key the class does not have is a typo, or another option's setting
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [k for k in node if k != "_target_" and k not in known]
        if unknown:
            raise BadInput(f"{where}: {', '.join(f'{where}.{k}' for k in unknown)} "
                           f"{'is not a setting' if len(unknown) == 1 else 'are not settings'} of "
                           f"{cls.__name__} (its settings: {', '.join(known) or 'none'}); misspelled, or set by an "
                           f"experiment written for another {where} (experiment=..., or ~experiment)")
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        raise BadInput(f"{where}: {err.__cause__ or err}") from err


def check_targets(where: str, node, package: str, base: type) -> None:
    """Every `_target_` at any depth of `node` must be a `base` class defined in `package` (where a new one
    goes), so a config cannot make instantiation run other code. Only that package's modules are imported."""
    if OmegaConf.is_dict(node):
        target = node.get("_target_")
        if target is not None and class_in(target, package, base) is None:
            folder = "src/" + package.replace(".", "/")
            article = "an" if base.__name__[0] in "AEIOU" else "a"
            raise BadInput(f"{where}._target_={target!r}: expected {article} {base.__name__} class in {package} "
                           f"(add new ones to {folder}/)")
        for key in node:  # a `???` value is no target (build names it as missing)
            if not OmegaConf.is_missing(node, key):
                check_targets(f"{where}.{key}", node[key], package, base)
    elif OmegaConf.is_list(node):
        for i, child in enumerate(node):
            check_targets(f"{where}[{i}]", child, package, base)


def _number(kind):
    def convert(value):
        if isinstance(value, bool):
            return None
        try:
            out = kind(value)
        except (TypeError, ValueError):
            return None
        return out if kind is float or out == float(value) else None  # 2.5 is no int
    return convert


SCALARS = {int: _number(int), float: _number(float), bool: lambda v: v if isinstance(v, bool) else None,
           str: lambda v: v if isinstance(v, str) else None}


class Settings:
    """Base of the dataclasses a config group builds (recipes, heads, loggers): fields typed int, float,
    bool or str (or one of them | None) are converted and checked on construction, so `lr=abc` is a
    BadInput naming the field; a dict field whose default names its keys (ImageNet's `held_out`) takes no
    other key (`held_out.idxs_fil` would be read by nothing). A subclass with its own __post_init__ calls
    super().__post_init__() first."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            kind, value = hints.get(spec.name), getattr(self, spec.name)
            named = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None
            if isinstance(named, dict) and named and isinstance(value, (dict, DictConfig)):
                extra = sorted(set(value) - set(named))
                if extra:
                    raise BadInput(f"{spec.name}.{extra[0]}: {spec.name} has no setting `{extra[0]}`, so nothing "
                                   f"would read it; {nearest(extra[0], named)}")
            optional = _optional_of(kind)
            if optional is not None:
                if value is None:
                    continue
                kind = optional
            if kind in SCALARS:
                converted = SCALARS[kind](value)
                if converted is None:
                    raise BadInput(f"{spec.name}={value!r}: expected {kind.__name__}")
                setattr(self, spec.name, converted)


def _optional_of(kind):
    """X for `X | None` / Optional[X], else None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0]
    return None



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
    wd_1d: bool = rule(lambda x: isinstance(x, bool), "true or false", False)
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
    ema_decay: Optional[float] = rule(lambda x: x is None or 0 < x < 1, "null (off) or a number in (0, 1), e.g. 0.999")
    ema_warmup: bool = rule(lambda x: isinstance(x, bool), "true or false", False)
    keep_checkpoints: int = rule(lambda x: x >= 0, "an integer >= 0 (0 = none)", 0)
    checkpoint_every_steps: Optional[int] = rule(lambda x: x is None or x >= 1, "null (epoch ends) or an integer >= 1")


@dataclass
class SoupSettings(CommonSettings):
    # null: the pool's own (its runs' eval_batch_size), so the soup measures like they did and reuses their logits
    eval_batch_size: Optional[int] = rule(lambda x: x is None or x >= 1, "null or an integer >= 1")
    bn_recalibration: Any = rule(lambda x: x == "auto" or isinstance(x, bool), "auto, true or false", "auto")


def model_problems(model_cfg) -> list[str]:
    """What is wrong with the model group's input settings (they size every evaluation set)."""
    if OmegaConf.is_dict(model_cfg) and OmegaConf.is_missing(model_cfg, "timm_name"):
        return ["model.timm_name is required for model=timm (a timm.create_model name, e.g. vit_base_patch16_224)"]
    if model_cfg.get("text_encoder") or model_cfg.get("tokenizer"):
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


def no_training_settings(cfg: DictConfig, job: str) -> None:
    """BadInput when a fine-tuning experiment (experiment=demo_vit) was composed into the config of `job`
    (src/soup.py, src/evaluate.py): its lr, epochs and search space would be silently ignored."""
    training = [k for k in ("lr", "epochs", "search_space") if k in cfg]
    if training:
        raise BadInput(f"the config has fine-tuning settings {training} (a fine-tuning experiment such as "
                       f"experiment=demo_vit?): those are for src/finetune.py; {job} works on the pool such a "
                       f"sweep made (the latest, or pool.dir=...)")


def checked(cfg: DictConfig, schema: type) -> DictConfig:
    """A copy of `cfg` with `schema`'s fields type-converted (a quoted "3e-5" becomes the float 3e-5); `cfg`
    itself is left as it was. Raises one ConfigError naming every field set to a wrong type or value."""
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
    text = cfg.get("model") is not None and (cfg.model.get("text_encoder") or cfg.model.get("tokenizer"))
    if not problems and schema is FinetuneSettings and text:
        image_only = {"mixup": typed.mixup > 0, "randaug": typed.randaug is not None, "crop_scale": typed.crop_scale < 1}
        problems += [f"{k}={typed[k]!r} (expected {dict(mixup=0, randaug='null', crop_scale=1.0)[k]} for a text model: "
                     f"an image augmentation)" for k, used in image_only.items() if used]
    if cfg.get("model") is not None:
        problems += model_problems(cfg.model)
    if "shifts" in cfg:  # the group that datasets replaced: it would be recorded, and silently not used
        problems.append(f"shifts={OmegaConf.to_container(cfg.shifts) if OmegaConf.is_config(cfg.shifts) else cfg.shifts!r} "
                        f"(expected none: a dataset brings its shifts, set them as data.shifts.names=[...])")
    if problems:
        raise ConfigError("bad config: " + "; ".join(problems))
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for spec in fields(schema):
            if spec.name in out:
                out[spec.name] = typed[spec.name]
    return out
