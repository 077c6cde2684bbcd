"""Weight averaging: floating-point tensors accumulated in float64 (as timm's avg_checkpoints),
integer buffers (e.g. BN's num_batches_tracked) taken from the first ingredient, never averaged.
Memory is one accumulator plus one ingredient, whatever the number of ingredients."""
from __future__ import annotations

from collections.abc import Iterable

import torch

StateDict = dict[str, torch.Tensor]


class RunningAverage:
    def __init__(self):
        self.sums: StateDict | None = None
        self.fixed: StateDict = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.total_weight = 0.0

    def add(self, state: StateDict, weight: float = 1.0) -> None:
        if self.sums is None:
            self.sums = {k: v.double() * weight for k, v in state.items() if v.is_floating_point()}
            self.fixed = {k: v.clone() for k, v in state.items() if not v.is_floating_point()}
            self.dtypes = {k: v.dtype for k, v in state.items()}
        else:
            self._check(state)
            for k, acc in self.sums.items():
                acc.add_(state[k].double(), alpha=weight)
        self.total_weight += weight

    def _check(self, state: StateDict) -> None:
        if state.keys() != self.dtypes.keys():
            raise ValueError(f"cannot average state dicts with different keys: "
                             f"{sorted(set(state) ^ set(self.dtypes))[:3]}")
        bad = [k for k, acc in self.sums.items() if state[k].shape != acc.shape]
        if bad:
            raise ValueError(f"cannot average tensors of different shapes: {bad[:3]}")

    def peek_with(self, state: StateDict, weight: float = 1.0) -> StateDict:
        """The average if `state` were added, without adding it (greedy soup's candidate)."""
        self._check(state)
        total = self.total_weight + weight
        out = {k: ((acc + state[k].double() * weight) / total).to(self.dtypes[k]) for k, acc in self.sums.items()}
        return {**out, **{k: v.clone() for k, v in self.fixed.items()}}

    def result(self) -> StateDict:
        if self.sums is None:
            raise ValueError("nothing to average")
        if self.total_weight == 0:
            raise ValueError("the averaging weights sum to zero")
        out = {k: (acc / self.total_weight).to(self.dtypes[k]) for k, acc in self.sums.items()}
        return {**out, **{k: v.clone() for k, v in self.fixed.items()}}


def average(states: Iterable[StateDict], weights: Iterable[float] | None = None) -> StateDict:
    """Weighted mean (weights normalized to sum 1; uniform by default), streamed over `states`."""
    running = RunningAverage()
    weights = list(weights) if weights is not None else None
    n = 0
    for n, state in enumerate(states, start=1):
        if weights is not None and n > len(weights):
            raise ValueError(f"more state dicts than the {len(weights)} weights given")
        running.add(state, 1.0 if weights is None else float(weights[n - 1]))
    if weights is not None and n != len(weights):
        raise ValueError(f"{len(weights)} weights for {n} state dicts")
    return running.result()
