"""The soup job's evaluation context (recipes.Scorer): loads weights into one reusable model,
recomputes BN statistics of averaged weights, and evaluates each thing once.

Caches (soups.eval_cache), under one evaluation key:
- individual models by their file's sha256: metrics, and logits per set keyed by sample id, which
  ensembles average without a forward pass;
- any other weights (soups, greedy candidates, WiSE-FT points) by the digest of their tensors: metrics;
- what a recipe learned (learned soups' mixing weights), by its settings and its ingredients' sha256.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from soups.averaging import StateDict
from soups.data import EvalSet
from soups.eval_cache import EvaluationCache, hash_ids, state_digest
from soups.evaluate import Evaluator, best_reachable, format_metrics, recalibrate_bn
from soups.files import load_weights, sha256_file
from soups.names import HELD_OUT
from soups.stats import Statistics
from soups.ingredient import Ingredient

log = logging.getLogger(__name__)
STOPPED = f"{HELD_OUT}_stopped_early"  # cache field: counts of a held-out pass that stopped early


class PoolScorer:
    """The soup job's `Scorer` (soups.recipes): loads a pool's weights and scores them, caching every evaluation."""

    def __init__(self, model, evaluator: Evaluator, bn_sample: EvalSet | None, batch_size: int, device,
                 init_weights: Path, cache: EvaluationCache, evaluation_key: str, cache_logits: bool = True,
                 data=None):
        self.model, self.evaluator, self.bn_sample = model, evaluator, bn_sample
        self.data = data  # the pool's soups.data.TaskData (analyses read its training images)
        self.batch_size, self.device, self.init_weights = batch_size, device, init_weights
        self.cache, self.key, self.cache_logits = cache, evaluation_key, cache_logits
        self.ids = {name: hash_ids(s.sample_ids) for name, s in evaluator.sets.items()}
        self._held_out_logits: dict[str, torch.Tensor] = {}  # greedy ensembles revisit members
        self._recent: dict[tuple[str, str], torch.Tensor] = {}  # (weights key, set) -> logits, one model's
        self._loaded: str | None = None  # the weights key `self.model` holds

    @property
    def precision(self) -> str:
        return self.evaluator.precision

    def held_out_set(self) -> EvalSet:
        return self.evaluator.sets[HELD_OUT]

    def load(self, ingredient: Ingredient) -> StateDict:
        return load_weights(ingredient.weights)

    def load_init(self) -> StateDict:
        return load_weights(self.init_weights)

    def materialize(self, state: StateDict, averaged: bool = True, key: str | None = None):
        """`self.model` with these weights (and, if averaged, recomputed BN statistics); a no-op when it
        already holds them. `key`: their `_weights_key` if the caller has it (hashing is not free)."""
        key = key or self._weights_key(state, averaged)
        if key != self._loaded:
            self.model.load_state_dict(state)
            if averaged and self.bn_sample is not None:
                recalibrate_bn(self.model, self.bn_sample, self.batch_size, self.device)
            self._loaded = key
        return self.model

    # ---- any weights: metrics cached by the digest of the tensors -------------------------------------
    def _weights_key(self, state: StateDict, averaged: bool) -> str:
        return state_digest(state) + ("-bn" if averaged and self.bn_sample is not None else "")

    def held_out(self, state: StateDict, acceptable=None) -> float | None:
        """Cached like any metric; an early stop is cached as the counts it rested on, so a rerun (an
        interrupted greedy soup, say) replays the rejection without a forward pass when it still holds."""
        key = self._weights_key(state, averaged=True)
        cached = self.cache.get(key) or {}
        stopped = cached.get(STOPPED)
        if HELD_OUT not in cached and stopped and acceptable and not acceptable(best_reachable(**stopped)):
            return None
        if HELD_OUT not in cached:
            score = self.evaluator.accuracy(self.materialize(state, key=key), HELD_OUT, acceptable)
            if score is None:  # stopped early: rejected, accuracy unknown
                self.cache.put(key, {**cached, STOPPED: self.evaluator.stopped_at})
                return None
            self._keep_logits(key, HELD_OUT, self.evaluator.completed_logits)  # the soup's, if chosen
            cached[HELD_OUT] = score
            self.cache.put(key, cached)
        return cached[HELD_OUT]

    def evaluate(self, state: StateDict, averaged: bool, hold: bool = False) -> dict[str, float]:
        """Every set's accuracy (+ avg_shifts). `hold`: leave `self.model` holding exactly the weights
        evaluated (BN statistics included), also when the metrics come from the cache."""
        key = self._weights_key(state, averaged)
        cached = self.cache.get(key) or {}
        if hold:
            self.materialize(state, averaged, key)
        missing = [n for n in self.evaluator.sets if n not in cached]
        if missing:  # only those: e.g. a greedy soup's held-out accuracy is known from choosing it
            logits = self._logits(state, averaged, key, missing)
            cached = {**cached, **{n: self.evaluator.accuracy_of_logits(n, logits[n]) for n in missing}}
            self.cache.put(key, cached)
        return self.evaluator.with_average({n: cached[n] for n in self.evaluator.sets})

    def soup_logits(self, state: StateDict, averaged: bool) -> dict[str, torch.Tensor]:
        """{set: logits [N, C]} of these weights: from the cache (or the last evaluation), else forwarded."""
        return self._logits(state, averaged, self._weights_key(state, averaged), list(self.evaluator.sets))

    def _logits(self, state: StateDict, averaged: bool, key: str, names: list[str]) -> dict[str, torch.Tensor]:
        got = {n: self._recent.get((key, n)) for n in names}
        got = {n: v if v is not None else self.cache.get_logits(key, n, self.ids[n]) for n, v in got.items()}
        for name in [n for n, v in got.items() if v is None]:
            got[name] = self.evaluator.logits(self.materialize(state, averaged, key), name)
            self._keep_logits(key, name, got[name])
        return got

    def _keep_logits(self, key: str, name: str, logits: torch.Tensor | None) -> None:
        """In memory for the recipe being evaluated (its report row reads them), and in the cache."""
        if logits is None:
            return
        if not any(k == key for k, _ in self._recent):
            self._recent = {}  # one set of weights at a time: memory stays one model's logits
        self._recent[(key, name)] = logits
        if self.cache_logits:
            self.cache.put_logits(key, name, self.ids[name], logits)

    # ---- recipes that learn something (learned soups): their result, by what it depends on ----------
    def recall(self, key: dict) -> dict | None:
        return self.cache.get_record(key)

    def remember(self, key: dict, record: dict) -> None:
        self.cache.put_record(key, record)

    # ---- individual models: metrics and logits cached by file sha256 ----------------------------------
    def digest(self, ingredient: Ingredient) -> str:
        info = ingredient.info
        if not (info.get("sha256") or info.get("source_sha256")):
            info["source_sha256"] = sha256_file(ingredient.weights)
        return info.get("sha256") or info["source_sha256"]

    def individual_metrics(self, ingredient: Ingredient) -> dict[str, float]:
        """From run.json when measured under this evaluation key, else from the cache, else evaluated."""
        info = ingredient.info
        if "metrics" in info and info.get("evaluation_key") == self.key:
            return info["metrics"]
        digest = self.digest(ingredient)
        metrics = self.cache.get(digest)
        if metrics is None:
            metrics = self.evaluator.metrics_of(self._forward_all(ingredient, digest))
            self.cache.put(digest, metrics)
            log.info("%s: %s", ingredient.name, format_metrics(metrics))
        info["metrics"], info["evaluation_key"] = metrics, self.key
        return metrics

    def _forward_all(self, ingredient: Ingredient, digest: str) -> dict[str, torch.Tensor]:
        """One load, every set; logits kept in the cache for ensembles."""
        logits = self.evaluator.all_logits(self.materialize(self.load(ingredient), averaged=False))
        if self.cache_logits:
            self.cache.put_all_logits(digest, logits, self.ids)
        return logits

    def individual_logits(self, ingredient: Ingredient) -> dict[str, torch.Tensor]:
        digest = self.digest(ingredient)
        cached = {n: self.cache.get_logits(digest, n, self.ids[n]) for n in self.evaluator.sets}
        if any(v is None for v in cached.values()):
            return self._forward_all(ingredient, digest)
        return cached

    # ---- ensembles: the mean of the members' logits (each member as it is) ---------------------------
    def ensemble_held_out(self, members: list[Ingredient]) -> float:
        for m in members:
            if m.name not in self._held_out_logits:
                self._held_out_logits[m.name] = self.individual_logits(m)[HELD_OUT]
        mean = torch.stack([self._held_out_logits[m.name] for m in members]).mean(0)
        return self.evaluator.accuracy_of_logits(HELD_OUT, mean)

    def ensemble_logits(self, members: list[Ingredient]) -> dict[str, torch.Tensor]:
        """{set: the mean of the members' logits [N, C]}, streamed over members (one running sum per set)."""
        sums: dict[str, torch.Tensor] = {}
        for member in members:
            for name, logits in self.individual_logits(member).items():
                sums[name] = sums[name] + logits if name in sums else logits.clone()
        return {n: s / len(members) for n, s in sums.items()}

    def ensemble_evaluate(self, members: list[Ingredient]) -> dict[str, float]:
        return self.evaluator.metrics_of(self.ensemble_logits(members))

    # ---- what a report row says beyond accuracy -------------------------------------------------------
    def qualify(self, logits: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None,
                statistics: Statistics) -> dict:
        """{"calibration": {set: {nll, ece}}, "vs_best": {set | avg_shifts: {diff, low, high, p}}} of these
        predictions ({set: logits [N, C]}); "vs_best" only given the reference's (the best individual's)."""
        outcomes = self.evaluator.outcomes(logits)
        out = {"calibration": statistics.calibration(outcomes, self.evaluator.shift_names)}
        if reference is not None:
            out["vs_best"] = statistics.versus(outcomes, self.evaluator.outcomes(reference), self.evaluator.shift_names)
        return out
