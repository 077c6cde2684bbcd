"""How the shared initialization every fine-tune starts from is made: one class per file in this package,
chosen by `conf/head/<key>.yaml` (`_target_`): linear_probe (logistic regression on frozen features),
zero_shot (CLIP's text tower), checkpoint (given weights, e.g. the paper's LP init model_0.pt)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from soups.targets import Settings, build


class Head(Settings, ABC):
    """Base of every way to make the shared initialization: a dataclass whose fields are the head config's
    settings (converted and checked as soups.targets.Settings says)."""

    @abstractmethod
    def __call__(self, cfg, data, device: torch.device) -> tuple[torch.nn.Module, dict]:
        """The initialized classifier (soups.models.ImageClassifier on `device`) for the fine-tuning config
        `cfg` (model, data, paths, precision, eval_batch_size) and `data` (soups.data.ImageData), and what
        init.json records of how it was made (e.g. the probe's chosen C)."""


def build_head(head_cfg) -> Head:
    """The Head that `head._target_` names; BadInput for any other target or a bad setting."""
    return build(head_cfg, "head", "soups.heads", Head)
