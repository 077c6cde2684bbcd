"""RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023, Eq. 3):
per linear map, the weights that best reproduce every ingredient's outputs on its own inputs,

    W* = argmin_W Σᵢ ‖Xᵢ Wᵀ − Xᵢ Wᵢᵀ‖²  =>  W*ᵀ = (Σᵢ G̃ᵢ + λI)⁻¹ Σᵢ G̃ᵢ Wᵢᵀ,   Gᵢ = XᵢᵀXᵢ / nᵢ

with Xᵢ the inputs the map receives inside ingredient i on n held-out examples (every row of a sequence or
image-token grid), G̃ᵢ = α·Gᵢ + (1 − α)·diag(Gᵢ) (the paper's reduction of the off-diagonal, α = `alpha`),
and λ = `ridge` × the mean diagonal of Σ G̃ᵢ, a ridge toward the plain mean W̄ (λW̄ᵀ joins the right-hand
side), so a singular Gram (a feature that is always zero) still solves and identical ingredients come back.
Every linear map whose forward runs gets a Gram from a forward hook, the in-projection of
`nn.MultiheadAttention` included (its q, k, v rows read the same input in self-attention; its forward
never calls an `nn.Linear`); everything else (biases, norms, embeddings, an attention out-projection that
runs inside `F.multi_head_attention_forward`, buffers) is the plain mean. Text examples run one at a time, so
padding never enters a Gram.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from soups.averaging import StateDict, average
from soups.errors import BadInput
from soups.models.text import TokenBatch
from soups.recipes import Recipe, RecipeResult, held_out_examples




def gram_matrices(model: nn.Module, batches, examples: int) -> dict[str, torch.Tensor]:
    """{state-dict key of a weight: G = XᵀX / rows (float64 [in, in])} for every nn.Linear whose forward runs
    and the in_proj_weight of every self-attention nn.MultiheadAttention, over the first `examples` inputs of
    `batches` ((inputs, labels) pairs). Raises BadInput for no examples."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def record(key):
        def hook(module, args, kwargs=None):
            x = args[0] if args else (kwargs or {}).get("query")
            if isinstance(module, nn.MultiheadAttention):
                key_in = args[1] if len(args) > 1 else (kwargs or {}).get("key")
                if key_in is not x:  # cross-attention: k, v read another input; left to the plain mean
                    return
            flat = x.detach().reshape(-1, x.shape[-1]).double()
            sums[key] = sums.get(key, 0) + flat.T @ flat
            rows[key] = rows.get(key, 0) + flat.shape[0]
        return hook

    handles = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            handles.append(module.register_forward_pre_hook(record(prefix + "in_proj_weight"), with_kwargs=True))
        elif isinstance(module, nn.Linear) and not _inside_attention(model, name):
            handles.append(module.register_forward_pre_hook(record(prefix + "weight"), with_kwargs=True))
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                one_by_one = isinstance(inputs, TokenBatch)  # unpadded: padding rows are not inputs
                chunks = [_unpadded(inputs[i:i + 1]) for i in range(len(inputs))] if one_by_one else [inputs]
                for chunk in chunks:
                    take = min(len(chunk), examples - seen)
                    if take <= 0:
                        break
                    model(chunk[:take])
                    seen += take
                if seen >= examples:
                    break
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise BadInput("regmean: the held-out set gave no examples")
    return {k: v / rows[k] for k, v in sums.items()}


def _inside_attention(model: nn.Module, name: str) -> bool:
    """An out_proj of nn.MultiheadAttention: its weights are used inside F.multi_head_attention_forward, its
    own forward never runs (no input to record)."""
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    return name.endswith("out_proj") and isinstance(model.get_submodule(parent) if parent else model,
                                                    nn.MultiheadAttention)


def _unpadded(batch: TokenBatch) -> TokenBatch:
    length = int(batch.attention_mask.sum())
    return TokenBatch(batch.input_ids[:, :length], batch.attention_mask[:, :length])


def regmean_merge(states: list[StateDict], grams: list[dict[str, torch.Tensor]], alpha: float,
                  ridge: float) -> StateDict:
    """The plain mean, with every weight that has a Gram in every state replaced by
    (Σ G̃ᵢ + λI)⁻¹ (Σ G̃ᵢ Wᵢᵀ + λ W̄ᵀ), W̄ the plain mean: the ridge pulls toward the uniform soup, not toward
    zero, so identical ingredients give back the ingredient whatever λ. Float64 inside. Raises BadInput for a
    numerically singular Gram without a ridge."""
    merged = average(states)
    for key in grams[0]:
        if not all(key in g for g in grams):
            continue
        reduced = [alpha * g[key] + (1 - alpha) * torch.diag(torch.diagonal(g[key])) for g in grams]
        total = sum(reduced)
        lam = ridge * float(torch.diagonal(total).mean())
        if lam == 0 and float(torch.linalg.cond(total)) > 1e12:
            raise BadInput(f"regmean: the Gram of {key} is singular (an input feature that is always zero, or fewer "
                           f"examples than features): give method.regmean.ridge > 0")
        rhs = sum(r @ s[key].double().T for r, s in zip(reduced, states)) + lam * merged[key].double().T
        solved = torch.linalg.solve(total + lam * torch.eye(total.shape[0], dtype=total.dtype), rhs)
        merged[key] = solved.T.to(states[0][key].dtype).contiguous()
    return merged


@dataclass
class RegMean(Recipe):
    examples: int = 256   # held-out examples whose inputs make the Grams (a seeded sample)
    alpha: float = 0.9    # off-diagonal scale of each Gram (1: the exact least squares; 0: diagonal only)
    ridge: float = 1e-4   # λ as a fraction of the mean diagonal of Σ G̃ (a singular Gram still solves)
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        wrong = [f"{name}={value!r} (expected {expected})" for name, value, ok, expected in (
            ("alpha", self.alpha, 0 <= self.alpha <= 1, "a number in [0, 1]"),
            ("ridge", self.ridge, math.isfinite(self.ridge) and self.ridge >= 0, "a finite number >= 0"),
            ("examples", self.examples, self.examples >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")) if not ok]
        if wrong:
            raise BadInput("regmean: " + "; ".join(wrong))

    def __call__(self, ingredients, scorer) -> RecipeResult:
        examples = held_out_examples(scorer, self.examples, "regmean")
        model = copy.deepcopy(scorer.model)  # the scorer's own model keeps the weights it knows it holds
        states, grams = [], []
        for ingredient in ingredients:
            state = scorer.load(ingredient)
            model.load_state_dict(state)
            batches = scorer.held_out_set().batches(self.batch_size, shuffle_seed=self.seed, device=scorer.device)
            grams.append({k: v.cpu() for k, v in gram_matrices(model, batches, examples).items()})
            states.append(state)
        del model
        weights = regmean_merge(states, grams, self.alpha, self.ridge)
        details = {"examples": examples, "alpha": self.alpha, "ridge": self.ridge,
                   "merged_by_gram": sorted(grams[0])}
        return RecipeResult(weights, list(ingredients), details)
