"""pool=files: checkpoints written by open_clip_train's own trainer and timm's own CheckpointSaver, souped through
`python src/soup.py`, exported back and loaded by open_clip / timm to the same logits; files that need
code to unpickle are refused without running it."""
import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import commands
from conftest import ROOT
from soups.errors import BadInput
from soups.io.foreign import read_checkpoint, strip_prefixes

DIGITS = "[zero,one,two,three,four,five,six,seven,eight,nine]"
MNIST = ["data=mnist", "data.train_per_class=2", "data.val_per_class=10", "data.test_per_class=10",
         "data.shifts.max_images=20", "logger=none", "eval_batch_size=64"]


def soup(tmp_path, *overrides, check=True):
    proc = commands.project("src/soup.py", f"hydra.run.dir={tmp_path}/soup", *MNIST, *overrides, tmp=tmp_path)
    return commands.succeeded(proc) if check else proc


def export(soup_dir: Path, to: str, clip: Path | None = None) -> dict:
    """`python scripts/export_soup.py SOUP_DIR --to ...`: its export.json."""
    extra = ["--clip", clip] if clip else []
    proc = commands.succeeded(commands.project("scripts/export_soup.py", soup_dir, "--to", to, *extra))
    assert "load it with:" in proc.stdout
    return json.loads((soup_dir / "export.json").read_text())


def perturbed(state: dict, scale: float, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def write_open_clip_train(folder: Path, n: int = 3, image_size: int = 32) -> dict:
    """n fine-tunes of one tiny CLIP from one init: n - 1 written by open_clip_train itself (its `main`, 2 epochs
    of 4 contrastive steps on its synthetic data, `--pretrained` the init: `<run>/checkpoints/epoch_2.pt`), the
    last a bare state dict, as open_clip's own saving of a model; returns the init's state dict."""
    import sys

    from soups.models.classifier import create_clip
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    clip = create_clip(OmegaConf.merge(OmegaConf.load(ROOT / "conf/model/tiny_clip.yaml"), {"image_size": image_size}),
                       load_pretrained=False)
    init = {k: v.clone() for k, v in clip.state_dict().items()}
    folder.mkdir(parents=True)
    torch.save(init, folder / "init.pt")
    main = folder / "open_clip_train_main.py"  # the trainer, with this project's tiny config registered
    main.write_text("import sys\nimport soups.models.classifier\nfrom open_clip_train.main import main\n"
                    "main(sys.argv[1:])\n")
    for i in range(n - 1):
        commands.succeeded(commands.run(
            [sys.executable, str(main), "--dataset-type", "synthetic", "--train-num-samples", "16", "--batch-size", "4",
             "--epochs", "2", "--model", "tiny-native-clip", "--pretrained", str(folder / "init.pt"),
             "--force-image-size", str(image_size), "--logs", str(folder), "--name", f"run{i}", "--workers", "0",
             "--precision", "fp32", "--lr", f"{1e-3 * (i + 1)}", "--warmup", "1", "--seed", str(i), "--device", "cpu",
             "--report-to", "", "--save-frequency", "1"], cwd=folder, capture_output=True, text=True, timeout=600))
    last = folder / f"run{n - 1}" / "checkpoints"
    last.mkdir(parents=True)
    torch.save(perturbed(init, 0.02, seed=n), last / "epoch_2.pt")
    (folder / "init.pt").unlink()
    return init


def test_open_clip_train_checkpoints_soup_and_export_back_to_open_clip(tmp_path):
    import open_clip
    from safetensors.torch import load_file

    import soups.models.classifier  # noqa: F401 - registers the tiny model config with open_clip
    write_open_clip_train(tmp_path / "ckpts")
    soup(tmp_path, "pool=files", f"pool.glob={tmp_path}/ckpts/*/checkpoints/epoch_2.pt", "model=tiny_clip",
         f"pool.classnames={DIGITS}", "pool.templates=simple", "method=[uniform,greedy]")
    rows = json.loads((tmp_path / "soup" / "results.json").read_text())
    assert [r["row"] for r in rows][:3] == ["run0/epoch_2.pt", "run1/epoch_2.pt", "run2/epoch_2.pt"]
    uniform = tmp_path / "soup" / "uniform"
    record = json.loads(next((tmp_path / "cache" / "foreign").glob("epoch_2-*.json")).read_text())
    assert record["format"] == "open_clip" and record["head"] == "zero-shot (own text tower)"

    exported = export(uniform, "open_clip", tmp_path / "ckpts" / "run0" / "checkpoints" / "epoch_2.pt")
    model, _, _ = open_clip.create_model_and_transforms("tiny-native-clip", pretrained=exported["file"])
    assert "create_model_and_transforms('tiny-native-clip'" in exported["load"]
    head = load_file(str(uniform / "head.safetensors"))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        theirs = F.normalize(model.eval().encode_image(images), dim=-1) @ head["weight"].T + head["bias"]
        ours = classifier_with(uniform)(images)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def classifier_with(soup_dir: Path):
    from omegaconf import OmegaConf

    from soups.io.files import load_weights
    from soups.models.classifier import build_classifier

    info = json.loads((soup_dir / "run.json").read_text())
    model = build_classifier(OmegaConf.create(info["config"]["model"]), info["config"]["data"]["num_classes"],
                             load_pretrained=False)
    model.load_state_dict(load_weights(soup_dir / "model.safetensors"))
    return model.eval()


def write_timm_train(folder: Path, n: int = 3) -> dict:
    """n fine-tunes of timm's test_vit, saved by timm's own CheckpointSaver as its train.py saves them
    (`<run>/checkpoint-2.pth.tar`, `last.pth.tar`, `model_best.pth.tar`: state_dict, state_dict_ema, args, the
    saver's state); run i's weights are perturbed(init, 0.02, seed=10 + i), its EMA's seed 20 + i."""
    import timm
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=10, img_size=32)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(n):
        args = argparse.Namespace(model="test_vit", lr=1e-4 * (i + 1), weight_decay=0.05, epochs=3, smoothing=0.1,
                                  data_dir="/data/mnist", workers=4, model_ema=True)
        model.load_state_dict(perturbed(init, 0.02, seed=10 + i))
        ema = ModelEmaV3(model, decay=0.99)
        ema.module.load_state_dict(perturbed(init, 0.02, seed=20 + i))
        out = folder / f"run{i}"
        out.mkdir(parents=True)
        saver = CheckpointSaver(model, torch.optim.AdamW(model.parameters(), lr=args.lr), args=args, model_ema=ema,
                                checkpoint_dir=str(out), recovery_dir=str(out))
        saver.save_checkpoint(epoch=2, metric=0.5)
    return init


