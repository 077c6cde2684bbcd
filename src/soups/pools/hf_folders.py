"""`pool=hf`: fine-tunes made with Hugging Face transformers, as model folders (soups.models.hf):

    python src/soup.py pool=hf "pool.glob='out/checkpoint-*'" data=sentiment
    python src/soup.py pool=hf "pool.glob='runs/*/final'" pool.init=base_classifier data=mnist

Each folder (config.json + model.safetensors: `save_pretrained`, the Trainer's `checkpoint-N/`) is loaded with
transformers' own loader, converted once into paths.cache_dir/hf as safetensors keyed by its digest, and
evaluated with its own tokenizer or image processor on `data`. The folders must agree on the architecture,
`num_labels` and `id2label`, and the labels on the dataset's classes: any difference is named before any
work. A soup is also written back as a folder that `from_pretrained` loads (`<soup>/hf/`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from soups.data import TaskData
from soups.errors import BadInput
from soups.io.files import atomic_save_safetensors, nonfinite_tensors, sha256_file, state_digest, write_json
from soups.models.classifier import build_classifier
from soups.models.hf import architecture_of, exporter, has_tokenizer, load_folder, model_cfg_for, modality_of, \
    read_config, vocabulary, wrapped_state
from soups.pools import OpenPool, Pool, matched, needed_data, refuse_unused_choice
from soups.pools.checkpoint_files import display_names, refuse_duplicates
from soups.pools.ingredient import Ingredient
from soups.settings import build

log = logging.getLogger(__name__)


@dataclass
class HFFolders(Pool):
    glob: str                     # the model folders, e.g. 'out/checkpoint-*' (sorted by name)
    init: str | None = None       # the shared init's folder, for WiSE-FT, Model Stock and the analyses
    max_length: int | None = None  # text: tokens per sentence (longer ones cut); None: the folder's own
    tokenizer: str | None = None  # text: a folder with the tokenizer, where the model folders hold none

    def __post_init__(self):
        super().__post_init__()
        check_max_length(self.max_length)

    def check_choices(self, cfg) -> None:
        self._described(cfg)

    def _described(self, cfg):
        """(folders, init folder, data, tokenizer folder, run_cfg): the folders' config.json files read and
        checked, before any weights; BadInput where the command line chose another model."""
        data_node = needed_data(cfg, "hf")
        folders = self.folders()
        init_dir = folder_setting(self.init, "init", "the shared init's transformers folder") if self.init else None
        configs = {f: read_config(f) for f in folders + ([init_dir] if init_dir else [])}
        agree(configs)
        data = build(data_node, "data", "soups.data", TaskData)
        first = configs[folders[0]]
        check_labels(first, data.num_classes, data.class_names, data.name)
        tokenizer_dir = find_tokenizer(list(configs), modality_of(first, folders[0]), self.tokenizer)
        model_cfg = model_cfg_for(folders[0], first, self.max_length, tokenizer_dir)
        run_cfg = OmegaConf.create({"model": model_cfg, "data": OmegaConf.to_container(data_node, resolve=True)})
        refuse_unused_choice(cfg, "model", "hf", run_cfg.model, "their config.json")
        return folders, init_dir, data, tokenizer_dir, run_cfg

    def open(self, cfg, device) -> OpenPool:
        folders, init_dir, data, tokenizer_dir, run_cfg = self._described(cfg)
        model_cfg = run_cfg.model
        model = build_classifier(run_cfg.model, data.num_classes, load_pretrained=False)
        out_dir = Path(cfg.paths.cache_dir) / "hf"
        ingredients = [convert(f, out_dir) for f in folders]
        refuse_duplicates(ingredients)
        for ingredient, name in zip(ingredients, display_names(folders)):
            ingredient.name = name
        init = convert(init_dir, out_dir) if init_dir else None
        common = Path(os.path.commonpath([f.absolute() for f in folders]))
        log.info("pool=hf: %d %s folders (%s)%s", len(ingredients), model_cfg["name"], model_cfg["hf_classifier"],
                 f", init {init_dir}" if init else "")
        return OpenPool(ingredients, run_cfg, model.to(device), common.name, {}, init.weights if init else None,
                        init, export=exporter(model, tokenizer_dir or folders[0]))

    def folders(self) -> list[Path]:
        """The folders `glob` matches, sorted; the init's folder is not an ingredient."""
        init = Path(self.init).expanduser().resolve() if self.init else None
        folders = [p for p in matched_folders(self.glob, "model folders (each with config.json and "
                                              "model.safetensors), e.g. 'out/checkpoint-*'") if p.resolve() != init]
        if not folders:
            raise BadInput(f"pool.glob={self.glob!r} matches only the init ({self.init})")
        return folders


