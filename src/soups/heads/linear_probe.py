"""The shared initialization as a linear probe: logistic regression on the pretrained tower's frozen features
(cached under cache_dir/features), C chosen on the held-out set; BN towers first re-estimate their
statistics on the training images. The paper's released CLIP pool starts from such an LP init (model_0)."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression

from soups.data import EvalSet
from soups.errors import BadInput
from soups.evaluation.evaluator import recalibrate_bn
from soups.io.files import atomic_write, state_digest
from soups.heads import Head, set_head
from soups.models.classifier import build_classifier, has_batchnorm
from soups.runtime import autocast

log = logging.getLogger(__name__)


@dataclass
class LinearProbe(Head):
    Cs: list = field(default_factory=lambda: [0.01, 0.1, 1.0])  # inverse regularization strengths tried
    max_iter: int = 2000
    adapt_bn: bool = True  # re-estimate BN statistics on the training images first (BN towers only)
    train_per_class: int | None = None  # cap on the probe's training images per class; None = all

    def __post_init__(self):
        super().__post_init__()
        Cs = self.Cs if isinstance(self.Cs, list) else [self.Cs]
        if not Cs or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in Cs):
            raise BadInput(f"Cs={self.Cs!r}: expected a non-empty list of positive numbers, e.g. [0.01, 0.1, 1.0]")
        self.Cs = [float(c) for c in Cs]
        if self.max_iter < 1 or (self.train_per_class is not None and self.train_per_class < 1):
            raise BadInput(f"max_iter={self.max_iter}, train_per_class={self.train_per_class}: expected >= 1")

    def __call__(self, cfg, data, device):
        model = build_classifier(cfg.model, cfg.data.num_classes, cache_dir=cfg.paths.cache_dir).to(device)
        train, val = data.probe_sets(self.train_per_class)
        if self.adapt_bn and has_batchnorm(model):
            # Features on ImageNet BN statistics probe well but fine-tune badly once BN runs in train mode.
            recalibrate_bn(model, train, cfg.eval_batch_size, device)
        classes = len(np.unique(train.labels.numpy()))
        if classes != cfg.data.num_classes:
            raise BadInput(f"the probe's training set holds {classes} of the {cfg.data.num_classes} classes: "
                           f"raise head.train_per_class or the training set")
        parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")}
        parts |= {"adapt_bn": self.adapt_bn, "per_class": self.train_per_class, "precision": cfg.precision,
                  # the weights themselves: a randomly initialized tower differs with the seed that built it
                  "tower": state_digest({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})}
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        features_dir = Path(cfg.paths.cache_dir) / "features"
        batch, precision = cfg.eval_batch_size, cfg.precision
        fx = cached_features(model, train, batch, precision, device, features_dir / f"{key}-train.npy")
        vx = cached_features(model, val, batch, precision, device, features_dir / f"{key}-val.npy")
        weight, bias, probe = fit_linear_probe(fx, train.labels.numpy(), vx, val.labels.numpy(),
                                               self.Cs, self.max_iter)
        set_head(model, weight, bias)
        return model, probe


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
    """Logistic regression on standardized features; C picked on the held-out set. Returns (weight [K, D],
    bias [K], info) for the K classes in `train_y`, with the standardization folded in, so the head acts on
    raw features. Two classes: scikit-learn fits one row w (P(class 1) = sigmoid(w.x + b)); the head gets
    the rows -w/2 and +w/2, whose softmax is exactly that sigmoid."""
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
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # one logit difference -> two logits
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = coef / std
    bias = intercept - (coef * mean / std).sum(1)
    info = {"C": C, "val_accuracy": acc, "Cs": list(Cs)}
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32), info
