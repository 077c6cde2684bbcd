"""Hugging Face transformers classifiers as pool ingredients (pool=hf, pool=lora): a folder that
`AutoModelForSequenceClassification` (text) or `AutoModelForImageClassification` (images) loads, i.e.
`config.json` + `model.safetensors` (sharded too), as `save_pretrained` and the Trainer's `checkpoint-N/`
folders hold them. Only safetensors are read: `pytorch_model.bin` and `training_args.bin` are pickles.

`HFClassifier` wraps the transformers model so the project's evaluation loops call it like every other
classifier (a TokenBatch or an image batch in, float32 logits [B, C] out); its state-dict keys are the
transformers model's own with the prefix `model.`. `model_cfg_for` writes the model config that builds it,
and tells the datasets how to read inputs: the folder's own tokenizer (text) or its image processor's
size, mean and std (images)."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from soups.errors import BadInput
from soups.models.text import TOKENIZER_FILES, TokenBatch, _quiet_transformers

log = logging.getLogger(__name__)
PREFIX = "model."
HEADS = {"ForSequenceClassification": "text", "ForImageClassification": "image"}


def read_config(folder: Path) -> dict:
    """The folder's config.json as a dict, checked to hold a transformers classifier with safetensors weights.
    Raises BadInput naming the folder: no config.json, unreadable JSON, no classifier architecture, or weights
    only as a pickle (`pytorch_model.bin`) or absent."""
    path = folder / "config.json"
    if not path.is_file():
        raise BadInput(f"{folder}: no config.json (expected a transformers model folder, as save_pretrained or the "
                       f"Trainer's checkpoint-N/ writes it)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BadInput(f"{path}: not readable JSON ({err})") from err
    if not any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
        pickles = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (folder / n).is_file()]
        if pickles:
            raise BadInput(f"{folder} holds its weights only as {pickles[0]} (a pickle: never loaded here); write "
                           f"them as safetensors: model.save_pretrained(folder) (safe_serialization is the default)")
        raise BadInput(f"{folder}: no model.safetensors (a folder without weights)")
    modality_of(config, folder)
    return config


def modality_of(config: dict, folder: Path | str) -> str:
    """"text" or "image" from config.json's `architectures` (…ForSequenceClassification / …ForImageClassification).
    Raises BadInput for any other architecture."""
    archs = config.get("architectures") or []
    for arch in archs:
        for suffix, kind in HEADS.items():
            if arch.endswith(suffix):
                return kind
    raise BadInput(f"{folder}: architectures={archs}; expected a sequence or image classifier "
                   f"(…ForSequenceClassification or …ForImageClassification, the Auto classes this pool loads)")


def auto_class(kind: str):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if kind == "text" else AutoModelForImageClassification


class HFClassifier(nn.Module):
    """A transformers classifier called the project's way: TokenBatch [B, L] or images [B, 3, R, R] -> float32
    logits [B, C]. Keys: `model.<the transformers model's own keys>`."""

    def __init__(self, model: nn.Module, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, batch) -> torch.Tensor:
        if isinstance(batch, TokenBatch):
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        else:
            out = self.model(pixel_values=batch)
        return out.logits.float()


def hf_classifier(model_cfg) -> HFClassifier:
    """The architecture of `model.hf_classifier` (a folder) from its config.json, weights to be loaded."""
    from transformers import AutoConfig

    folder = Path(model_cfg.hf_classifier)
    kind = modality_of(read_config(folder), folder)
    with _quiet_transformers(), load_errors(folder):
        config = AutoConfig.from_pretrained(str(folder))
        model = auto_class(kind).from_config(config, dtype=torch.float32)
    return HFClassifier(model.eval(), kind)


def load_folder(folder: Path, kind: str) -> nn.Module:
    """The folder's model with its own weights (transformers' loader: renamed legacy keys, tied weights).
    Raises BadInput when a tensor of the architecture is absent or of another shape (transformers would
    fill it randomly: the ingredient would not be the fine-tune)."""
    with _quiet_transformers(), load_errors(folder):
        model, info = auto_class(kind).from_pretrained(str(folder), use_safetensors=True, dtype=torch.float32,
                                                       output_loading_info=True)
    missing = list(info.get("missing_keys") or [])
    wrong = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
    if missing or wrong:
        raise BadInput(f"{folder}: its weights do not fill its own architecture: {len(missing)} tensors missing "
                       f"(e.g. {sorted(missing)[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})")
    return model.eval()


def wrapped_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A transformers model's tensors under HFClassifier's keys (`model.` + its own), contiguous fp32 copies."""
    return {PREFIX + k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()}


def model_cfg_for(folder: Path, config: dict, max_length: int, tokenizer_dir: Path | None) -> dict:
    """The model config (`model` of run.json) that builds this architecture and tells the data how to read
    inputs: text: the tokenizer folder (`text_encoder`, as model=minilm_l6 names its own) and `max_length`;
    images: the image processor's square size, mean and std (preprocessor_config.json)."""
    kind = modality_of(config, folder)
    cfg = {"name": f"hf:{config.get('model_type', 'model')}", "hf_classifier": str(folder.resolve())}
    if kind == "text":
        return cfg | {"text_encoder": str((tokenizer_dir or folder).resolve()), "max_length": int(max_length)}
    return cfg | image_processing(folder, config)


def image_processing(folder: Path, config: dict) -> dict:
    """{image_size, mean, std} from preprocessor_config.json: images are resized to the processor's square size
    and normalized with its mean and std. Raises BadInput where it is absent or not a plain square resize."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise BadInput(f"{folder}: no preprocessor_config.json (the image processor says the input size, mean and "
                       f"std): save it beside the weights (processor.save_pretrained(folder))")
    proc = json.loads(path.read_text())
    size = proc.get("crop_size") if proc.get("do_center_crop") else proc.get("size")
    if isinstance(size, dict):
        side = {size.get("height"), size.get("width")} if "height" in size else {size.get("shortest_edge")}
    else:
        side = {size}
    if len(side) != 1 or None in side:
        raise BadInput(f"{path}: size {size}: expected a square input size (height = width)")
    return {"image_size": int(side.pop()), "mean": list(proc.get("image_mean", [0.5] * 3)),
            "std": list(proc.get("image_std", [0.5] * 3))}


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def save_pretrained_soup(model: HFClassifier, weights: dict[str, torch.Tensor], folder: Path,
                         processor_dir: Path | None) -> Path:
    """`weights` (HFClassifier keys) written as a transformers folder (config.json + model.safetensors, by
    `save_pretrained`) with the tokenizer or image processor of `processor_dir`, so that
    `AutoModelFor…Classification.from_pretrained(folder)` gives these weights' logits. Returns the folder."""
    from transformers import AutoImageProcessor, AutoTokenizer

    inner = {k[len(PREFIX):]: v for k, v in weights.items() if k.startswith(PREFIX)}
    model.model.load_state_dict(inner)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.model.save_pretrained(str(folder))
        if processor_dir is not None and model.modality == "text" and has_tokenizer(processor_dir):
            AutoTokenizer.from_pretrained(str(processor_dir)).save_pretrained(str(folder))
        elif processor_dir is not None and (processor_dir / "preprocessor_config.json").is_file():
            AutoImageProcessor.from_pretrained(str(processor_dir)).save_pretrained(str(folder))
    return folder


@contextlib.contextmanager
def load_errors(folder: Path):
    """A damaged folder (bad config.json, truncated safetensors) as one BadInput naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except BadInput:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise BadInput(f"could not load the transformers model in {folder}: {err}") from err
