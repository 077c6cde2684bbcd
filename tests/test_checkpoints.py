"""The official release's format: fake checkpoints with the exact key set of a random-init
ViT-B-32-quickgelu wrapper, converted and loaded into the project's model."""
import importlib.util
import io
import json
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from soups.io.checkpoints import convert_official_file, convert_official_state_dict
from soups.io.files import load_weights
from soups.models.classifier import build_classifier, create_clip

VIT_B32 = OmegaConf.load("conf/model/vit_b32.yaml")


def official_state_dict(seed: int = 0) -> dict:
    """What the official ModelWrapper saves: OpenAI CLIP minus its text transformer, plus the head."""
    torch.manual_seed(seed)
    clip = create_clip(VIT_B32, load_pretrained=False)
    state = {f"model.{k}": v for k, v in clip.state_dict().items() if not k.startswith("transformer.")}
    state["classification_head.weight"] = torch.randn(1000, 512)
    state["classification_head.bias"] = torch.randn(1000)
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("release") / "model_3.pt"
    state = official_state_dict()
    torch.save(state, path)
    return path, state


def test_official_key_set_matches_the_release_description(official_file):
    _, state = official_file
    assert {"model.visual.conv1.weight", "model.visual.proj", "model.token_embedding.weight",
            "model.positional_embedding", "model.text_projection", "model.logit_scale",
            "model.ln_final.weight"} <= set(state)
    assert not any(k.startswith("model.transformer.") for k in state)
    assert state["classification_head.weight"].shape == (1000, 512)


def test_conversion_round_trip_gives_the_official_logits(official_file, tmp_path):
    path, state = official_file
    model = build_classifier(VIT_B32, 1000, load_pretrained=False).eval()
    out = convert_official_file(path, tmp_path, expected=model.state_dict())
    assert convert_official_file(path, tmp_path) == out  # converted once
    weights = load_weights(out)
    assert set(weights) == set(model.state_dict())
    model.load_state_dict(weights, strict=True)
    for key, value in weights.items():
        source = "classification_head." + key[5:] if key.startswith("head.") else "model." + key
        assert torch.equal(value, state[source].float())
    # the official forward: L2-normalized image features -> linear head
    clip = create_clip(VIT_B32, load_pretrained=False).eval()
    clip.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")}, strict=False)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = F.normalize(clip.encode_image(images), dim=-1) @ state["classification_head.weight"].T \
            + state["classification_head.bias"]
        assert torch.allclose(model(images), expected, atol=1e-4)


def test_checkpoint_of_another_architecture_is_refused(official_file):
    _, state = official_file
    vit_b16 = build_classifier(OmegaConf.load("conf/model/vit_b16.yaml"), 1000, load_pretrained=False)
    with pytest.raises(ValueError, match="another architecture"):
        convert_official_state_dict(state, expected=vit_b16.state_dict())
    with pytest.raises(ValueError, match="not an official model-soups checkpoint"):
        convert_official_state_dict({"visual.conv1.weight": torch.zeros(1)})


def test_truncated_checkpoint_is_a_clear_error(official_file, tmp_path):
    path, _ = official_file
    bad = tmp_path / "model_9.pt"
    bad.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(ValueError, match="truncated"):
        convert_official_file(bad, tmp_path / "out")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the file


def test_a_checkpoint_holding_code_is_refused_and_the_code_never_runs(tmp_path):
    marker, bad = tmp_path / "pwned", tmp_path / "model_9.pt"
    torch.save({"visual.proj": RunsCode(marker)}, bad)
    with pytest.raises(ValueError, match="model_9.pt"):
        convert_official_file(bad, tmp_path / "out")
    assert not marker.exists()


