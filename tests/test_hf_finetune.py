"""Fine-tuning through transformers (model=hf) and with LoRA (lora=default, peft), as a sweep
`python src/finetune.py -m lr=...` followed by `python src/soup.py`: the runs are also transformers folders
and peft adapter folders that load back with from_pretrained to the runs' own weights."""
import subprocess
import warnings

import pytest
import torch
from safetensors.torch import load_file

import commands
from test_hf_pool import tiny_bert, tokenizer
from test_text import fake_sentences

SMALL = ["~experiment", "data=sentiment", "data.test_size=20", "data.val_size=20", "data.shifts.max_images=25",
         "epochs=1", "batch_size=8", "warmup_steps=2", "eval_batch_size=16", "head.Cs=[1.0]", "logger=none"]


def run(script: str, args: list[str], tmp) -> subprocess.CompletedProcess:
    return commands.project(f"src/{script}.py", *args, tmp=tmp, timeout=600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny BERT classifier folder (save_pretrained, with MiniLM's tokenizer) and the sentence files."""
    tmp = tmp_path_factory.mktemp("hfft")
    torch.manual_seed(0)
    tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(tmp / "base")
    tokenizer().save_pretrained(tmp / "base")
    return tmp, fake_sentences(tmp / "hutto", n=60)


def test_a_sweep_of_a_transformers_folder_then_greedy_soup(folder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    tmp, data = folder
    sweep = tmp_path / "logs/finetune/multiruns/s"
    proc = run("finetune", ["-m", "model=hf", f"model.hf_classifier={tmp}/base", "lr=1e-3,3e-3", *SMALL, *data,
                            f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("soup", ["method=greedy", "logger=none", f"hydra.run.dir={tmp_path}/soup"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "greedy soup" in (tmp_path / "soup" / "report.md").read_text()
    # each run is also a transformers folder holding the run's weights
    weights = load_file(str(sweep / "1" / "model.safetensors"))
    loaded = AutoModelForSequenceClassification.from_pretrained(str(sweep / "1" / "hf"))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, weights["model." + key], atol=0, rtol=0)
    assert (sweep / "1" / "hf" / "tokenizer.json").is_file()


def test_lora_runs_write_peft_adapters_whose_merge_is_the_runs_weights(folder, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    tmp, data = folder
    sweep = tmp_path / "logs/finetune/multiruns/s"
    proc = run("finetune", ["-m", "model=hf", f"model.hf_classifier={tmp}/base", "lora=default", "lora.r=4",
                            "lr=1e-3,1e-2", *SMALL, *data, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter = sweep / "1" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    factors = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in factors) and "base_model.model.classifier.weight" in factors
    assert not any("lora_A" in k for k in factors if ".key." in k)  # only query and value adapted
    init_hf = next((tmp_path / "cache" / "init").glob("*/hf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(str(init_hf)),
                                           str(adapter)).merge_and_unload()
    weights = load_file(str(sweep / "1" / "model.safetensors"))
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, weights["model." + key], atol=1e-6, rtol=0)
    # the encoder outside the adapters did not move
    init = load_file(str(init_hf / "model.safetensors"))
    torch.testing.assert_close(weights["model.bert.encoder.layer.0.attention.self.key.weight"],
                               init["bert.encoder.layer.0.attention.self.key.weight"], atol=0, rtol=0)
    proc = run("soup", ["method=[uniform,greedy,lora_factor_mean]", "logger=none", f"hydra.run.dir={tmp_path}/soup"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    soup = load_file(str(tmp_path / "soup" / "uniform" / "model.safetensors"))
    runs = [load_file(str(sweep / str(i) / "model.safetensors")) for i in range(2)]
    for key, value in soup.items():
        torch.testing.assert_close(value, (runs[0][key] + runs[1][key]) / 2, atol=1e-6, rtol=0)
    report = (tmp_path / "soup" / "report.md").read_text()
    assert "lora_factor_mean soup" in report
    assert (tmp_path / "soup" / "uniform" / "hf" / "model.safetensors").is_file()  # from_pretrained-ready


def test_lora_on_a_model_that_is_not_a_transformers_folder_is_one_plain_error(folder, tmp_path):
    tmp, data = folder
    proc = run("finetune", ["model=tiny_bert", "lora=default", *SMALL, *data], tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: lora=default trains LoRA adapters of a transformers model") and \
        "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["model=hf"], r"model=hf needs model.hf_classifier=<folder>"),
    (["lora=default", "lora.target_modules=[nope]"], r"lora.target_modules=\['nope'\]: \['nope'\] name no linear map"),
    (["lora=default", "lora.r=0", "lora.dropout=2"], r"lora.r=0 \(expected an integer >= 1\); lora.dropout=2"),
])
def test_bad_transformers_and_lora_settings_are_one_error_before_any_work(folder, tmp_path, args, message):
    import re

    tmp, data = folder
    hf = [] if args == ["model=hf"] else ["model=hf", f"model.hf_classifier={tmp}/base"]
    proc = run("finetune", [*hf, *args, *SMALL, *data], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(message, proc.stderr.strip().splitlines()[-1]), proc.stderr[-500:]
    assert not (tmp_path / "cache" / "init").exists()  # before the shared init
