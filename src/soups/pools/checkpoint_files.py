"""`pool=files`: fine-tunes made with other tools, as checkpoint files (soups/io/foreign.py reads them):

    python src/soup.py pool=files "pool.glob='ckpts/*.pt'" model=vit_b32 data=imagenet
    python src/soup.py pool=files "pool.glob='output/train/*/model_best.pth.tar'" model=timm \
        model.timm_name=vit_small_patch16_224 data=imagenet

Each file becomes the configured model's weights (`visual.*` + `head.*` for an open_clip model, timm's own
keys for model=timm), converted once into paths.cache_dir/foreign as safetensors and cached by digest, so
it is evaluated once like a released checkpoint. An open_clip checkpoint of a whole CLIP has no
classification head: the zero-shot head is built from the ingredient's own text tower
(`text_tower: own`) or from the pretrained model's (`pretrained`), or `head_file` gives one. Every file is
read and checked (format, architecture, keys, shapes, finite) before the first evaluation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from omegaconf import OmegaConf

from soups.errors import BadInput
from soups.io.checkpoints import misfit
from soups.io.files import atomic_save_safetensors, load_weights, nonfinite_tensors, sha256_file, state_digest, write_json
from soups.io.foreign import FORMATS, read_checkpoint
from soups.pools.ingredient import Ingredient
from soups.models.classifier import (ImageClassifier, build_classifier, create_clip, resolve_timm_preprocessing,
                                    text_tower_clip)
from soups.pools import OpenPool, Pool, matched

log = logging.getLogger(__name__)
TEXT_TOWERS = ("own", "pretrained")


@dataclass
class Files(Pool):
    glob: str                    # the checkpoint files, e.g. 'ckpts/*.pt' (sorted by name)
    format: str = "auto"         # auto | open_clip | timm | safetensors (soups/io/foreign.py)
    ema: bool = False            # timm: take state_dict_ema
    init: str | None = None      # the shared init's file (pretrained / zero-shot / LP model), for WiSE-FT,
                                 # Model Stock and the analyses; also evaluated as the table's first row
    text_tower: str = "own"      # whole-CLIP checkpoints: zero-shot head from the ingredient's own text tower or the pretrained one
    head_file: str | None = None  # a head (safetensors: head.weight, head.bias) for checkpoints without one
    classnames: str | list = "imagenet"  # zero-shot head: imagenet, or a list of class names
    templates: str | list = "openai"     # openai | simple, or a list of templates with {}
    logit_scale: float = 100.0

    def open(self, cfg, device) -> OpenPool:
        missing = [k for k in ("model", "data") if not cfg.get(k)]
        if missing:
            raise BadInput(f"pool=files needs {missing}: say which model the checkpoints are and where to evaluate "
                           f"them, e.g. model=vit_b32 data=imagenet")
        if self.format not in FORMATS or self.text_tower not in TEXT_TOWERS:
            raise BadInput(f"pool.format={self.format!r} (expected {'|'.join(FORMATS)}), pool.text_tower="
                           f"{self.text_tower!r} (expected {'|'.join(TEXT_TOWERS)})")
        paths = matched(self.glob)
        if not paths:
            raise BadInput(f"pool.glob={self.glob!r} matches no files")
        folders = [str(p) for p in paths if not p.is_file()]
        if folders:
            raise BadInput(f"pool.glob={self.glob!r} matches folders ({folders[:3]}): name the checkpoint files, "
                           f"e.g. 'output/train/*/model_best.pth.tar'")
        for setting, value in (("init", self.init), ("head_file", self.head_file)):
            if value and not Path(value).expanduser().is_file():
                raise BadInput(f"pool.{setting}={value}: no such file")
        run_cfg = OmegaConf.create({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")})
        model = build_classifier(run_cfg.model, run_cfg.data.num_classes, load_pretrained=False)
        if run_cfg.model.get("timm_name"):  # preprocessing from timm's data config where the model config leaves it
            run_cfg.model = OmegaConf.merge(run_cfg.model, resolve_timm_preprocessing(run_cfg.model, model))
        converter = _Converter(self, run_cfg, model, Path(cfg.paths.cache_dir) / "foreign")
        init_path = Path(self.init).expanduser().resolve() if self.init else None
        ingredients = [converter(p) for p in paths if p.resolve() != init_path]  # the init is not an ingredient
        if not ingredients:
            raise BadInput(f"pool.glob={self.glob!r} matches only the init ({self.init})")
        formats = {i.info["format"] for i in ingredients}
        if len(formats) > 1:
            raise BadInput(f"mixed checkpoint formats in pool.glob: {sorted(formats)}; soup one kind at a time")
        refuse_duplicates(ingredients)
        init = converter(init_path, init=True) if init_path else None
        for ingredient, name in zip(ingredients, display_names([i.source for i in ingredients])):
            ingredient.name = name
        log.info("pool=files: %d ingredients (%s)%s", len(ingredients), converter.summary(ingredients),
                 f", init {init_path}" if init else "")
        folder = Path(os.path.commonpath([p.absolute() for p in paths]))
        return OpenPool(ingredients, run_cfg, model.to(device), (folder if folder.is_dir() else folder.parent).name,
                        {}, init.weights if init else None, init)


def refuse_duplicates(ingredients: list[Ingredient]) -> None:
    """The same weights twice (a copy, a link, or one model saved in two containers: a bare state dict and
    {"state_dict": ..., "epoch": 1}) would weigh double in every average: refused, both named. Compared by the
    converted weights' digest where the pool records it, else by the file's sha256."""
    seen: dict[str, Path] = {}
    for ingredient in ingredients:
        digest = ingredient.info.get("weights_digest") or ingredient.info["source_sha256"]
        if digest in seen:
            raise BadInput(f"{seen[digest]} and {ingredient.source} are the same checkpoint (equal weights): it would "
                           f"count twice in every soup; narrow pool.glob")
        seen[digest] = ingredient.source


def display_names(paths: list[Path]) -> list[str]:
    """File names, or where they repeat (epoch_2.pt of several runs) their paths from the common folder
    without the folders every path shares (run0/epoch_2.pt for run0/checkpoints/epoch_2.pt)."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([p.absolute() for p in paths]))
    parts = [p.absolute().relative_to(common).parts for p in paths]
    shared = {(j, c) for j, c in enumerate(parts[0][:-1]) if all(len(x) == len(parts[0]) and x[j] == c for x in parts)}
    return ["/".join(c for j, c in enumerate(x[:-1]) if (j, c) not in shared) + "/" + x[-1] for x in parts]


