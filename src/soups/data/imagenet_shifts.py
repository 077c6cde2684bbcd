"""The paper's five ImageNet distribution shifts: V2, Sketch, R, A, ObjectNet."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from soups.data.imagenet import (WNID_INDEX, ClassSubset, FileEvalSet, MaxOverGroups, check_count,
                                 layout_error, require_dir, scan_class_folders)

TREES = {
    "imagenet_v2": "  <root>/imagenetv2-matched-frequency-format-val/0/*.jpeg ... /999/*.jpeg (folder = class index)",
    "imagenet_sketch": "  <root>/sketch/n01440764/*.JPEG ... (1000 class folders)",
    "imagenet_r": "  <root>/imagenet-r/n01443537/*.jpg ... (200 class folders)",
    "imagenet_a": "  <root>/imagenet-a/n01498041/*.jpg ... (200 class folders)",
    "objectnet": ("  <root>/objectnet-1.0/images/<class folder>/*.png (313 folders)\n"
                  "  <root>/objectnet-1.0/mappings/folder_to_objectnet_label.json\n"
                  "  <root>/objectnet-1.0/mappings/objectnet_to_imagenet_1k.json\n"
                  "  <root>/objectnet-1.0/mappings/imagenet_to_label_2012_v2\n"
                  "  <root>/objectnet-1.0/mappings/pytorch_to_imagenet_2012_id.json"),
}


def imagenet_v2(root: Path, transform, expected: int | None, num_workers: int) -> FileEvalSet:
    folder = require_dir("imagenet_v2", root, TREES["imagenet_v2"])
    samples = scan_class_folders(str(folder))
    bad = sorted({f for _, f in samples if not (f.isdigit() and 0 <= int(f) < 1000)})
    if bad:
        raise layout_error("imagenet_v2", f"class folders must be named 0..999, found {bad[:3]}", TREES["imagenet_v2"])
    check_count("imagenet_v2", len(samples), expected, TREES["imagenet_v2"])
    # folders are class indices: "10" sorts before "2", so labels come from the name, not the order
    return FileEvalSet("imagenet_v2", [p for p, _ in samples], torch.tensor([int(f) for _, f in samples]),
                       transform, num_workers)


def imagenet_sketch(root: Path, transform, expected: int | None, num_workers: int) -> FileEvalSet:
    return _wnid_folders("imagenet_sketch", root, transform, expected, num_workers, subset=False)


def imagenet_r(root: Path, transform, expected: int | None, num_workers: int) -> FileEvalSet:
    return _wnid_folders("imagenet_r", root, transform, expected, num_workers, subset=True)


def imagenet_a(root: Path, transform, expected: int | None, num_workers: int) -> FileEvalSet:
    return _wnid_folders("imagenet_a", root, transform, expected, num_workers, subset=True)


def official_subset(name: str) -> list[str]:
    """The 200 WordNet ids of ImageNet-R or -A, as timm ships them (timm/data/_info/<set>_synsets.txt)."""
    from importlib import resources

    text = resources.files("timm.data").joinpath("_info", f"{name}_synsets.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _wnid_folders(name, root, transform, expected, num_workers, subset: bool) -> FileEvalSet:
    folder = require_dir(name, root, TREES[name])
    samples = scan_class_folders(str(folder))
    folders = sorted({f for _, f in samples})
    unknown = [f for f in folders if f not in WNID_INDEX]
    if unknown or not folders:
        raise layout_error(name, f"class folders must be ImageNet WordNet ids, found {unknown[:3] or 'none'}",
                           TREES[name])
    check_count(name, len(samples), expected, TREES[name])
    if not subset:
        return FileEvalSet(name, [p for p, _ in samples], torch.tensor([WNID_INDEX[f] for _, f in samples]),
                           transform, num_workers)
    # R and A cover 200 classes: labels index the official list, logits are masked to it. The list is
    # pinned, not read off the folders: a missing folder would silently make the task 199-way
    official = official_subset(name)
    missing, extra = sorted(set(official) - set(folders)), sorted(set(folders) - set(official))
    if missing or extra:
        raise layout_error(name, f"the class folders must be the official {len(official)} classes: missing "
                           f"{len(missing)} (e.g. {missing[:3]}), not in the list {len(extra)} (e.g. {extra[:3]})",
                           TREES[name])
    position = {f: i for i, f in enumerate(official)}
    return FileEvalSet(name, [p for p, _ in samples], torch.tensor([position[f] for _, f in samples]),
                       transform, num_workers, project_logits=ClassSubset([WNID_INDEX[f] for f in official]))


def objectnet(root: Path, transform, expected: int | None, num_workers: int, crop_border: int = 0) -> FileEvalSet:
    """The 113 ObjectNet classes that overlap ImageNet; each class's logit is the max over its ImageNet classes.

    All mappings come from the dataset's own `mappings/` folder: folder -> ObjectNet name -> ImageNet
    names -> ILSVRC-2012 ids (line numbers of imagenet_to_label_2012_v2) -> PyTorch class indices.
    Labels index the sorted folder names of the 113 classes. ObjectNet images carry a 1-px red border;
    the official code meant to crop 2 px but never applied it, so the released numbers are uncropped:
    `crop_border` defaults to 0 to match them.
    """
    tree = TREES["objectnet"]
    images = require_dir("objectnet", root / "images", tree)
    mappings = require_dir("objectnet", root / "mappings", tree)
    folder_to_name = _read_json(mappings / "folder_to_objectnet_label.json", tree)
    name_to_imagenet_names = _read_json(mappings / "objectnet_to_imagenet_1k.json", tree)
    ilsvrc_names = _read_lines(mappings / "imagenet_to_label_2012_v2", tree)
    pytorch_to_ilsvrc = _read_json(mappings / "pytorch_to_imagenet_2012_id.json", tree)
    if len(ilsvrc_names) != 1000 or len(pytorch_to_ilsvrc) != 1000:
        raise layout_error("objectnet", f"expected 1000 ImageNet names and 1000 PyTorch ids, found "
                           f"{len(ilsvrc_names)} and {len(pytorch_to_ilsvrc)}", tree)
    ilsvrc_to_pytorch = {int(v): int(k) for k, v in pytorch_to_ilsvrc.items()}
    name_to_pytorch = {name: ilsvrc_to_pytorch[i] for i, name in enumerate(ilsvrc_names)}
    groups_by_folder: dict[str, list[int]] = {}
    for folder, name in folder_to_name.items():
        if name in name_to_imagenet_names:
            wanted = [n.strip() for n in name_to_imagenet_names[name].split(";")]
            missing = [n for n in wanted if n not in name_to_pytorch]
            if missing:
                raise layout_error("objectnet", f"{name!r} maps to unknown ImageNet names {missing}", tree)
            groups_by_folder[folder] = sorted(name_to_pytorch[n] for n in wanted)
    folders = sorted(groups_by_folder)
    position = {f: i for i, f in enumerate(folders)}
    kept = [(p, position[f]) for p, f in scan_class_folders(str(images)) if f in position]
    check_count("objectnet", len(kept), expected, tree)
    return FileEvalSet("objectnet", [p for p, _ in kept], torch.tensor([y for _, y in kept]), transform,
                       num_workers, crop_border=crop_border,
                       project_logits=MaxOverGroups([groups_by_folder[f] for f in folders]))


def _read_json(path: Path, tree: str) -> dict:
    if not path.is_file():
        raise layout_error("objectnet", f"missing mapping file {path}", tree)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise layout_error("objectnet", f"{path} is not valid JSON ({err})", tree) from err


def _read_lines(path: Path, tree: str) -> list[str]:
    if not path.is_file():
        raise layout_error("objectnet", f"missing mapping file {path}", tree)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


BUILDERS = {"imagenet_v2": imagenet_v2, "imagenet_sketch": imagenet_sketch, "imagenet_r": imagenet_r,
            "imagenet_a": imagenet_a, "objectnet": objectnet}
