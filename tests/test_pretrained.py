"""The embedded default's weights are real ImageNet weights, and they really land in the tower."""
import open_clip
import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from soups.models.classifier import build_classifier
from soups.models.pretrained import efficientnet_lite0_state_dict, resolve_image_tower_weights

DEMO_MODEL = OmegaConf.load("conf/model/efficientnet_lite0.yaml")


def test_packaged_efficientnet_lite0_classifies_a_photo_of_a_palace():
    from sklearn.datasets import load_sample_image

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(efficientnet_lite0_state_dict(with_classifier=True), strict=True)
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    image = transform(Image.fromarray(load_sample_image("china.jpg"))).unsqueeze(0)
    with torch.no_grad():
        top = model(image).softmax(-1).topk(3).indices[0].tolist()
    assert open_clip.IMAGENET_CLASSNAMES[top[0]] == "palace", [open_clip.IMAGENET_CLASSNAMES[i] for i in top]


def test_demo_model_tower_holds_every_packaged_tensor(tmp_path):
    model = build_classifier(DEMO_MODEL, num_classes=10, cache_dir=tmp_path)
    expected = efficientnet_lite0_state_dict(with_classifier=False)
    tower = model.visual.state_dict()
    assert len(expected) > 250
    for key, tensor in expected.items():
        assert torch.equal(tower[f"trunk.{key}"], tensor), key
    assert model.head.weight.shape == (10, 1280)


def test_tower_weights_that_do_not_fit_are_an_error_not_a_silent_random_init(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"trunk.conv_stem.weight": torch.zeros(1, 1, 1, 1)}, str(bad))
    cfg = OmegaConf.merge(DEMO_MODEL, {"image_tower_weights": str(bad)})
    with pytest.raises(RuntimeError, match="did not load"):
        build_classifier(cfg, num_classes=10, cache_dir=tmp_path)


def test_unknown_tower_weights_name_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        resolve_image_tower_weights("efficientnet_b7_imaginary", tmp_path)


def test_the_head_and_its_argmax_stay_fp32_under_bf16_autocast():
    """Logits 30.13 and 30.17 (class 1) both round to 30.125 in bf16, where argmax would pick class 0."""
    from soups.models.classifier import ImageClassifier
    from soups.runtime import autocast

    model = ImageClassifier(torch.nn.Identity(), feature_dim=2, num_classes=2, normalize_features=False)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[30.13, 0.0], [30.17, 0.0]]))
        model.head.bias.zero_()
    x = torch.tensor([[1.0, 0.0]])
    assert torch.tensor([30.13, 30.17]).bfloat16().unique().numel() == 1  # the tie bf16 would make
    with autocast("bf16", torch.device("cpu")):
        logits = model(x)
    assert logits.dtype == torch.float32 and logits.argmax(-1).item() == 1
