import re

import torch
from omegaconf import OmegaConf

from soups.data import build_data
from soups.data.mnist import MnistData
from soups.data.digits import mnist_splits, sklearn_digits

DATA = OmegaConf.load("conf/data/mnist.yaml")
MODEL = OmegaConf.load("conf/model/efficientnet_lite0.yaml")
SHIFTS = DATA.shifts  # the dataset brings its shifts


def test_splits_are_disjoint_stratified_and_deterministic():
    a = mnist_splits(30, 10, 20, seed=0)
    b = mnist_splits(30, 10, 20, seed=0)
    for name, n in (("train", 30), ("val", 10), ("test", 20)):
        assert torch.equal(a[name].images, b[name].images)
        assert torch.bincount(a[name].labels).tolist() == [n] * 10
    flat = {name: {bytes(img.numpy()) for img in a[name].images} for name in a}
    assert not flat["train"] & flat["val"] and not flat["train"] & flat["test"] and not flat["val"] & flat["test"]
    assert not torch.equal(mnist_splits(30, 10, 20, seed=1)["train"].images, a["train"].images)


def test_sklearn_digits_are_framed_like_mnist():
    digits = sklearn_digits()
    assert digits.images.shape == (1797, 28, 28) and digits.images.dtype == torch.uint8
    assert digits.images[:, :4].max() == 0 and digits.images[:, :, 24:].max() == 0
    assert digits.images.max() == 255


def test_default_data_and_shifts_have_the_configured_sizes():
    data = build_data(DATA, MODEL)
    assert isinstance(data, MnistData)
    per_class = DATA.train_per_class, DATA.val_per_class, DATA.test_per_class
    assert (len(data.train), len(data.val), len(data.test)) == tuple(10 * n for n in per_class)
    assert list(data.shift_sets) == list(SHIFTS.names)
    assert all(len(s) == min(SHIFTS.max_images, len(s)) for s in data.shift_sets.values())
    invert = data.shift_sets["invert"]
    assert invert.images.float().mean() > 128 > data.test.images.float().mean()


def test_eval_sets_resize_once_and_normalize_per_batch():
    model_cfg = OmegaConf.create({"image_size": 40, "mean": [0.5] * 3, "std": [0.5] * 3})
    data = MnistData(**{k: v for k, v in OmegaConf.to_container(DATA).items() if k != "_target_"}).load(model_cfg)
    sets = data.eval_sets()
    assert sets["val"].images.shape == (len(data.val), 3, 40, 40)
    images, labels = next(sets["val"].batches(8))
    assert images.shape == (8, 3, 40, 40) and -1.0 <= images.min() and images.max() <= 1.0
    assert torch.equal(labels, data.val.labels[:8])


def test_a_dataset_brings_its_own_shifts_and_one_without_them_is_refused(tmp_path):
    """`data=X` alone is evaluated on X's shifts (once a separate `shifts` group silently kept MNIST's)."""
    import pytest
    from conftest import compose_cfg

    from soups.errors import BadInput

    expected = {"mnist": ["digits", "rotate", "invert", "blur"], "sentiment": ["amazon", "tweets", "nyt"],
                "imagenet": ["imagenet_v2", "imagenet_r", "imagenet_sketch", "objectnet", "imagenet_a"]}
    for name, shifts in expected.items():
        cfg = compose_cfg("finetune", tmp_path, ["~experiment", f"data={name}"])
        assert list(cfg.data.shifts.names) == shifts, name
    no_shifts = OmegaConf.create({k: v for k, v in OmegaConf.to_container(DATA).items() if k != "shifts"})
    with pytest.raises(BadInput, match="names no shifts"):
        build_data(no_shifts, MODEL)
    # a dataset's settings are checked like every plug-in's, before any file is read: a misspelled key is refused
    with pytest.raises(BadInput, match=r"data.trian_per_class is not a setting of MnistData \(its settings: name, "):
        build_data(OmegaConf.merge(DATA, {"trian_per_class": 3}), MODEL)
    with pytest.raises(BadInput, match="train_per_class='many': expected int"):
        build_data(OmegaConf.merge(DATA, {"train_per_class": "many"}), MODEL)


def test_shift_settings_are_checked_like_every_setting():
    import pytest

    from soups.errors import BadInput

    for bad, said in ((("max_images", "abc"), "data.shifts.max_images='abc'"), (("max_images", 0), "max_images=0"),
                      (("seed", "abc"), "data.shifts.seed='abc'"), (("names", ["rotate", "rotate"]), "distinct names"),
                      (("names", "rotate"), "`names`, a list")):
        with pytest.raises(BadInput, match=re.escape(said)):
            build_data(OmegaConf.merge(DATA, {"shifts": dict([bad])}), MODEL)


def test_a_shift_setting_the_dataset_does_not_read_is_refused_not_ignored():
    """`+data.shifts.max_image=50` (for max_images) left 500 images per shift, the typo unread."""
    import pytest

    from soups.data.imagenet import ImageNetData
    from soups.errors import BadInput

    with pytest.raises(BadInput, match=re.escape("data.shifts.max_image: not a setting of MnistData's shifts (its "
                                                 "settings: ['names', 'max_images', 'seed'])")):
        build_data(OmegaConf.merge(DATA, {"shifts": {"max_image": 50}}), MODEL)
    imagenet = OmegaConf.merge(OmegaConf.load("conf/data/imagenet.yaml"), {"root": "/nonexistent"})
    assert set(imagenet.shifts) <= set(ImageNetData.shift_settings)  # its own config passes
    with pytest.raises(BadInput, match=re.escape("data.shifts.max_images: not a setting of ImageNetData's shifts")):
        build_data(OmegaConf.merge(imagenet, {"shifts": {"max_images": 100}}), MODEL)  # ImageNet's shifts are whole


def test_a_held_out_setting_imagenet_does_not_read_is_refused_not_ignored():
    """`+data.held_out.idxs_fil=...` (for idxs_file) held out a seeded split instead of the paper's, the typo unread."""
    import pytest

    from soups.errors import BadInput

    imagenet = OmegaConf.merge(OmegaConf.load("conf/data/imagenet.yaml"), {"root": "/nonexistent"})
    with pytest.raises(BadInput, match=re.escape("held_out.idxs_fil: held_out has no setting `idxs_fil`, so nothing "
                                                 "would read it; did you mean idxs_file?")):
        build_data(OmegaConf.merge(imagenet, {"held_out": {"idxs_fil": "split.npy"}}), MODEL)
