"""`pool=lora`: LoRA adapters (peft's `save_pretrained` folders) on one base classifier, souped exactly:

    python src/soup.py pool=lora "pool.glob='adapters/*'" pool.base=base_classifier data=sentiment

A LoRA fine-tune's weights are W0 + s·B·A on each adapted linear map (s = lora_alpha/r, or lora_alpha/√r with
rsLoRA; r is each module's own rank, rank_pattern included; on a convolution, Σ_r B[o, r]·A[r, i, kernel]) and
the adapter's own tensors for the modules it trained in full (`modules_to_save`: the classification head). Each
adapter is merged so, checked against peft's own `merge_and_unload` of that adapter, and then is an ingredient
like any full fine-tune: a soup of merged adapters with weights summing to one is exactly W0 + Σ wᵢ·sᵢBᵢAᵢ (with
the heads averaged as plain tensors), for every recipe. Variants whose update is not s·B·A (DoRA, LoRA biases,
embedding adapters) and adapters on grouped convolutions (which peft does not merge either) are refused by name.
A soup is written back as a merged model (`<soup>/hf/`) and as one LoRA adapter (`<soup>/adapter/`: rank Σ rᵢ,
exact up to round-off; `pool.svd_rank`: also a smaller one, its error printed; soups/pools/lora_export.py).

Why not peft's own combination: `add_weighted_adapter(..., "linear")` makes cross terms BᵢAⱼ, "svd" truncates
to the largest rank, and rsLoRA, DoRA and `modules_to_save` heads are not combined correctly in peft 0.21.2
(only "cat" is exact; peft issue #643). `recipes/lora_factor_mean.py` is the mean-of-factors soup, to compare.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from soups.data import TaskData
from soups.errors import BadInput
from soups.io.files import atomic_save_safetensors, nonfinite_tensors, sha256_file, write_json
from soups.models.classifier import build_classifier
from soups.models.hf import PREFIX, load_folder, model_cfg_for, modality_of, read_config
from soups.models.lora import quiet_peft
from soups.pools import OpenPool, Pool, needed_data, refuse_unused_choice
from soups.pools.checkpoint_files import display_names, refuse_duplicates
from soups.pools.hf_folders import check_labels, check_max_length, convert, find_tokenizer, folder_setting, \
    matched_folders, tensors_digest, trainer_hparams, weights_digest
from soups.pools.ingredient import Ingredient
from soups.pools.lora_export import AdapterExport
from soups.settings import build

log = logging.getLogger(__name__)
ADAPTER_PREFIX = "base_model.model."
# adapter_config.json settings whose adapters are not W0 + s·B·A (or not of this pool's kind): refused by name
REFUSED = {"use_dora": "DoRA rescales each column by a learned magnitude",
           "lora_bias": "LoRA biases add a trained bias to B",
           "use_qalora": "QALoRA pools its inputs", "use_bdlora": "block-diagonal LoRA",
           "layer_replication": "replicated layers", "target_parameters": "LoRA on parameters, not modules",
           "trainable_token_indices": "trained token embeddings", "alpha_pattern": "per-module alphas",
           "alora_invocation_tokens": "activated LoRA acts only after its invocation tokens",
           "arrow_config": "an Arrow router over several adapters",
           "kasa_config": "KaSA truncates the base's singular values and scales B·A by a learned diagonal"}
# init_lora_weights that change the base at init (W0 − s·B0·A0, or a quantized W0): the adapter alone is not the
# model on pool.base. peft's save_pretrained(path_initial_model_for_weight_conversion=...) converts all but LoftQ.
RESIDUAL_INITS = ("pissa", "corda", "olora", "lora_ga", "loftq")


def residual_init(config: dict) -> str | None:
    """The adapter's init_lora_weights where it is one of RESIDUAL_INITS ('pissa_niter_16' → 'pissa'), else None."""
    init = config.get("init_lora_weights")
    if not isinstance(init, str):
        return None
    name = init.lower().split("_niter_")[0]
    return name if name in RESIDUAL_INITS else None


