"""Random search (as in the paper): trial i of a sweep draws its hyperparameters from a search space.

A space maps a config field to one of
    [choice, v1, v2, ...]        uniform over the listed values
    [uniform, low, high]         uniform in [low, high]
    [log_uniform, low, high]     log-uniform in [low, high]
    [int_uniform, low, high]     integer uniform in [low, high] (inclusive)
    [zero_or_uniform, p, low, high]   0.0 with probability p, else uniform in [low, high] (a knob that is
                                      off in some runs: label smoothing, mixup)
    [randaug, p, m_low, m_high, n_low, n_high]   null (no RandAugment) with probability p, else
                                      timm's rand-m{M}-n{N} with integer M, N drawn uniformly
    [randaug, p, m_low, m_high, n_low, n_high, [w_low, ..., w_high]]   the same, N drawn with these
                                      relative weights (one per N from n_low to n_high)
Draws depend only on (seed, trial, field name), so adding a field does not change the others.
"""
from __future__ import annotations

import hashlib
import math
import random

from soups.errors import BadInput

KINDS = ("choice", "uniform", "log_uniform", "int_uniform", "zero_or_uniform", "randaug")
ARITY = {"uniform": 2, "log_uniform": 2, "int_uniform": 2, "zero_or_uniform": 3, "randaug": 5}


def _rng(seed: int, trial: int, name: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{trial}/{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def validate_space(space: dict) -> None:
    for name, spec in space.items():
        if not isinstance(spec, (list, tuple)) or not spec or spec[0] not in KINDS:
            raise BadInput(f"search_space.{name}={spec!r}: expected [kind, ...] with kind in {KINDS}")
        kind, args = spec[0], list(spec[1:])
        if kind == "choice":
            if not args:
                raise BadInput(f"search_space.{name}: choice needs at least one value")
            continue
        if kind == "randaug" and len(args) == ARITY[kind] + 1:
            n_weights(name, args)
            args = args[:-1]
        if len(args) != ARITY[kind] or not all(isinstance(a, (int, float)) for a in args):
            raise BadInput(f"search_space.{name}: {kind} needs {ARITY[kind]} numbers, got {args}")
        if kind in ("zero_or_uniform", "randaug") and not 0 <= args[0] <= 1:
            raise BadInput(f"search_space.{name}: {kind}'s first number is a probability, got {args[0]}")
        bounds = args[1:] if kind in ("zero_or_uniform", "randaug") else args
        for low, high in zip(bounds[::2], bounds[1::2]):
            if not low <= high:
                raise BadInput(f"search_space.{name}: {kind} needs low <= high, got {args}")
        if kind == "log_uniform" and args[0] <= 0:
            raise BadInput(f"search_space.{name}: log_uniform needs low > 0, got {args[0]}")


def n_weights(name: str, args: list) -> list[float] | None:
    """The relative weights of RandAugment's N = n_low..n_high in a randaug spec's args (after the kind), or
    None where N is uniform. Raises BadInput unless they are one non-negative number per N, not all zero."""
    if len(args) != ARITY["randaug"] + 1:
        return None
    weights, (low, high) = args[-1], args[3:5]
    count = int(high) - int(low) + 1 if all(isinstance(a, (int, float)) for a in (low, high)) else -1
    if (not isinstance(weights, (list, tuple)) or len(weights) != count
            or not all(isinstance(w, (int, float)) and w >= 0 for w in weights) or not sum(weights) > 0):
        raise BadInput(f"search_space.{name}: randaug's last item gives N's relative weights: one number >= 0 "
                       f"per N from {low} to {high}, not all 0; got {weights!r}")
    return [float(w) for w in weights]


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
        elif kind == "int_uniform":
            out[name] = rng.randint(int(args[0]), int(args[1]))
        elif kind == "zero_or_uniform":
            out[name] = 0.0 if rng.random() < args[0] else rng.uniform(args[1], args[2])
        else:
            off, weights = rng.random() < args[0], n_weights(name, args)
            m = rng.randint(int(args[1]), int(args[2]))
            n = (rng.randint(int(args[3]), int(args[4])) if weights is None
                 else rng.choices(range(int(args[3]), int(args[4]) + 1), weights)[0])
            out[name] = None if off else f"rand-m{m}-n{n}"
    return out


def draws(space: dict, seed: int, trials) -> list[dict]:
    """Every trial's draw, as listed in a sweep's directory."""
    return [{"trial": int(t), **sample(space, seed, int(t))} for t in trials]
