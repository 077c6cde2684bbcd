"""The shared initialization as the pretrained encoder with a zero head: every class scores 0 until
fine-tuning moves it. The encoder's gradient is zero until the head has moved, so the first steps train
the head alone (a brief linear probe inside fine-tuning)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from soups.heads import Head, set_head
from soups.models.classifier import build_classifier


@dataclass
class ZeroHead(Head):
    def __call__(self, cfg, data, device):
        model = build_classifier(cfg.model, cfg.data.num_classes, cache_dir=cfg.paths.cache_dir).to(device)
        set_head(model, torch.zeros_like(model.head.weight), torch.zeros_like(model.head.bias))
        return model, {}
