"""DARE, drop and rescale (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous
Models as a Free Lunch", ICML 2024, Eq. 1-2): each entry of each task vector τᵢ = θᵢ − θ₀ (θ₀: the shared
init) is dropped with probability p, the survivors rescaled, and the sparse vectors merged.

    drop     mᵢ ~ Bernoulli(1 − p) per entry;  τ̂ᵢ = r · mᵢ ⊙ τᵢ
    rescale  r = 1 / (1 − p)                          (`rescale: inverse`: the paper and FusionBench; E[τ̂ᵢ] = τᵢ)
             r = |τᵢ|₁ / |mᵢ ⊙ τᵢ|₁ per tensor         (`l1`: mergekit's `dare_*`, the tensor's L1 norm kept;
                                                        as there, r = 1 where either norm is below 1e-7)
             r = 1                                    (`none`: the paper's drop-only ablation)
    merge    τ_m = (1/K) Σᵢ τ̂ᵢ  (`merge: mean`: a uniform soup of the dropped vectors; FusionBench DareSimpleAverage)
             τ_m = Σᵢ τ̂ᵢ        (`sum`: task arithmetic; mergekit `dare_linear`, FusionBench DareTaskArithmetic)
             with `sign_election: true` only the τ̂ᵢ whose sign agrees with γ = sign(Σᵢ τ̂ᵢ) (a zero sum elects
             +1: soups.recipes.ties.elect_and_merge), divided by their count under `mean`: DARE-TIES as mergekit's
             `dare_ties` (= `merge: sum`, its default normalize: false), the random drop in place of TIES'
             magnitude trim (FusionBench's DareTiesMerging trims by magnitude again after dropping; with that
             trim off it is `merge: mean` or `sum` here: BENCHMARKS.md, Peers). Under
             the election `mean` averages the agreeing survivors, each already scaled by 1/(1 − p): the step
             is about 1/(1 − p) times TIES' (2× at p = 0.5, an extrapolation); `rescale: none` keeps TIES'
             scale, and `merge: sum` with `scale` ≈ 1/K is mergekit's `dare_ties` with weights 1/K
    θ = θ₀ + λ τ_m                                     (λ = `scale`)

With p = 0 every recipe of this file is the plain one it starts from (`mean`: the uniform soup). The mask of
ingredient i, tensor `key` in draw d comes from a generator seeded by sha256("seed/d/i/key"): it depends on
nothing else (not the other tensors, not the device), so a rerun draws the same masks and the evaluation
cache serves it. `draws` > 1: each draw is evaluated on every set; the row shows their mean ± std
(population std, as greedy_random), the saved weights are those of the draw best on held-out (the first of
equals), and the table `mask_draws` has each draw's metrics, `entries_kept` (the fraction of task-vector
entries its masks kept, before any election) and whether it is the one `saved`. Every floating-point tensor takes part, BatchNorm statistics included (as mergekit;
FusionBench's DareSimpleAverage / DareTaskArithmetic move trainable parameters only, its DareTiesMerging adds
the fine-tunes' buffers themselves, not their displacements, to the init's: scripts/peers/buffers.py): a soup's BN statistics are recomputed when the model
has BN (`bn_recalibration: auto`), and without that a negative running variance is refused by the scorer.
Integer buffers come from the first ingredient; a tied copy follows its first name. Streamed: the init, the
first ingredient (for its integer buffers), one more ingredient and the float64 sum (8 bytes an entry), which
the sign election replaces by 13 bytes an entry (soups.recipes.ties.elect_and_merge).
"""
from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass
from typing import ClassVar

import torch

from soups.errors import BadInput
from soups.names import HELD_OUT
from soups.recipes import Recipe, RecipeResult
from soups.recipes.ties import elect_and_merge

RESCALES, MERGES = ("inverse", "l1", "none"), ("mean", "sum")
L1_FLOOR = 1e-7  # `l1`: no rescale where either L1 norm is below it, as mergekit


