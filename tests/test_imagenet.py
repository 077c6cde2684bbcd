"""ImageNet and the five shifts on fake trees in the exact layouts: labels, masks, projections, errors."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fake_imagenet import ANALOG_CLOCK, BANANA, DIGITAL_CLOCK, IMAGENET_NAMES, make_tree, write_objectnet_mappings
from soups.data import build_data
from soups.data.folders import WNID_INDEX, WNIDS, DatasetLayoutError, held_out_mask, scan_class_folders
from soups.data.imagenet_shifts import imagenet_a, imagenet_r, imagenet_v2
from soups.data.objectnet import mapping_digest, objectnet, parse_mappings, pinned_classes

IDENTITY = lambda img: torch.zeros(1)  # noqa: E731 - transforms are not under test here


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, make_tree(root)


def imagenet_cfgs(root, counts, **held_out):
    data = OmegaConf.merge(OmegaConf.load("conf/data/imagenet.yaml"), {
        "root": str(root), "expected_train_images": counts["train"], "expected_val_images": counts["val"],
        "num_workers": 0, "bn_recalibration_images": 8, "held_out": {"per_class": 1, **held_out}})
    data.shifts.expected = {k: counts[k] for k in data.shifts.expected}
    model = OmegaConf.load("conf/model/tiny_vit.yaml")
    return data, model


def test_imagenet_train_val_and_the_held_out_split(tree):
    root, counts = tree
    data = build_data(*imagenet_cfgs(root, counts))
    sets = data.eval_sets()
    assert len(sets["val"]) == 1000 and len(sets["test"]) == 1000  # held-out: 1 per class here
    assert len(data.train_paths) == counts["train"] - 1000
    assert not set(data.train_paths) & set(data.held_paths)
    assert sorted(sets["val"].labels.tolist()) == list(range(1000))
    assert list(sets) == ["val", "test", "imagenet_v2", "imagenet_r", "imagenet_sketch", "objectnet", "imagenet_a"]
    images, labels = next(sets["imagenet_r"].batches(2))
    assert images.shape == (2, 3, 32, 32)


def test_official_mask_file_is_used_and_checked(tree, tmp_path):
    root, counts = tree
    paths, _ = zip(*scan_class_folders(str(root / "train")))
    labels = torch.tensor([WNID_INDEX[p.split("/")[-2]] for p in paths])
    mask = np.zeros(len(paths), dtype=np.int64)
    mask[::2] = 1  # the first image of every class held out
    np.save(tmp_path / "idxs.npy", mask)
    held = held_out_mask(labels, str(tmp_path / "idxs.npy"), 26, 0, list(paths))
    assert held.sum() == 1000 and held[0] and not held[1]
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(ValueError, match="0/1 mask over the 2000"):
        held_out_mask(labels, str(tmp_path / "bad.npy"), 26, 0)
    mask[:] = 1  # > 1000 held out: the official sanity check applies and fails on this tree
    np.save(tmp_path / "all.npy", mask)
    with pytest.raises(ValueError, match="n01675722_4108.JPEG"):
        held_out_mask(labels, str(tmp_path / "all.npy"), 26, 0, list(paths))


def test_seeded_held_out_split_is_deterministic_and_per_class():
    labels = torch.arange(10).repeat_interleave(30)
    a, b = held_out_mask(labels, None, 3, 0), held_out_mask(labels, None, 3, 0)
    assert (a == b).all() and np.bincount(labels.numpy()[a]).tolist() == [3] * 10
    assert not (held_out_mask(labels, None, 3, 1) == a).all()


def test_v2_labels_come_from_folder_names(tree):
    root, _ = tree
    v2 = imagenet_v2(root / "imagenetv2-matched-frequency-format-val", IDENTITY, 4, 0)
    assert sorted(zip([p.split("/")[-2] for p in v2.paths], v2.labels.tolist())) == [
        ("0", 0), ("10", 10), ("2", 2), ("999", 999)]


def _v2_tree_of_every_image_mode(root):
    """One file per PIL mode an ImageNetV2 file could hold; odd sizes so that the resize interpolates."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, size=(29, 41, 3), dtype=np.uint8))
    alpha = Image.fromarray(rng.integers(0, 256, size=(29, 41), dtype=np.uint8))
    files = {"rgb.jpeg": rgb, "gray.jpeg": rgb.convert("L"), "cmyk.jpeg": rgb.convert("CMYK"),
             "palette.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
             "rgba.png": Image.merge("RGBA", (*rgb.split(), alpha))}
    for i, (name, img) in enumerate(files.items()):
        (root / str(i)).mkdir(parents=True)
        img.save(root / str(i) / name)
    return files