def matched_folders(pattern: str, expected: str) -> list[Path]:
    """The folders a pool's glob matches, sorted. Raises BadInput where it matches nothing, or files."""
    paths = matched(pattern)
    if not paths:
        raise BadInput(f"pool.glob={pattern!r} matches nothing (expected {expected})")
    files = [str(p) for p in paths if not p.is_dir()]
    if files:
        raise BadInput(f"pool.glob={pattern!r} matches files ({files[:3]}): expected {expected}")
    return paths


def folder_setting(value: str, setting: str, what: str) -> Path:
    """pool.<setting> as a folder's resolved path. Raises BadInput for a file or nothing there."""
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise BadInput(f"pool.{setting}={value}: {'a file, not a folder' if path.exists() else 'no such folder'} "
                       f"({what})")
    return path


def check_max_length(value: int | None) -> None:
    if value is not None and value < 2:
        raise BadInput(f"pool.max_length={value}: expected an integer >= 2 (tokens)")


def find_tokenizer(folders: list[Path], kind: str, given: str | None) -> Path | None:
    """Text: the folder whose tokenizer reads the sentences (`given`: pool.tokenizer, else the first folder that
    holds one); every folder that holds one must hold the same. None for images. Raises BadInput where none does."""
    if kind != "text":
        return None
    holding = [f for f in folders if has_tokenizer(f)]
    if given:
        path = Path(given).expanduser()
        if not has_tokenizer(path):
            raise BadInput(f"pool.tokenizer={given}: no tokenizer files there")
        own = [f for f in holding if (f / "tokenizer.json").is_file()]
        if own and (path / "tokenizer.json").is_file() and vocabulary(path) != vocabulary(own[0]):
            raise BadInput(f"pool.tokenizer={given} is not the tokenizer {own[0]} holds (tokenizer.json differs): "
                           f"the fine-tunes read their own; drop pool.tokenizer")
        return path
    if not holding:
        raise BadInput(f"none of the folders holds a tokenizer (tokenizer.json, vocab.txt, ...): give "
                       f"pool.tokenizer=<folder> (the base model's), or save it with tokenizer.save_pretrained")
    vocabularies = {f: vocabulary(f) for f in holding if (f / "tokenizer.json").is_file()}
    if len(set(vocabularies.values())) > 1:
        a, b = [f for f in vocabularies if vocabularies[f] != vocabularies[holding[0]]][:1] + [holding[0]]
        raise BadInput(f"{a} and {b} hold different tokenizers (tokenizer.json): fine-tunes of one model share one")
    return holding[0]


def agree(configs: dict[Path, dict]) -> None:
    """Raises BadInput naming the first folder whose architecture, num_labels or id2label differs from the first's."""
    items = list(configs.items())
    ref_dir, ref = items[0]
    ref_arch = architecture_of(ref)
    for folder, config in items[1:]:
        arch = architecture_of(config)
        keys = sorted(k for k in set(arch) | set(ref_arch) if arch.get(k) != ref_arch.get(k))
        if keys:
            shown = ", ".join(f"{k}: {ref_arch.get(k)!r} vs {arch.get(k)!r}" for k in keys[:4])
            raise BadInput(f"{folder} is another architecture than {ref_dir}: {shown}; a soup averages one architecture")
        if [x.strip().lower() for x in labels_of(config)] != [x.strip().lower() for x in labels_of(ref)]:  # as data's
            raise BadInput(f"{folder} and {ref_dir} have different labels (id2label {labels_of(config)} vs "
                           f"{labels_of(ref)}): averaging them would mix classes")


