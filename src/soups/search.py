"""Random search (as in the paper): trial i of a sweep draws its hyperparameters from a search space.

A space maps a config field to one of
    [choice, v1, v2, ...]        uniform over the listed values
    [uniform, low, high]         uniform in [low, high]
    [log_uniform, low, high]     log-uniform in [low, high]
    [int_uniform, low, high]     integer uniform in [low, high] (inclusive)
Draws depend only on (seed, trial, field name), so adding a field does not change the others.
"""
from __future__ import annotations

import hashlib
import math
import random

KINDS = ("choice", "uniform", "log_uniform", "int_uniform")


def _rng(seed: int, trial: int, name: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{trial}/{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def validate_space(space: dict) -> None:
    for name, spec in space.items():
        if not isinstance(spec, (list, tuple)) or not spec or spec[0] not in KINDS:
            raise ValueError(f"search_space.{name}={spec!r}: expected [kind, ...] with kind in {KINDS}")
        kind, args = spec[0], list(spec[1:])
        if kind == "choice" and not args:
            raise ValueError(f"search_space.{name}: choice needs at least one value")
        if kind != "choice":
            if len(args) != 2 or not args[0] <= args[1]:
                raise ValueError(f"search_space.{name}: {kind} needs [low, high] with low <= high, got {args}")
            if kind == "log_uniform" and args[0] <= 0:
                raise ValueError(f"search_space.{name}: log_uniform needs low > 0, got {args[0]}")


def sample(space: dict, seed: int, trial: int) -> dict:
    validate_space(space)
    out = {}
    for name, spec in space.items():
        kind, args, rng = spec[0], list(spec[1:]), _rng(seed, trial, name)
        if kind == "choice":
            out[name] = rng.choice(args)
        elif kind == "uniform":
            out[name] = rng.uniform(args[0], args[1])
        elif kind == "log_uniform":
            out[name] = math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
        else:
            out[name] = rng.randint(int(args[0]), int(args[1]))
    return out
