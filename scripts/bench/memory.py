"""Peak RSS of soups (each in a fresh process): uniform and greedy over K = 4 and 16 ingredients, the
learned soup against the official approach of ingredients that carry gradients, and the learned soup vs
MEHL-Soup at two K (does peak memory grow with the pool?)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from bench.common import run_child, vit_b32

MEMORY_CHILD = """
import torch
from soups.averaging import RunningAverage, average
from soups.io.files import load_weights
paths = {paths!r}
base = peak_mb()
if {recipe!r} == "uniform":
    average(load_weights(p) for p in paths)
else:  # greedy's memory pattern: accumulator + one candidate, peeked, then added or dropped
    running = RunningAverage()
    running.add(load_weights(paths[0]))
    for i, p in enumerate(paths[1:]):
        candidate = load_weights(p)
        peek = running.peek_with(candidate)
        del peek
        if i % 2 == 0:
            running.add(candidate)
        del candidate
    running.result()
print(peak_mb(), base)
"""


def write_ingredients(k: int) -> list[str]:
    """K ViT-B/32 image towers + heads (random weights, each a seeded perturbation of one init)."""
    from soups.io.files import atomic_save_safetensors

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingredients-"))
    model, *_ = vit_b32()
    state = model.state_dict()
    paths = []
    for i in range(k):
        gen = torch.Generator().manual_seed(i)
        atomic_save_safetensors({n: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                                 for n, v in state.items()}, tmp / f"ingredient_{i}.safetensors")
        paths.append(str(tmp / f"ingredient_{i}.safetensors"))
    return paths


def bench_memory(args) -> list[dict]:
    paths = write_ingredients(16)
    size_mb = Path(paths[0]).stat().st_size / 2**20
    results = []
    for recipe in ("uniform", "greedy"):
        peaks = {}
        for k in (4, 16):
            out = run_child(MEMORY_CHILD.format(paths=paths[:k], recipe=recipe))
            peaks[k] = tuple(map(float, out.split()))
        row = {"recipe": recipe, "ingredient_mb": round(size_mb), "peak_rss_mb_k4": round(peaks[4][0]),
               "peak_rss_mb_k16": round(peaks[16][0]), "ratio_k16_k4": peaks[16][0] / peaks[4][0],
               "process_baseline_mb": round(peaks[4][1])}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


LEARNED_CHILD = """
import torch
import torch.nn.functional as F
from torch.func import functional_call
from soups.data.images import EvalSet, ImageArray
from soups.io.files import load_weights
from soups.pools.ingredient import Ingredient
from soups.recipes.learned import LearnedSoup
from soups.recipes.mehl import MEHLSoup
from bench.common import vit_b32
paths, approach, steps, batch = {paths!r}, {approach!r}, {steps}, {batch}
model, size, mean, std = vit_b32()
gen = torch.Generator().manual_seed(0)
images = ImageArray("held_out", torch.randint(0, 256, (steps * batch, size, size, 3), generator=gen, dtype=torch.uint8),
                    torch.arange(steps * batch) % 1000)
held_out = EvalSet(images, size, mean, std)
base = peak_mb()
if approach == "official":  # every ingredient's parameters require grad, as the official learned-soup script
    names = [n for n, _ in model.named_parameters()]
    states = [load_weights(p) for p in paths]
    ingredients = [[s[n].float().requires_grad_() for n in names] for s in states]
    buffers = {{n: b for n, b in model.named_buffers()}}
    alpha = torch.zeros(len(paths), requires_grad=True)
    optimizer = torch.optim.AdamW([alpha], lr=0.05)
    for x, y in held_out.batches(batch):
        mix = alpha.softmax(0)
        params = {{n: sum(mix[k] * ingredients[k][j] for k in range(len(paths))) for j, n in enumerate(names)}}
        loss = F.cross_entropy(functional_call(model, {{**params, **buffers}}, (x,)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
else:  # the project's recipe, end to end (learning + the float64 merge)
    class Context:
        device, precision = torch.device("cpu"), "fp32"
        def __init__(self, model): self.model = model
        def held_out_set(self): return held_out
        def load(self, ingredient): return load_weights(ingredient.weights)
        def digest(self, ingredient): return ingredient.name
        def recall(self, key): return None
        def remember(self, key, record): pass
    pool = [Ingredient(f"ingredient_{{i}}", p, {{}}) for i, p in enumerate(paths)]
    if approach == "mehl":  # model batches of 4, each one pass over the held-out set
        MEHLSoup(model_batch=4, epochs=1, batch_size=batch)(pool, Context(model))
    else:
        LearnedSoup(epochs=1, batch_size=batch, ingredient_dtype=approach)(pool, Context(model))
print(peak_mb(), base)
"""


def bench_learned_memory(args, k: int = 8) -> list[dict]:
    """Learned soup over K ViT-B/32 towers: the project's recipe (stacked ingredients without
    gradients, float32 and bfloat16) vs the official approach (ingredients that require grad)."""
    paths = write_ingredients(k)
    results = []
    for approach in ("official", "float32", "bfloat16"):
        out = run_child(LEARNED_CHILD.format(paths=paths, approach=approach, steps=2, batch=8))
        peak, base = map(float, out.split())
        results.append({"approach": approach, "k": k, "peak_rss_mb": round(peak), "process_baseline_mb": round(base)})
    for row in results:
        row["ratio_to_official"] = row["peak_rss_mb"] / results[0]["peak_rss_mb"]
        print(json.dumps(row), flush=True)
    return results


def bench_learned_scaling(args, ks: tuple[int, ...] = (8, 24)) -> list[dict]:
    """Peak RSS and wall time of the learned soup (float32 stack) and MEHL-Soup (model batches of 4) over K
    ViT-B/32 towers for each K in `ks`; a larger K repeats the first 8 files (duplicates cost the same memory)."""
    paths = write_ingredients(min(ks))
    results = []
    for approach in ("float32", "mehl"):
        for k in ks:
            start = time.perf_counter()
            out = run_child(LEARNED_CHILD.format(paths=(paths * k)[:k], approach=approach, steps=2, batch=8))
            peak, base = map(float, out.split())
            results.append({"approach": "learned (float32 stack)" if approach == "float32" else "mehl (model_batch 4)",
                            "k": k, "peak_rss_mb": round(peak), "process_baseline_mb": round(base),
                            "wall_s": round(time.perf_counter() - start, 1)})
            print(json.dumps(results[-1]), flush=True)
    return results
