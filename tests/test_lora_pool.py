"""pool=lora: adapters written by peft's own code (get_peft_model(...).save_pretrained) on a tiny BERT
classifier, souped exactly through `python src/soup.py`: the LoRA soup equals peft's
add_weighted_adapter(..., "cat") + merge_and_unload, differs from the mean of factors by the hand-computed
cross terms, and exports to a merged folder and a rank-Σr adapter that load back to the soup's logits."""
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose_cfg
from test_hf_pool import SMALL, soup, tiny_bert, tokenizer
from test_text import fake_sentences

ADAPTERS = [dict(r=2), dict(r=4), dict(r=3)]  # plain LoRA of three ranks: peft's "cat" is exact for these


def write_adapter(base_dir: Path, out: Path, seed: int, heads: bool, **lora) -> None:
    """peft trains nothing here: B (zero at init) and the head are set from a seeded draw, then peft saves."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(str(base_dir))
    config = LoraConfig(lora_alpha=8, target_modules=["query", "value"], **lora,
                        **({"task_type": "SEQ_CLS"} if heads else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "lora_A" in name or "modules_to_save" in name:
                    p.add_(0.2 * torch.randn_like(p))
        model.save_pretrained(str(out))


@pytest.fixture(scope="module")
def lora_pool(tmp_path_factory):
    """base/ and two pools of adapters: plain/ (no head trained: peft can combine them) and heads/ (the head
    trained as modules_to_save; one rsLoRA adapter)."""
    tmp = tmp_path_factory.mktemp("lora")
    data = fake_sentences(tmp / "hutto", n=60)
    torch.manual_seed(0)
    tiny_bert().save_pretrained(tmp / "base")
    tokenizer().save_pretrained(tmp / "base")
    for i, lora in enumerate(ADAPTERS):
        write_adapter(tmp / "base", tmp / "plain" / f"a{i}", 10 + i, heads=False, **lora)
        write_adapter(tmp / "base", tmp / "heads" / f"h{i}", 20 + i, heads=True, use_rslora=(i == 2), **lora)
    return tmp, data


def peft_cat(base_dir: Path, folders: list[Path], auto=None) -> dict[str, torch.Tensor]:
    """peft's exact combination: add_weighted_adapter([...], [1/N]*N, "cat") + merge_and_unload (`auto`: the
    transformers class that loads the base; a sequence classifier if None)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained((auto or AutoModelForSequenceClassification).from_pretrained(str(base_dir)),
                                          str(folders[0]), adapter_name="a0")
        for i, folder in enumerate(folders[1:], 1):
            model.load_adapter(str(folder), adapter_name=f"a{i}")
        names = [f"a{i}" for i in range(len(folders))]
        model.add_weighted_adapter(names, [1 / len(folders)] * len(folders), adapter_name="soup",
                                   combination_type="cat")
        model.set_adapter("soup")
        return {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}


def test_the_lora_soup_is_peft_cat_and_the_mean_of_factors_is_another_model(lora_pool, tmp_path):
    from soups.pools.lora import read_adapter

    tmp, data = lora_pool
    folders = sorted((tmp / "plain").iterdir())
    out = tmp_path / "soup"
    proc = soup(tmp, ["pool=lora", f"pool.glob={tmp}/plain/*", f"pool.base={tmp}/base", "method=[uniform]",
                      *SMALL, *data], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = {k.removeprefix("model."): v for k, v in load_file(str(out / "uniform" / "model.safetensors")).items()}
    theirs = peft_cat(tmp / "base", folders)
    assert set(theirs) <= set(ours)
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, atol=2e-6, rtol=1e-5)
    # by hand on one module: the soup is W0 + mean(s_i B_i A_i); the mean of factors adds cross terms
    module = "bert.encoder.layer.0.attention.self.query"
    base = load_file(str(tmp / "base" / "model.safetensors"))[f"{module}.weight"]
    factors = [read_adapter(f).lora[module] for f in folders]
    assert [a.shape[0] for a, _, _ in factors] == [2, 4, 3] and [s for _, _, s in factors] == [4.0, 2.0, 8 / 3]
    updates = [s * b @ a for a, b, s in factors]
    torch.testing.assert_close(ours[f"{module}.weight"], base + sum(updates) / 3, atol=2e-6, rtol=1e-5)