def drop_mask(shape: torch.Size, drop: float, seed: int, draw: int, index: int, key: str) -> torch.Tensor:
    """bool [shape]: True where an entry survives, each with probability 1 − `drop`, from a generator seeded by
    (seed, draw, ingredient index, tensor key) alone."""
    digest = hashlib.sha256(f"{seed}/{draw}/{index}/{key}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.rand(shape, generator=generator) >= drop  # float32 uniforms: P(keep) = 1 − p within 6e-8


def drop_and_rescale(tau: torch.Tensor, keep: torch.Tensor, drop: float, rescale: str) -> torch.Tensor:
    """τ̂ = r · keep ⊙ τ (the module docstring's r); `tau` float64 of any shape, `keep` bool of its shape. Under
    `l1`, r = 1 where |τ|₁ or |keep ⊙ τ|₁ is below L1_FLOOR (mergekit 0.1.5's `rescaled_masked_tensor` eps)."""
    kept = tau * keep
    if rescale == "inverse":
        return kept.div_(1 - drop)
    if rescale == "l1":
        before, after = tau.abs().sum(), kept.abs().sum()
        return kept.mul_(before / after) if before >= L1_FLOOR and after >= L1_FLOOR else kept
    return kept


@dataclass
class Dare(Recipe):
    needs_init: ClassVar[bool] = True
    drop: float = 0.5            # p, FusionBench's default (the paper drops 90% and more of LLM fine-tunes' deltas)
    rescale: str = "inverse"
    merge: str = "mean"
    sign_election: bool = False
    scale: float = 1.0
    draws: int = 3
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.drop < 1:
            raise BadInput(f"drop={self.drop}; expected a drop probability p in [0, 1) (0 = no entry dropped)")
        if self.rescale not in RESCALES:
            raise BadInput(f"rescale={self.rescale!r}; expected one of {list(RESCALES)}")
        if self.merge not in MERGES:
            raise BadInput(f"merge={self.merge!r}; expected one of {list(MERGES)}")
        if not math.isfinite(self.scale):
            raise BadInput(f"scale={self.scale}; expected a finite number (λ, 1 = the merged task vector as is)")
        if self.draws < 1:
            raise BadInput(f"draws={self.draws}; expected at least 1 mask draw")

    def merged(self, ingredients, scorer, draw: int, init: dict | None = None) -> tuple[dict, float]:
        """(the merged state of one draw of masks, the fraction of task-vector entries that survived). `init`:
        the shared init's weights if the caller holds them (read once for every draw)."""
        init = scorer.load_init() if init is None else init
        floats = [k for k, v in init.items() if v.is_floating_point() and k not in scorer.aliases]  # a tied tensor once

        def dropped(index, state):  # (key, τ̂ in float64, entries kept) per tensor
            for key in floats:
                tau = state[key].double() - init[key].double()
                keep = drop_mask(tau.shape, self.drop, self.seed, draw, index, key)
                yield key, drop_and_rescale(tau, keep, self.drop, self.rescale), int(keep.sum())

        total = {key: torch.zeros_like(init[key], dtype=torch.float64) for key in floats}
        survived, entries, first = 0, 0, None
        for index, ingredient in enumerate(ingredients):
            state = scorer.load(ingredient)
            first = state if first is None else first
            for key, tau, kept in dropped(index, state):
                total[key] += tau
                survived, entries = survived + kept, entries + tau.numel()
        if self.sign_election:  # the same masks again (seeded per tensor), through TIES' election
            again = ({key: tau for key, tau, _ in dropped(index, scorer.load(ingredient))}
                     for index, ingredient in enumerate(ingredients))
            tau_m = elect_and_merge(total, again, self.merge)
        else:
            tau_m = {key: total[key] / len(ingredients) if self.merge == "mean" else total[key] for key in floats}
        merged = {key: (value.double() + self.scale * tau_m[key]).to(value.dtype) if key in tau_m
                  else first[key].clone() for key, value in init.items()}
        return merged, survived / max(entries, 1)

    def __call__(self, ingredients, scorer) -> RecipeResult:
        details = {"drop": self.drop, "rescale": self.rescale, "merge": self.merge,
                   "sign_election": self.sign_election, "scale": self.scale, "seed": self.seed, "draws": self.draws}
        init = scorer.load_init()
        if self.draws == 1:
            state, kept = self.merged(ingredients, scorer, 0, init)
            return RecipeResult(state, list(ingredients), details | {"entries_kept": kept}, new_point=True)
        records, best, best_state = [], None, None
        for draw in range(self.draws):
            state, kept = self.merged(ingredients, scorer, draw, init)
            metrics = scorer.evaluate(state, new_point=True)
            records.append({"draw": draw, "entries_kept": kept, **metrics})
            if best is None or metrics[HELD_OUT] > records[best][HELD_OUT]:
                best, best_state = draw, state
            del state
        columns = [c for c in records[0] if c not in ("draw", "entries_kept")]
        records = [{"draw": r["draw"], "saved": r["draw"] == best, **{k: v for k, v in r.items() if k != "draw"}}
                   for r in records]
        spread = lambda f: {c: f([r[c] for r in records]) for c in columns}  # noqa: E731
        return RecipeResult(best_state, list(ingredients), details | {"saved_draw": best}, new_point=True,
                            tables={"mask_draws": records}, mean=spread(statistics.fmean), std=spread(statistics.pstdev),
                            sizes=[len(ingredients)] * self.draws)
