"""Weight arithmetic, in one place: weighted sums of state dicts (every soup), their mean, and the
interpolation between two models (WiSE-FT, Model Stock, the landscape).

Means with non-negative weights (`average`, `RunningAverage`: uniform, weighted and greedy soups) are
accumulated in float32, or in a tensor's own dtype when wider (float64): half and bfloat16 ingredients are
summed in float32, float32 ones in float32 as the official model-soups code, mergekit and FusionBench do.
Against a float64 sum that differs by round-off (2.4e-07 at most over 12M N(0,1) entries, K = 4;
`tests/test_averaging.py` bounds it at K = 72) and runs 3-4x faster with half the memory (BENCHMARKS.md,
"Peers side by side"). Any other combination (`weighted_sum`, `interpolate`: WiSE-FT, learned and MEHL
coefficients, task arithmetic, negative weights) is accumulated in float64: there the float32 error would
scale with sum_i |w_i| |theta_i|, e.g. 1 - K*lambda = -71 times the init in task arithmetic. Integer buffers (e.g. BN's
num_batches_tracked) are taken from the first state, never mixed. Streamed: memory is one accumulator plus
one state dict, whatever the number of states.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch

StateDict = dict[str, torch.Tensor]
Weight = float | Callable[[str], float]  # one weight for every tensor, or one per tensor name


class WeightedSum:
    """sum_i w_i * theta_i over state dicts added one at a time, accumulated in float64 (`convex=False`) or,
    for non-negative weights (`convex=True`), in float32 (each tensor in the wider of float32 and its dtype)."""

    def __init__(self, convex: bool = False):
        self.floor = torch.float32 if convex else torch.float64
        self.sums: StateDict | None = None
        self.fixed: StateDict = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.spent = False

    def add(self, state: StateDict, weight: Weight = 1.0) -> None:
        """Raises ValueError if `state` has other keys or shapes than the first state added, or after
        `result()`."""
        self._live()
        w = weight if callable(weight) else (lambda _key, w=float(weight): w)
        if self.sums is None:
            # torch.mul makes a new tensor: the accumulator never aliases the caller's tensor
            self.sums = {k: torch.mul(v.to(torch.promote_types(v.dtype, self.floor)), float(w(k)))
                         for k, v in state.items() if v.is_floating_point()}
            self.fixed = {k: v.clone() for k, v in state.items() if not v.is_floating_point()}
            self.dtypes = {k: v.dtype for k, v in state.items()}
            return
        self._check(state)
        for k, acc in self.sums.items():  # in place: no copy of the state
            acc.add_(state[k], alpha=float(w(k)))

    def _live(self) -> None:
        if self.spent:
            raise ValueError("this sum was already returned by result(); start a new one")

    def _check(self, state: StateDict) -> None:
        self._live()
        if state.keys() != self.dtypes.keys():
            raise ValueError(f"cannot average state dicts with different keys: "
                             f"{sorted(set(state) ^ set(self.dtypes))[:3]}")
        bad = [k for k, acc in self.sums.items() if state[k].shape != acc.shape]
        if bad:
            raise ValueError(f"cannot average tensors of different shapes: {bad[:3]}")

    def result(self, divide_by: float = 1.0) -> StateDict:
        """The sum (divided by `divide_by`) in each tensor's own dtype. Once: the accumulator becomes the
        result (no second copy of the model in memory)."""
        self._live()
        if self.sums is None:
            raise ValueError("nothing to average")
        out = {k: acc.div_(divide_by).to(self.dtypes[k]) for k, acc in self.sums.items()}
        self.sums, self.spent = None, True
        return {**out, **self.fixed}


class RunningAverage(WeightedSum):
    """The weighted mean, sum_i w_i theta_i / sum_i w_i, with a peek at a candidate (greedy soup)."""

    def __init__(self, convex: bool = True):
        super().__init__(convex)
        self.convex = convex
        self.total_weight = 0.0

    def add(self, state: StateDict, weight: float = 1.0) -> None:
        if self.convex and weight < 0:
            raise ValueError(f"weight {weight} < 0 in a float32 mean; use RunningAverage(convex=False)")
        super().add(state, weight)
        self.total_weight += weight

    def peek_with(self, state: StateDict, weight: float = 1.0) -> StateDict:
        """The average if `state` were added, without adding it (greedy soup's candidate)."""
        self._check(state)
        total = self.total_weight + weight
        out = {k: torch.add(acc, state[k], alpha=weight).div_(total).to(self.dtypes[k]) for k, acc in self.sums.items()}
        return {**out, **{k: v.clone() for k, v in self.fixed.items()}}

    def result(self) -> StateDict:
        if self.sums is not None and self.total_weight == 0:
            raise ValueError("the averaging weights sum to zero")
        return super().result(divide_by=self.total_weight)


def average(states: Iterable[StateDict], weights: Iterable[float] | None = None) -> StateDict:
    """Weighted mean (weights normalized to sum 1; uniform by default), streamed over `states`.
    The uniform soup: theta = (1/k) sum_i theta_i (paper, Section 3)."""
    weights = list(weights) if weights is not None else None
    running = RunningAverage(convex=weights is None or all(float(w) >= 0 for w in weights))
    n = 0
    for n, state in enumerate(states, start=1):
        if weights is not None and n > len(weights):
            raise ValueError(f"more state dicts than the {len(weights)} weights given")
        running.add(state, 1.0 if weights is None else float(weights[n - 1]))
    if weights is not None and n != len(weights):
        raise ValueError(f"{len(weights)} weights for {n} state dicts")
    return running.result()


def weighted_sum(terms: Iterable[tuple[StateDict, Weight]]) -> StateDict:
    """sum_i w_i * theta_i, weights as given (not normalized); integer buffers from the first state."""
    total = WeightedSum()
    for state, weight in terms:
        total.add(state, weight)
    return total.result()


def interpolate(start: StateDict, end: StateDict, alpha: Weight) -> StateDict:
    """(1 - alpha) * start + alpha * end (WiSE-FT, Wortsman et al. 2022, Eq. 1); `alpha` per tensor name
    if callable. alpha = 1 gives `end` and alpha = 0 `start` exactly; integer buffers come from `end`."""
    a = alpha if callable(alpha) else (lambda _key, a=float(alpha): a)
    return weighted_sum([(end, a), (start, lambda key: 1.0 - a(key))])


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{state-dict key: the key whose tensor it shares} for every parameter or buffer registered under more than
    one name (tied weights, e.g. BART's model.shared / encoder.embed_tokens / decoder.embed_tokens). The first
    name is the one `named_parameters()` yields, so the one recipes compute for (a Fisher, a learned
    coefficient, a RegMean Gram); the state dict holds every name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        owner = first.setdefault(id(tensor), name)
        if owner != name:
            aliases[name] = owner
    return aliases


def tie(state: StateDict, aliases: dict[str, str]) -> StateDict:
    """`state` with every tied copy (`tied_aliases`) set to its first name's tensor. load_state_dict copies the
    keys in order into the one shared tensor, so the last copy would win: a recipe that computed the first name
    (Fisher, learned by layer) would be evaluated and saved with a copy it merged otherwise (the uniform mean)."""
    if not any(k in state and v in state for k, v in aliases.items()):
        return state
    return {k: state[aliases[k]] if aliases.get(k) in state else v for k, v in state.items()}


BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # buffers, not learned weights


def is_weight(key: str, tensor: torch.Tensor) -> bool:
    """Whether a state-dict entry counts as a weight for geometry (angles, planes): floating point and not a
    BatchNorm running statistic."""
    return tensor.is_floating_point() and not key.endswith(BN_STATISTICS)


def displacement_gram(paths: list, init_path, skip=()) -> tuple[torch.Tensor, int]:
    """(G [K, K] float64, number of scalars): G_ij = <theta_i - theta_0, theta_j - theta_0> over every weight
    (`is_weight`) of K safetensors files and the init's, read one tensor name at a time across all files
    (memory: K copies of the largest tensor, not K models). Angles between fine-tunes' displacements from
    their shared init (the paper's Figure 3) follow from it. `skip`: keys not counted (tied copies,
    `tied_aliases`: one tensor counted once)."""
    from safetensors import safe_open

    gram, count = torch.zeros(len(paths), len(paths), dtype=torch.float64), 0
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(p), framework="pt")) for p in paths]
        init = stack.enter_context(safe_open(str(init_path), framework="pt"))
        for key in init.keys():
            base = init.get_tensor(key)
            if not is_weight(key, base) or key in skip:
                continue
            d = torch.stack([h.get_tensor(key).double().reshape(-1) for h in handles]) - base.double().reshape(1, -1)
            gram += d @ d.T
            count += base.numel()
    return gram, count


