"""Tiny fake ImageNet + shift trees in the exact folder layouts (for offline tests)."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from soups.data.folders import WNIDS
from soups.data.imagenet_shifts import official_subset
from soups.data.objectnet import pinned_classes

# PyTorch class indices of ObjectNet's example classes in the fake mappings
ANALOG_CLOCK, DIGITAL_CLOCK, BANANA = 409, 530, 954
IMAGENET_NAMES = {ANALOG_CLOCK: "analog clock", DIGITAL_CLOCK: "digital clock", BANANA: "banana"}


def _image(path: Path, seed: int, ext_format: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=ext_format)


def make_tree(root: Path, train_per_class: int = 2) -> dict:
    """Returns the image counts per dataset."""
    n = 0
    for c, wnid in enumerate(WNIDS):
        for i in range(train_per_class):
            _image(root / "train" / wnid / f"{wnid}_{i}.JPEG", n := n + 1)
        _image(root / "val" / wnid / f"ILSVRC2012_val_{c:08d}.JPEG", n := n + 1)
    for folder in ("0", "2", "10", "999"):  # "10" sorts before "2": labels must come from the name
        _image(root / "imagenetv2-matched-frequency-format-val" / folder / "a.jpeg", n := n + 1)
    for wnid in (WNIDS[0], WNIDS[500]):
        _image(root / "sketch" / wnid / "sketch_1.JPEG", n := n + 1)
    for name, subset in (("imagenet-r", "imagenet_r"), ("imagenet-a", "imagenet_a")):
        for wnid in official_subset(subset):  # every one of the official 200 classes (R: 1, 2, 4, ...)
            _image(root / name / wnid / "img_0.jpg", n := n + 1)
    objectnet = root / "objectnet-1.0"
    for folder in ("alarm_clock", "banana", "squeegee"):  # squeegee has no ImageNet counterpart: dropped
        for i in range(2):
            _image(objectnet / "images" / folder / f"{i}.png", n := n + 1, "PNG")
    write_objectnet_mappings(objectnet / "mappings", pinned_classes())
    return {"train": 1000 * train_per_class, "val": 1000, "imagenet_v2": 4, "imagenet_sketch": 2,
            "imagenet_r": 200, "imagenet_a": 200, "objectnet": 4}


def write_split(path: Path, train_per_class: int) -> Path:
    """A held-out mask in the format of the paper's imagenet_98_idxs.npy (0/1 per train image in ImageFolder
    order, 1 = held out): here the first image of each class of make_tree's train folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.tile(np.eye(train_per_class, dtype=np.int64)[0], 1000))
    return path


def write_objectnet_mappings(maps: Path, groups: dict[str, list[int]], lines: list[str] | None = None) -> None:
    """ObjectNet's four mapping files in their exact formats, giving `groups` ({folder: PyTorch indices}) plus
    one unmapped folder. ILSVRC-2012 ids differ from PyTorch indices here: id = 999 - index."""
    maps.mkdir(parents=True, exist_ok=True)
    names = [IMAGENET_NAMES.get(999 - i, f"class {999 - i}") for i in range(1000)]
    labels = {folder: folder.replace("_", " ").capitalize() for folder in [*groups, "squeegee"]}
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(labels, indent=2))
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {labels[f]: "; ".join(names[999 - i] for i in ids) for f, ids in groups.items()}, indent=2))
    (maps / "imagenet_to_label_2012_v2").write_text("\n".join(names if lines is None else lines) + "\n")
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): 999 - i for i in range(1000)}))
