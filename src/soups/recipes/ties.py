"""TIES-Merging (Yadav et al., "Resolving Interference When Merging Models", NeurIPS 2023, Algorithm 1): trim,
elect sign, disjoint merge of the task vectors τᵢ = θᵢ − θ₀ (θ₀: the shared init).

    trim     τ̂ᵢ keeps the k = max(1, ⌊density · n⌋) entries of τᵢ largest in magnitude (ties at the k-th kept
             too), n counted per tensor (`scope: tensor`, as mergekit) or over all of a model's tensors
             (`scope: global`, as the paper and FusionBench)
    elect    γ = sign(Σᵢ τ̂ᵢ) per entry; a zero sum (nothing survived, or survivors cancel exactly) elects +1,
             as mergekit (its `get_mask`: (sum ≥ 0)·2 − 1), where the authors' code elects the tensor's majority sign
    merge    τ_m = Σᵢ τ̂ᵢ [sign τ̂ᵢ = γ] / max(1, #{i : sign τ̂ᵢ = γ})   (`merge: mean`; `sum` drops the divisor)
    θ = θ₀ + λ τ_m                                                     (λ = `scale`)

Every floating-point tensor takes part (as in both peers); integer buffers come from the first ingredient.
Streamed: two passes over the ingredients (three with `scope: global`, whose threshold needs each model
whole), memory the init, three accumulators and one ingredient. The authors' released code, and FusionBench
0.2.33 which follows it, keep one entry more per model than ⌊density · n⌋ (|τ| ≥ the (n − ⌊density · n⌋)-th
smallest); mergekit and this module keep the paper's top-k%; see BENCHMARKS.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from soups.errors import BadInput
from soups.recipes import Recipe, RecipeResult

SCOPES, MERGES = ("tensor", "global"), ("mean", "sum")


def kept_count(n: int, density: float) -> int:
    """Entries trimming keeps of n: max(1, ⌊density · n⌋), all of them at density 1."""
    return n if density >= 1 else max(1, int(density * n))


def elect_and_merge(total: dict, vectors, merge: str) -> dict:
    """TIES' sign election and disjoint merge (Algorithm 1, steps 2-3), shared with DARE-TIES. `total`: {key:
    Σᵢ τ̂ᵢ} (float64), emptied here once the signs are read (its memory freed); `vectors`: the same {key: τ̂ᵢ}
    once more, model by model (streamed). γ = sign(total), a zero sum electing +1; returns {key: the mean
    (merge="mean") or sum of the entries whose sign is γ} in float64. Memory: 13 bytes an entry (float64 sum,
    int32 count, bool sign), besides the model in hand."""
    positive = {key: s >= 0 for key, s in total.items()}
    total.clear()
    agreeing = {key: torch.zeros_like(p, dtype=torch.float64) for key, p in positive.items()}
    count = {key: torch.zeros_like(p, dtype=torch.int32) for key, p in positive.items()}
    for taus in vectors:
        for key, tau in taus.items():
            keep = torch.where(positive[key], tau > 0, tau < 0)  # a zero entry agrees with neither sign
            agreeing[key] += torch.where(keep, tau, torch.zeros_like(tau))
            count[key] += keep
    del positive
    return {key: agreeing[key].div_(count[key].clamp_min_(1)) if merge == "mean" else agreeing[key]
            for key in agreeing}


def threshold(values: torch.Tensor, density: float) -> float:
    """The k-th largest magnitude of `values` (k = kept_count): entries at or above it survive trimming."""
    flat = values.reshape(-1).abs()
    k = kept_count(flat.numel(), density)
    return float(flat.kthvalue(flat.numel() - k + 1).values)


@dataclass
class TiesMerging(Recipe):
    needs_init: ClassVar[bool] = True
    density: float = 0.2
    scope: str = "tensor"
    merge: str = "mean"
    scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.density <= 1:
            raise BadInput(f"density={self.density}; expected a fraction of entries to keep in (0, 1]")
        if self.scope not in SCOPES:
            raise BadInput(f"scope={self.scope!r}; expected one of {list(SCOPES)}")
        if self.merge not in MERGES:
            raise BadInput(f"merge={self.merge!r}; expected one of {list(MERGES)}")
        if not math.isfinite(self.scale):
            raise BadInput(f"scale={self.scale}; expected a finite number (λ, 1 = the merged task vector as is)")

    def __call__(self, ingredients, scorer) -> RecipeResult:
        init = scorer.load_init()
        floats = [k for k, v in init.items() if v.is_floating_point() and k not in scorer.aliases]  # a tied tensor once

        def trimmed(state, cut):  # {key: τ̂} in float64
            out = {}
            for key in floats:
                tau = state[key].double() - init[key].double()
                t = cut if cut is not None else threshold(tau, self.density)
                out[key] = torch.where(tau.abs() >= t, tau, torch.zeros_like(tau))
            return out

        cuts = [None] * len(ingredients)
        if self.scope == "global":  # each model's own threshold over all its tensors
            for i, ingredient in enumerate(ingredients):
                state = scorer.load(ingredient)
                cuts[i] = threshold(torch.cat([(state[k].double() - init[k].double()).reshape(-1) for k in floats]),
                                    self.density)
        total, first, moved = {key: torch.zeros_like(init[key], dtype=torch.float64) for key in floats}, None, {}
        for i, ingredient in enumerate(ingredients):
            state = scorer.load(ingredient)
            first = state if first is None else first
            for key, tau in trimmed(state, cuts[i]).items():
                total[key] += tau
                moved[key] = moved.get(key, False) | (tau != 0)
        tau_m = elect_and_merge(total, (trimmed(scorer.load(ingredient), cuts[i])
                                        for i, ingredient in enumerate(ingredients)), self.merge)
        merged = {key: (value.double() + self.scale * tau_m[key]).to(value.dtype) if key in tau_m
                  else first[key].clone() for key, value in init.items()}
        kept = sum(int(m.sum()) for m in moved.values()) / sum(m.numel() for m in moved.values())
        details = {"density": self.density, "scope": self.scope, "merge": self.merge, "scale": self.scale,
                   "entries_moved": kept}
        return RecipeResult(merged, list(ingredients), details, new_point=True)