class _Converter:
    """Checkpoint file -> the configured model's weights (safetensors in the cache), one file at a time."""

    def __init__(self, pool: Files, run_cfg, model: torch.nn.Module, out_dir: Path):
        self.pool, self.run_cfg, self.out_dir = pool, run_cfg, out_dir
        self.expected = {k: v.shape for k, v in model.state_dict().items()}
        self.open_clip = isinstance(model, ImageClassifier)
        self._text_clip = None
        self.key = self.settings()  # the same for every file of the pool

    @staticmethod
    def summary(ingredients: list[Ingredient]) -> str:
        formats = [i.info["format"] for i in ingredients]
        return ", ".join(f"{formats.count(f)} {f}" for f in sorted(set(formats)))

    def settings(self) -> str:
        pool = self.pool
        key = {"model": OmegaConf.to_container(self.run_cfg.model), "classes": int(self.run_cfg.data.num_classes),
               "ema": pool.ema, "text_tower": pool.text_tower, "classnames": pool.classnames,
               "templates": pool.templates, "logit_scale": pool.logit_scale,
               "head_file": sha256_file(Path(pool.head_file).expanduser()) if pool.head_file and self.open_clip else None}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __call__(self, path: Path, init: bool = False) -> Ingredient:
        """The converted ingredient (or, `init`, the shared init: its EMA weights where the file has them, else
        its weights, e.g. a bare pretrained state dict, as timm's train.py loads `--initial-checkpoint`:
        `create_model(checkpoint_path=...)` → `load_checkpoint(use_ema=True)`)."""
        digest = sha256_file(path)
        role = "-init" if init else ""  # its EMA only where it has one: another conversion than an ingredient's
        out = self.out_dir / f"{path.stem.split('.')[0]}-{digest[:16]}-{self.key}{role}.safetensors"
        record_file = out.with_suffix(".json")
        if out.is_file() and record_file.is_file():
            record = json.loads(record_file.read_text())
            if not record.get("sha256"):  # the converted file's digest keys the evaluation cache
                record["sha256"] = sha256_file(out)
            if self.pool.format not in ("auto", record["format"]):  # as a first conversion would refuse it
                raise BadInput(f"{path} is a {record['format']} checkpoint, not pool.format={self.pool.format}")
        else:
            state, record = read_checkpoint(path, self.pool.format, None if init else bool(self.pool.ema))
            if init and record.get("state_dict") == "state_dict_ema":
                log.info("pool.init %s: its EMA weights (state_dict_ema), the weights timm's train.py starts from "
                         "when given it as --initial-checkpoint", path)
            if self.pool.format == "auto":
                log.info("%s: detected format %s%s", path, record["format"],
                         f", stripped {record['stripped_prefixes']}" if record["stripped_prefixes"] else "")
            state, record["head"] = self.to_model(state, path)
            bad = nonfinite_tensors(state)
            if bad:  # one NaN ingredient turns every average it enters into NaN
                raise BadInput(f"{path}: {len(bad)} tensors hold NaN or inf (e.g. {bad[:3]}); it cannot be souped")
            atomic_save_safetensors(state, out, metadata={"kind": "foreign", "source": path.name, "source_sha256": digest})
            record["sha256"] = sha256_file(out)  # keys the evaluation cache; measured once, at conversion
            record["weights_digest"] = state_digest(state)  # the same weights in another container: one identity
            write_json(record, record_file)
        if "weights_digest" not in record:  # converted by an older version
            record["weights_digest"] = state_digest(load_weights(out))
        if self.pool.head_file and record.get("head") == "checkpoint":
            raise BadInput(f"pool.head_file={self.pool.head_file} would not be used: {path} holds its own head "
                           f"(head.weight, head.bias); drop pool.head_file, or give checkpoints without one")
        info = {**record, "source": str(path), "source_sha256": digest, "hparams": record.get("hparams", {})}
        return Ingredient(path.name, out, info)

    def to_model(self, state: dict, path: Path) -> tuple[dict, str]:
        """(the model's state dict, where its head came from). Raises BadInput when the tensors do not fit."""
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        if self.open_clip and not any(k.startswith("head.") for k in state) and any(k.startswith("visual.") for k in state):
            state, head = self.with_head(state, path)
        else:
            head = "checkpoint"
        for key in self.expected:  # older torchvision and converted files lack it; torch loads them with 0
            if key.endswith(".num_batches_tracked") and key not in state:
                state[key] = torch.tensor(0, dtype=torch.long)
        wrong = misfit(state, self.expected)
        if wrong:
            raise BadInput(f"{path} does not fit model={self.run_cfg.model.get('name')} with "
                           f"{self.run_cfg.data.num_classes} classes at model.image_size={self.run_cfg.model.get('image_size')} "
                           f"(another architecture, dataset or image size?): {wrong}")
        return state, head

    def with_head(self, clip_state: dict, path: Path) -> tuple[dict, str]:
        """A whole CLIP's image tower + a classification head: `head_file`, or the zero-shot head of the
        ingredient's own text tower or of the pretrained model's."""
        tower = {k: v for k, v in clip_state.items() if k.startswith("visual.")}
        if self.pool.head_file:
            return tower | self.given_head(), f"head_file {self.pool.head_file}"
        from soups.models.zero_shot import zero_shot_head, zero_shot_prompts

        if self.pool.text_tower == "own":
            clip = create_clip(self.run_cfg.model, load_pretrained=False)
            wrong = misfit(clip_state, {k: v.shape for k, v in clip.state_dict().items()})  # before load_state_dict's trace
            if wrong:
                raise BadInput(f"{path} is not a whole {self.run_cfg.model.open_clip_name} CLIP at model.image_size="
                               f"{self.run_cfg.model.get('image_size')} (pool.text_tower=own builds the zero-shot head "
                               f"from its text tower): {wrong}; or give pool.head_file")
            clip.load_state_dict(clip_state)
        else:
            if not self.run_cfg.model.get("pretrained"):
                raise BadInput("pool.text_tower=pretrained needs model.pretrained (the open_clip weights whose text "
                               "tower builds the zero-shot head)")
            if self._text_clip is None:
                self._text_clip = text_tower_clip(self.run_cfg.model)
            clip = self._text_clip
        classnames, templates = zero_shot_prompts(self.pool)
        if len(classnames) != int(self.run_cfg.data.num_classes):
            raise BadInput(f"pool.classnames: {len(classnames)} names for {self.run_cfg.data.num_classes} classes")
        weight, bias = zero_shot_head(clip, open_clip.get_tokenizer(self.run_cfg.model.open_clip_name), classnames,
                                      templates, self.pool.logit_scale, torch.device("cpu"))
        return tower | {"head.weight": weight, "head.bias": bias}, f"zero-shot ({self.pool.text_tower} text tower)"

    def given_head(self) -> dict:
        """`head_file`'s weight and bias (keys `weight`, `bias` or `head.weight`, `head.bias`), shape-checked."""
        path = Path(self.pool.head_file).expanduser()
        head = {k.removeprefix("head."): v.float() for k, v in load_weights(path).items()}
        expected = {k.removeprefix("head."): s for k, s in self.expected.items() if k.startswith("head.")}
        shapes = {k: tuple(v.shape) for k, v in head.items()}
        if shapes != {k: tuple(s) for k, s in expected.items()}:
            raise BadInput(f"pool.head_file={path} holds {shapes}; expected exactly weight and bias of shapes "
                           f"{ {k: tuple(s) for k, s in expected.items()} } (classes x features, classes)")
        return {f"head.{k}": v for k, v in head.items()}