def test_the_mean_of_factors_differs_from_the_soup_by_the_cross_terms(lora_pool):
    from soups.pools.lora import Factors
    from soups.recipes.lora_factor_mean import factor_mean

    # a constructed case: two rank-1 adapters on a 2x2 weight, W0 = 0, s = 1
    a1, b1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]])
    a2, b2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0], [1.0]])
    adapters = [Factors({"m": (a1, b1, 1.0)}, {}, {}), Factors({"m": (a2, b2, 1.0)}, {}, {})]
    got = factor_mean({"m.weight": torch.zeros(2, 2)}, adapters)["m.weight"]
    soup = (b1 @ a1 + b2 @ a2) / 2  # [[.5, 0], [0, .5]]
    # mean(B) mean(A) = [[.5],[.5]] [[.5, .5]] = .25 everywhere: own terms halved, cross terms B1A2, B2A1 added
    torch.testing.assert_close(got, torch.full((2, 2), 0.25))
    torch.testing.assert_close(got - soup, (b1 @ a2 + b2 @ a1) / 4 - (b1 @ a1 + b2 @ a2) / 4)
    # ranks 1 and 2: the rank-1 factors are zero-padded, mean(B) = [[1, .5], [.5, .5]], mean(A) = [[1, .5], [.5, .5]]
    wide = Factors({"m": (torch.ones(2, 2), torch.ones(2, 2), 1.0)}, {}, {})
    padded = factor_mean({"m.weight": torch.zeros(2, 2)}, [adapters[0], wide])["m.weight"]
    half = torch.tensor([[1.0, 0.5], [0.5, 0.5]])
    torch.testing.assert_close(padded, half @ half)


