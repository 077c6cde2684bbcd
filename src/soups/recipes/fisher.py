"""Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022, Eq. 3):
per parameter, the mean of the ingredients weighted by their diagonal Fisher information,

    θ* = Σᵢ (Fᵢ + ε) θᵢ / Σᵢ (Fᵢ + ε),     Fᵢ = (1/n) Σₓ Σ_c p_c(x; θᵢ) · (∂ log p_c(x; θᵢ) / ∂θ)²

with Fᵢ estimated on n examples of the held-out set (a seeded sample; test and shifts are never seen). The
expectation runs over the model's own predictive distribution p(c | x): one gradient per example and class,
summed with weights p_c (`estimator: exact`), or one class drawn from p per example (`sampled`, the unbiased
one-backward estimate). The squared gradient of a loss summed over examples or classes is not this quantity
(it has cross terms between examples): FusionBench 0.2.33 computes that one.

ε (`floor`) is added to every Fisher, so a parameter no example moves (and every buffer, e.g. BatchNorm
statistics) is averaged uniformly. `normalize` scales each Fᵢ to mean 1 over all its parameters first, so
one model's larger gradients do not dominate every parameter (the paper's optional normalization).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from soups.averaging import StateDict
from soups.errors import BadInput
from soups.recipes import Recipe, RecipeResult, held_out_examples

ESTIMATORS = ("exact", "sampled")


def diagonal_fisher(model: torch.nn.Module, batches, examples: int, estimator: str = "exact",
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """{parameter name: F} (float32, each the parameter's shape): the mean over `examples` inputs of
    Σ_c p_c (∂ log p_c / ∂θ)² (exact) or of (∂ log p_ĉ / ∂θ)², ĉ ~ p (sampled). `batches` yields (inputs,
    labels) with inputs sliceable by row (tensors, TokenBatch); labels are not used (the Fisher is the
    model's). The model is run in eval mode, one example at a time. Raises BadInput for no examples."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    seen = 0
    for inputs, _ in batches:
        for row in range(len(inputs)):
            if seen == examples:
                break
            log_p = F.log_softmax(model(inputs[row:row + 1]).float(), dim=-1)[0]
            p = log_p.detach().exp()
            classes = range(len(p)) if estimator == "exact" else \
                [int(torch.multinomial(p.cpu(), 1, generator=generator))]
            for c in classes:
                grads = torch.autograd.grad(log_p[c], list(params.values()), retain_graph=True, allow_unused=True)
                weight = float(p[c]) if estimator == "exact" else 1.0
                for (name, _), g in zip(params.items(), grads):
                    if g is not None:
                        fisher[name].addcmul_(g.detach().float(), g.detach().float(), value=weight)  # no temporaries
            seen += 1
        if seen == examples:
            break
    if seen == 0:
        raise BadInput("fisher: the held-out set gave no examples")
    return {n: f / seen for n, f in fisher.items()}


def fisher_average(states: list[StateDict], fishers: list[dict[str, torch.Tensor]], floor: float,
                   normalize: bool = False) -> StateDict:
    """Σᵢ (Fᵢ + floor) θᵢ / Σᵢ (Fᵢ + floor) per float tensor (computed in float64); tensors without a Fisher
    (buffers) get floor alone, i.e. the uniform mean; non-float tensors come from the first state.
    `normalize`: each Fᵢ divided by its mean over all its entries first."""
    if normalize:
        fishers = [{k: v / max(float(torch.cat([t.flatten() for t in f.values()]).mean()), 1e-30) for k, v in f.items()}
                   for f in fishers]
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        num = torch.zeros_like(first, dtype=torch.float64)
        den = torch.zeros_like(first, dtype=torch.float64)
        for state, fisher in zip(states, fishers):
            w = fisher[key].double() + floor if key in fisher else torch.full_like(num, floor)
            num += w * state[key].double()
            den += w
        out[key] = (num / den).to(first.dtype)
    return out


@dataclass
class FisherSoup(Recipe):
    examples: int = 256       # held-out examples the Fisher is estimated on (a seeded sample)
    estimator: str = "exact"  # exact: Σ_c p_c g_c² (classes x examples backward passes) | sampled: c ~ p
    floor: float = 1e-6       # ε added to every Fisher (buffers and unmoved parameters: the uniform mean)
    normalize: bool = False   # scale each model's Fisher to mean 1 first
    seed: int = 0             # the held-out sample's order (and the sampled estimator's classes)
    batch_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        wrong = [f"{name}={value!r} (expected {expected})" for name, value, ok, expected in (
            ("estimator", self.estimator, self.estimator in ESTIMATORS, "|".join(ESTIMATORS)),
            ("examples", self.examples, self.examples >= 1, "an integer >= 1"),
            ("floor", self.floor, math.isfinite(self.floor) and self.floor > 0,
             "a finite number > 0: with 0, a parameter no model's Fisher moves would be 0/0"),
            ("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")) if not ok]
        if wrong:
            raise BadInput("fisher: " + "; ".join(wrong))

    def __call__(self, ingredients, scorer) -> RecipeResult:
        examples = held_out_examples(scorer, self.examples, "fisher")
        model = copy.deepcopy(scorer.model)  # the scorer's own model keeps the weights it knows it holds
        states, fishers, sums = [], [], []
        for ingredient in ingredients:
            state = scorer.load(ingredient)
            model.load_state_dict(state)
            batches = scorer.held_out_set().batches(self.batch_size, shuffle_seed=self.seed, device=scorer.device)
            fisher = diagonal_fisher(model, batches, examples, self.estimator, self.seed)
            states.append(state)
            fishers.append({k: v.cpu() for k, v in fisher.items()})
            sums.append(round(float(sum(v.sum() for v in fisher.values())), 6))
        del model
        weights = fisher_average(states, fishers, self.floor, self.normalize)
        details = {"examples": examples, "estimator": self.estimator, "floor": self.floor,
                   "normalize": self.normalize, "fisher_trace": dict(zip([i.name for i in ingredients], sums))}
        return RecipeResult(weights, list(ingredients), details)
