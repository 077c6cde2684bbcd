"""A learned soup whose memory does not grow with the pool: MEHL-Soup (Li et al., "Learning Scalable Model
Soup on a Single GPU: An Efficient Subspace Training Strategy", ECCV 2024, Algorithm 1).

The soup is θ = Σₖ αₖ θₖ with Σₖ αₖ = 1: a point on the pool's hyperplane, where coefficients may be negative
(extrapolation). α is learned on the held-out set by block coordinate descent over ingredients:

    start at the uniform soup, α = 1/K
    for each pass over the pool (`model_epochs`), for each batch S of `model_batch` ingredients (seeded order):
        center c = Σₖ αₖ θₖ;  directions dᵢ = (θᵢ − c) / ‖θᵢ − c‖ for i ∈ S
        learn x ∈ R^|S| from 0 on θ(x) = c + Σᵢ xᵢ dᵢ: `epochs` passes over the held-out set, AdamW, linear
          warm-up over the first `warmup` of the steps then cosine, ∂L/∂θ clipped to norm `grad_clip`,
          ∂L/∂xᵢ = ⟨dᵢ, ∂L/∂θ⟩
        fold x into α: sᵢ = xᵢ / ‖θᵢ − c‖,  α ← (1 − Σᵢ sᵢ) α + Σᵢ sᵢ e_i   (so θ(x) = Σₖ αₖ θₖ; Σ α stays 1)

`by_layer` (MEHL-Soup+): one x per ingredient and parameter tensor, norms per tensor. Settings default to the
official script's (lr 0.01, AdamW, 5 epochs per model batch, 20% warm-up, clip 1.0, one pass over the pool).

Memory: the center, |S| directions (in `ingredient_dtype`), the merged parameters and their gradient, i.e.
about `model_batch` + 3 models whatever K is; the paper's learned soup (`learned`) holds all K. Loads: K + |S|
ingredients per model batch (the center is recomputed from α in float64, so a resumed run equals a whole one).

Differences from the official script, on purpose: it starts at the uniform soup of all K (the official one
at the mean of the first model batch), so that zero steps give the uniform soup as `learned` does; buffers
(BN statistics) take the uniform mean rather than α, which may be negative (a running variance must not be),
and are recomputed for the soup like every soup's.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from soups.averaging import tied_aliases
from soups.errors import BadInput
from soups.recipes import Recipe, RecipeResult
from soups.recipes.learned import DTYPES, LOSS_ORDER_SEED, coefficient_soup, draw_coefficients, learned_once
from soups.runtime import autocast

log = logging.getLogger(__name__)


def fold(alpha: torch.Tensor, batch: list[int], steps: torch.Tensor) -> torch.Tensor:
    """α after moving the center c = Σₖ αₖ θₖ by Σᵢ sᵢ (θ_batch[i] − c). alpha: [K, B] float64 (B blocks, each
    column sums to 1); steps s: [len(batch), B]. Returns the new [K, B]; each column still sums to 1."""
    steps = steps.to(alpha.dtype)
    out = alpha * (1 - steps.sum(0, keepdim=True))
    out[batch] += steps
    return out


def point(center: dict, x: torch.Tensor, directions: dict, block_of: dict) -> dict:
    """θ(x) = c + Σᵢ x[i, block] dᵢ per parameter (float32). center {name: tensor}, x [m, blocks],
    directions {name: [m, *shape]}, block_of {name: block index}."""
    m = x.shape[0]
    return {n: c + (x[:, block_of[n]] @ directions[n].reshape(m, -1).float()).view(c.shape) for n, c in center.items()}


def coordinate_gradient(directions: dict, grads: dict, block_of: dict, blocks: int) -> torch.Tensor:
    """∂L/∂x [m, blocks] from ∂L/∂θ (chain rule through `point`): Σ over a block's tensors of ⟨dᵢ, ∂L/∂θ⟩.
    A tensor whose gradient is None (unused by the forward) adds nothing."""
    m = next(iter(directions.values())).shape[0]
    out = torch.zeros(m, blocks, device=next(iter(directions.values())).device)
    for n, g in grads.items():
        if g is not None:
            out[:, block_of[n]] += directions[n].reshape(m, -1).float() @ g.reshape(-1).float()
    return out


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """The official script's learning-rate factor: (step + 1) / w for the first w = ⌊warmup · total⌋ steps,
    then 0.5 (1 + cos(π (step − w) / (total − w)))."""
    w = int(total * warmup)
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(total - w, 1)))


@dataclass
class MEHLSoup(Recipe):
    by_layer: bool = False
    model_batch: int = 4
    model_epochs: int = 1
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 0.0
    warmup: float = 0.2
    grad_clip: float = 1.0  # 0: no clipping
    ingredient_dtype: str = "float32"  # or bfloat16: half the memory of the directions
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.ingredient_dtype not in DTYPES:
            raise BadInput(f"ingredient_dtype={self.ingredient_dtype!r}; expected {list(DTYPES)}")
        if min(self.model_batch, self.model_epochs, self.batch_size) < 1 or self.epochs < 0 or not 0 < self.lr < math.inf:
            raise BadInput(f"need model_batch, model_epochs, batch_size >= 1, epochs >= 0 and lr > 0 (got "
                           f"model_batch={self.model_batch}, model_epochs={self.model_epochs}, batch_size="
                           f"{self.batch_size}, epochs={self.epochs}, lr={self.lr}; lr finite)")
        if not 0 <= self.weight_decay < math.inf:
            raise BadInput(f"weight_decay={self.weight_decay}; expected a finite number >= 0")
        if not 0 <= self.warmup < 1 or not self.grad_clip >= 0 or not math.isfinite(self.grad_clip):
            raise BadInput(f"need 0 <= warmup < 1 and a finite grad_clip >= 0 (got warmup={self.warmup}, "
                           f"grad_clip={self.grad_clip})")

    @property
    def label(self) -> str:
        return "MEHL-Soup+ (by layer)" if self.by_layer else "MEHL-Soup"

    def __call__(self, ingredients, scorer) -> RecipeResult:
        names = [n for n, _ in scorer.model.named_parameters()]
        record, details = learned_once(scorer, "mehl_soup", dict(vars(self)), ingredients, self.label,
                                       lambda journal: self._learn(ingredients, scorer, names, journal_key=journal))
        alpha = torch.tensor(record["coefficients"]["weights"], dtype=torch.float64)
        return RecipeResult(self._soup(ingredients, scorer, names, alpha), list(ingredients), details,
                            figures={"coefficients": partial(draw_coefficients, details)},
                            row="mehl soup (by layer)" if self.by_layer else None)

    def _soup(self, ingredients, scorer, names, alpha: torch.Tensor) -> dict:
        """Σₖ αₖ θₖ (alpha [K] or [K, tensors]); buffers: the uniform mean."""
        k = len(ingredients)
        return coefficient_soup(ingredients, scorer, names, alpha, torch.full((k,), 1 / k, dtype=torch.float64))

    def schedule(self, k: int) -> list[list[int]]:
        """The model batches in order: per pass over the pool a seeded permutation, cut into `model_batch`."""
        batches = []
        for epoch in range(self.model_epochs):
            order = torch.randperm(k, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch)).tolist()
            batches += [order[i:i + self.model_batch] for i in range(0, k, self.model_batch)]
        return batches

    def _learn(self, ingredients, scorer, names, journal_key: dict) -> dict:
        """α [K, blocks]; after every model batch the journal (`journal_key`) holds α, so an interrupted run
        goes on from its last model batch with the same result."""
        model, device = scorer.model, scorer.device
        k, blocks = len(ingredients), len(names) if self.by_layer else 1
        block_of = {n: (i if self.by_layer else 0) for i, n in enumerate(names)}
        aliases = tied_aliases(model)
        held_out = scorer.held_out_set()
        project = getattr(held_out, "project_logits", None)

        def loss_of(params, buffers, images, labels):
            with autocast(scorer.precision, device):
                out = functional_call(model, {**params, **buffers}, (images,))
            return F.cross_entropy(project(out.float()) if project else out.float(), labels.to(device))

        def center(alpha):
            state = self._soup(ingredients, scorer, names, alpha[:, 0] if not self.by_layer else alpha)
            params = {n: state.pop(n).to(device=device, dtype=torch.float32) for n in names}
            return params, {n: v.to(device) for n, v in state.items() if n not in aliases}  # tied copies follow

        def mean_loss(params, buffers):
            with torch.no_grad():
                batches = held_out.batches(self.batch_size, shuffle_seed=LOSS_ORDER_SEED, device=device)
                return sum(loss_of(params, buffers, x, y).item() * len(y) for x, y in batches) / len(held_out)

        model.eval()
        for module in model.modules():  # batch statistics while learning; dropout etc. stay off
            if isinstance(module, _BatchNorm):
                module.train()
        needs_pairs = any(isinstance(m, _BatchNorm) for m in model.modules())
        journal = scorer.recall(journal_key) or {}
        alpha = torch.tensor(journal["alpha"], dtype=torch.float64) if journal else \
            torch.full((k, blocks), 1 / k, dtype=torch.float64)
        uniform_loss = journal.get("uniform_loss")
        if journal:
            log.info("%s: resuming from its journal after model batch %d", self.label, journal["model_batches"])
        plan = self.schedule(k)
        for b in range(journal.get("model_batches", 0), len(plan)):
            params, buffers = center(alpha)
            if uniform_loss is None:
                uniform_loss = mean_loss(params, buffers)
            directions, norms = self._directions([ingredients[i] for i in plan[b]], scorer, params, block_of, blocks)
            x = self._fit(b, params, buffers, directions, block_of, blocks, held_out, loss_of, needs_pairs)
            steps = torch.where(norms > 0, x.double() / norms.clamp_min(1e-300), torch.zeros_like(norms))
            alpha = fold(alpha, plan[b], steps)
            if not torch.isfinite(alpha).all():  # never cached: the journal keeps the last finite state
                raise BadInput(f"{self.label} diverged in model batch {b + 1}: non-finite coefficients; lower "
                               f"method.<name>.lr (now {self.lr}) or keep grad_clip > 0")
            del params, buffers, directions
            scorer.remember(journal_key, {"model_batches": b + 1, "alpha": alpha.tolist(), "uniform_loss": uniform_loss})
            log.info("%s: model batch %d/%d done", self.label, b + 1, len(plan))
        learned_loss = mean_loss(*center(alpha))
        if not math.isfinite(learned_loss):
            raise BadInput(f"{self.label} diverged: the held-out loss of the learned soup is {learned_loss}; lower "
                           f"method.<name>.lr (now {self.lr}) or keep grad_clip > 0")
        model.eval()
        log.info("%s: held-out loss %.4f (uniform) -> %.4f", self.label, uniform_loss, learned_loss)
        weights = alpha if self.by_layer else alpha[:, 0]
        return {**{f: getattr(self, f) for f in ("by_layer", "model_batch", "model_epochs", "epochs", "lr")},
                "held_out_loss": {"uniform": uniform_loss, "learned": learned_loss},
                "coefficients": {"ingredients": [i.name for i in ingredients],
                                 "tensors": names if self.by_layer else None, "weights": weights.tolist()}}

    def _directions(self, batch, scorer, center, block_of, blocks):
        """({param: [|S|, ...] unit directions (θᵢ − c) / ‖θᵢ − c‖ per block, in ingredient_dtype},
        norms [|S|, blocks] float64; a zero difference gives a zero direction and norm 0)."""
        dtype = DTYPES[self.ingredient_dtype]
        directions = {n: torch.empty((len(batch), *c.shape), dtype=dtype, device=c.device) for n, c in center.items()}
        norms = torch.zeros(len(batch), blocks, dtype=torch.float64)
        for i, ingredient in enumerate(batch):
            state = scorer.load(ingredient)
            missing = [n for n in center if n not in state]
            if missing:
                raise BadInput(f"{ingredient.name} lacks parameters {missing[:3]} of the model")
            diff = {n: state[n].to(device=c.device, dtype=torch.float32) - c for n, c in center.items()}
            del state
            for n, d in diff.items():
                norms[i, block_of[n]] += d.double().pow(2).sum().item()
            norms[i] = norms[i].sqrt()
            for n, d in diff.items():
                norm = norms[i, block_of[n]].item()
                directions[n][i] = (d / norm if norm > 0 else torch.zeros_like(d)).to(dtype)
        return directions, norms

    def _fit(self, b, center, buffers, directions, block_of, blocks, held_out, loss_of, needs_pairs) -> torch.Tensor:
        """x [|S|, blocks] learned for one model batch (module docstring); returns it detached, on the CPU."""
        m = next(iter(directions.values())).shape[0]
        device = next(iter(center.values())).device
        x = torch.zeros(m, blocks, device=device, requires_grad=True)
        optimizer = torch.optim.AdamW([x], lr=self.lr, weight_decay=self.weight_decay)
        total = self.epochs * math.ceil(len(held_out) / self.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, self.warmup))
        for epoch in range(self.epochs):
            running, seen = 0.0, 0
            seed = self.seed * 1_000_000 + b * 1000 + epoch
            for images, labels in held_out.batches(self.batch_size, shuffle_seed=seed, device=device):
                if len(labels) < 2 and needs_pairs:  # batch statistics need two samples
                    scheduler.step()
                    continue
                with torch.no_grad():
                    params = {n: p.requires_grad_() for n, p in point(center, x, directions, block_of).items()}
                loss = loss_of(params, buffers, images, labels)
                loss.backward()
                if self.grad_clip > 0:  # the official script clips the merged model's gradient
                    torch.nn.utils.clip_grad_norm_(list(params.values()), self.grad_clip)
                x.grad = coordinate_gradient(directions, {n: p.grad for n, p in params.items()}, block_of, blocks)
                optimizer.step()
                scheduler.step()
                running, seen = running + loss.item() * len(labels), seen + len(labels)
            log.info("%s model batch %d epoch %d: train loss %.4f", self.label, b + 1, epoch + 1, running / max(seen, 1))
        return x.detach().cpu()
