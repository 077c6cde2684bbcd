"""Text soups: the sentiment data (read, binarised, checked, fetched from the sdist layout), the text classifier
(real MiniLM weights, masked pooling), the binary linear probe, and finetune -> soup end to end on a tiny
random BERT (model=tiny_bert) over fake sentence files in the exact layout."""
import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import commands
from conftest import ROOT, compose_cfg
from soups.data.sentiment import checked_file, read_domain
from soups.data.text import Sentences, TextSet
from soups.errors import BadInput, MissingInput
from soups.heads.linear_probe import fit_linear_probe
from soups.names import WEIGHTS_NAME
from soups.models.text import TokenBatch, text_classifier, tokenizer_for

MINILM = OmegaConf.load(ROOT / "conf/model/minilm_l6.yaml")
TINY_BERT = OmegaConf.load(ROOT / "conf/model/tiny_bert.yaml")
FILES = {"movie": "movieReviewSnippets_GroundTruth.txt", "amazon": "amazonReviewSnippets_GroundTruth.txt",
         "tweets": "tweets_GroundTruth.txt", "nyt": "nytEditorialSnippets_GroundTruth.txt"}
GOOD, BAD = ["great", "wonderful", "moving", "sharp"], ["dull", "awful", "tedious", "messy"]


def fake_sentences(folder: Path, n: int = 120) -> list[str]:
    """The four domains' files in the archive's layout (`id<TAB>mean rating<TAB>sentence`, no final newline),
    with some ratings too weak to keep; the data.files overrides that match them."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    overrides = []
    for domain, name in FILES.items():
        lines = []
        for i in range(n):
            rating = float(gen.uniform(-3, 3))
            words = GOOD if rating > 0 else BAD
            lines.append(f"{i + 1}\t{rating:.4f}\tthe {domain} {words[i % 4]} thing number {i} was {words[(i + 1) % 4]}")
        (folder / name).write_text("\n".join(lines), encoding="utf-8")
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        overrides += [f"data.files.{domain}.sentences={n}", f"data.files.{domain}.sha256={digest}"]
    return [f"data.root={folder}", *overrides]


def test_ratings_are_binarised_by_sign_and_weak_ones_dropped(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("1\t2.0\tgood one\n2\t-0.6\tbad one\n3\t0.4\tmeh\n4\t-0.5\tslightly bad\n5\t0.5\tok\n6\t0\tnone",
                    encoding="utf-8")
    got = read_domain(path, "movie", 0.5)
    assert got.texts == ["good one", "bad one", "slightly bad", "ok"]
    assert got.labels.tolist() == [1, 0, 0, 1]
    assert got.ids == ["movie:1", "movie:2", "movie:4", "movie:5"]
    assert read_domain(path, "movie", 0.0).ids == ["movie:1", "movie:2", "movie:3", "movie:4", "movie:5"]  # 0: no sign
    path.write_text("1\tnot-a-number\ttext", encoding="utf-8")
    with pytest.raises(BadInput, match=r"f.txt:1: expected '<id><TAB><mean rating><TAB><sentence>'"):
        read_domain(path, "movie", 0.5)


def test_a_text_that_is_evaluated_is_never_also_trained_on(tmp_path):
    """The movie file holds 2 sentences twice; a row-wise split put one copy in test and the other in train."""
    from conftest import compose_cfg
    from soups.data.base import TaskData
    from soups.settings import build

    overrides = fake_sentences(tmp_path / "d")
    movie = tmp_path / "d" / FILES["movie"]
    lines = movie.read_text(encoding="utf-8").split("\n")
    lines = [f"{line.split(chr(9))[0]}\t{line.split(chr(9))[1]}\tsentence {i // 2}" for i, line in enumerate(lines)]
    movie.write_text("\n".join(lines), encoding="utf-8")  # every text twice, with its own id and rating
    digest = hashlib.sha256(movie.read_bytes()).hexdigest()
    overrides = [o for o in overrides if not o.startswith("data.files.movie.sha256")]
    cfg = compose_cfg("finetune", tmp_path, ["experiment=text_demo", "model=tiny_bert", "data.test_size=20",
                                             "data.val_size=10", "data.train_size=null",
                                             f"data.files.movie.sha256={digest}", *overrides])
    data = build(cfg.data, "data", "soups.data", TaskData).load(cfg.model)
    evaluated = set(data.test.texts) | set(data.val.texts)
    assert len(data.test.texts) == 20 and len(data.val.texts) == 10 and data.train.texts
    assert not evaluated & set(data.train.texts)  # before: about 26 of the 30 evaluated texts were also trained on
    every = read_domain(movie, "movie", 0.5).texts  # train: every other sentence, each copy of it
    assert sorted(data.train.texts) == sorted(t for t in every if t not in evaluated)


def test_files_are_checked_by_count_and_digest_and_a_missing_one_names_make_text_data(tmp_path):
    overrides = fake_sentences(tmp_path / "d", n=10)
    digest = overrides[2].split("=")[1]
    spec = OmegaConf.create({"file": FILES["movie"], "sentences": 10, "sha256": digest})
    assert checked_file(tmp_path / "d", "movie", spec) == tmp_path / "d" / FILES["movie"]
    with pytest.raises(BadInput, match="10 sentences, sha256 .* expected 11"):
        checked_file(tmp_path / "d", "movie", OmegaConf.merge(spec, {"sentences": 11}))
    (tmp_path / "d" / FILES["movie"]).write_text("1\t1.0\tchanged", encoding="utf-8")
    with pytest.raises(BadInput, match="a different or damaged file"):
        checked_file(tmp_path / "d", "movie", OmegaConf.merge(spec, {"sentences": 1}))
    with pytest.raises(MissingInput, match="make text-data"):
        checked_file(tmp_path / "absent", "movie", spec)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_get_text_data_unpacks_only_the_sentence_files_of_the_sdist(tmp_path):
    """The sdist's layout: vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz holding
    hutto_ICWSM_2014/*; members outside the kept names (code, a path leaving the folder) are never written."""
    keep = {f"hutto_ICWSM_2014/{n}": f"1\t1.0\t{n}".encode() for n in [*FILES.values(), "_README_.txt"]}
    inner = _tar_gz({**keep, "hutto_ICWSM_2014/vaderSentiment.py": b"print('code')", "../escape.txt": b"x"})
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    sdist.write_bytes(_tar_gz({"vaderSentiment-3.3.2/setup.py": b"",
                               "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner}))
    run = ["scripts/get_text_data.py", "--dest", tmp_path / "data", "--sdist", sdist]
    proc = commands.project(*run)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data" / "hutto_ICWSM_2014"
    assert sorted(p.name for p in out.iterdir()) == sorted(n.split("/")[1] for n in keep)
    assert (out / FILES["tweets"]).read_bytes() == keep[f"hutto_ICWSM_2014/{FILES['tweets']}"]
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "data" / "escape.txt").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["hutto_ICWSM_2014"]  # no temporary folder left
    sdist.write_bytes(_tar_gz({"vaderSentiment-3.3.2/setup.py": b""}))
    proc = commands.project(*run, "--force")
    assert proc.returncode == 1 and "holds no additional_resources/hutto_ICWSM_2014.tar.gz" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_text_sets_pad_each_batch_to_its_longest_sentence_and_keep_ids_with_labels():
    tokenizer = tokenizer_for(MINILM)
    texts = ["a much longer sentence about a film that goes on", "short", "a medium sentence here"]
    source = Sentences("s", texts, torch.tensor([1, 0, 1]), ["s:1", "s:2", "s:3"])
    data = TextSet(source, tokenizer, max_length=8)
    assert data.sample_ids == ["s:2", "s:3", "s:1"] and data.labels.tolist() == [0, 1, 1]  # by token length
    lengths = [len(tokenizer(t, truncation=True, max_length=8)["input_ids"]) for t in [texts[1], texts[2], texts[0]]]
    assert lengths[-1] == 8  # truncated
    batches = list(data.batches(2))
    assert [b.input_ids.shape[1] for b, _ in batches] == [lengths[1], lengths[2]]
    assert batches[0][0].attention_mask.sum(1).tolist() == lengths[:2]
    assert (batches[0][0].input_ids[0, lengths[0]:] == tokenizer.pad_token_id).all()


def test_pretrained_minilm_loads_every_tensor_of_the_file_and_pooling_ignores_padding():
    from safetensors.torch import load_file

    from soups.models.text import encoder_dir

    model = text_classifier(MINILM, num_classes=2).eval()
    stored = load_file(str(encoder_dir(MINILM.text_encoder) / "model.safetensors"))
    state = {k[len("encoder."):]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    stored = {k: v for k, v in stored.items() if not k.startswith("pooler.")}  # BERT's pooler is not used
    assert torch.equal(stored.pop("embeddings.position_ids").flatten(), torch.arange(512))  # a constant, not learned
    assert set(state) == set(stored)
    assert all(torch.equal(state[k], stored[k]) for k in stored)
    tokenizer = tokenizer_for(MINILM)
    ids = tokenizer(["a fine film", "a fine film, if a little long and slow in its middle"])["input_ids"]
    alone = model.features(TokenBatch(torch.tensor([ids[0]]), torch.ones(1, len(ids[0]), dtype=torch.long)))
    from soups.models.text import pad
    padded = model.features(pad([torch.tensor(i) for i in ids], tokenizer.pad_token_id))
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_a_random_encoder_is_never_called_pretrained_and_overrides_need_random_weights():
    with pytest.raises(BadInput, match="encoder_config=.* changes the architecture of pretrained weights"):
        text_classifier(OmegaConf.merge(MINILM, {"encoder_config": {"num_hidden_layers": 1}}), 2)
    with pytest.raises(BadInput, match="model.pooling='max'"):
        text_classifier(OmegaConf.merge(TINY_BERT, {"pooling": "max"}), 2)
    with pytest.raises(MissingInput, match="expected a Hugging Face model folder"):
        text_classifier(OmegaConf.merge(TINY_BERT, {"text_encoder": "/nonexistent"}), 2)


def test_a_binary_linear_probe_head_gives_the_probabilities_of_the_fitted_logistic_regression():
    """scikit-learn fits one row for two classes: copied as is, both logits would be equal (chance accuracy)."""
    from sklearn.linear_model import LogisticRegression

    gen = np.random.default_rng(0)
    x = gen.normal(size=(200, 5)) * [1, 2, 3, 4, 5] + 7
    y = (x[:, 0] - 7 + 0.3 * gen.normal(size=200) > 0).astype(int)
    weight, bias, info = fit_linear_probe(x[:150], y[:150], x[150:], y[150:], [1.0], 1000)
    assert weight.shape == (2, 5) and bias.shape == (2,)
    probs = torch.softmax(torch.tensor(x) @ weight.double().T + bias.double(), -1)[:, 1].numpy()
    z = (x[:150] - x[:150].mean(0)) / (x[:150].std(0) + 1e-6)
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(z, y[:150])
    expected = clf.predict_proba((x - x[:150].mean(0)) / (x[:150].std(0) + 1e-6))[:, 1]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert info["val_accuracy"] == pytest.approx(100 * ((probs[150:] > 0.5) == y[150:]).mean())


def run(args, tmp_path):
    return commands.succeeded(commands.project(*args, tmp=tmp_path))


def test_text_finetune_sweep_then_soups_end_to_end(tmp_path):
    """`python src/finetune.py -m ... experiment=text_demo` (a tiny random BERT, fake sentence files), then
    `python src/soup.py` and `python src/analyze.py analysis=pairs`: the uniform soup is the mean of the
    fine-tunes, the report has every shift, the runs log to W&B (offline)."""
    from safetensors.torch import load_file

    data = fake_sentences(tmp_path / "hutto")
    small = ["model=tiny_bert", "data.test_size=30", "data.val_size=30", "data.shifts.max_images=25",
             "eval_batch_size=16", "batch_size=8", "warmup_steps=2", "head.Cs=[1.0]"]
    run(["src/finetune.py", "-m", "experiment=text_demo", "sweep=demo", "search_draws=2", "logger=wandb",
         f"hydra.sweep.dir={tmp_path}/logs/finetune/multiruns/s", *small, *data], tmp_path)
    runs = [tmp_path / "logs/finetune/multiruns/s" / str(i) for i in range(2)]
    assert all((r / "run.json").is_file() for r in runs)
    assert list((runs[0] / "wandb").glob("offline-run-*")), "no offline W&B run"
    run(["src/soup.py", "method=[uniform,greedy,ensemble]", "logger=none", f"hydra.run.dir={tmp_path}/soup"], tmp_path)
    report = (tmp_path / "soup" / "report.md").read_text()
    for column in ("held-out", "test", "amazon", "tweets", "nyt", "avg shifts"):
        assert column in report
    run(["src/analyze.py", "analysis=pairs", "logger=none", f"hydra.run.dir={tmp_path}/pairs"], tmp_path)
    assert (tmp_path / "pairs" / "pairs.json").is_file()
    soup = load_file(str(tmp_path / "soup" / "uniform" / WEIGHTS_NAME))
    members = [load_file(str(r / WEIGHTS_NAME)) for r in runs]
    assert any(k.startswith("encoder.") for k in soup) and "head.weight" in soup
    for key, value in soup.items():
        torch.testing.assert_close(value, (members[0][key] + members[1][key]) / 2, atol=1e-6, rtol=0)


def test_text_settings_that_cannot_apply_are_refused_before_work(tmp_path):
    from soups.settings import ConfigError, FinetuneSettings, checked
    from soups.jobs.finetune import run_finetune

    data = fake_sentences(tmp_path / "hutto", n=40)
    cfg = compose_cfg("finetune", tmp_path, ["experiment=text_demo", "model=tiny_bert", "mixup=0.2", *data])
    with pytest.raises(ConfigError, match="mixup=0.2 .expected 0 for a text model"):
        checked(cfg, FinetuneSettings)
    cfg = compose_cfg("finetune", tmp_path, ["experiment=text_demo", "model=tiny_bert", "randaug=rand-m9-n2",
                                             "crop_scale=0.5", *data])
    with pytest.raises(ConfigError, match="randaug='rand-m9-n2' .expected null .*crop_scale=0.5 .expected 1.0"):
        checked(cfg, FinetuneSettings)
    cfg = compose_cfg("finetune", tmp_path, ["experiment=text_demo", "model=tiny_vit", "logger=none", *data])
    with pytest.raises(BadInput, match="data=sentiment holds texts, but model=tiny_vit classifies images"):
        run_finetune(cfg, tmp_path / "run2")
    cfg = compose_cfg("finetune", tmp_path, ["~experiment", "model=tiny_bert", "logger=none"])
    with pytest.raises(BadInput, match="data=mnist holds images, but model=tiny_bert classifies texts"):
        run_finetune(cfg, tmp_path / "run3")
    for bad in ("data.val_size=0", "data.train_size=-3", "data.shifts.max_images=0", "data.min_abs_rating=5"):
        cfg = compose_cfg("finetune", tmp_path, ["experiment=text_demo", "model=tiny_bert", "logger=none", *data, bad])
        with pytest.raises(BadInput, match=re.escape(bad.split("=")[0]) + ".*expected"):
            run_finetune(cfg, tmp_path / "run4")
    movie = tmp_path / "hutto" / FILES["movie"]
    movie.write_bytes(movie.read_bytes() + b"\xff\xfe")
    with pytest.raises(BadInput, match="a different or damaged file"):
        run_finetune(compose_cfg("finetune", tmp_path, ["experiment=text_demo", "model=tiny_bert", "logger=none",
                                                        *data]), tmp_path / "run5")


def test_a_damaged_or_partial_encoder_folder_is_refused_never_loaded_partly_random(tmp_path):
    from safetensors.torch import load_file, save_file

    from soups.models.text import encoder_dir

    source = encoder_dir(MINILM.text_encoder)
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_bytes((source / "config.json").read_bytes())
    with pytest.raises(BadInput, match="has no tokenizer files"):
        tokenizer_for(OmegaConf.merge(MINILM, {"text_encoder": str(folder)}))
    state = load_file(str(source / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".layer.5." not in k}, str(folder / "model.safetensors"))
    with pytest.raises(BadInput, match=r"does not hold the whole encoder: 16 tensors missing"):
        text_classifier(OmegaConf.merge(MINILM, {"text_encoder": str(folder)}), 2)
    key = "encoder.layer.0.output.dense.bias"
    save_file(state | {key: state[key][:7]}, str(folder / "model.safetensors"))  # named, with both shapes
    with pytest.raises(BadInput, match=rf"0 tensors missing .*, 1 of another shape \(e\.g\. \['{key}: file \[7\] vs "
                                       rf"architecture \[384\]'\]\)"):
        text_classifier(OmegaConf.merge(MINILM, {"text_encoder": str(folder)}), 2)
    (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(BadInput, match="could not load the text encoder from"):
        text_classifier(OmegaConf.merge(MINILM, {"text_encoder": str(folder)}), 2)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(BadInput, match="could not load the text encoder from"):
        text_classifier(OmegaConf.merge(TINY_BERT, {"text_encoder": str(folder)}), 2)
    with pytest.raises(BadInput, match="model.max_length=1000: the encoder has 512 positions"):
        text_classifier(OmegaConf.merge(MINILM, {"max_length": 1000}), 2)


def test_the_init_measures_what_its_probe_measured_for_each_random_encoder(tmp_path):
    """Probe features are cached by the tower's weights: a random encoder built with another seed (another
    init) never gets a head fitted to the first one's features."""
    import json

    from soups.heads.shared_init import shared_init

    data = fake_sentences(tmp_path / "hutto")
    for seed, C in ((0, 1.0), (5, 0.5)):
        cfg = compose_cfg("finetune", tmp_path, ["experiment=text_demo", "model=tiny_bert", f"seed={seed}",
                                                 f"head.Cs=[{C}]", "data.test_size=30", "data.val_size=40",
                                                 "data.shifts.max_images=20", *data])
        from soups.runtime import setup
        setup(seed, None)
        info = json.loads((shared_init(cfg, torch.device("cpu")) / "init.json").read_text())
        assert info["metrics"]["val"] == pytest.approx(info["head"]["val_accuracy"], abs=100 / 40 + 1e-9)
    assert len(list((tmp_path / "cache" / "features").glob("*-train.npy"))) == 2
