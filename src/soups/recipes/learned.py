"""Learned soups (the paper's appendix): mixing weights trained on the held-out set.

`learned`: one weight per ingredient; `learned_bylayer`: one per ingredient per parameter tensor.
Weights are a softmax over ingredients of zero-initialized logits (so training starts at the uniform
soup), plus a learned logit temperature t (`temperature: log`: t = exp(τ), τ from 0; `linear`: t itself
from 1, as the official learned_bylayer.py's `beta`; AdamW moves the two differently once t leaves 1); AdamW on the cross-entropy of the merged model, run through
`torch.func.functional_call`. Ingredients are stacked once per tensor, in `ingredient_dtype`, and hold
no gradients: only the K (or K x tensors) mixing logits do, so memory is about K models (half in
bf16), not the official script's K models plus their gradients. BatchNorm layers use batch
statistics while learning (averaged running statistics do not fit averaged weights); the final
soup's statistics are recomputed like every other soup's.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from soups import plots
from soups.averaging import tied_aliases, weighted_sum
from soups.errors import BadInput
from soups.recipes import Recipe, RecipeResult
from soups.runtime import autocast

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# the temperature's parametrisation: (its value from the learned parameter, the parameter's start)
TEMPERATURES = {"log": (torch.exp, 0.0), "linear": (lambda raw: raw, 1.0)}
CHUNK = 8  # ingredients upcast at a time when the stack is stored in bf16
# The held-out loss before and after learning is measured in one fixed shuffled order: with batch
# statistics, a batch must be a fair sample of the set (sets may be stored sorted by class).
LOSS_ORDER_SEED = 1_000_003


def _chunks(stack: torch.Tensor):
    for chunk in stack.split(CHUNK):
        yield chunk.float().reshape(len(chunk), -1)


def _to_json(value):
    """An optimizer state dict as JSON (float32 values round-trip exactly through Python floats)."""
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch."), "device": str(value.device)}
    if isinstance(value, dict):
        return {"dict": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value):
    if isinstance(value, dict) and "tensor" in value:
        return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]), device=value["device"])
    if isinstance(value, dict):
        return {_from_json(k): _from_json(v) for k, v in value["dict"]}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class _Mix(torch.autograd.Function):
    """sum_k w[k] * stack[k]; saves the stack itself (no float copy) for the backward pass."""

    @staticmethod
    def forward(ctx, weights, stack):
        ctx.save_for_backward(weights, stack)
        out, start = None, 0
        for chunk in _chunks(stack):
            part = weights[start:start + len(chunk)] @ chunk
            out = part if out is None else out + part
            start += len(chunk)
        return out.view(stack.shape[1:])

    @staticmethod
    def backward(ctx, grad):
        weights, stack = ctx.saved_tensors
        flat = grad.reshape(-1).float()
        return torch.cat([chunk @ flat for chunk in _chunks(stack)]).to(weights.dtype), None


@dataclass
class LearnedSoup(Recipe):
    by_layer: bool = False
    lr: float = 0.05
    epochs: int = 5
    batch_size: int = 256
    weight_decay: float = 0.0
    ingredient_dtype: str = "float32"  # or bfloat16: half the memory for the stacked ingredients
    seed: int = 0
    temperature: str = "log"  # or linear: the official script's parametrisation (see the module docstring)

    def __post_init__(self):
        super().__post_init__()
        if self.ingredient_dtype not in DTYPES:
            raise BadInput(f"ingredient_dtype={self.ingredient_dtype!r}; expected {list(DTYPES)}")
        if self.temperature not in TEMPERATURES:
            raise BadInput(f"temperature={self.temperature!r}; expected one of {list(TEMPERATURES)}")
        if self.lr <= 0 or self.epochs < 0 or self.batch_size < 1:
            raise BadInput(f"need lr > 0, epochs >= 0 and batch_size >= 1 "
                           f"(got lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size})")

    @property
    def label(self) -> str:
        return "learned soup (by layer)" if self.by_layer else "learned soup"

    def __call__(self, ingredients, scorer) -> RecipeResult:
        names = [n for n, _ in scorer.model.named_parameters()]
        # the same settings on the same ingredients (by sha256) learn the same weights: learn once
        settings = dict(vars(self))
        record, details = learned_once(scorer, "learned_soup", settings, ingredients, self.label,
                                       lambda journal: self._learn(ingredients, scorer, names, journal_key=journal))
        weights = torch.tensor(record["coefficients"]["weights"], dtype=torch.float64)
        return RecipeResult(self._merge(ingredients, scorer, names, weights), list(ingredients), details,
                            figures={"coefficients": partial(draw_coefficients, details)})

    def _learn(self, ingredients, scorer, names, journal_key: dict) -> dict:
        """Learns the mixing weights; after every epoch the journal (`journal_key`) holds what the next
        epoch starts from, so an interrupted run goes on from its last epoch with the same result."""
        model, device = scorer.model, scorer.device
        stacks, buffers = self._stack(ingredients, scorer, names, device)
        k = len(ingredients)
        logits = torch.zeros((k, len(names)) if self.by_layer else (k,), device=device, requires_grad=True)
        temperature_of, start_value = TEMPERATURES[self.temperature]
        raw_temperature = torch.full((), start_value, device=device, requires_grad=True)
        optimizer = torch.optim.AdamW([logits, raw_temperature], lr=self.lr, weight_decay=self.weight_decay)
        held_out = scorer.held_out_set()
        project = getattr(held_out, "project_logits", None)

        def loss_of(images, labels):
            mix = logits.softmax(0)
            params = {n: _Mix.apply(mix[:, i] if self.by_layer else mix, stacks[n]) for i, n in enumerate(names)}
            with autocast(scorer.precision, device):
                out = functional_call(model, {**params, **buffers}, (images,))
            out = out.float() * temperature_of(raw_temperature)
            return F.cross_entropy(project(out) if project else out, labels.to(device))

        def mean_loss():
            with torch.no_grad():
                batches = held_out.batches(self.batch_size, shuffle_seed=LOSS_ORDER_SEED, device=device)
                total = sum(loss_of(x, y).item() * len(y) for x, y in batches)
            return total / len(held_out)

        model.eval()
        for module in model.modules():  # batch statistics while learning; dropout etc. stay off
            if isinstance(module, _BatchNorm):
                module.train()
        start, uniform_loss = self._resume(scorer.recall(journal_key), logits, raw_temperature, optimizer)
        curve = [mean_loss() if uniform_loss is None else uniform_loss]
        for epoch in range(start, self.epochs):
            self._epoch(epoch, held_out, loss_of, optimizer, needs_pairs=bool(buffers), device=device)
            scorer.remember(journal_key, {"epoch": epoch + 1, "logits": logits.tolist(), "uniform_loss": curve[0],
                                          "raw_temperature": raw_temperature.item(),
                                          "optimizer": _to_json(optimizer.state_dict())})
        curve.append(mean_loss())
        model.eval()
        stacks.clear()  # free the stacked ingredients before merging
        weights = logits.detach().softmax(0).cpu().double()
        record = {"by_layer": self.by_layer, "lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                  "ingredient_dtype": self.ingredient_dtype,
                  "temperature": temperature_of(raw_temperature.detach()).item(), "temperature_parametrisation": self.temperature,
                  "held_out_loss": {"uniform": curve[0], "learned": curve[-1]},
                  "coefficients": {"ingredients": [i.name for i in ingredients],
                                   "tensors": names if self.by_layer else None, "weights": weights.tolist()}}
        log.info("%s: held-out loss %.4f (uniform) -> %.4f", self.label, curve[0], curve[-1])
        return record

    def _resume(self, journal: dict | None, logits, raw_temperature, optimizer) -> tuple[int, float | None]:
        """(first epoch to run, the uniform soup's held-out loss if known) from an earlier run's journal."""
        if not journal:
            return 0, None
        with torch.no_grad():
            logits.copy_(torch.tensor(journal["logits"]))
            raw_temperature.fill_(journal["raw_temperature"])
        optimizer.load_state_dict(_from_json(journal["optimizer"]))
        log.info("%s: resuming from its journal after epoch %d", self.label, journal["epoch"])
        return journal["epoch"], journal["uniform_loss"]

    def _epoch(self, epoch: int, held_out, loss_of, optimizer, needs_pairs: bool, device) -> None:
        """One pass over the held-out set in a seeded order, one AdamW step per batch."""
        running, seen = 0.0, 0
        for images, labels in held_out.batches(self.batch_size, shuffle_seed=self.seed * 1000 + epoch, device=device):
            if len(labels) < 2 and needs_pairs:  # batch statistics need two samples
                continue
            loss = loss_of(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running, seen = running + loss.item() * len(labels), seen + len(labels)
        log.info("%s epoch %d: train loss %.4f", self.label, epoch + 1, running / max(seen, 1))

    def _stack(self, ingredients, scorer, names, device):
        """{param: [K, ...] tensor in ingredient_dtype}, filled one ingredient at a time; the uniform
        average of the buffers (unused by BatchNorm in batch-statistics mode)."""
        dtype = DTYPES[self.ingredient_dtype]
        stacks, buffers, aliases = {}, {}, tied_aliases(scorer.model)
        for i, ingredient in enumerate(ingredients):
            state = scorer.load(ingredient)
            missing = [n for n in names if n not in state]
            if missing:
                raise BadInput(f"{ingredient.name} lacks parameters {missing[:3]} of the model")
            for n in names:
                if n not in stacks:
                    stacks[n] = torch.empty((len(ingredients), *state[n].shape), dtype=dtype, device=device)
                stacks[n][i] = state[n].to(device=device, dtype=dtype)
            for n, v in state.items():
                if n not in stacks and n not in aliases:  # a tied copy follows its first name in functional_call
                    v = v.to(device)
                    buffers[n] = (buffers.get(n, 0) + v.double() / len(ingredients)) if v.is_floating_point() else v
        return stacks, {n: v.float() if v.is_floating_point() else v for n, v in buffers.items()}

    def _merge(self, ingredients, scorer, names, weights):
        """The soup in full precision; buffers take each ingredient's mean weight (BN statistics are
        recomputed afterwards anyway)."""
        per_model = weights.mean(1) if self.by_layer else weights
        return coefficient_soup(ingredients, scorer, names, weights, per_model)


def learned_once(scorer, recipe: str, settings: dict, ingredients, label: str, learn) -> tuple[dict, dict]:
    """(record, details): the record `learn(journal_key)` returns, learned once per recipe, settings and ingredient
    digests and then recalled from the scorer's cache; details = the record with the ingredients' current names."""
    key = {"recipe": recipe, **settings, "ingredients": [scorer.digest(i) for i in ingredients]}
    record = scorer.recall(key)
    if record is None:
        record = learn({**key, "journal": True})
        scorer.remember(key, record)
    else:
        log.info("%s: coefficients learned before on this pool (cache)", label)
    return record, {**record, "coefficients": {**record["coefficients"], "ingredients": [i.name for i in ingredients]}}


def coefficient_soup(ingredients, scorer, names: list[str], weights: torch.Tensor,
                     buffer_weights: torch.Tensor) -> dict:
    """Σₖ wₖ θₖ over the ingredients' own weights (`averaging.weighted_sum`: summed in float64, as any weights
    that may be negative are; streamed: one accumulator + one state), cast back to each tensor's dtype. `weights`: [K] (one per ingredient) or [K, len(names)] (one per ingredient and
    parameter tensor, columns in `names` order); every other tensor (buffers) takes `buffer_weights` [K]."""
    column = {n: i for i, n in enumerate(names)}

    def weight_of(i):
        if weights.dim() == 1:
            w, b = float(weights[i]), float(buffer_weights[i])
            return lambda n: w if n in column else b
        return lambda n: float(weights[i, column[n]] if n in column else buffer_weights[i])
    return weighted_sum((scorer.load(ingredient), weight_of(i)) for i, ingredient in enumerate(ingredients))


def draw_coefficients(record: dict, path: Path, title: str) -> None:
    """The learned mixing weights (`record`: coefficients + temperature): bars (one weight per ingredient) or a
    heatmap (ingredients x parameter tensors)."""
    plt = plots.pyplot()
    coef = record["coefficients"]
    names = plots.tick_labels(coef["ingredients"])
    weights = coef["weights"]
    if coef.get("tensors"):
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.35 * len(names)))
        image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel(f"parameter tensor (0 = {coef['tensors'][0]}, {len(coef['tensors']) - 1} = {coef['tensors'][-1]})",
                      fontsize=8)
        fig.colorbar(image, ax=ax, label="mixing weight")
    else:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5))
        ax.bar(range(len(names)), weights, color="#2ca02c")
        ax.axhline(1 / len(names), color="black", lw=0.8, ls="--", label="uniform")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("mixing weight")
        ax.legend(fontsize=8)
    temperature = record.get("temperature")
    ax.set_title(title if temperature is None else f"{title} (temperature {temperature:.2f})", fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)