def labels_of(config: dict) -> list[str]:
    """Class names by index from id2label (its keys are strings in config.json)."""
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def check_labels(config: dict, num_classes: int, class_names: tuple[str, ...], data_name: str) -> None:
    """The checkpoint's classes must be the dataset's: as many, and where both name them, the same names in the
    same order (transformers' placeholder names LABEL_i are taken in the dataset's order)."""
    labels = labels_of(config) or [f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))]
    if len(labels) != num_classes:
        raise BadInput(f"the folders classify {len(labels)} labels ({labels[:5]}...), data={data_name} has "
                       f"{num_classes} classes")
    if not class_names or all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
        return
    wrong = [(i, label, name) for i, (label, name) in enumerate(zip(labels, class_names))
             if label.strip().lower() != name.lower()]
    if wrong:
        raise BadInput(f"the folders' labels are not data={data_name}'s classes: " +
                       ", ".join(f"id {i}: {label!r} vs {name!r}" for i, label, name in wrong[:4]) +
                       " (id2label in config.json)")


def trainer_hparams(folder: Path) -> dict:
    """What trainer_state.json says of the run (never training_args.bin: a pickle): steps, epoch, batch size,
    and the largest learning rate it logged (the peak of its schedule)."""
    path = folder / "trainer_state.json"
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        return {}
    lrs = [e["learning_rate"] for e in state.get("log_history", []) if "learning_rate" in e]
    found = {"global_step": state.get("global_step"), "epoch": state.get("epoch"),
             "train_batch_size": state.get("train_batch_size"), "lr": max(lrs) if lrs else None}
    return {k: v for k, v in found.items() if v is not None}


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors weights: model.safetensors, or every shard its index names. Raises BadInput
    where the index is unreadable or names a shard that is not there."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        pickled = (folder / "pytorch_model.bin").is_file()
        raise BadInput(f"{folder}: " + ("weights only as pytorch_model.bin (a pickle: never loaded here)" if pickled
                                        else "no model.safetensors (nor a shard index)"))
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise BadInput(f"{folder}: no model.safetensors, and its shard index {index.name} is unreadable ({e})")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise BadInput(f"{folder}: {index.name} names {len(shards)} shards, {len(missing)} missing ({missing[:3]}): "
                       f"an incomplete copy or an interrupted save_pretrained")
    return [folder / s for s in shards]


def weights_digest(folder: Path) -> str:
    """sha256 of the folder's weights (the single file, or the shard index and every shard). Raises BadInput
    for a missing shard."""
    files = weight_files(folder)
    if len(files) == 1 and files[0].name == "model.safetensors":
        return sha256_file(files[0])
    index = folder / "model.safetensors.index.json"
    return hashlib.sha256("".join(sha256_file(f) for f in [index, *files]).encode()).hexdigest()


def tensors_digest(folder: Path) -> str:
    """`state_digest` of the folder's tensors as saved: the same for one file and for the same tensors sharded."""
    from safetensors.torch import load_file

    state = {}
    for f in weight_files(folder):
        state.update(load_file(str(f)))
    return state_digest(state)


def convert(folder: Path, out_dir: Path) -> Ingredient:
    """A model folder as an ingredient: its tensors (HFClassifier keys) in the cache, converted once."""
    digest = weights_digest(folder)
    out = out_dir / f"{folder.name}-{digest[:16]}.safetensors"
    record_file = out.with_suffix(".json")
    if out.is_file() and record_file.is_file():
        record = json.loads(record_file.read_text())
    else:
        config = read_config(folder)
        state = wrapped_state(load_folder(folder, modality_of(config, folder)))
        bad = nonfinite_tensors(state)
        if bad:  # one NaN ingredient turns every average it enters into NaN
            raise BadInput(f"{folder}: {len(bad)} tensors hold NaN or inf (e.g. {bad[:3]}); it cannot be souped")
        atomic_save_safetensors(state, out, metadata={"kind": "transformers", "source": folder.name})
        record = {"format": "transformers", "sha256": sha256_file(out), "weights_digest": state_digest(state)}
        write_json(record, record_file)
    info = {**record, "source": str(folder), "source_sha256": digest, "hparams": trainer_hparams(folder)}
    return Ingredient(folder.name, out, info)
