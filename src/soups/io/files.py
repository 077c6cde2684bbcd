"""Files a user keeps: written atomically (temp file + rename), read with clear errors, never unpickled."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load, load_file, save_file

from soups.errors import BadInput, MissingInput


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


UMASK = _umask()  # once, at import: os.umask is process-wide, and a read-and-restore later could race a thread


def atomic_write(path: Path, write) -> None:
    """Calls `write(temporary path)` beside `path`, then renames it over `path`: readers see the old
    file or the new one, never half of one. The file gets the mode `open()` would give it (0o666 less the
    umask): mkstemp makes its file private (0o600), which would hide results from a shared cluster's group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> None:
    """Written atomically, byte for byte the same for the same tensors and metadata in any process: a file's
    sha256 is the identity of its weights (the evaluation cache's key)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def write(tmp):
        save_file(tensors, tmp, metadata=metadata)
        if metadata and len(metadata) > 1:
            canonical_header(Path(tmp))

    atomic_write(Path(path), write)


def canonical_header(path: Path) -> None:
    """Rewrites a safetensors file's header with `__metadata__` in sorted key order. safetensors writes the
    metadata from a Rust HashMap, whose order is random in every process, so two processes saving the same
    tensors wrote different bytes (and sha256s). Same entries, same JSON length: rewritten in place, padded
    with spaces as safetensors pads its header; a longer one (never seen) rewrites the file."""
    import struct

    with open(path, "r+b") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        if meta is None:
            return
        text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"),
                          ensure_ascii=False).encode()
        if len(text) <= size:
            f.seek(8)
            f.write(text + b" " * (size - len(text)))
            return
        f.seek(8 + size)
        data = f.read()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def write_json(obj, path: str | Path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_text(text: str, path: str | Path) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"expected {path} (written at the end of every run); is the run finished?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInput(f"{path} is not valid JSON ({err}); the file is damaged") from err


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (in key order): the one identity of weights
    held in memory (the evaluation cache's key for soups and candidates; a random tower's in the probe cache).
    Weights read from a file are named by the file's sha256 instead (`sha256_file`)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_weights_header(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} from a safetensors header, without reading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"missing checkpoint {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise BadInput(f"{path} is not a readable safetensors checkpoint ({err}); truncated or damaged?") from err


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def digest_and_nonfinite(path: str | Path) -> tuple[str, list[str]]:
    """(sha256 of the file, nonfinite_tensors of its weights) from one read of a safetensors file (a pool on a
    network disk is read once, not twice). Peak memory: about twice the file. Raises BadInput if unreadable."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        state = safetensors_load(data)
    except (SafetensorError, OSError) as err:
        raise BadInput(f"{path} is not a readable safetensors checkpoint ({err}); truncated or damaged?") from err
    del data
    return digest, nonfinite_tensors(state)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"missing checkpoint {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise BadInput(f"{path} is not a readable safetensors checkpoint ({err}); truncated or damaged?") from err
