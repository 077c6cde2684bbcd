"""One fine-tuning job: shared init -> fine-tune -> evaluate -> run dir (weights + run.json)."""
from __future__ import annotations

import copy
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from soups.training import search
from soups.settings import ConfigError, FinetuneSettings, checked
from soups.data import build_data
from soups.distributed import join, leave, share
from soups.errors import BadInput
from soups.evaluation.cache import EvaluationCache, evaluation_key, hash_ids
from soups.evaluation.evaluator import Evaluator, format_metrics, recalibrate_bn
from soups.heads.shared_init import load_shared_init, shared_init
from soups.io.files import atomic_save_safetensors, nonfinite_tensors, read_json, sha256_file, write_json
from soups.heads import build_head
from soups.models.classifier import build_classifier, has_batchnorm
from soups.models.hf import HFClassifier, complete_model_cfg, hf_processor_dir, save_pretrained_soup
from soups.models.lora import lora_problems, save_adapter_and_merge, with_lora
from soups.names import WEIGHTS_NAME, RUN_INFO_NAME
from soups.training.within_run import EMA_NAME, WithinRun
from soups.training.resume import changed_settings, clear_train_state, training_settings
from soups.runtime import environment, resolve_device, setup
from soups.tracking import build_logger, tracking
from soups.training.loop import NonFiniteLoss, finetune

log = logging.getLogger(__name__)
HPARAMS = ("lr", "wd", "epochs", "batch_size", "warmup_steps", "grad_clip", "label_smoothing", "mixup",
           "randaug", "crop_scale", "precision", "seed")


def with_hf_model(cfg: DictConfig) -> DictConfig:
    """model=hf: a copy with the tokenizer or image settings its folder says filled in (soups.models.hf);
    lora=default refused for any other model. Other configs are returned as they are."""
    if OmegaConf.is_dict(cfg.model) and OmegaConf.is_missing(cfg.model, "hf_classifier"):
        raise BadInput("model=hf needs model.hf_classifier=<folder>: a transformers classifier or encoder folder "
                       "(config.json + model.safetensors), or package:<module>")
    if cfg.get("lora") and not cfg.model.get("hf_classifier"):
        raise BadInput(f"lora=default trains LoRA adapters of a transformers model (model=hf model.hf_classifier=...); "
                       f"model={cfg.model.get('name')} is not one")
    if not cfg.model.get("hf_classifier"):
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model = complete_model_cfg(OmegaConf.to_container(cfg.model, resolve=True))
    if cfg.get("lora"):  # checked on the architecture before any work (the shared init can take minutes)
        problems = lora_problems(cfg.lora, build_classifier(cfg.model, cfg.data.num_classes, load_pretrained=False))
        if problems:
            raise BadInput("; ".join(problems))
    return cfg


def with_trial(cfg: DictConfig) -> DictConfig:
    """With `trial=i`, a copy of `cfg` holding the searched hyperparameters it draws (random search); else `cfg`."""
    if cfg.get("trial") is None:
        return cfg
    space = OmegaConf.to_container(cfg.search_space, resolve=True) if cfg.get("search_space") else {}
    if not space:
        raise ConfigError(f"trial={cfg.trial} draws from search_space, which is empty: choose a demo "
                          f"(experiment=demo_vit or demo_efficientnet) or sweep=paper_random, or set search_space")
    unknown = [k for k in space if k not in HPARAMS]
    if unknown:
        raise BadInput(f"search_space fields {unknown} are not hyperparameters; searchable: {list(HPARAMS)}")
    drawn = search.sample(space, cfg.search_seed, int(cfg.trial))
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for name, value in drawn.items():
            cfg[name] = value
        cfg.seed = int(cfg.seed) + int(cfg.trial)  # each trial its own data order
    log.info("trial %s draws %s", cfg.trial, drawn)
    return cfg


def list_draws(cfg: DictConfig, sweep_dir: Path) -> None:
    """The whole sweep's draws in its folder (every job writes the same file, atomically)."""
    if cfg.get("trial") is None or not cfg.get("search_draws"):
        return
    space = OmegaConf.to_container(cfg.search_space, resolve=True) if cfg.get("search_space") else {}
    write_json({"search_seed": cfg.search_seed, "search_space": space,
                "draws": search.draws(space, cfg.search_seed, range(int(cfg.search_draws)))},
               sweep_dir / "search_draws.json")


def _discard_own_dir(own: Path, main: Path) -> None:
    """A torchrun rank > 0 works in rank 0's run dir; the folder Hydra made for it holds only its config."""
    if own.resolve() != main.resolve() and own.is_dir() and \
            all(p.name == ".hydra" or p.suffix == ".log" for p in own.iterdir()):
        shutil.rmtree(own, ignore_errors=True)


