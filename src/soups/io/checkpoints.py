"""The official release's checkpoints (model_0..71.pt of mlfoundations/model-soups, v0.0.2) in the
project's format.

Official format: the plain state dict of a wrapper around OpenAI's CLIP (`model.*`, the text
`transformer.*` removed, the other text-side tensors kept) with a linear head on L2-normalized image
features (`classification_head.weight` [1000 x 512], `classification_head.bias`). The project keeps
the image tower and the head: `model.visual.*` -> `visual.*`, `classification_head.*` -> `head.*`.
Converted once to safetensors (never unpickled: `torch.load(weights_only=True)`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from soups.errors import BadInput, MissingInput
from soups.io.files import atomic_save_safetensors, nonfinite_tensors, sha256_file

HEAD_KEYS = {"classification_head.weight": "head.weight", "classification_head.bias": "head.bias"}
TOWER_PREFIX = "model.visual."


def convert_official_state_dict(official: dict[str, torch.Tensor],
                                expected: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Official keys -> project keys; with `expected` (the target model's state dict), every key and
    shape must match, so a checkpoint of another architecture is refused with the difference."""
    missing_head = [k for k in HEAD_KEYS if k not in official]
    if missing_head or not any(k.startswith(TOWER_PREFIX) for k in official):
        raise BadInput(f"not an official model-soups checkpoint: expected '{TOWER_PREFIX}*' and "
                       f"{sorted(HEAD_KEYS)} keys, found e.g. {sorted(official)[:4]}")
    converted = {"visual." + k[len(TOWER_PREFIX):]: v for k, v in official.items() if k.startswith(TOWER_PREFIX)}
    converted.update({new: official[old] for old, new in HEAD_KEYS.items()})
    converted = {k: v.float() if v.is_floating_point() else v for k, v in converted.items()}
    if expected is not None:
        wrong = misfit(converted, {k: v.shape for k, v in expected.items()})
        if wrong:
            raise BadInput(f"checkpoint does not fit the configured model (another architecture?): {wrong}")
    bad = nonfinite_tensors(converted)
    if bad:  # one NaN ingredient turns every average it enters into NaN
        raise BadInput(f"checkpoint holds NaN or inf in {len(bad)} tensors (e.g. {bad[:3]}); it cannot be souped")
    return converted


def misfit(state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> str:
    """How `state` differs from the model's tensors `expected` ({key: shape}): '' if it fits exactly, else
    examples of the missing, unexpected and misshaped keys."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(s)}" for k, s in expected.items()
              if k in state and state[k].shape != s]
    if not (missing or extra or shapes):
        return ""
    return f"missing {missing[:3]}, unexpected {extra[:3]}, shape mismatches {shapes[:3]}"


def convert_official_file(path: str | Path, out_dir: str | Path, expected: dict[str, torch.Tensor] | None = None,
                          source_sha256: str | None = None) -> Path:
    """`out_dir/<name>.safetensors`, converted once (reused while the source's sha256 is unchanged)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"missing checkpoint {path}; fetch the release with scripts/download_checkpoints.py")
    source_sha = source_sha256 or sha256_file(path)
    out = Path(out_dir) / f"{path.stem}-{source_sha[:16]}.safetensors"
    if out.is_file():
        return out
    try:
        official = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, ...: never executed, reported
        raise BadInput(f"{path} could not be read as a plain state dict ({type(err).__name__}: {err}); "
                       f"truncated or not a model-soups checkpoint?") from err
    if not isinstance(official, dict):
        raise BadInput(f"{path}: expected a state dict, got {type(official).__name__}")
    converted = convert_official_state_dict(official, expected)
    atomic_save_safetensors(converted, out, metadata={"kind": "official", "source": path.name,
                                                      "source_sha256": source_sha})
    return out
