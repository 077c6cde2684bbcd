"""A pool of ingredients: fine-tuned weights that share one architecture and one initialization.

Sources: the most recent finetune sweep (default), `pool.dir` (a sweep folder or a folder of run
dirs), `pool.glob`, `pool.runs` (a list), or `pool.release` (the paper's released checkpoints, see
soups/release.py). Every check runs before any evaluation.
"""
from __future__ import annotations

import glob as globlib
from dataclasses import dataclass, field
from pathlib import Path

from soups.io import RUN_INFO_NAME, WEIGHTS_NAME, read_json, read_weights_header, sha256_file


@dataclass
class Ingredient:
    """One set of fine-tuned weights. `info` holds at least `metrics` once evaluated (a run's run.json)."""
    name: str
    weights: Path
    info: dict = field(repr=False)
    run_dir: Path | None = None
    header: dict = field(default_factory=dict, repr=False)  # {key: (shape, dtype)} of the weights

    @classmethod
    def from_run_dir(cls, run_dir: Path, info: dict) -> "Ingredient":
        return cls(f"{run_dir.parent.name}/{run_dir.name}", run_dir / WEIGHTS_NAME, info, run_dir)

    @property
    def source(self) -> Path:
        """Where the user's copy lives: the run dir, or the original file a checkpoint was converted from."""
        return self.run_dir or Path(self.info.get("source", self.weights))

    @property
    def held_out(self) -> float:
        return float(self.info["metrics"]["val"])


def latest_sweep(log_dir: str | Path) -> Path:
    root = Path(log_dir) / "finetune" / "multiruns"
    sweeps = sorted(p for p in root.glob("*") if p.is_dir() and any(p.glob(f"*/{RUN_INFO_NAME}")))
    if not sweeps:
        raise FileNotFoundError(f"no finetune sweep with finished runs under {root}; run "
                                f"`python src/finetune.py -m ...` first, or point pool.dir at run dirs")
    return sweeps[-1]


def _run_dirs(folder: Path) -> list[Path]:
    if (folder / RUN_INFO_NAME).is_file():
        return [folder]
    return sorted((p.parent for p in folder.glob(f"*/{RUN_INFO_NAME}")), key=_natural)


def _natural(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def resolve_run_dirs(pool_cfg, log_dir) -> list[Path]:
    chosen = [k for k in ("dir", "glob", "runs") if pool_cfg.get(k)]
    if len(chosen) > 1:
        raise ValueError(f"give one pool source, got {chosen}")
    if pool_cfg.get("runs"):
        dirs = [Path(p) for p in pool_cfg.runs]
    elif pool_cfg.get("glob"):
        dirs = [Path(p) for p in sorted(globlib.glob(pool_cfg.glob))]
    else:
        folder = Path(pool_cfg.dir) if pool_cfg.get("dir") else latest_sweep(log_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"pool.dir={folder} does not exist")
        dirs = _run_dirs(folder)
    if not dirs:
        raise ValueError(f"the pool is empty: no run dirs (with {RUN_INFO_NAME}) found for {dict(pool_cfg)}")
    return dirs


def load_pool(pool_cfg, log_dir, verify_sha256: bool = True) -> list[Ingredient]:
    """Ingredients after checking that each is complete and that all share keys, shapes and init."""
    ingredients = []
    for run_dir in resolve_run_dirs(pool_cfg, log_dir):
        info = read_json(run_dir / RUN_INFO_NAME)
        ingredient = Ingredient.from_run_dir(run_dir, info)
        header = read_weights_header(ingredient.weights)
        if verify_sha256 and info.get("sha256") and sha256_file(ingredient.weights) != info["sha256"]:
            raise ValueError(f"{ingredient.weights} does not match the sha256 in its run.json: "
                             f"truncated or modified after the run finished")
        ingredient.header = header
        ingredients.append(ingredient)
    first = ingredients[0]
    for other in ingredients[1:]:
        _check_compatible(first, other)
    return ingredients


def _check_compatible(a: Ingredient, b: Ingredient) -> None:
    model_a, model_b = a.info["config"]["model"]["open_clip_name"], b.info["config"]["model"]["open_clip_name"]
    if model_a != model_b:
        raise ValueError(f"mixed architectures in the pool: {a.name} is {model_a}, {b.name} is {model_b}")
    if a.header.keys() != b.header.keys():
        diff = sorted(set(a.header) ^ set(b.header))
        raise ValueError(f"{a.name} and {b.name} have different tensors, e.g. {diff[:3]}")
    shapes = [k for k in a.header if a.header[k] != b.header[k]]
    if shapes:
        raise ValueError(f"{a.name} and {b.name} differ in shape/dtype at {shapes[:3]}")
    init_a, init_b = a.info.get("init", {}).get("sha256"), b.info.get("init", {}).get("sha256")
    if init_a != init_b:
        raise ValueError(f"{a.name} and {b.name} were fine-tuned from different initializations; "
                         f"soups average fine-tunes of one shared init")
