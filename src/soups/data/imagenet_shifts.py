"""The paper's five ImageNet distribution shifts: V2, Sketch, R, A, ObjectNet."""
from __future__ import annotations

from pathlib import Path

import torch

from soups.data.folders import (WNID_INDEX, ClassSubset, FileEvalSet, check_count, layout_error, require_dir,
                                 scan_class_folders)
from soups.data.objectnet import objectnet

TREES = {
    "imagenet_v2": "  <root>/imagenetv2-matched-frequency-format-val/0/*.jpeg ... /999/*.jpeg (folder = class index)",
    "imagenet_sketch": "  <root>/sketch/n01440764/*.JPEG ... (1000 class folders)",
    "imagenet_r": "  <root>/imagenet-r/n01443537/*.jpg ... (200 class folders)",
    "imagenet_a": "  <root>/imagenet-a/n01498041/*.jpg ... (200 class folders)",
}


def imagenet_v2(root: Path, transform, expected: int | None, num_workers: int) -> FileEvalSet:
    folder = require_dir("imagenet_v2", root, TREES["imagenet_v2"])
    samples = scan_class_folders(str(folder))
    bad = sorted({f for _, f in samples if not (f.isdigit() and 0 <= int(f) < 1000)})
    if bad:
        raise layout_error("imagenet_v2", f"class folders must be named 0..999, found {bad[:3]}", TREES["imagenet_v2"])
    check_count("imagenet_v2", len(samples), expected, TREES["imagenet_v2"])
    # folders are class indices: "10" sorts before "2", so labels come from the name, not the order.
    # The official loader (imagenetv2_pytorch) opens files without converting: RGB comes after the crop
    return FileEvalSet("imagenet_v2", [p for p, _ in samples], torch.tensor([int(f) for _, f in samples]),
                       transform, num_workers, rgb_first=False)


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


BUILDERS = {"imagenet_v2": imagenet_v2, "imagenet_sketch": imagenet_sketch, "imagenet_r": imagenet_r,
            "imagenet_a": imagenet_a, "objectnet": objectnet}