def load_download_script():
    spec = importlib.util.spec_from_file_location("download_checkpoints", "scripts/download_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeServer:
    """Serves bytes per URL with HTTP Range support; counts requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []

    def __call__(self, request):
        data = self.files[request.full_url]
        self.requests.append((request.full_url, request.headers.get("Range")))
        start = int(request.headers["Range"][6:-1]) if "Range" in request.headers else 0
        if start >= len(data):  # RFC 9110: 416, with the full size
            raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable",
                                         {"Content-Range": f"bytes */{len(data)}"}, None)
        response = io.BytesIO(data[start:self.cut] if self.cut else data[start:])
        response.status = 206 if start else 200
        response.headers = ({"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start
                            else {"Content-Length": str(len(data))})
        return response

    cut = None  # serve the bytes only up to here (a connection that ends early)


def test_download_resumes_records_sha256_and_skips_complete_files(tmp_path):
    script = load_download_script()
    files = {script.RELEASE.format(i=i): bytes([i]) * (3 * script.CHUNK + 5) for i in (0, 1)}
    server = FakeServer(files)
    out = tmp_path / "ckpts"
    out.mkdir()
    (out / "model_1.pt.part").write_bytes(files[script.RELEASE.format(i=1)][:1000])  # an interrupted download
    assert script.main(["--out", str(out), "--models", "0-1", "--no-metadata", "--jobs", "1"], opener=server) == 0
    assert (out / "model_1.pt").read_bytes() == files[script.RELEASE.format(i=1)]
    assert (script.RELEASE.format(i=1), "bytes=1000-") in server.requests
    record = json.loads((out / "sha256.json").read_text())
    assert record["model_0.pt"] == script.sha256(out / "model_0.pt")
    server.requests.clear()
    script.main(["--out", str(out), "--models", "0-1", "--no-metadata"], opener=server)
    assert server.requests == []  # both complete: nothing fetched
    (out / "model_0.pt").write_bytes(b"corrupted")
    script.main(["--out", str(out), "--models", "0-1", "--no-metadata"], opener=server)
    assert [url for url, _ in server.requests] == [script.RELEASE.format(i=0)]
    assert (out / "model_0.pt").read_bytes() == files[script.RELEASE.format(i=0)]


def one_release_file(tmp_path, i: int, part):
    """(script, url, bytes, server, out folder) for model_<i>, whose `.part` already holds part(bytes)."""
    script = load_download_script()
    url, data = script.RELEASE.format(i=i), bytes(range(256)) * 9
    out = tmp_path / "ckpts"
    out.mkdir()
    (out / f"model_{i}.pt.part").write_bytes(part(data))
    return script, url, data, FakeServer({url: data}), out


def test_a_complete_part_is_renamed_not_refetched_forever(tmp_path):
    """Killed between the last write and the rename: the rerun's Range request gets 416 and the file's size."""
    script, url, data, server, out = one_release_file(tmp_path, 3, part=lambda data: data)
    assert script.main(["--out", str(out), "--models", "3", "--no-metadata"], opener=server) == 0
    assert (out / "model_3.pt").read_bytes() == data and not (out / "model_3.pt.part").exists()
    assert server.requests == [(url, f"bytes={len(data)}-")]
    assert json.loads((out / "sha256.json").read_text())["model_3.pt"] == script.sha256(out / "model_3.pt")


def test_a_part_longer_than_the_file_starts_over_and_a_short_download_fails_keeping_the_part(tmp_path):
    script, url, data, server, out = one_release_file(tmp_path, 4, part=lambda data: data + b"junk")
    server.cut = 1000  # the connection ends after 1000 bytes, without an error
    assert script.main(["--out", str(out), "--models", "4", "--no-metadata"], opener=server) == 1
    assert not (out / "model_4.pt").exists() and (out / "model_4.pt.part").read_bytes() == data[:1000]
    server.cut = None
    assert script.main(["--out", str(out), "--models", "4", "--no-metadata"], opener=server) == 0
    assert (out / "model_4.pt").read_bytes() == data
    assert server.requests[-1] == (url, "bytes=1000-")
