"""Tiny fake ImageNet + shift trees in the exact folder layouts (for offline tests)."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from soups.data.imagenet import WNIDS
from soups.data.imagenet_shifts import official_subset

# PyTorch class indices of ObjectNet's example classes in the fake mappings
ANALOG_CLOCK, DIGITAL_CLOCK, BANANA = 409, 530, 954


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
    for folder in ("alarm_clock", "banana", "bench"):  # bench has no ImageNet counterpart: dropped
        for i in range(2):
            _image(objectnet / "images" / folder / f"{i}.png", n := n + 1, "PNG")
    maps = objectnet / "mappings"
    maps.mkdir(parents=True)
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "bench": "Bench"}))
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))
    # ILSVRC-2012 ids differ from PyTorch indices: here id = 999 - index
    names = {ANALOG_CLOCK: "analog clock", DIGITAL_CLOCK: "digital clock", BANANA: "banana"}
    (maps / "imagenet_to_label_2012_v2").write_text(
        "\n".join(names.get(999 - i, f"class {999 - i}") for i in range(1000)) + "\n")
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): 999 - i for i in range(1000)}))
    return {"train": 1000 * train_per_class, "val": 1000, "imagenet_v2": 4, "imagenet_sketch": 2,
            "imagenet_r": 200, "imagenet_a": 200, "objectnet": 4}