@dataclass
class Factors:
    """One adapter read: {module path: (A [r, in], B [out, r], scale s)} (a convolution's: A [r, in, *kernel],
    B [out, r, 1, ...]) and its fully trained tensors ({HF key: tensor}, the head), with its config (peft's
    default `lora_alpha` filled in where the file has none, as peft's loader fills it)."""
    lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    full: dict[str, torch.Tensor]
    config: dict


def read_adapter(folder: Path) -> Factors:
    """An adapter folder (adapter_config.json + adapter_model.safetensors) read and checked to be a plain or
    rsLoRA adapter. Raises BadInput naming the folder and what is refused."""
    from safetensors.torch import load_file

    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file():
        raise BadInput(f"{folder}: no adapter_config.json (expected a peft adapter folder, as save_pretrained "
                       f"of a PeftModel writes it)")
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise BadInput(f"{folder}: no adapter_model.safetensors" + (" (adapter_model.bin is a pickle: never loaded "
                       "here; save with safe_serialization=True)" if pickled else " (an adapter without weights)"))
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise BadInput(f"{config_path}: not readable JSON ({err})") from err
    if not isinstance(config, dict):
        raise BadInput(f"{config_path}: expected a JSON object (peft's LoraConfig), got a {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise BadInput(f"{folder}: peft_type={config.get('peft_type')!r}; pool=lora soups LoRA adapters")
    refused = [f"{k} ({why})" for k, why in REFUSED.items() if config.get(k)]
    if config.get("bias", "none") != "none":
        refused.append(f"bias={config['bias']!r} (trained biases of the base layers)")
    if refused:
        raise BadInput(f"{folder}: {', '.join(refused)}: its update is not W0 + s·B·A, so it is not merged here "
                       f"(train plain LoRA or rsLoRA, or merge it with peft's merge_and_unload and use pool=hf)")
    init = residual_init(config)
    if init == "loftq":
        raise BadInput(f"{folder}: init_lora_weights='loftq' trains on a quantized base the adapter does not hold: "
                       f"merge it on that base with peft's merge_and_unload and use pool=hf")
    if init:
        raise BadInput(f"{folder}: init_lora_weights={config['init_lora_weights']!r} trains on a base peft changed at "
                       f"init (W0 − s·B0·A0), which the adapter does not hold: merged on pool.base it would be "
                       f"another model. Save it converted, save_pretrained(out, path_initial_model_for_weight_"
                       f"conversion=<the adapter saved before training>) (a plain LoRA of rank 2r on the original "
                       f"base), and soup those")
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error kinds for a damaged file
        raise BadInput(f"{weights}: not a readable safetensors file ({err})") from err
    embedding = [k for k in tensors if "lora_embedding" in k or "lora_magnitude" in k]
    if embedding:
        raise BadInput(f"{folder}: {embedding[0]}: embedding adapters and DoRA magnitudes are not merged here")
    config.setdefault("lora_alpha", 8)  # LoraConfig's default: what peft merges with where the file names none
    alpha, rslora = float(config["lora_alpha"]), bool(config.get("use_rslora"))
    lora, full = {}, {}
    for key, value in tensors.items():
        name = key.removeprefix(ADAPTER_PREFIX)
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0]
            b = tensors.get(key.replace(".lora_A.", ".lora_B."))
            if b is None:
                raise BadInput(f"{folder}: {key} has no lora_B")
            if value.ndim > 2 and (b.shape[1] != value.shape[0] or any(n != 1 for n in b.shape[2:])):
                raise BadInput(f"{folder}: {module} is a grouped convolution (A {tuple(value.shape)}, B "
                               f"{tuple(b.shape)}): peft does not merge LoRA there either, so it is not souped here")
            r = value.shape[0]  # each module's own rank (rank_pattern)
            scale = alpha / math.sqrt(r) if rslora else alpha / r
            lora[module] = (value.float(), b.float(), scale)
        elif ".lora_B." not in name:
            full[name] = value.float()
    return Factors(lora, full, config)


