"""Zero-shot head on a tiny CLIP config: shape, normalization, template averaging, offline tokenizer;
and a zero-shot init -> fine-tune -> soup run on the fake ImageNet tree."""
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_cfg
from fake_imagenet import make_tree
from soups.jobs.finetune import run_finetune
from soups.models.zero_shot import zero_shot_head
from soups.models.classifier import create_clip
from soups.jobs.soup import run_soup

TINY_VIT = OmegaConf.load("conf/model/tiny_vit.yaml")


def test_zero_shot_head_is_scaled_mean_of_normalized_template_embeddings():
    torch.manual_seed(0)
    clip = create_clip(TINY_VIT, load_pretrained=False).eval()
    tokenizer = open_clip.get_tokenizer(TINY_VIT.open_clip_name)  # bundled BPE vocabulary: offline
    classnames, templates = ["cat", "dog", "school bus"], ["a photo of a {}.", "a drawing of a {}."]
    weight, bias = zero_shot_head(clip, tokenizer, classnames, templates, 100.0, "cpu")
    assert weight.shape == (3, 64) and torch.equal(bias, torch.zeros(3))
    assert torch.allclose(weight.norm(dim=1), torch.full((3,), 100.0), atol=1e-3)
    with torch.no_grad():
        for i, name in enumerate(classnames):
            emb = F.normalize(clip.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1)
            expected = 100.0 * F.normalize(emb.mean(0), dim=0)
            assert torch.allclose(weight[i], expected, atol=1e-4)


def test_missing_pretrained_weights_say_how_to_supply_them(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.merge(TINY_VIT, {"open_clip_name": "ViT-B-32-quickgelu", "pretrained": "openai"})
    with pytest.raises(RuntimeError, match="model.pretrained=/path/to/checkpoint"):
        create_clip(cfg)


def test_zero_shot_init_finetune_and_soup_on_fake_imagenet(tmp_path, soup_cfg):
    counts = make_tree(tmp_path / "data")
    overrides = ["~experiment", "model=tiny_vit", "data=imagenet", "head=zero_shot", "head.templates=simple",
                 f"data.root={tmp_path}/data", "data.num_workers=0", "data.held_out.per_class=1",
                 f"data.expected_train_images={counts['train']}", f"data.expected_val_images={counts['val']}",
                 *[f"data.shifts.expected.{k}={counts[k]}" for k in ("imagenet_v2", "imagenet_r", "imagenet_sketch",
                                                                "objectnet", "imagenet_a")],
                 "batch_size=64", "epochs=1", "warmup_steps=2", "logger=none", "eval_batch_size=128"]
    sweep = tmp_path / "sweep"
    for i, lr in enumerate(["1e-4", "3e-4"]):
        info = run_finetune(compose_cfg("finetune", tmp_path, [*overrides, f"lr={lr}"]), sweep / str(i))
    init = json.loads(open(f"{info['init']['dir']}/init.json").read())
    assert init["head"]["_target_"] == "soups.heads.zero_shot.ZeroShot" and init["head"]["num_templates"] == len(
        open_clip.SIMPLE_IMAGENET_TEMPLATES)
    assert set(info["metrics"]) == {"val", "test", "imagenet_v2", "imagenet_r", "imagenet_sketch", "objectnet",
                                    "imagenet_a", "avg_shifts"}
    rows = run_soup(soup_cfg(f"pool.dir={sweep}"), tmp_path / "soup")
    assert [r["kind"] for r in rows][-2:] == ["soup", "soup"]
    assert json.loads((tmp_path / "soup" / "uniform" / "soup.json").read_text())["bn_recalibrated"] is False


@pytest.mark.filterwarnings("ignore:The number of unique classes")  # one image per class in the fake tree
def test_linear_probe_init_on_imagenet_caches_its_features(tmp_path, monkeypatch):
    import soups.heads.linear_probe
    from soups.heads.shared_init import shared_init

    counts = make_tree(tmp_path / "data")
    base = ["~experiment", "model=tiny_vit", "data=imagenet", "head=linear_probe", "head.train_per_class=1",
            "head.max_iter=50", f"data.root={tmp_path}/data", "data.num_workers=0", "data.held_out.per_class=1",
            f"data.expected_train_images={counts['train']}", f"data.expected_val_images={counts['val']}",
            *[f"data.shifts.expected.{k}={counts[k]}" for k in ("imagenet_v2", "imagenet_r", "imagenet_sketch",
                                                           "objectnet", "imagenet_a")], "eval_batch_size=256"]
    torch.manual_seed(0)  # the random tower's weights, as a job's seed makes them (they key the feature cache)
    init = shared_init(compose_cfg("finetune", tmp_path, [*base, "head.Cs=[1.0]"]), torch.device("cpu"))
    info = json.loads((init / "init.json").read_text())
    assert info["head"]["_target_"] == "soups.heads.linear_probe.LinearProbe" and 0 <= info["metrics"]["val"] <= 100
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 2
    calls = []
    monkeypatch.setattr(soups.heads.linear_probe, "extract_features", lambda *a, **k: calls.append(1))
    torch.manual_seed(0)
    shared_init(compose_cfg("finetune", tmp_path, [*base, "head.Cs=[0.1]"]), torch.device("cpu"))  # a new init
    assert calls == []  # the same tower's frozen features came from the cache


def test_pretrained_may_be_a_local_file(tmp_path):
    tiny = OmegaConf.load("conf/model/tiny_efficientnet.yaml")
    torch.manual_seed(1)
    source = create_clip(tiny, load_pretrained=False)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    loaded = create_clip(OmegaConf.merge(tiny, {"pretrained": str(tmp_path / "weights.pt")}))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
