"""Checkpoints made by other tools, read without running their code (`torch.load(weights_only=True)`).

Formats (`pool.format`):
- `open_clip`: a bare state dict, or open_clip_train's `epoch_N.pt` ({"epoch", "name", "state_dict",
  "optimizer", ...}).
- `timm`: timm train.py's `checkpoint-N.pth.tar` / `model_best.pth.tar` ({"state_dict", "state_dict_ema",
  "args": argparse.Namespace, "arch", ...}) or a bare state dict; `ema=True` takes `state_dict_ema`.
- `safetensors`: a .safetensors file.
- `auto`: detected from the file (safetensors by its header, timm by `args`/`arch`/`state_dict_ema`,
  open_clip by `epoch`+`name` or `visual.*` keys), and said in the record.
The only class unpickling may build is argparse.Namespace (timm's `args`); a file that needs any other
code (WiSE-FT's whole pickled modules) is refused: scripts/convert_checkpoint.py converts one the user
trusts. Prefixes of DDP and torch.compile (`module.`, `_orig_mod.`) are stripped and reported.
"""
from __future__ import annotations

import argparse
import logging
import pickle
import re
from pathlib import Path

import torch

from soups.errors import BadInput

log = logging.getLogger(__name__)
FORMATS = ("auto", "open_clip", "timm", "safetensors")
PREFIXES = ("module.", "_orig_mod.")
TIMM_MARKS = ("args", "arch", "state_dict_ema")
# the training settings of timm train.py's `args` that a soup report shows (the other ~150 are plumbing)
TIMM_HPARAMS = ("model", "lr", "weight_decay", "epochs", "batch_size", "opt", "sched", "warmup_epochs", "smoothing",
                "mixup", "cutmix", "drop", "drop_path", "aa", "reprob", "model_ema", "seed")
CONVERT_HINT = ("if you trust the file, convert it once with: python scripts/convert_checkpoint.py "
                "--allow-pickle FILE (it runs the file's code: read its --help)")


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _load_torch(path: Path) -> object:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needed = re.search(r"GLOBAL ([\w.]+)", str(err))  # a class or function it would import and run
        if needed:
            raise BadInput(f"{path} needs code to unpickle ({needed.group(1)}; a whole pickled model, e.g. a WiSE-FT "
                           f"checkpoint?), which is never run here; {CONVERT_HINT}") from err
        raise BadInput(f"{path} is not a readable checkpoint (not a torch file, or damaged)") from err
    except Exception as err:  # truncated zip, not a torch file
        raise BadInput(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err


def detect(obj: object, path: Path) -> str:
    """The format of a loaded torch file (see the module docstring). Raises BadInput."""
    if not isinstance(obj, dict):
        raise BadInput(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    if any(k in obj for k in TIMM_MARKS):
        return "timm"
    if "state_dict" in obj:
        return "open_clip"
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        keys = strip_prefixes(obj)[0]  # a bare state dict: an open_clip model's has its image tower at visual.*
        return "open_clip" if any(k.startswith("visual.") for k in keys) else "timm"
    raise BadInput(f"{path}: not a checkpoint: no state_dict and not a dict of tensors (keys e.g. {sorted(obj)[:4]})")


def strip_prefixes(state: dict) -> tuple[dict, list[str]]:
    """Keys without DDP / torch.compile prefixes (`module.`, `_orig_mod.`, nested in any order), and which were
    stripped."""
    stripped: list[str] = []
    for prefix in PREFIXES * 2:  # module._orig_mod. and _orig_mod.module. both occur
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            stripped.append(prefix)
    return state, stripped


def read_checkpoint(path: str | Path, fmt: str = "auto", ema: bool | None = False) -> tuple[dict, dict]:
    """(state dict of tensors, record) of one checkpoint file. The record says the format (as detected),
    the prefixes stripped, which state dict was taken, and timm's `args` (as hyperparameters) if present.
    `ema`: take timm's `state_dict_ema` (True), never (False), or where the file has one (None: a shared init
    that may be a bare pretrained state dict). Raises BadInput for a file that is not a checkpoint, one that
    needs code to unpickle, a format other than `fmt`, `ema=True` without `state_dict_ema`, or a non-tensor
    entry in the state dict."""
    path = Path(path)
    if fmt not in FORMATS:
        raise BadInput(f"pool.format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise BadInput(f"{path}: no such checkpoint file")
    record: dict = {"source": str(path)}
    if is_safetensors(path):
        from safetensors.torch import load_file
        try:
            detected, obj = "safetensors", load_file(str(path))
        except Exception as err:  # truncated or damaged
            raise BadInput(f"{path} is not a readable safetensors file ({err}); truncated or damaged?") from err
    else:
        obj = _load_torch(path)
        detected = detect(obj, path)
    if fmt != "auto" and fmt != detected:
        raise BadInput(f"{path} is a {detected} checkpoint, not pool.format={fmt}")
    record["format"] = detected
    has_ema = isinstance(obj, dict) and isinstance(obj.get("state_dict_ema"), dict)
    key = "state_dict_ema" if ema or (ema is None and has_ema) else "state_dict"
    if has_ema and key != "state_dict_ema":  # an ingredient's (an init takes its EMA: ema=None)
        log.info("%s also holds timm's EMA weights (state_dict_ema); pool.ema=true soups those", path)
    if ema and key not in obj:
        raise BadInput(f"{path}: pool.ema=true but the checkpoint has no state_dict_ema (keys {sorted(obj)[:6]})")
    if key in obj:
        if not isinstance(obj[key], dict):
            raise BadInput(f"{path}: its {key} is {type(obj[key]).__name__}, not a state dict")
        record["state_dict"] = key
        if isinstance(obj.get("args"), argparse.Namespace):
            args = vars(obj["args"])
            record["hparams"] = {k: args[k] for k in TIMM_HPARAMS if k in args}
        for k in ("epoch", "arch", "name"):
            if isinstance(obj.get(k), (int, str)):
                record[k] = obj[k]
        obj = obj[key]
    wrong = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if wrong:
        raise BadInput(f"{path}: entries that are not tensors in its state dict, e.g. {wrong[:3]}")
    state, record["stripped_prefixes"] = strip_prefixes(dict(obj))
    return state, record
