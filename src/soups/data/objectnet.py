"""ObjectNet 1.0: the 113 classes that overlap ImageNet, read strictly from the dataset's `mappings/`.

The mapping chain (as the official model-soups/WiSE-FT `datasets/objectnet.py` reads it): folder ->
ObjectNet name (folder_to_objectnet_label.json) -> ImageNet names, "; "-separated
(objectnet_to_imagenet_1k.json) -> ILSVRC-2012 id = 0-based line number (imagenet_to_label_2012_v2) ->
PyTorch class index (pytorch_to_imagenet_2012_id.json). Anything the official parser would fail on (a
blank or extra line, an unknown name, a label without a folder) is an error here, never a renumbering.
The result is pinned: it must equal `objectnet_classes.json` (113 folders, 125 ImageNet indices, as
the official repo's `datasets/objectnet_metadata` gives them), whose sha256 is checked too.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch

from soups.data.folders import FileEvalSet, MaxOverGroups, check_count, layout_error, require_dir, scan_class_folders

TREE = ("  <root>/objectnet-1.0/images/<class folder>/*.png (313 folders)\n"
        "  <root>/objectnet-1.0/mappings/folder_to_objectnet_label.json\n"
        "  <root>/objectnet-1.0/mappings/objectnet_to_imagenet_1k.json\n"
        "  <root>/objectnet-1.0/mappings/imagenet_to_label_2012_v2\n"
        "  <root>/objectnet-1.0/mappings/pytorch_to_imagenet_2012_id.json")
NUM_CLASSES, NUM_IMAGENET_INDICES = 113, 125
# sha256 of the pinned {folder: sorted PyTorch indices} as compact, key-sorted JSON
CLASSES_SHA256 = "94c146488afcb7f7c3153ef87b42c6d586e4b490bb7c5a5239d90c68129bc05f"


def mapping_digest(groups: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(groups, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def pinned_classes() -> dict[str, list[int]]:
    """{folder: sorted PyTorch class indices} of the 113 ObjectNet classes, in label order (sorted folders)."""
    groups = json.loads(resources.files("soups.data").joinpath("objectnet_classes.json").read_text())
    if mapping_digest(groups) != CLASSES_SHA256:
        raise RuntimeError("soups/data/objectnet_classes.json was modified: its sha256 differs from the pinned one")
    return dict(sorted(groups.items()))


def _error(problem: str):
    return layout_error("objectnet", problem, TREE)


def _json_object(path: Path) -> dict:
    if not path.is_file():
        raise _error(f"missing mapping file {path}")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise _error(f"{path} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise _error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _ilsvrc_names(path: Path) -> list[str]:
    """One ImageNet name per line, line i = ILSVRC-2012 id i; only a final newline may end the file."""
    if not path.is_file():
        raise _error(f"missing mapping file {path}")
    lines = path.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank or len(lines) != 1000:
        raise _error(f"{path}: expected 1000 non-empty lines (one ImageNet name each), found {len(lines)} lines"
                     + (f", blank at line {blank[:3]}" if blank else ""))
    return [line.strip() for line in lines]


def parse_mappings(mappings: Path) -> dict[str, list[int]]:
    """{folder: sorted PyTorch class indices} for every ObjectNet class that has ImageNet counterparts.

    Raises DatasetLayoutError naming the file and entry for anything the official parser would not accept
    (or would accept only by silently dropping it: a duplicate label, an ambiguous ImageNet name)."""
    folder_to_label = _json_object(mappings / "folder_to_objectnet_label.json")
    label_to_names = _json_object(mappings / "objectnet_to_imagenet_1k.json")
    names = _ilsvrc_names(mappings / "imagenet_to_label_2012_v2")
    pytorch_to_ilsvrc = _json_object(mappings / "pytorch_to_imagenet_2012_id.json")
    if sorted(pytorch_to_ilsvrc) != sorted(map(str, range(1000))) or \
            sorted(pytorch_to_ilsvrc.values(), key=str) != sorted(range(1000), key=str):
        raise _error("pytorch_to_imagenet_2012_id.json: expected keys \"0\"..\"999\" mapped one-to-one onto ids 0..999")
    ilsvrc_to_pytorch = {ilsvrc: int(index) for index, ilsvrc in pytorch_to_ilsvrc.items()}
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}
    if len(label_to_folder) != len(folder_to_label):
        raise _error("folder_to_objectnet_label.json: two folders share one ObjectNet label")
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(name, []).append(i)
    groups = {}
    for label, joined in label_to_names.items():
        if label not in label_to_folder:
            raise _error(f"objectnet_to_imagenet_1k.json: {label!r} is no folder's label in folder_to_objectnet_label.json")
        wanted = joined.split("; ") if isinstance(joined, str) else []
        unknown = [n for n in wanted if len(seen.get(n, ())) != 1]
        if not wanted or unknown:
            raise _error(f"objectnet_to_imagenet_1k.json: {label!r} maps to {joined!r}; not exactly one line of "
                         f"imagenet_to_label_2012_v2 holds {unknown or 'it'}")
        groups[label_to_folder[label]] = sorted(ilsvrc_to_pytorch[seen[n][0]] for n in wanted)
    return dict(sorted(groups.items()))


def objectnet(root: Path, transform, expected: int | None, num_workers: int, crop_border: int = 0) -> FileEvalSet:
    """The 113 ObjectNet classes that overlap ImageNet; each class's logit is the max over its ImageNet classes
    (official `ObjectNet.project_logits`). Labels index the sorted folder names. ObjectNet images carry a 1-px
    red border; the official code meant to crop 2 px but never applied it, so the released numbers are
    uncropped: `crop_border` defaults to 0 to match them.

    Raises DatasetLayoutError if a folder or mapping file is missing, malformed, or maps otherwise than the
    pinned 113 classes."""
    images = require_dir("objectnet", root / "images", TREE)
    groups = parse_mappings(require_dir("objectnet", root / "mappings", TREE))
    pinned = pinned_classes()
    if groups != pinned:
        differ = sorted(f for f in set(groups) | set(pinned) if groups.get(f) != pinned.get(f))
        raise _error(f"the mapping files give {len(groups)} classes over "
                     f"{sum(map(len, groups.values()))} ImageNet indices, not ObjectNet 1.0's {NUM_CLASSES} over "
                     f"{NUM_IMAGENET_INDICES}; {len(differ)} folders differ, e.g. {differ[:3]}")
    folders = list(pinned)
    position = {f: i for i, f in enumerate(folders)}
    kept = [(p, position[f]) for p, f in scan_class_folders(str(images)) if f in position]
    check_count("objectnet", len(kept), expected, TREE)
    return FileEvalSet("objectnet", [p for p, _ in kept], torch.tensor([y for _, y in kept]), transform,
                       num_workers, crop_border=crop_border, project_logits=MaxOverGroups([pinned[f] for f in folders]))