def update(a: torch.Tensor, b: torch.Tensor, scale: float, fan_in_fan_out: bool = False) -> torch.Tensor:
    """s·B·A [out, in] (its transpose for fan_in_fan_out layers, whose weight is stored [in, out]); for a
    convolution (A [r, in, *kernel], B [out, r, 1, ...]) the kernel's update [out, in, *kernel],
    s·Σ_r B[o, r]·A[r, i, ...]: peft's _ConvNd.get_delta_weight for groups = 1, written as one contraction."""
    if a.ndim > 2:
        return torch.einsum("or,r...->o...", b.flatten(1), a) * scale
    delta = (b @ a) * scale
    return delta.T if fan_in_fan_out else delta


def merged(base: dict[str, torch.Tensor], factors: Factors, folder: Path) -> dict[str, torch.Tensor]:
    """W0 + s·B·A per adapted module, the adapter's own tensors for the fully trained ones (HF keys).
    Raises BadInput where a module or tensor does not fit the base (an adapter of another base)."""
    out = dict(base)
    fan = bool(factors.config.get("fan_in_fan_out"))
    for module, (a, b, scale) in factors.lora.items():
        key = f"{module}.weight"
        if key not in base:
            raise BadInput(f"{folder}: adapts {module}, which pool.base has not (an adapter of another base model?)")
        delta = update(a, b, scale, fan)
        if delta.shape != base[key].shape:
            raise BadInput(f"{folder}: {module} is {tuple(delta.shape)} in the adapter, {tuple(base[key].shape)} "
                           f"in pool.base (an adapter of another base model?)")
        out[key] = base[key] + delta
    for key, value in factors.full.items():
        if key not in base or base[key].shape != value.shape:
            raise BadInput(f"{folder}: {key} {tuple(value.shape)} does not fit pool.base "
                           f"({tuple(base[key].shape) if key in base else 'absent'}): another base or label count?")
        out[key] = value
    return out


def peft_merged(base_dir: Path, folder: Path, kind: str) -> dict[str, torch.Tensor]:
    """peft's own merge of this one adapter into the base (PeftModel.from_pretrained + merge_and_unload)."""
    from peft import PeftModel

    base = load_folder(base_dir, kind)
    try:
        with quiet_peft():
            model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as err:
        raise BadInput(f"{folder}: peft cannot load it on pool.base ({str(err).splitlines()[0][:300]}): its "
                       f"adapter_config.json and tensors disagree, or it belongs to another base") from err
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def check_against_peft(ours: dict, theirs: dict, folder: Path) -> float:
    """Largest |ours − peft's| relative to the tensor's scale; BadInput above fp32 round-off (1e-5)."""
    worst, where = 0.0, None
    for key, value in theirs.items():
        err = float((ours[key] - value).abs().max()) / (1.0 + float(value.abs().max()))
        if err > worst:
            worst, where = err, key
    if worst > 1e-5:
        raise BadInput(f"{folder}: the merge W0 + s·B·A differs from peft's merge_and_unload at {where} (relative "
                       f"{worst:.2e}): an adapter variant this pool does not know; refused rather than souped wrongly")
    return worst