def angles_degrees(gram: torch.Tensor) -> torch.Tensor:
    """[K, K] angles (degrees) between the vectors whose Gram matrix is `gram`."""
    norms = gram.diagonal().sqrt()
    cos = (gram / torch.outer(norms, norms)).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


class Plane:
    """The plane through three models: the init theta_0 and fine-tunes theta_1, theta_2 (the paper's Figure 2).
    Orthonormal basis over the weights (`is_weight`): u = d_1/|d_1|, v = the part of d_2 orthogonal to u,
    normalized (d_i = theta_i - theta_0; Gram-Schmidt, as in Garipov et al., 2018). `point(x, y)` is
    theta_0 + x u + y v = theta_0 + a d_1 + b d_2; the other floating entries (BN statistics) take the same
    a, b (running variances clipped at 0 off the models' triangle), so the points at theta_1, theta_2 and their
    midpoint are those models and the 2-soup before any BN recalibration; integer buffers are theta_0's.
    Float64 inside. `skip`: keys left out of the basis (tied copies, `tied_aliases`, which `tie` sets from their
    first name). Raises ValueError where a model equals the init or the two lie on one line through it."""

    def __init__(self, init: StateDict, first: StateDict, second: StateDict, skip=()):
        self.init = init
        keys = [k for k, v in init.items() if is_weight(k, v) and k not in skip]
        d1 = {k: first[k].double() - init[k].double() for k in keys}
        d2 = {k: second[k].double() - init[k].double() for k in keys}
        norm1 = math.sqrt(sum(float((t * t).sum()) for t in d1.values()))
        if norm1 == 0:
            raise ValueError("the first model equals the init: no plane")
        self.u = {k: t / norm1 for k, t in d1.items()}
        along = sum(float((d2[k] * self.u[k]).sum()) for k in keys)
        w = {k: d2[k] - along * self.u[k] for k in keys}
        norm_w = math.sqrt(sum(float((t * t).sum()) for t in w.values()))
        if norm_w <= 1e-6 * math.sqrt(sum(float((t * t).sum()) for t in d2.values())):
            raise ValueError("the two models lie on one line through the init (to float precision): no plane")
        self.v = {k: t / norm_w for k, t in w.items()}
        self.coordinates = {"init": (0.0, 0.0), "first": (norm1, 0.0), "second": (along, norm_w)}
        self._norm1, self._along, self._norm_w = norm1, along, norm_w
        self.statistics = {k: (first[k].double() - v.double(), second[k].double() - v.double()) for k, v in init.items()
                           if v.is_floating_point() and not is_weight(k, v) and k not in skip}

    def point(self, x: float, y: float) -> StateDict:
        out = {k: v.clone() for k, v in self.init.items()}
        for k in self.u:
            out[k] = (self.init[k].double() + x * self.u[k] + y * self.v[k]).to(self.init[k].dtype)
        b = y / self._norm_w  # x u + y v = a d_1 + b d_2
        a = (x - b * self._along) / self._norm1
        for k, (d1, d2) in self.statistics.items():
            value = self.init[k].double() + a * d1 + b * d2
            out[k] = (value.clamp_min(0) if k.endswith("running_var") else value).to(self.init[k].dtype)
        return out