def test_timm_train_checkpoints_ema_soup_and_export_back_to_timm(tmp_path):
    import timm

    write_timm_train(tmp_path / "train")
    soup(tmp_path, "pool=files", f"pool.glob={tmp_path}/train/*/model_best.pth.tar", "pool.ema=true", "model=timm",
         "model.timm_name=test_vit", "model.timm_kwargs={img_size:32}", "model.image_size=32", "method=uniform")
    rows = json.loads((tmp_path / "soup" / "results.json").read_text())
    run0 = next(r for r in rows if r["row"] == "run0/model_best.pth.tar")
    assert run0["hparams"] == {"model": "test_vit", "lr": 1e-4, "weight_decay": 0.05, "epochs": 3, "smoothing": 0.1,
                               "model_ema": True}  # training settings, not timm's plumbing (data_dir, workers)
    # the EMA weights were souped: the uniform soup is their mean
    from soups.io.files import load_weights
    emas = [torch.load(p, weights_only=False)["state_dict_ema"] for p in sorted((tmp_path / "train").glob("*/model_best.pth.tar"))]
    uniform = tmp_path / "soup" / "uniform"
    soup_state = load_weights(uniform / "model.safetensors")
    torch.testing.assert_close(soup_state["head.weight"], sum(e["head.weight"].double() for e in emas).float() / 3)

    exported = export(uniform, "timm")
    model = timm.create_model("test_vit", checkpoint_path=exported["file"], num_classes=10, img_size=32).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), classifier_with(uniform)(images), rtol=0, atol=0)


