"""`pool=latest` (the default): ingredients from this project's run dirs. Sources: the most recent
finetune sweep, `pool.dir` (a sweep folder or a folder of run dirs), `pool.glob`, or `pool.runs` (a
list). Runs that did not finish are skipped and named (`load_pool`); every check runs before any
evaluation."""
from __future__ import annotations

import glob as globlib
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soups.errors import BadInput, MissingInput
from soups.io.files import digest_and_nonfinite, read_json, read_weights_header
from soups.pools.ingredient import Ingredient
from soups.models.classifier import architecture, build_classifier
from soups.models.hf import HFClassifier, exporter, hf_processor_dir
from soups.names import RUN_INFO_NAME, STATE_NAME, WEIGHTS_NAME
from soups.pools import OpenPool, Pool, refuse_unused_choice

log = logging.getLogger(__name__)


def latest_sweep(log_dir: str | Path) -> Path:
    root = Path(log_dir) / "finetune" / "multiruns"
    sweeps = sorted(p for p in root.glob("*") if p.is_dir() and any(p.glob(f"*/{RUN_INFO_NAME}")))
    if not sweeps:
        raise MissingInput(f"no finetune sweep with finished runs under {root}; run "
                           f"`python src/finetune.py -m ...` first, or point pool.dir at run dirs")
    return sweeps[-1]


def _run_dirs(folder: Path) -> list[Path]:
    """The run dirs in `folder`: finished ones (run.json) and unfinished ones, which the pool names as skipped."""
    if _is_run_dir(folder):
        return [folder]
    return sorted((p for p in folder.iterdir() if p.is_dir() and _is_run_dir(p)), key=_natural)


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (RUN_INFO_NAME, WEIGHTS_NAME, STATE_NAME, ".hydra"))