def test_v2_converts_to_rgb_after_the_crop_like_the_official_loader(tmp_path):
    from open_clip import image_transform

    from soups.data.store import StoredEvalSet

    root = tmp_path / "v2"
    files = _v2_tree_of_every_image_mode(root)
    transform = image_transform(24, is_train=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    v2 = imagenet_v2(root, transform, len(files), 0)
    official = torch.stack([transform(Image.open(p)) for p in v2.paths])  # imagenetv2_pytorch: no convert
    ours = torch.cat([x for x, _ in v2.batches(8)])
    assert torch.equal(ours, official)
    assert torch.equal(torch.cat([x for x, _ in StoredEvalSet(v2, tmp_path / "cache").batches(8)]), official)
    rgb_first = torch.stack([transform(Image.open(p).convert("RGB")) for p in v2.paths])
    modes = [Image.open(p).mode for p in v2.paths]
    differs = {m for m, a, b in zip(modes, rgb_first, official) if not torch.equal(a, b)}
    assert {"P", "RGBA"} <= differs and not differs & {"RGB", "L"}  # the order matters, and only for these


@pytest.mark.parametrize("family", ["timm", "hf"])
def test_v2_files_of_every_mode_reach_timm_and_transformers_models_as_rgb(tmp_path, family):
    """timm's eval transform and an image processor's steps have no RGB step of their own (their loaders
    convert first): a grayscale, palette, CMYK or RGBA file of ImageNet-V2 crashed with a broadcast error."""
    from omegaconf import OmegaConf

    from soups.models.classifier import eval_transform

    common = {"image_size": 24, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.25] * 3}
    model_cfg = OmegaConf.create(common | ({"timm_name": "test_resnet", "crop_pct": 0.875} if family == "timm"
                                           else {"hf_classifier": "folder", "hf_resize": 28, "hf_crop": 24,
                                                 "hf_resize_shortest": True}))
    transform = eval_transform(model_cfg)
    v2 = imagenet_v2(tmp_path / "v2", transform, len(_v2_tree_of_every_image_mode(tmp_path / "v2")), 0)
    ours = torch.cat([x for x, _ in v2.batches(8)])
    assert torch.equal(ours, torch.stack([transform(Image.open(p).convert("RGB")) for p in v2.paths]))
    assert ours.shape == (5, 3, 24, 24)


def test_imagenet_r_masks_logits_to_its_classes(tree):
    root, _ = tree
    r = imagenet_r(root / "imagenet-r", IDENTITY, 200, 0)
    logits = torch.zeros(1, 1000)
    logits[0, 0] = 9.0  # class 0 is not in the subset: must not win
    logits[0, 4] = 5.0  # ImageNet class 4 = third R class
    projected = r.project_logits(logits)
    assert projected.shape == (1, 200) and projected.argmax().item() == 2
    assert r.labels.tolist() == list(range(200))


@pytest.mark.parametrize("name, build", [("imagenet-r", imagenet_r), ("imagenet-a", imagenet_a)])
def test_r_and_a_classes_are_the_official_200_not_whatever_folders_exist(tree, tmp_path, name, build):
    """With a folder missing and the count check off, the task must not silently become 199-way."""
    root, _ = tree
    copy = tmp_path / name
    shutil.copytree(root / name, copy)
    shutil.rmtree(sorted(copy.iterdir())[5])
    with pytest.raises(DatasetLayoutError, match="missing 1 "):
        build(copy, IDENTITY, None, 0)
    extra = tmp_path / f"{name}-extra"  # (folder scans are cached by path: a new folder)
    shutil.copytree(root / name, extra)
    shutil.copytree(root / "sketch" / WNIDS[0], extra / WNIDS[0])  # a class not in the list
    with pytest.raises(DatasetLayoutError, match="missing 0 .*not in the list 1 "):
        build(extra, IDENTITY, None, 0)


