"""LoRA fine-tuning of a transformers classifier with peft (finetune.py's `lora` group): the adapters wrapped
around the model, checked before any work, written as peft writes them and folded into the weights."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from torch import nn

from soups.models.hf import HFClassifier


@contextlib.contextmanager
def quiet_peft():
    """peft 0.21.2 calls a transformers method deprecated in transformers 5 (a FutureWarning per model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def lora_problems(lora_cfg, model: HFClassifier) -> list[str]:
    """What is wrong with the `lora` settings for this model (its module names from its architecture)."""
    problems = []
    r, alpha, dropout = lora_cfg.get("r"), lora_cfg.get("alpha"), lora_cfg.get("dropout", 0.0)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        problems.append(f"lora.r={r!r} (expected an integer >= 1)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        problems.append(f"lora.alpha={alpha!r} (expected a number > 0)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        problems.append(f"lora.dropout={dropout!r} (expected a number in [0, 1))")
    targets = list(lora_cfg.get("target_modules") or [])
    names = [n for n, m in model.model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + str(t)) for n in names)]
    if not targets or unmatched:
        examples = sorted({n.rsplit(".", 1)[-1] for n in names})[:12]
        problems.append(f"lora.target_modules={targets}: {unmatched or 'none given'} name no linear map of "
                        f"{type(model.model).__name__} (its linear maps end in {examples})")
    return problems


def with_lora(model: HFClassifier, lora_cfg) -> HFClassifier:
    """`model` with peft LoRA adapters on `lora.target_modules` (rank r, lora_alpha, rsLoRA, dropout) and its
    head's top module trained in full (`modules_to_save`): only those train. Returns it (changed in place)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(lora_cfg.r), lora_alpha=float(lora_cfg.alpha),
                        target_modules=list(lora_cfg.target_modules), use_rslora=bool(lora_cfg.rslora),
                        lora_dropout=float(lora_cfg.dropout), modules_to_save=[model.head_path.split(".")[0]])
    with quiet_peft():
        model.model = get_peft_model(model.model, config)
    return model


def save_adapter_and_merge(model: HFClassifier, folder: Path, base_dir: Path) -> HFClassifier:
    """Writes the trained adapter (peft's save_pretrained, its base recorded as `base_dir`), then folds it
    into the weights (merge_and_unload): `model` is a plain transformers classifier again. Returns it."""
    peft_model = model.model
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    with quiet_peft():
        peft_model.save_pretrained(str(folder))
        model.model = peft_model.merge_and_unload()
    return model
