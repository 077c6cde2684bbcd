"""A pool of ingredients: fine-tuned weights that share one architecture and one initialization, opened
and checked before any evaluation. Where they come from is the `pool` config (`_target_`): run dirs of
this project (run_dirs.py, `pool=latest`), the paper's released checkpoints (release.py,
`pool=paper_vit_b32`) or other tools' checkpoint files (checkpoint_files.py, `pool=files`). Add a source: one file here with a `Pool` subclass + one YAML."""
from __future__ import annotations

import glob as globlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from soups.errors import BadInput
from soups.io.files import sha256_file
from soups.pools.ingredient import Ingredient
from soups.runtime import environment
from soups.settings import Settings, build, flat_config


@dataclass
class OpenPool:
    """A pool opened and checked: its ingredients, how they were made, and where their init is."""
    ingredients: list[Ingredient]
    run_cfg: DictConfig  # model, data, shifts: how the ingredients were fine-tuned and are evaluated
    model: torch.nn.Module  # a model of their architecture, to load weights into
    name: str
    skipped: dict[str, str]  # run dir -> why it is not an ingredient
    init_weights: Path | None  # the shared initialization's weights file, where the records name it
    release_init: Ingredient | None = None  # an init given as a file (released model_0, pool.init): evaluated like one
    # writes a soup's weights in the ingredients' own format into its folder (transformers: <soup>/hf/); returns
    # the folders it wrote. None: the soup's own weights file is the format.
    export: Callable[[dict, Path], list[Path]] | None = field(default=None, repr=False)

    def template(self) -> dict:
        """What every soup's run.json repeats: the init (with its metrics: call after they are measured;
        None where the pool names no init), the config, the environment."""
        init = self.release_init
        if init is None and "init" in self.ingredients[0].info:  # run dirs: their run.json records it
            first = self.ingredients[0].info
            return {"init": first["init"], "config": first["config"], "environment": environment()}
        described = {"name": None, "metrics": None} if init is None else \
            {"name": init.name, "sha256": sha256_file(init.weights), "metrics": init.info["metrics"]}
        return {"init": described, "config": OmegaConf.to_container(self.run_cfg), "environment": environment()}


class Pool(Settings, ABC):
    """Base of every pool source: a dataclass whose fields are the pool config's settings."""

    @abstractmethod
    def open(self, cfg, device: torch.device) -> OpenPool:
        """The ingredients checked (weights readable, finite, one architecture and init), a model of their
        architecture on `device`, and how they were made; `cfg` is the soup or analysis config."""

    def check_choices(self, cfg) -> None:
        """What `open` refuses about the command line's model=/data= choices, checked without reading any
        weights (src/evaluate.py -m checks it before submitting jobs). Default: nothing to check."""


def matched(pattern: str) -> list[Path]:
    """The paths a pool's `glob` matches (`~` expanded, `**` recursive), sorted by name."""
    return [Path(p) for p in sorted(globlib.glob(str(Path(pattern).expanduser()), recursive=True))]


def needed_data(cfg, pool: str):
    """The `data` config of a pool whose ingredients do not describe their dataset. Raises BadInput without one."""
    if not cfg.get("data"):
        raise BadInput(f"pool={pool} needs data=...: where to evaluate its ingredients (e.g. data=sentiment, data=mnist)")
    return cfg.data


def refuse_unused_choice(cfg, key: str, pool: str, described, source: str) -> None:
    """BadInput where the command line chose a `key` (model or data) that differs from the one the ingredients
    describe (`described`: that config, read from `source`) by name or by any setting both have: this pool
    takes it from them, so the choice would be unused and the table silently another model's or dataset's
    (or the same dataset under settings it was not measured with). Exactly the ingredients' own passes."""
    given = cfg.get(key)
    if given is None:
        return
    name, own = given.get("name"), described.get("name")
    if key == "model" and name == "hf" and str(own).startswith("hf:"):
        return
    if name == own:
        theirs = flat_config(OmegaConf.to_container(described, resolve=True))
        differ = []
        for k, raw in flat_config(OmegaConf.to_container(given, resolve=False)).items():
            if raw == "???" or k not in theirs:  # unset here, or a setting older runs did not record
                continue
            value = OmegaConf.select(given, k)  # interpolations resolved against the whole config
            if value != theirs[k]:
                differ.append(f"{key}.{k}={value} (theirs: {theirs[k]})")
        if not differ:
            return
        raise BadInput(f"{key}={name} with {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}: pool={pool} "
                       f"takes the {key} and its settings from the ingredients ({source}), so these would not be used. "
                       f"Drop {key}= and its settings, or evaluate other checkpoints with pool=files")
    raise BadInput(f"{key}={name}, but this pool's ingredients were made with {key}={own} ({source}): pool={pool} "
                   f"takes the {key} from them, so {key}={name} would not be used. Drop {key}=, or evaluate other "
                   f"checkpoints with pool=files")


def open_pool(cfg, device) -> OpenPool:
    """The pool the `pool` config names (BadInput for another target or a bad setting), opened. Its
    ingredients keep their short names (`fine-tune 6`) only where those are unique in the pool and its run dirs
    come from one folder (one sweep): runs of several sweeps are named `<sweep>/<job>`."""
    pool = build(cfg.pool, "pool", "soups.pools", Pool).open(cfg, device)
    labels = [i.label for i in pool.ingredients]
    folders = {i.run_dir.resolve().parent for i in pool.ingredients if i.run_dir is not None}
    if len(set(labels)) < len(labels) or len(folders) > 1:  # e.g. `fine-tune 0` of sweep A beside sweep B's
        for ingredient in pool.ingredients:
            ingredient.short_name = None
    return pool
