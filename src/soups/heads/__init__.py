"""How the shared initialization every fine-tune starts from is made: one class per file in this package,
chosen by `conf/head/<key>.yaml` (`_target_`): linear_probe (logistic regression on frozen features),
zero_shot (CLIP's text tower), zero (a zero head), checkpoint (given weights, e.g. the paper's LP init model_0.pt)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from soups.errors import BadInput
from soups.settings import Settings, build


class Head(Settings, ABC):
    """Base of every way to make the shared initialization: a dataclass whose fields are the head config's
    settings (converted and checked as soups.settings.Settings says)."""

    @abstractmethod
    def __call__(self, cfg, data, device: torch.device) -> tuple[torch.nn.Module, dict]:
        """The initialized classifier (soups.models.classifier.ImageClassifier on `device`) for the fine-tuning config
        `cfg` (model, data, paths, precision, eval_batch_size) and `data` (soups.data.TaskData), and what
        init.json records of how it was made (e.g. the probe's chosen C)."""


@torch.no_grad()
def set_head(model: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy `weight` [C, D] and `bias` [C] into `model.head`, which must have exactly those shapes (copy_
    would otherwise broadcast, e.g. one row into every class, without a word). Raises BadInput."""
    head = model.head
    if tuple(weight.shape) != tuple(head.weight.shape) or tuple(bias.shape) != tuple(head.bias.shape):
        raise BadInput(f"the head made has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}, but the model's "
                       f"head is {tuple(head.weight.shape)} / {tuple(head.bias.shape)} ([classes, features])")
    head.weight.copy_(weight)
    head.bias.copy_(bias)


def build_head(head_cfg) -> Head:
    """The Head that `head._target_` names; BadInput for any other target or a bad setting."""
    return build(head_cfg, "head", "soups.heads", Head)