@dataclass
class LoraAdapters(Pool):
    glob: str                     # the adapter folders, e.g. 'adapters/*' (sorted by name)
    base: str                     # the base classifier folder (W0): the adapters' shared initialization
    max_length: int | None = None  # text: tokens per sentence (longer ones cut); None: the folder's own
    tokenizer: str | None = None  # text: a folder with the tokenizer, where the base holds none
    svd_rank: int | None = None   # also export each soup as a rank-r adapter (truncated SVD; its error printed)

    def __post_init__(self):
        super().__post_init__()
        check_max_length(self.max_length)

    def check_choices(self, cfg) -> None:
        self._described(cfg)

    def _described(self, cfg):
        """(base folder, adapter folders, data, modality, tokenizer folder, run_cfg): the configs read and checked,
        before any weights; BadInput where the command line chose another model."""
        data_node = needed_data(cfg, "lora")
        base_dir = folder_setting(self.base, "base", "the base classifier folder the adapters were trained on")
        if self.svd_rank is not None and self.svd_rank < 1:
            raise BadInput(f"pool.svd_rank={self.svd_rank}: expected a rank >= 1, or null")
        config = read_config(base_dir)
        kind = modality_of(config, base_dir)
        data = build(data_node, "data", "soups.data", TaskData)
        check_labels(config, data.num_classes, data.class_names, data.name)
        folders = [f for f in matched_folders(self.glob, "peft adapter folders, e.g. 'adapters/*'")
                   if f.resolve() != base_dir]  # the base is no adapter
        if not folders:
            raise BadInput(f"pool.glob={self.glob!r} matches only pool.base")
        tokenizer_dir = find_tokenizer([base_dir], kind, self.tokenizer)
        model_cfg = model_cfg_for(base_dir, config, self.max_length, tokenizer_dir)
        run_cfg = OmegaConf.create({"model": model_cfg, "data": OmegaConf.to_container(data_node, resolve=True)})
        refuse_unused_choice(cfg, "model", "lora", run_cfg.model, "their config.json")
        return base_dir, folders, data, kind, tokenizer_dir, run_cfg

    def open(self, cfg, device) -> OpenPool:
        base_dir, folders, data, kind, tokenizer_dir, run_cfg = self._described(cfg)
        model = build_classifier(run_cfg.model, data.num_classes, load_pretrained=False)
        cache = Path(cfg.paths.cache_dir)
        init = convert(base_dir, cache / "hf")  # W0 (+ the base's head): the init of WiSE-FT, Model Stock, analyses
        base_state = {k[len(PREFIX):]: v for k, v in _load(init.weights).items()}
        factors = {f: read_adapter(f) for f in folders}  # every adapter read and checked before any merge
        _check_bases(factors, base_dir)
        ingredients = [self.convert(f, factors[f], base_dir, base_state, init, kind, cache / "lora") for f in folders]
        refuse_duplicates(ingredients)
        for ingredient, name in zip(ingredients, display_names(folders)):
            ingredient.name = name
        exact = sum(i.info["rank"] for i in ingredients)
        if self.svd_rank is not None and self.svd_rank >= exact:
            raise BadInput(f"pool.svd_rank={self.svd_rank} >= the exact rank Σ r_i = {exact}: <soup>/adapter/ is "
                           f"already exact at that rank; give a smaller rank to compress")
        ranks = sorted({i.info["rank"] for i in ingredients})
        log.info("pool=lora: %d adapters (ranks %s) on %s", len(ingredients), ranks, base_dir)
        common = Path(os.path.commonpath([f.absolute() for f in folders]))
        exporter = AdapterExport(model, kind, base_dir, tokenizer_dir, base_state, factors, self.svd_rank)
        return OpenPool(ingredients, run_cfg, model.to(device), common.name, {}, init.weights, init, export=exporter)

    def convert(self, folder: Path, factors: Factors, base_dir: Path, base_state: dict, init: Ingredient,
                kind: str, out_dir: Path) -> Ingredient:
        """One adapter merged into the base (cached by the adapter's and the base's digests), checked against
        peft's merge the first time."""
        digest = sha256_file(folder / "adapter_model.safetensors")
        config_digest = sha256_file(folder / "adapter_config.json")
        out = out_dir / f"{folder.name}-{digest[:12]}-{config_digest[:8]}-{init.info['source_sha256'][:12]}.safetensors"
        record_file = out.with_suffix(".json")
        if out.is_file() and record_file.is_file():
            record = json.loads(record_file.read_text())
        else:
            state = merged(base_state, factors, folder)
            bad = nonfinite_tensors(state)
            if bad:  # one NaN ingredient turns every average it enters into NaN
                raise BadInput(f"{folder}: merged, {len(bad)} tensors hold NaN or inf (e.g. {bad[:3]}); it cannot be souped")
            error = check_against_peft(state, peft_merged(base_dir, folder, kind), folder)
            atomic_save_safetensors({PREFIX + k: v for k, v in state.items()}, out,
                                    metadata={"kind": "lora", "source": folder.name})
            record = {"format": "lora", "sha256": sha256_file(out), "peft_check": error,
                      "rank": max((a.shape[0] for a, _, _ in factors.lora.values()), default=0),
                      "lora_alpha": factors.config["lora_alpha"], "use_rslora": bool(factors.config.get("use_rslora"))}
            write_json(record, record_file)
        hparams = {"rank": record["rank"], "lora_alpha": record["lora_alpha"]} | trainer_hparams(folder)
        info = {**record, "source": str(folder), "source_sha256": digest, "adapter": str(folder), "hparams": hparams}
        return Ingredient(folder.name, out, info)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def recorded_base(folder: Path, recorded: str | None) -> tuple[Path | None, bool]:
    """(the model folder an adapter's `base_model_name_or_path` names on this machine, or None: a hub name or a
    folder moved away; whether it is that path itself rather than a guess). peft records the path as given to
    from_pretrained, relative to where training ran: a relative one not found from here is looked for above
    the adapter's folder, a guess (a hub name can match an unrelated local folder of that name)."""
    if not recorded:
        return None, False
    path = Path(recorded).expanduser()
    if (path / "config.json").is_file():
        return path.resolve(), True
    if path.is_absolute():
        return None, False
    found = next((p / path for p in folder.resolve().parents if (p / path / "config.json").is_file()), None)
    return (found.resolve() if found else None), False