def _natural(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def resolve_run_dirs(pool_cfg, log_dir) -> list[Path]:
    chosen = [k for k in ("dir", "glob", "runs") if getattr(pool_cfg, k, None)]
    if len(chosen) > 1:
        raise BadInput(f"give one pool source, got {chosen}")
    if getattr(pool_cfg, "runs", None):
        if isinstance(pool_cfg.runs, str):
            raise BadInput(f"pool.runs={pool_cfg.runs!r}: expected a list of run dirs, e.g. pool.runs=[dir_a,dir_b]")
        dirs = [Path(p) for p in pool_cfg.runs]
    elif getattr(pool_cfg, "glob", None):
        dirs = [Path(p) for p in sorted(globlib.glob(pool_cfg.glob))]
    else:
        folder = Path(pool_cfg.dir) if getattr(pool_cfg, "dir", None) else latest_sweep(log_dir)
        if not folder.is_dir():
            raise MissingInput(f"pool.dir={folder} " + ("is a file, not a folder" if folder.exists() else "does not exist"))
        dirs = _run_dirs(folder)
    if not dirs:
        where = f"pool.{chosen[0]}={getattr(pool_cfg, chosen[0])}" if chosen else str(folder)
        raise BadInput(f"the pool is empty: no run dirs (folders holding {RUN_INFO_NAME} or {WEIGHTS_NAME}) in {where}")
    return dirs


def load_pool(pool_cfg, log_dir, verify_sha256: bool = True,
              ema: bool = False) -> tuple[list[Ingredient], dict[str, str]]:
    """(ingredients, {run dir: why it was skipped}). A run enters the pool only if it finished: run.json
    says so, its weights are readable and match their sha256. All ingredients must share keys, shapes,
    dtypes, architecture and init. `ema`: each run's EMA weights (finetune's ema_decay) instead of its final
    ones; a run that kept none is skipped and named."""
    ingredients, skipped = [], {}
    for run_dir in resolve_run_dirs(pool_cfg, log_dir):
        try:
            ingredients.append(_finished_run(run_dir, verify_sha256, ema))
        except Unusable as why:
            skipped[str(run_dir)] = str(why)
            log.warning("pool: skipped %s: %s", run_dir, why)
    if not ingredients:
        reasons = "".join(f"\n  {d}: {why}" for d, why in skipped.items())
        raise BadInput(f"the pool is empty: no finished runs among {len(skipped)} run dirs:{reasons}")
    first = ingredients[0]
    for other in ingredients[1:]:
        _check_compatible(first, other)
    return ingredients, skipped


class Unusable(Exception):
    """Why a run dir cannot be an ingredient."""


# What the soup job reads from every ingredient's run.json (the run describes itself)
REQUIRED = ("config.model", "config.data.num_classes", "init.sha256")


def _lookup(info: dict, dotted: str):
    for part in dotted.split("."):
        info = info.get(part) if isinstance(info, dict) else None
    return info


def _ema_of(ingredient: Ingredient) -> Ingredient:
    """The run's EMA weights as the ingredient: its own file and sha256; the final weights' metrics dropped (the
    soup job measures the EMA's)."""
    ema = ingredient.info.get("ema")
    if not ema:
        raise Unusable("kept no EMA of its weights (pool.ema=true needs runs fine-tuned with ema_decay, e.g. 0.999)")
    info = {k: v for k, v in ingredient.info.items() if k not in ("metrics", "evaluation_key", "adapter", "format")}
    info |= {"sha256": ema["sha256"], "weights_of": "ema"}
    run_dir = ingredient.run_dir
    return Ingredient(f"{ingredient.name}/ema", run_dir / ema["weights"], info, run_dir,
                      short_name=f"{ingredient.label} (EMA)")


def _finished_run(run_dir: Path, verify_sha256: bool, ema: bool = False) -> Ingredient:
    if not run_dir.is_dir():
        raise Unusable("no such directory")
    if not (run_dir / RUN_INFO_NAME).is_file():
        raise Unusable(f"unfinished: no {RUN_INFO_NAME} (still running, or killed: relaunching its sweep resumes it)")
    try:
        info = read_json(run_dir / RUN_INFO_NAME)
    except ValueError as err:
        raise Unusable(str(err)) from err
    if not isinstance(info, dict):
        raise Unusable(f"{RUN_INFO_NAME} holds a JSON {type(info).__name__}, not a run's record")
    if info.get("status", "finished") != "finished":
        raise Unusable(f"{info.get('status')}: {info.get('failure', 'no reason recorded')}")
    missing = [k for k in REQUIRED if _lookup(info, k) is None]
    if not missing and architecture(info["config"]["model"]) == "unknown":
        missing = ["config.model.open_clip_name (or timm_name, text_encoder)"]
    if missing:
        raise Unusable(f"{RUN_INFO_NAME} lacks {missing}: not a record this project wrote, or damaged")
    ingredient = Ingredient.from_run_dir(run_dir, info)
    if (run_dir / "adapter" / "adapter_config.json").is_file():  # lora=default: its factors, for lora_factor_mean
        info |= {"format": "lora", "adapter": str(run_dir / "adapter")}
    if ema:
        ingredient = _ema_of(ingredient)
        info = ingredient.info
    try:
        ingredient.header = read_weights_header(ingredient.weights)
    except (FileNotFoundError, ValueError) as err:
        raise Unusable(str(err)) from err
    try:
        digest, bad = digest_and_nonfinite(ingredient.weights)  # one read of the file for both checks
    except ValueError as err:
        raise Unusable(str(err)) from err
    if verify_sha256 and info.get("sha256") and digest != info["sha256"]:
        raise Unusable(f"{ingredient.weights.name} does not match the sha256 in its {RUN_INFO_NAME}: "
                       f"truncated or modified after the run finished")
    if not info.get("sha256"):  # no recorded digest: this one keys the evaluation cache (scorer.digest)
        info["source_sha256"] = digest
    if bad:  # one NaN ingredient turns every average it enters into NaN
        raise Unusable(f"{len(bad)} tensors of {ingredient.weights.name} hold NaN or inf (e.g. {bad[:3]})")
    return ingredient


# What changes what a model computes or sees: members must agree on it (channels_last does not matter,
# the pretrained weights are covered by the shared init's sha256)
PREPROCESSING = ("image_size", "mean", "std", "normalize_features", "pooling", "max_length", "encoder_config")


def _check_compatible(a: Ingredient, b: Ingredient) -> None:
    model_a, model_b = a.info["config"]["model"], b.info["config"]["model"]
    if architecture(model_a) != architecture(model_b):
        raise BadInput(f"mixed architectures in the pool: {a.name} is {architecture(model_a)}, "
                       f"{b.name} is {architecture(model_b)}")
    differ = {k: (model_a.get(k), model_b.get(k)) for k in PREPROCESSING if model_a.get(k) != model_b.get(k)}
    if differ:
        named = ", ".join(f"model.{k}: {x!r} vs {y!r}" for k, (x, y) in differ.items())
        raise BadInput(f"{a.name} and {b.name} were fine-tuned with different preprocessing ({named}); a soup "
                       f"is evaluated under one setting, so its members must share it")
    if a.header.keys() != b.header.keys():
        diff = sorted(set(a.header) ^ set(b.header))
        raise BadInput(f"{a.name} and {b.name} have different tensors, e.g. {diff[:3]}")
    shapes = [k for k in a.header if a.header[k] != b.header[k]]
    if shapes:
        raise BadInput(f"{a.name} and {b.name} differ in shape/dtype at {shapes[:3]}")
    init_a, init_b = a.info.get("init", {}).get("sha256"), b.info.get("init", {}).get("sha256")
    if init_a != init_b:
        raise BadInput(f"{a.name} and {b.name} were fine-tuned from different initializations; "
                       f"soups average fine-tunes of one shared init")


def run_config(config: dict) -> dict:
    """A run's recorded config as this version reads it: runs recorded while shifts were a config group of their
    own (`config.shifts` beside `config.data`) get them inside `data`, where a dataset carries them now. Their
    evaluation key is unchanged (soups.evaluation.cache.config_parts), so their recorded metrics still count."""
    if "shifts" in config and "shifts" not in (config.get("data") or {}):
        config = {k: v for k, v in config.items() if k != "shifts"} | {"data": {**config["data"], "shifts": config["shifts"]}}
    return config


@dataclass
class RunDirs(Pool):
    dir: str | None = None   # a sweep folder or a folder of run dirs
    glob: str | None = None  # e.g. 'logs/finetune/multiruns/*/[0-3]'
    runs: list | None = None  # run dirs
    verify_sha256: bool = True
    ema: bool = False  # each run's EMA weights (finetune's ema_decay) instead of its final ones

    def check_choices(self, cfg) -> None:
        for run_dir in resolve_run_dirs(self, cfg.paths.log_dir):  # the first run that describes itself
            if (run_dir / RUN_INFO_NAME).is_file():
                _refuse_unused(cfg, read_json(run_dir / RUN_INFO_NAME))
                return

    def open(self, cfg, device) -> OpenPool:
        ingredients, skipped = load_pool(self, cfg.paths.log_dir, self.verify_sha256, self.ema)
        first = ingredients[0].info
        run_cfg = _refuse_unused(cfg, first)
        model = build_classifier(run_cfg.model, run_cfg.data.num_classes, load_pretrained=False).to(device)
        init_dir = first["init"].get("dir")
        export = exporter(model, hf_processor_dir(run_cfg.model)) if isinstance(model, HFClassifier) else None
        return OpenPool(ingredients, run_cfg, model, ingredients[0].run_dir.parent.name, skipped,
                        Path(init_dir) / WEIGHTS_NAME if init_dir else None, export=export)


def _refuse_unused(cfg, info: dict) -> DictConfig:
    """The run's recorded config; BadInput where the command line chose another model or dataset (the pool
    takes both from the runs)."""
    run_cfg = OmegaConf.create(run_config(info["config"]))
    for key in ("model", "data"):
        refuse_unused_choice(cfg, key, "latest", run_cfg[key], "their run.json")
    return run_cfg