def test_heads_rslora_and_exports_load_back_to_the_soups_logits(lora_pool, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tmp, data = lora_pool
    folders = sorted((tmp / "heads").iterdir())
    out = tmp_path / "soup"
    proc = soup(tmp, ["pool=lora", f"pool.glob={tmp}/heads/*", f"pool.base={tmp}/base", "pool.svd_rank=2",
                      "method=[uniform,lora_factor_mean]", *SMALL, *data], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lora_factor_mean soup" in (out / "report.md").read_text()
    weights = load_file(str(out / "uniform" / "model.safetensors"))
    heads = [load_file(str(f / "adapter_model.safetensors")) for f in folders]
    torch.testing.assert_close(weights["model.classifier.weight"],
                               sum(h["base_model.model.classifier.weight"] for h in heads) / 3, atol=1e-6, rtol=0)
    tok = AutoTokenizer.from_pretrained(str(out / "uniform" / "hf"))
    batch = tok(["a great and moving film", "dull, tedious and messy"], padding=True, return_tensors="pt")
    reference = AutoModelForSequenceClassification.from_pretrained(str(tmp / "base")).eval()
    reference.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    merged = AutoModelForSequenceClassification.from_pretrained(str(out / "uniform" / "hf")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(str(tmp / "base")),
                                            str(out / "uniform" / "adapter")).merge_and_unload().eval()
    with torch.no_grad():
        expected = reference(**batch).logits
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(adapter(**batch).logits, expected, atol=1e-5, rtol=0)
    exact = json.loads((out / "uniform" / "adapter" / "soups_export.json").read_text())
    small = json.loads((out / "uniform" / "adapter_rank2" / "soups_export.json").read_text())
    assert exact["rank"] == 2 + 4 + 3 and exact["relative_error"] < 1e-4  # fp32 round-off of W_soup - W0
    assert small["rank"] == 2 and 0.05 < small["relative_error"] < 1  # measured, not assumed
    assert json.loads((out / "lora_factor_mean" / "soup.json").read_text())["kind"] == "soup"


def test_adapters_with_and_without_a_trained_head_export_and_average_it(lora_pool, tmp_path):
    """One adapter trained the head (modules_to_save), one did not (its head is W0's): the exported adapter
    carries the soup's head whichever sorts first, and the mean of factors averages the trained head with W0's."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    tmp, data = lora_pool
    shutil.copytree(tmp / "plain" / "a0", tmp_path / "pool" / "a0")  # no head: sorts first
    shutil.copytree(tmp / "heads" / "h1", tmp_path / "pool" / "h1")
    out = tmp_path / "soup"
    proc = soup(tmp, ["pool=lora", f"pool.glob={tmp_path}/pool/*", f"pool.base={tmp}/base",
                      "method=[uniform,lora_factor_mean]", *SMALL, *data], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(str(out / "uniform" / "model.safetensors"))
    base = load_file(str(tmp / "base" / "model.safetensors"))
    head = load_file(str(tmp / "heads" / "h1" / "adapter_model.safetensors"))["base_model.model.classifier.weight"]
    torch.testing.assert_close(weights["model.classifier.weight"], (base["classifier.weight"] + head) / 2)
    factor = load_file(str(out / "lora_factor_mean" / "model.safetensors"))
    torch.testing.assert_close(factor["model.classifier.weight"], (base["classifier.weight"] + head) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(str(tmp / "base")),
                                            str(out / "uniform" / "adapter")).merge_and_unload()
    torch.testing.assert_close(adapter.classifier.weight, weights["model.classifier.weight"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("damage, message", [
    ("bad_json", r"adapter_config.json: not readable JSON"),
    ("not_object", r"adapter_config.json: expected a JSON object \(peft's LoraConfig\), got a list"),
    ("truncated", r"adapter_model.safetensors: not a readable safetensors file"),
    ("rank_mismatch", r"peft cannot load it on pool.base"),
    ("duplicate", r"are the same checkpoint \(equal weights\)"),
    ("svd_rank", r"pool.svd_rank=6 >= the exact rank Σ r_i = 6"),
    ("dora", r"use_dora \(DoRA rescales"),
    ("bias", r"bias='all' \(trained biases"),
    ("no_weights", r"no adapter_model.safetensors \(an adapter without weights\)"),
    ("other_base", r"was trained on .*whose weights differ from pool.base"),
    ("other_shape", r"query is \(48, 48\) in the adapter, \(32, 32\) in pool.base"),
])
def test_adapters_that_cannot_be_merged_exactly_are_refused_by_name(lora_pool, tmp_path, damage, message):
    import shutil

    from soups.errors import BadInput
    from soups.jobs.soup import run_soup

    tmp, data = lora_pool
    shutil.copytree(tmp / "plain" / "a0", tmp_path / "pool" / "a0")
    bad = tmp_path / "pool" / "bad"
    shutil.copytree(tmp / "plain" / "a1", bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    if damage == "dora":
        config["use_dora"] = True
    elif damage == "bias":
        config["bias"] = "all"
    elif damage == "no_weights":
        (bad / "adapter_model.safetensors").unlink()
    elif damage == "bad_json":
        (bad / "adapter_config.json").write_text("{not json")
    elif damage == "not_object":
        (bad / "adapter_config.json").write_text(json.dumps([config]))
    elif damage == "truncated":
        raw = (bad / "adapter_model.safetensors").read_bytes()
        (bad / "adapter_model.safetensors").write_bytes(raw[: len(raw) // 2])
    elif damage == "rank_mismatch":
        config["r"] = 8  # the tensors have rank 4
    elif damage == "duplicate":
        shutil.rmtree(bad)
        shutil.copytree(tmp / "plain" / "a0", bad)
    elif damage == "other_base":
        torch.manual_seed(5)
        tiny_bert().save_pretrained(tmp_path / "other")
        config["base_model_name_or_path"] = str(tmp_path / "other")
    elif damage == "other_shape":
        shutil.rmtree(bad)
        torch.manual_seed(5)
        tiny_bert(hidden_size=48, num_attention_heads=2).save_pretrained(tmp_path / "wide")
        write_adapter(tmp_path / "wide", bad, 1, heads=False, r=2)
        config = json.loads((bad / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "a-hub-name"  # not on this machine: caught by the shapes
    if damage not in ("bad_json", "not_object", "duplicate"):
        (bad / "adapter_config.json").write_text(json.dumps(config))
    extra = ["pool.svd_rank=6"] if damage == "svd_rank" else []  # a0 + a1: ranks 2 + 4
    cfg = compose_cfg("soup", tmp_path, ["logger=none", "pool=lora", f"pool.glob={tmp_path}/pool/*",
                                         f"pool.base={tmp}/base", *extra, *SMALL, *data])
    with pytest.raises(BadInput, match=message):
        run_soup(cfg, tmp_path / "out")
    assert not (tmp_path / "cache" / "eval").exists()


def test_a_base_saved_sharded_is_the_same_base_and_an_unfindable_one_is_named(lora_pool, tmp_path, caplog):
    from transformers import AutoModelForSequenceClassification

    from soups.jobs.soup import run_soup

    tmp, data = lora_pool
    sharded = tmp_path / "base_sharded"  # the adapters record tmp/base: the same tensors in other files
    AutoModelForSequenceClassification.from_pretrained(str(tmp / "base")).save_pretrained(str(sharded),
                                                                                        max_shard_size="100KB")
    assert not (sharded / "model.safetensors").exists()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tmp / "base" / name).is_file():
            (sharded / name).write_bytes((tmp / "base" / name).read_bytes())
    args = ["logger=none", "pool=lora", f"pool.glob={tmp}/plain/*", "method=uniform", *SMALL, *data]
    rows = run_soup(compose_cfg("soup", tmp_path, [*args, f"pool.base={sharded}"]), tmp_path / "out")
    assert rows[-1]["row"] == "uniform soup"
    import shutil

    # a hub name; a base with pickled weights only (not read); a relative path found above the adapter, with
    # other weights (peft records the path as given, relative to where training ran: a guess, so a warning)
    torch.manual_seed(5)
    tiny_bert().save_pretrained(tmp_path / "pickled")  # then as older transformers saved it: a pickle only
    state = load_file(str(tmp_path / "pickled" / "model.safetensors"))
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pickled" / "pytorch_model.bin")
    tiny_bert().save_pretrained(tmp_path / "other")
    for name, base in (("a0", "a-hub-name"), ("a1", str(tmp_path / "pickled")), ("a2", "other")):
        shutil.copytree(tmp / "plain" / name, tmp_path / "pool" / name)
        config = json.loads((tmp_path / "pool" / name / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base
        (tmp_path / "pool" / name / "adapter_config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        run_soup(compose_cfg("soup", tmp_path, ["logger=none", "pool=lora", f"pool.glob={tmp_path}/pool/*",
                                                "method=uniform", f"pool.base={tmp}/base", *SMALL, *data]),
                 tmp_path / "out2")
    assert "2 adapters name a base that is not a readable folder here" in caplog.text
    assert "a0 ('a-hub-name')" in caplog.text and "a1 (" in caplog.text and "pytorch_model.bin" in caplog.text
    assert "1 adapters record a relative base" in caplog.text and f"a2 ('other', found as {tmp_path / 'other'})" in caplog.text


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_adapters_are_refused_unless_saved_converted_and_then_soup_exactly(lora_pool, tmp_path, init):
    """PiSSA / OLoRA move B0·A0 out of the base at init: the adapter alone, on the original base, is another
    model (silently, since peft's own merge on that base agrees with ours). Saved converted as peft documents
    (save_pretrained(path_initial_model_for_weight_conversion=...)), it is a plain LoRA of rank 2r on the
    original base and its merge is the trained model."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from soups.errors import BadInput
    from soups.jobs.soup import run_soup

    tmp, data = lora_pool
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(str(tmp / "base")),
                               LoraConfig(r=2, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=init))
        model.peft_config["default"].init_lora_weights = True  # peft's documented way to save the start
        model.save_pretrained(str(tmp_path / "start"))
        model.peft_config["default"].init_lora_weights = init
        with torch.no_grad():  # "training"
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.add_(0.2 * torch.randn_like(p))
        trained = {k: v.detach() for k, v in copy.deepcopy(model).merge_and_unload().state_dict().items()}
        model.save_pretrained(str(tmp_path / "raw" / "p"))
        model.save_pretrained(str(tmp_path / "converted" / "p"), path_initial_model_for_weight_conversion=str(tmp_path / "start"))
    converted = json.loads((tmp_path / "converted" / "p" / "adapter_config.json").read_text())
    assert converted["r"] == 4 and converted["init_lora_weights"] is True
    for pool in ("raw", "converted"):
        import shutil
        shutil.copytree(tmp / "plain" / "a0", tmp_path / pool / "a0")
    args = ["logger=none", "pool=lora", f"pool.base={tmp}/base", "method=[uniform]", *SMALL, *data]
    with pytest.raises(BadInput, match=rf"init_lora_weights='{init}' trains on a base peft changed at init"):
        run_soup(compose_cfg("soup", tmp_path, [*args, f"pool.glob={tmp_path}/raw/*"]), tmp_path / "out_raw")
    run_soup(compose_cfg("soup", tmp_path, [*args, f"pool.glob={tmp_path}/converted/*"]), tmp_path / "out")
    ours = {k.removeprefix("model."): v for k, v in load_file(str(tmp_path / "out" / "uniform" / "model.safetensors")).items()}
    plain = peft_cat(tmp / "base", [tmp / "plain" / "a0"])
    module = "bert.encoder.layer.1.attention.self.value.weight"
    assert float((trained[module] - plain[module]).abs().max()) > 1e-2  # the two ingredients differ there
    for key in trained:  # the soup is the mean of the trained PiSSA/OLoRA model and the plain adapter's model
        torch.testing.assert_close(ours[key], (trained[key] + plain[key]) / 2, atol=2e-6, rtol=1e-5)


class Convs(torch.nn.Module):
    """Every convolution kind peft adapts (1-d, 2-d 1x1 and 3x3 strided and padded, 3-d), a grouped one, a linear map."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv1d(3, 5, 3), torch.nn.Conv2d(3, 6, 1)
        self.c3 = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c4, self.grouped = torch.nn.Conv3d(2, 3, 2), torch.nn.Conv2d(4, 4, 3, groups=2)
        self.fc = torch.nn.Linear(7, 2)


def test_convolution_adapters_merge_as_peft_merges_them_and_a_grouped_one_is_refused(tmp_path):
    """peft's own conv LoRA (get_peft_model + save_pretrained), merged here: equal to peft's merge_and_unload for
    Conv1d, Conv2d 1x1 and 3x3, Conv3d and a Linear beside them; the mean of factors contracts the rank axis
    the same way; a grouped convolution (peft does not merge it either) is refused by name, not a crash."""
    import copy

    from peft import LoraConfig, get_peft_model

    from soups.errors import BadInput
    from soups.pools.lora import merged, read_adapter, update
    from soups.recipes.lora_factor_mean import factor_mean

    torch.manual_seed(0)
    base = Convs()
    w0 = {k: v.detach().clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=6, target_modules=["c1", "c2", "c3", "c4", "fc"],
                                                               init_lora_weights=False))
        model.save_pretrained(str(tmp_path / "conv"))
        theirs = model.merge_and_unload().state_dict()
    factors = read_adapter(tmp_path / "conv")
    assert factors.lora["c3"][0].shape == (2, 3, 3, 3) and factors.lora["c3"][1].shape == (4, 2, 1, 1)
    ours = merged(w0, factors, tmp_path / "conv")
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in theirs) < 1e-6
    assert float((ours["c3.weight"] - w0["c3.weight"]).abs().max()) > 1e-2  # the adapter moved it
    # by hand, one 3x3 entry: s·Σ_r B[o, r]·A[r, i, h, w]
    a, b, s = factors.lora["c3"]
    assert s == 3.0
    torch.testing.assert_close(update(a, b, s)[1, 2, 0, 1], s * sum(b[1, r, 0, 0] * a[r, 2, 0, 1] for r in range(2)))
    # two adapters, ranks 1 and 2: mean(s·B) (zero-padded columns) contracted with mean(A) (zero-padded rows)
    wide = read_adapter(tmp_path / "conv")
    narrow = copy.deepcopy(wide)
    narrow.lora["c3"] = (a[:1], b[:, :1], s)
    got = factor_mean(w0, [narrow, wide])["c3.weight"]
    b_mean = (torch.cat([b[:, :1] * s, torch.zeros_like(b[:, :1])], 1) + b * s) / 2
    a_mean = (torch.cat([a[:1], torch.zeros_like(a[:1])]) + a) / 2
    torch.testing.assert_close(got, w0["c3.weight"] + torch.einsum("or,rihw->oihw", b_mean[:, :, 0, 0], a_mean))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["grouped"], init_lora_weights=False)
                       ).save_pretrained(str(tmp_path / "grouped"))
    with pytest.raises(BadInput, match=r"grouped is a grouped convolution .*peft does not merge LoRA there either"):
        read_adapter(tmp_path / "grouped")


def test_a_gpt2_conv1d_adapter_is_merged_transposed_as_peft_merges_it(tmp_path):
    """transformers' GPT-2 stores its linear maps as Conv1D, [in, out]: peft saves fan_in_fan_out=True and merges
    (s·B·A)ᵀ; merged here the same (a module of another shape would be refused, a square one silently wrong)."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from soups.pools.lora import merged, read_adapter

    torch.manual_seed(0)
    base = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=50,
                                                    num_labels=2, pad_token_id=0))
    w0 = {k: v.detach().clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"],
                                                               fan_in_fan_out=True, init_lora_weights=False))
        model.save_pretrained(str(tmp_path / "gpt2"))
        theirs = model.merge_and_unload().state_dict()
    factors = read_adapter(tmp_path / "gpt2")
    assert factors.config["fan_in_fan_out"] is True and w0["transformer.h.0.attn.c_proj.weight"].shape == (16, 16)
    ours = merged(w0, factors, tmp_path / "gpt2")
    assert float((ours["transformer.h.0.attn.c_proj.weight"] - w0["transformer.h.0.attn.c_proj.weight"]).abs().max()) > 1e-2
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in theirs) < 1e-6