def _record_failure(record: dict, err: Exception, run_dir: Path, tracker, start: float) -> dict:
    """run.json with status failed and why; no weights, no training state: kept out of every pool."""
    info = {**record, "status": "failed", "failure": str(err), "seconds": round(time.time() - start, 1)}
    write_json(info, run_dir / RUN_INFO_NAME)
    clear_train_state(run_dir)
    tracker.summary({"status": "failed", "failure": str(err)})
    log.error("run %s failed: %s", run_dir, err)
    return info


def _finished_before(run_dir: Path, cfg) -> dict | None:
    """The record of a run dir that holds run.json (finished or failed: neither runs again). BadInput where it
    ran under other training settings than this job's (a relaunch with other overrides into the same sweep
    folder): skipping it would pass its weights off as this job's."""
    if not (run_dir / RUN_INFO_NAME).is_file():
        return None
    done = read_json(run_dir / RUN_INFO_NAME)
    changed = changed_settings(done.get("config") or {}, training_settings(cfg))
    if changed:
        raise BadInput(f"{run_dir} already holds a run made under other settings ({'; '.join(changed[:3])}"
                       f"{' ...' if len(changed) > 3 else ''}): it would be skipped, not run with this job's. Choose "
                       f"another folder (hydra.sweep.dir=... or hydra.run.dir=...), or relaunch with its own settings "
                       f"to resume that sweep")
    if done.get("status") == "failed":
        log.warning("run %s failed before (%s): not run again; delete the run dir to retry", run_dir, done.get("failure"))
    else:
        log.info("run %s finished before (run.json): skipped", run_dir)
    return done


def _train(model, data, cfg, device, run_dir: Path, ranks, tracker) -> tuple[list[dict], WithinRun]:
    """Fine-tune `model` in place; its loss history and within-run averages (the EMA, if kept, ready to save).
    Raises NonFiniteLoss if a loss or, after the last update, a weight is NaN/inf."""
    within = WithinRun(model, cfg, run_dir, ranks.is_main)
    history = finetune(model, data.train_set(cfg.randaug, cfg.crop_scale), cfg, cfg.data.num_classes, device,
                       on_log=lambda r: tracker.log(r, step=r["step"]), state_dir=run_dir, group=ranks, within=within)
    for name, weights in [("the weights", model)] + ([("the EMA", within.ema.module)] if within.ema else []):
        if has_batchnorm(weights):
            # Running statistics lag the weights after a short fine-tune; recompute them on the same fixed
            # sample a soup uses, so individuals and soups are measured alike (every rank alike).
            recalibrate_bn(weights, data.bn_set(), cfg.eval_batch_size, device)
        bad = nonfinite_tensors(weights.state_dict())  # the loss check sees no update after the last loss
        if bad:
            raise NonFiniteLoss(f"{name} hold NaN or inf after training ({len(bad)} tensors, e.g. {bad[:3]}); "
                                f"lower lr or check the data")
    return history, within


def _save_run(model, evaluator, logits, cfg, run_dir: Path, record: dict, within: WithinRun) -> dict:
    """Weights (+ EMA, + the kept checkpoints' record), cached logits and run.json (written last: its presence
    means finished)."""
    metrics = evaluator.metrics_of(logits)
    atomic_save_safetensors(model.state_dict(), run_dir / WEIGHTS_NAME, metadata={"kind": "finetune"})
    digest = sha256_file(run_dir / WEIGHTS_NAME)
    if within.ema is not None:
        atomic_save_safetensors(within.ema.module.state_dict(), run_dir / EMA_NAME, metadata={"kind": "ema"})
        record["ema"] = {"weights": EMA_NAME, "sha256": sha256_file(run_dir / EMA_NAME), "decay": cfg.ema_decay,
                         "warmup": bool(cfg.ema_warmup)}
    if within.keep:
        record["checkpoints"] = [{"weights": str(p.relative_to(run_dir)), "step": int(p.stem.split("_")[1]),
                                  "sha256": sha256_file(p)} for p in within.saved()]
    key = evaluation_key(cfg, cfg.precision, cfg.eval_batch_size, bool(cfg.get("compile")))
    if cfg.cache_logits:  # a soup job's ensembles read these instead of evaluating the model again
        ids = {name: hash_ids(eval_set.sample_ids) for name, eval_set in evaluator.sets.items()}
        EvaluationCache(cfg.paths.cache_dir, key).put_all_logits(digest, logits, ids)
    info = {**record, "status": "finished", "metrics": metrics, "evaluation_key": key, "weights": WEIGHTS_NAME,
            "sha256": digest}
    write_json(info, run_dir / RUN_INFO_NAME)
    clear_train_state(run_dir)  # finished: run.json and the weights are the record
    return info