def _check_bases(factors: dict[Path, Factors], base_dir: Path) -> None:
    """An adapter whose recorded base is a folder here with other tensors than pool.base is refused (a folder
    only guessed from a relative path is warned about instead); one whose base cannot be found or read here
    is named in a warning: its shapes are checked when merging, its values cannot be."""
    digests: dict[tuple[str, Path], str] = {}

    def digest(kind, path):  # each folder read once, whatever the number of adapters naming it
        if (kind, path) not in digests:
            digests[(kind, path)] = (weights_digest if kind == "file" else tensors_digest)(path)
        return digests[(kind, path)]

    unverified, guessed = [], []
    for folder, f in factors.items():
        recorded = f.config.get("base_model_name_or_path")
        path, exact = recorded_base(folder, recorded)
        if path is None:
            unverified.append(f"{folder.name} ({recorded!r})")
            continue
        try:
            same = path == base_dir.resolve() or digest("file", path) == digest("file", base_dir) or \
                digest("tensors", path) == digest("tensors", base_dir)  # the same tensors sharded: the same base
        except (BadInput, OSError, ValueError) as e:  # e.g. a recorded base with pytorch_model.bin only
            unverified.append(f"{folder.name} ({recorded!r}: {e})")
            continue
        if same:
            continue
        if exact:
            raise BadInput(f"{folder} was trained on {recorded} ({path}), whose weights differ from "
                           f"pool.base={base_dir}: its update only means something on its own base")
        guessed.append(f"{folder.name} ({recorded!r}, found as {path})")
    if guessed:
        log.warning("%d adapters record a relative base that, looked for above the adapter, is a folder with "
                    "other weights than pool.base=%s: if it is their base, they were trained on another model: %s",
                    len(guessed), base_dir, ", ".join(guessed[:5]))
    if unverified:
        log.warning("%d adapters name a base that is not a readable folder here, so their base cannot be checked "
                    "against pool.base=%s (only the shapes are): %s", len(unverified), base_dir,
                    ", ".join(unverified[:5]))