def test_objectnet_projects_by_max_over_mapped_classes(tree):
    root, _ = tree
    on = objectnet(root / "objectnet-1.0", IDENTITY, 4, 0)
    alarm_clock, banana = 0, 2  # labels index the 113 sorted folders: alarm_clock, backpack, banana, ...
    assert len(on) == 4 and on.labels.tolist() == [alarm_clock] * 2 + [banana] * 2  # squeegee dropped
    logits = torch.zeros(2, 1000)
    logits[0, DIGITAL_CLOCK] = 3.0   # either clock counts for "Alarm clock"
    logits[0, BANANA] = 2.0
    logits[1, ANALOG_CLOCK] = 1.0
    logits[1, BANANA] = 4.0
    projected = on.project_logits(logits)
    assert projected.shape == (2, 113)
    assert projected[:, [alarm_clock, banana]].tolist() == [[3.0, 2.0], [1.0, 4.0]]


def test_objectnet_classes_are_pinned():
    groups = pinned_classes()
    assert len(groups) == 113 and sum(map(len, groups.values())) == 125
    assert len({i for ids in groups.values() for i in ids}) == 125  # no ImageNet class serves two
    assert mapping_digest(groups) == "94c146488afcb7f7c3153ef87b42c6d586e4b490bb7c5a5239d90c68129bc05f"
    assert groups["alarm_clock"] == [ANALOG_CLOCK, DIGITAL_CLOCK] and groups["banana"] == [BANANA]


def _names():
    return [IMAGENET_NAMES.get(999 - i, f"class {999 - i}") for i in range(1000)]


def _with_blank_line():  # the official parser fails on it; a loose one renumbers every later class
    names = _names()
    return names[:100] + [""] + names[100:]


def _blank_instead_of_a_name():
    names = _names()
    return names[:100] + [""] + names[101:]


def _duplicate_of_a_used_name():
    names = _names()
    names[0] = names[999 - BANANA]
    return names


@pytest.mark.parametrize("change, message", [
    (dict(lines=_with_blank_line()), "found 1001 lines, blank at line [101]"),
    (dict(lines=_blank_instead_of_a_name()), "found 1000 lines, blank at line [101]"),
    (dict(lines=_names() + ["class extra"]), "found 1001 lines"),
    (dict(lines=_duplicate_of_a_used_name()), "not exactly one line of imagenet_to_label_2012_v2 holds ['banana']"),
    (dict(groups={f: ids for f, ids in pinned_classes().items() if f != "banana"}), "1 folders differ, e.g. ['banana']"),
    (dict(groups={**pinned_classes(), "banana": [BANANA, 0]}), "113 classes over 126 ImageNet indices"),
])
def test_objectnet_mappings_are_parsed_strictly_and_checked_against_the_pin(tmp_path, change, message):
    root = tmp_path / "objectnet-1.0"
    (root / "images" / "banana").mkdir(parents=True)
    write_objectnet_mappings(root / "mappings", change.get("groups", pinned_classes()), change.get("lines"))
    with pytest.raises(DatasetLayoutError, match=re.escape(message)):
        objectnet(root, IDENTITY, None, 0)


def test_objectnet_label_without_a_folder_is_an_error(tmp_path):
    maps = tmp_path / "mappings"
    write_objectnet_mappings(maps, pinned_classes())
    labels = json.loads((maps / "folder_to_objectnet_label.json").read_text())
    del labels["banana"]
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(labels))
    with pytest.raises(DatasetLayoutError, match="'Banana' is no folder's label"):
        parse_mappings(maps)


def test_missing_root_wrong_count_and_wrong_layout_say_what_was_expected(tree, tmp_path):
    root, counts = tree
    data, model = imagenet_cfgs(tmp_path / "nowhere", counts)
    with pytest.raises(DatasetLayoutError, match="(?s)missing folder.*expected layout.*get it from"):
        build_data(data, model)
    data, model = imagenet_cfgs(root, counts)
    data.shifts.expected.imagenet_a = 7500
    with pytest.raises(DatasetLayoutError, match="imagenet_a: found 200 images, expected 7500"):
        build_data(data, model)
    with pytest.raises(DatasetLayoutError, match="named 0..999"):
        imagenet_v2(root / "sketch", IDENTITY, None, 0)


def test_verifier_reports_found_missing_and_counts(tree, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("verify_datasets", "scripts/verify_datasets.py")
    verify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify)
    root, counts = tree
    assert verify.main(["--root", str(root)]) == 1  # fake tree: counts differ from the real releases
    out = capsys.readouterr().out
    assert "imagenet_a       mismatch        200" in out and "found 200 images, expected 7500" in out
    assert verify.main(["--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.count("missing") >= 7
