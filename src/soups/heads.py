"""Heads that make the shared initialization: a linear probe on frozen features."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from soups.data import EvalSet
from soups.errors import BadInput
from soups.files import atomic_write
from soups.runtime import autocast

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(model, data: EvalSet, batch_size: int, precision: str, device) -> np.ndarray:
    model.eval()
    feats = []
    for images, _ in data.batches(batch_size, device=device):
        with autocast(precision, device):
            feats.append(model.features(images).float().cpu())
    return torch.cat(feats).numpy().astype(np.float64)


def cached_features(model, data, batch_size: int, precision: str, device, cache_file: Path) -> np.ndarray:
    """Frozen features of `data`, extracted once and kept in `cache_file` (.npy, written atomically)."""
    if cache_file.is_file():
        try:
            feats = np.load(cache_file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # empty, truncated or damaged: extracted again
            log.warning("feature cache %s unreadable (%s): extracting again", cache_file, err)
            feats = None
        if feats is not None and len(feats) == len(data):
            log.info("features from cache: %s", cache_file)
            return feats
    feats = extract_features(model, data, batch_size, precision, device)

    def save(tmp):
        with open(tmp, "wb") as f:
            np.save(f, feats)

    atomic_write(cache_file, save)
    return feats


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                     Cs: list[float], max_iter: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Multinomial logistic regression on standardized features; C picked on the held-out set.

    The standardization is folded into the returned weight and bias, so the head acts on raw features.
    """
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    zt, zv = (train_x - mean) / std, (val_x - mean) / std
    best = None
    for C in Cs:
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(zt, train_y)
        acc = 100.0 * clf.score(zv, val_y)
        log.info("linear probe C=%g: held-out %.2f%%", C, acc)
        if best is None or acc > best[0]:
            best = (acc, C, clf)
    acc, C, clf = best
    weight = clf.coef_ / std
    bias = clf.intercept_ - (clf.coef_ * mean / std).sum(1)
    info = {"C": C, "val_accuracy": acc, "Cs": list(Cs)}
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32), info


@torch.no_grad()
def zero_shot_head(clip, tokenizer, classnames: list[str], templates: list, logit_scale: float,
                   device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's zero-shot classifier as a linear head on L2-normalized image features: per class, the
    normalized text embeddings of every template, averaged and renormalized, times the logit scale."""
    from open_clip import build_zero_shot_classifier

    clip.eval()
    weights = build_zero_shot_classifier(clip, tokenizer, classnames, templates, num_classes_per_batch=10,
                                         device=device)  # [dim, classes], unit columns
    weight = logit_scale * weights.T.float().cpu()
    return weight, torch.zeros(len(classnames))


def zero_shot_prompts(head_cfg) -> tuple[list[str], list]:
    """Class names and prompt templates named in the head config (open_clip ships ImageNet's)."""
    import open_clip

    classnames = {"imagenet": open_clip.IMAGENET_CLASSNAMES}.get(head_cfg.classnames, None)
    templates = {"openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
                 "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES}.get(head_cfg.templates, None)
    if classnames is None or templates is None:
        raise BadInput(f"head.classnames={head_cfg.classnames!r} / head.templates={head_cfg.templates!r}; "
                       f"available: classnames imagenet, templates openai | simple")
    return list(classnames), list(templates)