def test_a_head_of_several_layers_trained_in_full_replaces_the_bases_as_peft_merges_it(tmp_path):
    """RoBERTa's classifier is two layers (dense, out_proj): as modules_to_save, every tensor of it is the
    adapter's own in the merge, as in peft's merge_and_unload, beside the LoRA updates of the encoder."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from soups.pools.lora import merged, read_adapter

    torch.manual_seed(0)
    base = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32,
                                                          max_position_embeddings=40, num_labels=3))
    w0 = {k: v.detach().clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                                               modules_to_save=["classifier"], init_lora_weights=False))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(0.1 * torch.randn_like(p))  # the head "trained"
        model.save_pretrained(str(tmp_path / "roberta"))
        theirs = model.merge_and_unload().state_dict()
    factors = read_adapter(tmp_path / "roberta")
    assert {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
            "classifier.out_proj.bias"} <= set(factors.full)
    ours = merged(w0, factors, tmp_path / "roberta")
    assert float((ours["classifier.dense.weight"] - w0["classifier.dense.weight"]).abs().max()) > 1e-2
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in theirs) < 1e-6


def test_an_image_pool_with_convolution_adapters_soups_exactly_and_exports_an_adapter_peft_loads(tmp_path):
    """LoRA on a ViT's patch-embedding convolution and its attention, written by peft, souped through
    `python src/soup.py pool=lora` on the digits: the soup is W0 + mean(s·ΔW) on the convolution and equals
    peft's own "cat" combination + merge_and_unload on every tensor; the exported
    rank-Σr adapter, loaded by peft on the base, gives the soup's logits. One adapter's config without
    `lora_alpha` (another tool's file) is read with peft's default, as peft reads it."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from test_hf_pool import DIGITS_SMALL

    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=10,
                       id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
                       architectures=["ViTForImageClassification"])
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(tmp_path / "base")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "base")
    deltas = []
    for i, r in enumerate([1, 2]):
        torch.manual_seed(10 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(ViTForImageClassification.from_pretrained(str(tmp_path / "base")),
                                   LoraConfig(r=r, lora_alpha=8, target_modules=["projection", "q_proj", "v_proj"],
                                              init_lora_weights=False))
            model.save_pretrained(str(tmp_path / "adapters" / f"a{i}"))
            deltas.append(model.base_model.model.vit.embeddings.patch_embeddings.projection.get_delta_weight("default"))
    loose = tmp_path / "adapters" / "a1" / "adapter_config.json"
    loose.write_text(json.dumps({k: v for k, v in json.loads(loose.read_text()).items() if k != "lora_alpha"}))
    out = tmp_path / "soup"
    proc = soup(tmp_path, ["pool=lora", f"pool.glob={tmp_path}/adapters/*", f"pool.base={tmp_path}/base",
                           *DIGITS_SMALL], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = {k.removeprefix("model."): v for k, v in load_file(str(out / "uniform" / "model.safetensors")).items()}
    key = "vit.embeddings.patch_embeddings.projection.weight"
    w0 = ViTForImageClassification.from_pretrained(str(tmp_path / "base")).state_dict()[key]
    assert deltas[0].shape == (32, 3, 8, 8)
    torch.testing.assert_close(weights[key], w0 + (deltas[0] + deltas[1]) / 2, atol=1e-6, rtol=0)
    theirs = peft_cat(tmp_path / "base", sorted((tmp_path / "adapters").iterdir()), ViTForImageClassification)
    assert max(float((weights[k] - v).abs().max()) for k, v in theirs.items()) < 2e-6  # peft's own soup, conv too
    assert json.loads((out / "uniform" / "adapter" / "soups_export.json").read_text())["rank"] == 3
    reference = ViTForImageClassification.from_pretrained(str(tmp_path / "base")).eval()
    reference.load_state_dict(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(str(tmp_path / "base")),
                                            str(out / "uniform" / "adapter")).merge_and_unload().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapter(pixel_values=x).logits, reference(pixel_values=x).logits, atol=1e-5, rtol=0)


def test_a_batchnorm_model_exports_its_adapter_unless_its_statistics_were_recomputed(tmp_path, caplog):
    """LoRA on a ResNet's convolutions (BatchNorm, an int64 step counter per layer): with bn_recalibration=false
    the soup's update is the adapters' and the exported adapter, merged by peft, is the soup; recomputed BN
    statistics lie outside the adapters (not modules_to_save), so then only hf/ is written, with a warning."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    from soups.jobs.soup import run_soup
    from test_hf_pool import DIGITS_SMALL

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=10, id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
                          architectures=["ResNetForImageClassification"])
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "base")
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(tmp_path / "base")
    for i, r in enumerate([2, 4]):
        torch.manual_seed(10 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_peft_model(ResNetForImageClassification.from_pretrained(str(tmp_path / "base")),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=["convolution"], modules_to_save=["classifier"],
                                      init_lora_weights=False)).save_pretrained(str(tmp_path / "adapters" / f"a{i}"))
    args = ["logger=none", "pool=lora", f"pool.glob={tmp_path}/adapters/*", f"pool.base={tmp_path}/base", *DIGITS_SMALL]
    run_soup(compose_cfg("soup", tmp_path, [*args, "bn_recalibration=false"]), tmp_path / "kept")
    weights = {k.removeprefix("model."): v for k, v in load_file(str(tmp_path / "kept" / "uniform" / "model.safetensors")).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = PeftModel.from_pretrained(ResNetForImageClassification.from_pretrained(str(tmp_path / "base")),
                                            str(tmp_path / "kept" / "uniform" / "adapter")).merge_and_unload().eval()
    reference = ResNetForImageClassification.from_pretrained(str(tmp_path / "base")).eval()
    reference.load_state_dict(weights)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapter(pixel_values=x).logits, reference(pixel_values=x).logits, atol=1e-5, rtol=0)
    with caplog.at_level("WARNING"):
        run_soup(compose_cfg("soup", tmp_path, args), tmp_path / "recomputed")  # bn_recalibration=auto
    assert json.loads((tmp_path / "recomputed" / "uniform" / "soup.json").read_text())["bn_recalibrated"] is True
    assert (tmp_path / "recomputed" / "uniform" / "hf").is_dir() and not (tmp_path / "recomputed" / "uniform" / "adapter").exists()
    assert "uniform: not written as an adapter" in caplog.text and "running_" in caplog.text


def test_an_entry_by_entry_merge_gets_no_exact_adapter_but_its_approximation(lora_pool, tmp_path, caplog):
    """TIES trims and elects signs entry by entry: its update is not of rank Σ r_i, so `adapter/` (exact by its
    name) is not written for it, with a warning naming the error; the uniform soup's is exact; pool.svd_rank
    still writes each recipe's approximation with its error."""
    from soups.jobs.soup import run_soup

    tmp, data = lora_pool
    with caplog.at_level("WARNING"):
        run_soup(compose_cfg("soup", tmp_path, ["logger=none", "pool=lora", f"pool.glob={tmp}/plain/*",
                                                f"pool.base={tmp}/base", "pool.svd_rank=2", "method=[uniform,ties]",
                                                *SMALL, *data]), tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "uniform" / "adapter" / "soups_export.json").read_text())["relative_error"] < 1e-6
    assert not (out / "ties" / "adapter").exists()
    assert float(re.search(r"ties: not written as adapter/: its update is not of rank Σ r_i = 9 \(relative error "
                           r"([0-9.e+-]+) at that rank\)", caplog.text).group(1)) > 1e-3
    assert 0 < json.loads((out / "ties" / "adapter_rank2" / "soups_export.json").read_text())["relative_error"] < 1
