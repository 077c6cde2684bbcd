"""Convert a checkpoint that needs code to unpickle (e.g. WiSE-FT's whole pickled modules) into safetensors.

    python scripts/convert_checkpoint.py --allow-pickle wise_ft/finetuned/checkpoint_10.pt [--out FILE]

DANGER: unpickling runs whatever code the file names, with your permissions. A pickle can delete files,
read secrets or install anything. Only convert files you made yourself or whose source you trust; that is
why `src/soup.py` never unpickles (every checkpoint is read with torch.load(weights_only=True)) and why this
script refuses to run without --allow-pickle. The result holds tensors only and is safe to share and load.
A module is converted through its state_dict(); a dict through its "state_dict" entry or its tensors.
The output (default: FILE with the suffix .safetensors) is a pool=files ingredient (pool.format=safetensors
or auto); keys keep the module's names (`module.`/`_orig_mod.` prefixes are stripped by the pool).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert(path: Path, out: Path) -> int:
    """Unpickle `path` (trusted: the caller said so), write its tensors to `out`; returns the tensor count."""
    import torch

    from soups.errors import BadInput
    from soups.io.files import atomic_save_safetensors

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # the user allowed it: --allow-pickle
    except Exception as err:  # not a torch file, truncated, or its code failed
        raise BadInput(f"{path} could not be loaded ({type(err).__name__}: {err})") from err
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), (dict, torch.nn.Module)):
        obj = obj["state_dict"]
        obj = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
    if not isinstance(obj, dict):
        raise BadInput(f"{path} holds a {type(obj).__name__}: expected a module or a state dict")
    tensors = {str(k): v.detach().contiguous() for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BadInput(f"{path}: no tensors found (keys e.g. {sorted(map(str, obj))[:4]})")
    atomic_save_safetensors(tensors, out, metadata={"converted_from": path.name})
    return len(tensors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--out", type=Path, help="default: FILE with the suffix .safetensors")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="required: confirm you trust FILE's code (unpickling runs it)")
    args = parser.parse_args(argv)
    from soups.errors import said_plainly, BadInput

    with said_plainly():
        if not args.allow_pickle:
            raise BadInput(f"{args.file} would be unpickled, which runs code it names; pass --allow-pickle only "
                           f"if you trust it (see --help)")
        if not args.file.is_file():
            raise BadInput(f"{args.file}: no such file")
        out = args.out or args.file.with_suffix(".safetensors")
        count = convert(args.file, out)
        print(f"wrote {out} ({count} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