def run_finetune(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    """settings -> shared init -> data -> training -> evaluation -> run.json. A run dir holding run.json is
    done: its record is returned and nothing runs (a relaunched sweep skips its finished jobs); one holding
    a training state goes on from it. Under torchrun every rank calls this; rank 0 returns the record."""
    if cfg.get("lora") and (cfg.get("ema_decay") or cfg.get("keep_checkpoints")):
        raise BadInput("ema_decay and keep_checkpoints keep full weights; with lora=... they are not supported "
                       "(set ema_decay=null keep_checkpoints=0)")
    cfg = checked(with_hf_model(cfg), FinetuneSettings)  # the trial and search seed too, before any draw
    cfg = checked(with_trial(cfg), FinetuneSettings)
    logger, _ = build_logger(cfg.logger), build_head(cfg.head)  # their settings checked before any work
    ranks, device = join(resolve_device(cfg.device))
    own_dir, run_dir = Path(run_dir), share(ranks, Path(run_dir))  # each torchrun process composed its own
    if not ranks.is_main:
        _discard_own_dir(own_dir, run_dir)
    done = _finished_before(run_dir, cfg)
    if done is not None:
        leave(ranks)
        return done if ranks.is_main else None
    if ranks.active and cfg.mixup > 0 and (cfg.batch_size // ranks.world_size) % 2:
        raise BadInput(f"mixup needs an even batch per process: batch_size={cfg.batch_size} over "
                       f"{ranks.world_size} processes")
    setup(cfg.seed, cfg.get("threads"))
    start = time.time()
    init_dir = shared_init(cfg, device)
    data = build_data(cfg.data, cfg.model, cfg.paths.cache_dir)
    # built before training so its checks (e.g. a set smaller than the ranks sharing it) come first
    evaluator = Evaluator(data.eval_sets(), cfg.eval_batch_size, cfg.precision, device,
                          compile=bool(cfg.get("compile")), group=ranks)
    model = build_classifier(cfg.model, cfg.data.num_classes, load_pretrained=False).to(device)
    init_info = load_shared_init(init_dir, model)
    if cfg.get("lora"):  # only the adapters and the head train; the merged weights are the run's weights
        model = with_lora(model, cfg.lora)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    sweep = run_dir.parent.name if run_dir.name.isdigit() else None  # multirun job folders are numbered
    if sweep and ranks.is_main:
        list_draws(cfg, run_dir.parent)
    logger = logger if ranks.is_main else None  # one run per fine-tune, from rank 0
    with tracking(logger, run_dir, name=f"{run_dir.parent.name}/{run_dir.name}", job_type="finetune",
                  config=resolved, group=cfg.logger.get("group") or sweep) as tracker:
        record = {"kind": "finetune", "hparams": {k: cfg[k] for k in HPARAMS},
                  "init": {"dir": str(init_dir), "sha256": init_info["sha256"], "metrics": init_info["metrics"],
                           "evaluation_key": init_info.get("evaluation_key")},
                  "config": resolved, "environment": environment()}
        if cfg.get("lora"):
            record["lora"] = OmegaConf.to_container(cfg.lora, resolve=True)
        try:
            history, within = _train(model, data, cfg, device, run_dir, ranks, tracker)
            if cfg.get("lora"):  # the adapter as peft writes it, on the init's folder; then merged
                model = save_adapter_and_merge(model, run_dir / "adapter", init_dir / "hf")
        except NonFiniteLoss as err:  # recorded as failed: no weights, kept out of every pool
            leave(ranks)
            return _record_failure(record, err, run_dir, tracker, start) if ranks.is_main else None
        # the weights are the same on every rank: each evaluates its shard, rank 0 gathers and writes
        logits = evaluator.all_logits(model)
        leave(ranks)
        if not ranks.is_main:
            return None
        record |= {"seconds": round(time.time() - start, 1), "history": history}
        info = _save_run(model, evaluator, logits, cfg, run_dir, record, within)
        if isinstance(model, HFClassifier):  # also as a folder from_pretrained loads
            save_pretrained_soup(model, model.state_dict(), run_dir / "hf", hf_processor_dir(cfg.model))
        tracker.summary({f"final/{k}": v for k, v in info["metrics"].items()})
    log.info("run %s: %s", run_dir, format_metrics(info["metrics"]))
    return info