class Payload:
    """Unpickling this runs `touch <marker>`: what a malicious or code-carrying checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_needs_code_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}, folder / "wise_ft.pt")
    proc = soup(tmp_path, "pool=files", f"pool.glob={folder}/*.pt", "model=tiny_vit", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "needs code to unpickle" in proc.stderr and "convert_checkpoint.py --allow-pickle" in proc.stderr
    assert not marker.exists()
    refused = commands.project("scripts/convert_checkpoint.py", folder / "wise_ft.pt")
    assert refused.returncode == 1 and "--allow-pickle" in refused.stderr and not marker.exists()


def test_a_trusted_whole_module_converts_to_safetensors_and_soups_like_its_state_dict(tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=10, img_size=32)
    torch.save(model, tmp_path / "whole.pt")  # a pickled module (its class is importable here)
    done = commands.project("scripts/convert_checkpoint.py", "--allow-pickle", tmp_path / "whole.pt")
    assert done.returncode == 0, done.stderr
    state, record = read_checkpoint(tmp_path / "whole.safetensors")
    assert record["format"] == "safetensors" and state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_prefixes_formats_and_bad_files_are_named(tmp_path):
    state = {"_orig_mod.module.visual.w": torch.ones(2), "_orig_mod.module.head.weight": torch.ones(1)}
    stripped, prefixes = strip_prefixes(state)
    assert sorted(stripped) == ["head.weight", "visual.w"] and prefixes == ["_orig_mod.", "module."]
    torch.save({"state_dict": {"a": torch.ones(1)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "timm.pth.tar")
    with pytest.raises(BadInput, match="no state_dict_ema"):
        read_checkpoint(tmp_path / "timm.pth.tar", ema=True)
    with pytest.raises(BadInput, match="is a timm checkpoint, not pool.format=open_clip"):
        read_checkpoint(tmp_path / "timm.pth.tar", "open_clip")
    assert read_checkpoint(tmp_path / "timm.pth.tar")[1]["hparams"] == {"lr": 0.1}
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(BadInput, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(BadInput, match="expected a state dict"):
        read_checkpoint(tmp_path / "list.pt")


def test_mixed_architectures_non_finite_and_missing_files_are_refused_before_work(tmp_path):
    import timm

    folder = tmp_path / "ckpts"
    folder.mkdir()
    good = timm.create_model("test_vit", num_classes=10, img_size=32).state_dict()
    torch.save(good, folder / "a.pt")
    other = timm.create_model("test_vit", num_classes=5, img_size=32).state_dict()
    torch.save(other, folder / "b.pt")
    timm_args = ["pool=files", "model=timm", "model.timm_name=test_vit", "model.timm_kwargs={img_size:32}",
                 "model.image_size=32", "method=uniform"]
    proc = soup(tmp_path, *timm_args, f"pool.glob={folder}/*.pt", check=False)
    assert proc.returncode == 1 and "b.pt does not fit model=timm with 10 classes" in proc.stderr
    bad = dict(good)
    bad["head.bias"] = torch.full_like(good["head.bias"], float("nan"))
    torch.save(bad, folder / "b.pt")
    proc = soup(tmp_path, *timm_args, f"pool.glob={folder}/*.pt", check=False)
    assert proc.returncode == 1 and "NaN or inf" in proc.stderr
    proc = soup(tmp_path, *timm_args, f"pool.glob={folder}/none*.pt", check=False)
    assert proc.returncode == 1 and "matches no files" in proc.stderr


def test_the_init_file_is_the_first_row_and_lets_wise_ft_run_and_a_mixed_pool_is_refused(tmp_path):
    """pool.init names the shared init: evaluated as the table's first row and the end WiSE-FT starts from;
    a pool of timm and safetensors files together is refused by name."""
    import timm
    from safetensors.torch import save_file

    init = write_timm_train(tmp_path / "train", n=2)
    torch.save(init, tmp_path / "init.pt")
    timm_args = ["pool=files", "model=timm", "model.timm_name=test_vit", "model.timm_kwargs={img_size:32}",
                 "model.image_size=32"]
    soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/*/model_best.pth.tar", f"pool.init={tmp_path}/init.pt",
         "method=wise_ft", "method.wise_ft.alphas=[0.0,1.0]")
    rows = json.loads((tmp_path / "soup" / "results.json").read_text())
    assert rows[0]["row"] == "initialization"
    curve = next(r for r in rows if r["kind"] == "soup")["curve"]
    assert {k: v for k, v in curve[0].items() if k != "alpha"} == rows[0]["metrics"]  # alpha 0: the init itself
    # EMA fine-tunes from a bare pretrained init: the ingredients' state_dict_ema, the init's only weights
    soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/*/model_best.pth.tar", f"pool.init={tmp_path}/init.pt",
         "pool.ema=true", "method=wise_ft", "method.wise_ft.alphas=[0.0,1.0]")
    ema_rows = json.loads((tmp_path / "soup" / "results.json").read_text())
    assert ema_rows[0]["row"] == "initialization" and ema_rows[0]["metrics"] == rows[0]["metrics"]
    proc = soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/*", "method=uniform", check=False)
    assert proc.returncode == 1 and "matches folders" in proc.stderr
    save_file(timm.create_model("test_vit", num_classes=10, img_size=32).state_dict(),
              tmp_path / "train" / "run0" / "x.safetensors")
    proc = soup(tmp_path, *timm_args, f"pool.glob='{tmp_path}/train/*/[mx]*'", "method=uniform", check=False)
    assert proc.returncode == 1 and "mixed checkpoint formats" in proc.stderr
    (tmp_path / "train" / "run0" / "x.safetensors").unlink()
    # timm's saver writes checkpoint-2, last and model_best of each run: globbed together, one run would weigh thrice
    proc = soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/*/*.pth.tar", "method=uniform", check=False)
    assert proc.returncode == 1 and "are the same checkpoint" in proc.stderr
    (tmp_path / "train" / "copy").mkdir()
    (tmp_path / "train" / "copy" / "model_best.pth.tar").write_bytes((tmp_path / "train/run0/model_best.pth.tar").read_bytes())
    proc = soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/*/model_best.pth.tar", "method=uniform", check=False)
    assert proc.returncode == 1 and "are the same checkpoint" in proc.stderr  # it would weigh double
    run0 = perturbed(init, 0.02, seed=10)  # run0's weights, saved again as a bare state dict inside timm's container
    torch.save({"epoch": 9, "arch": "test_vit", "state_dict": run0, "state_dict_ema": run0, "version": 2},
               tmp_path / "train" / "copy" / "model_best.pth.tar")  # other bytes, the same weights
    proc = soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/*/model_best.pth.tar", "method=uniform", check=False)
    assert proc.returncode == 1 and "are the same checkpoint (equal weights)" in proc.stderr, proc.stderr[-800:]
    shutil.rmtree(tmp_path / "train" / "copy")
    save_file({"weight": torch.zeros(10, 4), "bias": torch.zeros(10)}, tmp_path / "head.safetensors")
    proc = soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/*/model_best.pth.tar", f"pool.head_file={tmp_path}/head.safetensors",
                "method=uniform", check=False)  # these checkpoints hold their own head: the file would go unused
    assert proc.returncode == 1 and "would not be used" in proc.stderr and "holds its own head" in proc.stderr
    proc = soup(tmp_path, *timm_args, f"pool.glob={tmp_path}/train/run*/model_best.pth.tar", "method=wise_ft", check=False)
    assert proc.returncode == 1 and "pool.init=FILE" in proc.stderr


def test_an_init_with_ema_weights_is_read_as_timms_initial_checkpoint_loads_it(tmp_path):
    """timm's train.py builds the model with create_model(checkpoint_path=--initial-checkpoint), which loads the
    file's state_dict_ema where it has one (load_checkpoint's use_ema=True): the fine-tunes started there, so
    pool.init is read so too, with or without pool.ema (it took the plain state_dict without pool.ema, and the
    pairs analysis then measured 30° angles between displacements that are 90° from the real start)."""
    import timm

    from conftest import compose_cfg
    from soups.io.files import load_weights
    from soups.pools import open_pool

    base = write_timm_train(tmp_path / "train", n=2)
    init = {"epoch": 9, "arch": "test_vit", "state_dict": perturbed(base, 0.02, seed=30),
            "state_dict_ema": perturbed(base, 0.02, seed=31), "version": 2}  # an earlier run's model_best
    torch.save(init, tmp_path / "init.pth.tar")
    started = timm.create_model("test_vit", num_classes=10, img_size=32, checkpoint_path=str(tmp_path / "init.pth.tar"))
    timm_start = started.state_dict()
    assert torch.equal(timm_start["head.weight"], init["state_dict_ema"]["head.weight"])  # timm's own rule
    for ema in ("false", "true"):
        cfg = compose_cfg("soup", tmp_path, [*MNIST, "pool=files", f"pool.glob={tmp_path}/train/*/model_best.pth.tar",
                                             f"pool.init={tmp_path}/init.pth.tar", f"pool.ema={ema}", "model=timm",
                                             "model.timm_name=test_vit", "model.timm_kwargs={img_size:32}",
                                             "model.image_size=32"])
        read = load_weights(open_pool(cfg, torch.device("cpu")).init_weights)
        assert all(torch.equal(read[k], timm_start[k]) for k in timm_start), ema


def _export_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_soup", ROOT / "scripts" / "export_soup.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("model_name", ["tiny_efficientnet", "tiny_vit"])
def test_a_soup_of_a_timm_tower_exports_to_timm_with_the_soups_logits_and_preprocessing(tmp_path, model_name):
    """An open_clip model whose image tower is a timm model (the demos' EfficientNet-Lite0 and DINOv2 ViT) goes
    back to timm: the line export.json gives builds a timm classifier whose logits are the soup's on the same
    input, and whose transform feeds it the tensor the soup was measured on; normalized features are refused."""
    import numpy as np
    import timm
    from omegaconf import OmegaConf
    from PIL import Image
    from safetensors.torch import save_file

    from soups.models.classifier import build_classifier, eval_transform

    model = {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{model_name}.yaml")),
             "normalize_features": False}  # as the demos' models (tiny_vit's CLIP-style head normalizes)
    cfg = OmegaConf.create(model)
    soup = build_classifier(cfg, 10, load_pretrained=False).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a head and BN statistics that are not their defaults
        for k, v in soup.state_dict().items():
            if v.is_floating_point() and v.dim() and not k.endswith("running_var"):
                v.add_(0.05 * torch.randn_like(v))
    save_file({k: v.contiguous() for k, v in soup.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "run.json").write_text(json.dumps({"config": {"model": model, "data": {"num_classes": 10}}}))
    record = _export_script().export(tmp_path, "timm")
    assert record["file"] == str(tmp_path / "timm.safetensors")
    scope = {"timm": timm}
    exec(record["load"], scope)  # the user's line, as written
    exported, preprocess = scope["model"].eval(), scope["preprocess"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 37, 3), dtype=np.uint8))
    x = preprocess(image)
    assert torch.equal(x, eval_transform(cfg)(image))
    batch = torch.stack([x, eval_transform(cfg)(image.rotate(90, expand=True))])
    with torch.no_grad():
        assert torch.allclose(exported(batch), soup(batch), atol=1e-5)
    model["normalize_features"] = True
    (tmp_path / "run.json").write_text(json.dumps({"config": {"model": model, "data": {"num_classes": 10}}}))
    with pytest.raises(BadInput, match="L2-normalized features"):
        _export_script().export(tmp_path, "timm")


def test_an_open_clip_export_never_carries_a_random_text_tower(tmp_path):
    """The ViT demo's model has a pretrained image tower only: `--to open_clip` once ended in a traceback
    (a cache_dir for the tower), and would otherwise have written a randomly initialised text tower."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    script = _export_script()
    model = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "vit_s14_dinov2.yaml"))
    (tmp_path / "run.json").write_text(json.dumps({"config": {"model": model, "data": {"num_classes": 10}}}))
    save_file({"head.weight": torch.zeros(10, 4), "head.bias": torch.zeros(10)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(BadInput, match=r"no pretrained text tower .* give --clip FILE .* or export --to safetensors"):
        script.export(tmp_path, "open_clip")
    assert not (tmp_path / "open_clip.pt").exists()
    with pytest.raises(BadInput, match=r"not a timm vit_small_patch14_dinov2 of 10 classes; missing .*--to open_clip "
                                       r"\(with --clip FILE where the model has no pretrained text tower\) or --to safetensors"):
        script.export(tmp_path, "timm")  # a head alone is no timm model; the way out names --clip for this model
    proc = commands.project("scripts/export_soup.py", tmp_path, "--to", "open_clip")
    assert proc.returncode == 1 and proc.stderr.startswith("error: the soup's model (vit_s14_dinov2) has no pretrained")


def test_a_whole_clip_whose_text_tower_has_other_shapes_is_named_not_a_traceback(tmp_path):
    """The zero-shot head is built from each checkpoint's own text tower: a text tower of another width is
    refused by file and key in one line (load_state_dict raised on the size before)."""
    init = write_open_clip_train(tmp_path / "ckpts", n=2)
    bad = tmp_path / "ckpts" / "run1" / "checkpoints" / "epoch_2.pt"
    state = perturbed(init, 0.02, seed=5)
    state["token_embedding.weight"] = state["token_embedding.weight"][:, :-1].clone()
    torch.save(state, bad)
    proc = soup(tmp_path, "pool=files", f"pool.glob={tmp_path}/ckpts/*/checkpoints/epoch_2.pt", "model=tiny_clip",
                f"pool.classnames={DIGITS}", "pool.templates=simple", "method=uniform", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{bad} is not a whole" in proc.stderr and "token_embedding.weight" in proc.stderr, proc.stderr


def test_bn_checkpoints_without_step_counters_soup_as_timm_loads_them(tmp_path):
    """Older torchvision and converted files lack BatchNorm's num_batches_tracked; timm's load_checkpoint and
    torch fill it with 0. Such a pool soups (the weights are the mean) instead of being refused as another
    architecture."""
    import timm

    from soups.io.files import load_weights

    torch.manual_seed(0)
    init = timm.create_model("test_resnet", num_classes=10).state_dict()
    folder = tmp_path / "ckpts"
    folder.mkdir()
    states = [perturbed(init, 0.02, seed=i) for i in range(2)]
    for i, state in enumerate(states):
        torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, folder / f"m{i}.pth")
    timm.create_model("test_resnet", num_classes=10, checkpoint_path=str(folder / "m0.pth"))  # timm loads it
    soup(tmp_path, "pool=files", f"pool.glob={folder}/*.pth", "model=timm", "model.timm_name=test_resnet",
         "model.image_size=32", "method=uniform")
    weights = load_weights(tmp_path / "soup" / "uniform" / "model.safetensors")
    torch.testing.assert_close(weights["conv1.0.weight"], (states[0]["conv1.0.weight"] + states[1]["conv1.0.weight"]) / 2)


def test_the_printed_open_clip_line_builds_the_soup_at_its_size_and_preprocesses_as_it_was_measured(tmp_path):
    """A CLIP fine-tuned at 64 px (its config says 32) with mean/std 0.5 (open_clip's default is OpenAI's): the
    line export_soup.py prints, run as printed, gives the soup's logits on the pixels its `preprocess` makes,
    and those pixels are the ones the soup was evaluated on (open_clip alone would shrink the ViT's position
    grid to 32 px and normalize by OpenAI's mean)."""
    import numpy as np
    import open_clip
    import safetensors.torch
    from omegaconf import OmegaConf
    from PIL import Image

    import soups.models.classifier  # noqa: F401 - registers the tiny model config with open_clip
    from soups.models.classifier import eval_transform

    write_open_clip_train(tmp_path / "ckpts", n=2, image_size=64)
    soup(tmp_path, "pool=files", f"pool.glob={tmp_path}/ckpts/*/checkpoints/epoch_2.pt", "model=tiny_clip",
         "model.image_size=64", f"pool.classnames={DIGITS}", "pool.templates=simple", "method=uniform")
    uniform = tmp_path / "soup" / "uniform"
    exported = export(uniform, "open_clip", tmp_path / "ckpts" / "run0" / "checkpoints" / "epoch_2.pt")
    assert "force_image_size=64" in exported["load"] and "image_mean=(0.5, 0.5, 0.5)" in exported["load"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    ours = eval_transform(OmegaConf.create(json.loads((uniform / "run.json").read_text())["config"]["model"]))(image)
    scope = {"open_clip": open_clip, "torch": torch, "safetensors": safetensors, "F": F}
    code = exported["load"]
    exec(code.split("; h = ")[0], scope)  # the model and its preprocess, as printed
    x = scope["preprocess"](image).unsqueeze(0)
    torch.testing.assert_close(x[0], ours, rtol=0, atol=0)
    scope["x"] = x
    with torch.no_grad():
        scope["model"].eval()
        exec("h = " + code.split("; h = ")[1], scope)
        torch.testing.assert_close(scope["logits"], classifier_with(uniform)(x), rtol=0, atol=1e-5)
