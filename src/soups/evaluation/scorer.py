"""Evaluation as one service: `PoolScorer(pool, settings, device)` loads a pool's weights into one reusable
model, recomputes BN statistics of new points in weight space, and evaluates each thing once. The soup job,
the analyses and the benchmarks build it this one way; recipes and analyses ask it for what they need
(soups.recipes.Scorer lists what a recipe may ask).

Caches (soups.evaluation.cache), under one evaluation key:
- individual models by their file's sha256: metrics, and logits per set keyed by sample id, which
  ensembles average without a forward pass;
- any other weights (soups, greedy candidates, WiSE-FT points) by `state_digest` of their tensors: metrics;
- what a recipe learned (learned soups' mixing weights), by its settings and its ingredients' sha256.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from soups.averaging import StateDict, tie, tied_aliases
from soups.data import EvalSet, TaskData, build_data
from soups.errors import BadInput, MissingInput
from soups.evaluation.cache import EvaluationCache, evaluation_key, hash_ids
from soups.evaluation.evaluator import Evaluator, best_reachable, format_metrics, recalibrate_bn
from soups.evaluation.stats import Statistics
from soups.io.files import load_weights, sha256_file, state_digest
from soups.models.classifier import has_batchnorm
from soups.names import HELD_OUT
from soups.pools import OpenPool
from soups.pools.ingredient import Ingredient

log = logging.getLogger(__name__)
STOPPED = f"{HELD_OUT}_stopped_early"  # cache field: counts of a held-out pass that stopped early
# how recalibrate_bn batches its sample, in the cache keys of recalibrated points and records: "even" (near-equal
# batches) was "-bn" before, when a short last batch weighed as a full one; another scheme measures again
BN_BATCHES = "even"


@dataclass(frozen=True)
class EvalSettings:
    """How a pool is evaluated. `batch_size` None: the pool's own (its runs' eval_batch_size), so soups are
    measured like their ingredients and reuse their logits; `bn_recalibration`: "auto" (iff the model has
    BatchNorm), True or False; `cache_dir`: where the evaluation cache and stored eval sets live."""
    precision: str = "fp32"
    batch_size: int | None = None
    compile: bool = False
    cache_logits: bool = True
    bn_recalibration: str | bool = "auto"
    cache_dir: str | None = None

    @classmethod
    def of(cls, cfg) -> "EvalSettings":
        """From a soup or analysis config checked against soups.settings.SoupSettings."""
        return cls(cfg.precision, cfg.eval_batch_size, bool(cfg.get("compile")), bool(cfg.cache_logits),
                   cfg.bn_recalibration, cfg.paths.cache_dir)


def init_missing(pool: OpenPool) -> str | None:
    """Why the pool's shared initialization cannot be read (what `require_init` would refuse), or None."""
    if pool.init_weights and pool.init_weights.is_file():
        return None
    if pool.init_weights is None:
        return "this pool names none (pool=files: pool.init=FILE; pool=hf: pool.init=FOLDER)"
    return f"its weights {pool.init_weights} are missing"


def require_init(pool: OpenPool, users: list[str]) -> None:
    """BadInput/MissingInput naming `users` (recipes or analyses that move relative to the shared
    initialization) unless the pool's init weights exist."""
    if not users or init_missing(pool) is None:
        return
    if pool.init_weights is None:
        raise BadInput(f"{users} interpolate with the pool's shared initialization, which this pool does "
                       f"not name: give it (pool=files: pool.init=FILE; pool=hf: pool.init=FOLDER) or choose "
                       f"other methods")
    raise MissingInput(f"{users} interpolate with the pool's shared initialization, but its weights "
                       f"{pool.init_weights} (named in the ingredients' run.json) are missing; the init lives "
                       f"in paths.cache_dir: was it cleaned? Choose other methods, or fine-tune the pool again")


