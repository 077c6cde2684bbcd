"""Mean of LoRA factors (pool=lora only): W0 + mean(sᵢBᵢ)·mean(Aᵢ) on each adapted module, the adapters' fully
trained tensors (heads) averaged. This is NOT the soup of the fine-tunes: the soup is W0 + mean(sᵢBᵢAᵢ)
(what `uniform` computes on a LoRA pool); the product of means adds the cross terms sᵢBᵢAⱼ (i ≠ j) and scales
each own term by 1/N. It is here so the difference can be measured, never as a default. (peft's
`add_weighted_adapter(..., "linear")` is a third model: (Σ√wᵢBᵢ)(Σ√wᵢsᵢAᵢ).)"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from soups.errors import BadInput
from soups.models.hf import PREFIX
from soups.pools.lora import read_adapter
from soups.recipes import Recipe, RecipeResult


def factor_mean(base: dict[str, torch.Tensor], adapters: list) -> dict[str, torch.Tensor]:
    """`base` (HF keys, W0) with every adapted module set to W0 + mean(s·B)·mean(A) and every fully trained
    tensor to its mean; `adapters`: soups.pools.lora.Factors. Adapters of a smaller rank are zero-padded to the
    largest (rows of A, columns of B that add nothing to their own update). Raises BadInput where the adapters
    adapt different modules."""
    modules = set(adapters[0].lora)
    if any(set(a.lora) != modules for a in adapters):
        raise BadInput("method=lora_factor_mean: the adapters adapt different modules; a mean of factors needs one set")
    out = dict(base)
    for module in sorted(modules):
        rank = max(a.lora[module][0].shape[0] for a in adapters)
        b = torch.stack([F.pad(a.lora[module][1] * a.lora[module][2], (0, rank - a.lora[module][1].shape[1]))
                         for a in adapters]).mean(0)
        a_mean = torch.stack([F.pad(a.lora[module][0], (0, 0, 0, rank - a.lora[module][0].shape[0]))
                              for a in adapters]).mean(0)
        delta = b @ a_mean
        key = f"{module}.weight"
        out[key] = base[key] + (delta.T if adapters[0].config.get("fan_in_fan_out") else delta)
    for key in adapters[0].full:
        out[key] = torch.stack([a.full[key] for a in adapters]).mean(0)
    return out


@dataclass
class LoraFactorMean(Recipe):
    needs_init: ClassVar[bool] = True  # W0

    def __call__(self, ingredients, scorer) -> RecipeResult:
        if any(i.info.get("format") != "lora" for i in ingredients):
            raise BadInput("method=lora_factor_mean averages LoRA factors: it needs pool=lora (adapter folders)")
        base = {k[len(PREFIX):]: v for k, v in scorer.load_init().items()}
        adapters = [read_adapter(Path(i.info["adapter"])) for i in ingredients]
        weights = {PREFIX + k: v for k, v in factor_mean(base, adapters).items()}
        return RecipeResult(weights, list(ingredients), {"rule": "W0 + mean(s_i B_i) mean(A_i); heads averaged"},
                            new_point=True)
