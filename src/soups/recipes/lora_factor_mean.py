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

from soups.errors import NotApplicable
from soups.models.hf import PREFIX
from soups.pools.lora import read_adapter, update
from soups.recipes import Recipe, RecipeResult


def factor_mean(base: dict[str, torch.Tensor], adapters: list) -> dict[str, torch.Tensor]:
    """`base` (HF keys, W0) with every adapted module set to W0 + mean(s·B)·mean(A) and every fully trained
    tensor (a head) to its mean; `adapters`: soups.pools.lora.Factors. An adapter that does not adapt a module
    counts as zero factors there, one that did not train a head as W0's head (as its merged weights are);
    smaller ranks are zero-padded to the largest (rows of A, columns of B that add nothing)."""
    out = dict(base)
    for module in sorted({m for a in adapters for m in a.lora}):
        present = [a.lora[module] for a in adapters if module in a.lora]
        rank = max(a.shape[0] for a, _, _ in present)
        b = sum(_zero_padded(b * s, 1, rank) for _, b, s in present) / len(adapters)
        a_mean = sum(_zero_padded(a, 0, rank) for a, _, _ in present) / len(adapters)
        key = f"{module}.weight"
        out[key] = base[key] + update(a_mean, b, 1.0, bool(adapters[0].config.get("fan_in_fan_out")))
    for key in sorted({k for a in adapters for k in a.full}):
        out[key] = torch.stack([a.full.get(key, base[key]) for a in adapters]).mean(0)
    return out


def _zero_padded(t: torch.Tensor, dim: int, rank: int) -> torch.Tensor:
    """`t` with zeros appended along `dim` up to `rank` (A's rows, B's columns; a convolution's too)."""
    shape = list(t.shape)
    shape[dim] = rank - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


@dataclass
class LoraFactorMean(Recipe):
    needs_init: ClassVar[bool] = True  # W0

    def check(self, ingredients) -> None:
        if any(i.info.get("format") != "lora" for i in ingredients):
            raise NotApplicable("method=lora_factor_mean averages LoRA factors: it needs LoRA ingredients (pool=lora, "
                           "or the run dirs of a lora=default sweep)")

    def __call__(self, ingredients, scorer) -> RecipeResult:
        self.check(ingredients)
        base = {k[len(PREFIX):]: v for k, v in scorer.load_init().items()}
        adapters = [read_adapter(Path(i.info["adapter"])) for i in ingredients]
        weights = {PREFIX + k: v for k, v in factor_mean(base, adapters).items()}
        return RecipeResult(weights, list(ingredients), {"rule": "W0 + mean(s_i B_i) mean(A_i); heads averaged"},
                            new_point=True)