class PoolScorer:
    """The soup job's `Scorer` (soups.recipes): loads a pool's weights and scores them, caching every evaluation.
    `data`: the pool's own (built from its run config) unless given (benchmarks bring synthetic sets)."""

    def __init__(self, pool: OpenPool, settings: EvalSettings, device: torch.device, data: TaskData | None = None,
                 progress: bool = True):
        run_cfg = pool.run_cfg
        self.batch_size = int(settings.batch_size or run_cfg.get("eval_batch_size") or 256)
        self.data = data or build_data(run_cfg.data, run_cfg.model, settings.cache_dir)
        self.evaluator = Evaluator(self.data.eval_sets(), self.batch_size, settings.precision, device,
                                   progress=progress, compile=settings.compile)
        recalibrate = has_batchnorm(pool.model) if settings.bn_recalibration == "auto" else settings.bn_recalibration
        self.bn_sample: EvalSet | None = self.data.bn_set() if recalibrate else None
        # batch size is part of the evaluation key (kernels differ by shape)
        self.key = evaluation_key(run_cfg, settings.precision, self.batch_size, settings.compile)
        self.cache = EvaluationCache(settings.cache_dir, self.key)
        self.model, self.device, self.init_weights = pool.model, device, pool.init_weights
        self.results: dict = {}  # {config key: RecipeResult} of the recipes run so far (soups.jobs.soup)
        self.cache_logits = settings.cache_logits
        self.ids = {name: hash_ids(s.sample_ids) for name, s in self.evaluator.sets.items()}
        self._held_out_logits: dict[str, torch.Tensor] = {}  # greedy ensembles revisit members
        self._recent: dict[tuple[str, str], torch.Tensor] = {}  # (weights key, set) -> logits, one model's
        self._loaded: str | None = None  # the weights key `self.model` holds
        self.aliases = tied_aliases(self.model)  # {tied copy: first name}, e.g. BART's embeddings

    def settings_record(self) -> dict:
        """How this pool is evaluated (soup.json's `evaluation`): the key names everything the numbers depend on."""
        ev = self.evaluator
        return {"key": self.key, "batch_size": self.batch_size, "precision": ev.precision, "compile": ev.compile,
                "bn_recalibration": self.bn_sample is not None, "sets": {n: len(s) for n, s in ev.sets.items()}}

    # ---- what the sets are, and counts --------------------------------------------------------------
    @property
    def sets(self) -> dict[str, EvalSet]:
        """The evaluation sets by name: held-out, test, then the shifts."""
        return self.evaluator.sets

    @property
    def images_forwarded(self) -> int:
        """Examples forwarded so far (images or sentences); what the cache saved is not counted."""
        return self.evaluator.images_forwarded

    def metrics_of(self, logits: dict[str, torch.Tensor]) -> dict[str, float]:
        """{set: accuracy %} (+ avg_shifts) of logits already computed ({set: [N, C]})."""
        return self.evaluator.metrics_of(logits)

    def outcomes(self, logits: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{set: (logits over the set's own classes [N, C_set], labels [N])} of logits already computed."""
        return self.evaluator.outcomes(logits)

    def sample_logits(self, model, data, max_images: int, shuffle_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n, C], labels [n]) of the first `max_images` of a seeded shuffled pass over `data`."""
        return self.evaluator.sample_logits(model, data, max_images, shuffle_seed)

    @property
    def precision(self) -> str:
        return self.evaluator.precision

    def held_out_set(self) -> EvalSet:
        return self.evaluator.sets[HELD_OUT]

    def load(self, ingredient: Ingredient) -> StateDict:
        return load_weights(ingredient.weights)

    def load_init(self) -> StateDict:
        return load_weights(self.init_weights)

    def materialize(self, state: StateDict, new_point: bool = True, key: str | None = None):
        """`self.model` with these weights (and, for a new point in weight space, recomputed BN statistics); a
        no-op when it already holds them. `key`: their `_weights_key` if the caller has it (hashing is not free)."""
        key = key or self._weights_key(state, new_point)
        if key != self._loaded:
            if self.bn_sample is None:  # BN statistics used as given: a negative variance makes NaN outputs
                negative = [k for k, v in state.items() if k.endswith("running_var") and bool((v < 0).any())]
                if negative:
                    raise BadInput(f"weights with a negative BatchNorm running variance ({', '.join(negative[:3])}"
                                   f"{', ...' if len(negative) > 3 else ''}): their outputs would be NaN (an "
                                   f"extrapolation, or task vectors rescaled past the init, with bn_recalibration="
                                   f"false); bn_recalibration=auto recomputes the BN statistics of a soup")
            self.model.load_state_dict(tie(state, self.aliases))  # tied copies take their first name's value
            if new_point and self.bn_sample is not None:
                recalibrate_bn(self.model, self.bn_sample, self.batch_size, self.device)
            self._loaded = key
        return self.model

    # ---- any weights: metrics cached by the digest of the tensors -------------------------------------
    def _weights_key(self, state: StateDict, new_point: bool) -> str:
        """The digest of the weights as loaded: tied copies set from their first name (states that differ
        only in a copy are one model; a state whose copies differ is never served what was measured when the
        last copy won)."""
        recalibrated = new_point and self.bn_sample is not None
        return state_digest(tie(state, self.aliases)) + (f"-bn-{BN_BATCHES}" if recalibrated else "")

    def held_out(self, state: StateDict, acceptable=None) -> float | None:
        """Cached like any metric; an early stop is cached as the counts it rested on, so a rerun (an
        interrupted greedy soup, say) replays the rejection without a forward pass when it still holds."""
        key = self._weights_key(state, new_point=True)
        cached = self.cache.get(key) or {}
        stopped = cached.get(STOPPED)
        if HELD_OUT not in cached and stopped and acceptable and not acceptable(best_reachable(**stopped)):
            return None
        if HELD_OUT not in cached:
            measured = self.evaluator.measure(self.materialize(state, key=key), HELD_OUT, acceptable)
            if measured.accuracy is None:  # stopped early: rejected, accuracy unknown
                self.cache.put(key, {**cached, STOPPED: measured.stopped_at})
                return None
            self._keep_logits(key, HELD_OUT, measured.logits)  # the soup's, if chosen
            cached[HELD_OUT] = measured.accuracy
            self.cache.put(key, cached)
        return cached[HELD_OUT]

    def evaluate(self, state: StateDict, new_point: bool, hold: bool = False) -> dict[str, float]:
        """Every set's accuracy (+ avg_shifts). `hold`: leave `self.model` holding exactly the weights
        evaluated (BN statistics included), also when the metrics come from the cache."""
        key = self._weights_key(state, new_point)
        cached = self.cache.get(key) or {}
        if hold:
            self.materialize(state, new_point, key)
        missing = [n for n in self.evaluator.sets if n not in cached]
        if missing:  # only those: e.g. a greedy soup's held-out accuracy is known from choosing it
            logits = self._logits(state, new_point, key, missing)
            cached = {**cached, **{n: self.evaluator.accuracy_of_logits(n, logits[n]) for n in missing}}
            self.cache.put(key, cached)
        return self.evaluator.with_average({n: cached[n] for n in self.evaluator.sets})

    def soup_logits(self, state: StateDict, new_point: bool, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """{set: logits [N, C]} of these weights on every set (or `names`): from the cache (or the last
        evaluation), else forwarded."""
        names = list(self.evaluator.sets) if names is None else names
        return self._logits(state, new_point, self._weights_key(state, new_point), names)

    def _logits(self, state: StateDict, new_point: bool, key: str, names: list[str]) -> dict[str, torch.Tensor]:
        got = {n: self._recent.get((key, n)) for n in names}
        got = {n: v if v is not None else self.cache.get_logits(key, n, self.ids[n]) for n, v in got.items()}
        for name in [n for n, v in got.items() if v is None]:
            got[name] = self.evaluator.logits(self.materialize(state, new_point, key), name)
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
        return self.cache.get_record(self._record_key(key))

    def remember(self, key: dict, record: dict) -> None:
        self.cache.put_record(self._record_key(key), record)

    def _record_key(self, key: dict) -> dict:
        """A record of recalibrated points is another record once recalibration changes (see _weights_key)."""
        return key | {"bn_batches": BN_BATCHES} if self.bn_sample is not None else key

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
            log.info("%s: %s", ingredient.label, format_metrics(metrics))
        info["metrics"], info["evaluation_key"] = metrics, self.key
        return metrics

    def init_record(self, init: dict) -> dict:
        """A run-dir pool's init record (run.json's `init`) with metrics measured under this evaluation key:
        as recorded when init.json says they were, else evaluated from its weights once (cached by sha256). An
        init is cached across sweeps by model, data and head alone, so a sweep at another precision or batch
        size reuses one measured under the first sweep's settings."""
        if init.get("metrics") is None or init.get("evaluation_key") == self.key:
            return init
        if not (self.init_weights and self.init_weights.is_file()):
            log.warning("the initialization's metrics were measured under other evaluation settings, and its "
                        "weights %s are gone: its row shows them as recorded", self.init_weights)
            return init
        # hashed afresh, not the recorded sha256: an init folder rebuilt since must not get the old file's numbers
        metrics = self.individual_metrics(Ingredient("initialization", self.init_weights, {}))
        return {**init, "metrics": metrics, "evaluation_key": self.key}

    def _forward_all(self, ingredient: Ingredient, digest: str) -> dict[str, torch.Tensor]:
        """One load, every set; logits kept in the cache for ensembles."""
        logits = self.evaluator.all_logits(self.materialize(self.load(ingredient), new_point=False))
        if self.cache_logits:
            self.cache.put_all_logits(digest, logits, self.ids)
        return logits

    def individual_logits(self, ingredient: Ingredient) -> dict[str, torch.Tensor]:
        digest = self.digest(ingredient)
        cached = {n: self.cache.get_logits(digest, n, self.ids[n]) for n in self.evaluator.sets}
        if any(v is None for v in cached.values()):
            return self._forward_all(ingredient, digest)
        return cached

    # ---- ensembles: the mean of the members' logits over each set's classes --------------------------
    def ensemble_held_out(self, members: list[Ingredient]) -> float:
        for m in members:
            if m.name not in self._held_out_logits:
                logits = self.individual_logits(m)[HELD_OUT]
                self._held_out_logits[m.name] = self.evaluator.averaged_form(HELD_OUT, logits)
        mean = torch.stack([self._held_out_logits[m.name] for m in members]).mean(0)
        return self.evaluator.accuracy_of_logits(HELD_OUT, mean)

    def ensemble_logits(self, members: list[Ingredient]) -> dict[str, torch.Tensor]:
        """{set: the mean of the members' logits over the set's own classes [N, C_set]}, streamed over members
        (one running sum per set). Each member's logits are projected first, as the released ensemble code
        (model-soups' ensemble branch) does: for ObjectNet the mean of each member's max over the ImageNet
        classes of an ObjectNet class, not the max of the mean (ImageNet-R/A: the same either way)."""
        sums: dict[str, torch.Tensor] = {}
        for member in members:
            for name, logits in self.individual_logits(member).items():
                logits = self.evaluator.averaged_form(name, logits)
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
