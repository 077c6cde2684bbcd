"""The shared initialization as CLIP's zero-shot classifier: per class, the prompt templates' text
embeddings, normalized, averaged, renormalized, times the logit scale, applied to L2-normalized image
features (the paper's zero-shot init; open_clip's build_zero_shot_classifier)."""
from __future__ import annotations

from dataclasses import dataclass

import open_clip

from soups.errors import BadInput
from soups.heads import Head, set_head
from soups.models.classifier import classifier_from_clip, create_clip
from soups.models.zero_shot import zero_shot_head, zero_shot_prompts


@dataclass
class ZeroShot(Head):
    classnames: str = "imagenet"  # open_clip.IMAGENET_CLASSNAMES
    templates: str = "openai"     # open_clip.OPENAI_IMAGENET_TEMPLATES (80); or simple
    logit_scale: float = 100.0

    def __call__(self, cfg, data, device):
        clip = create_clip(cfg.model, cache_dir=cfg.paths.cache_dir).to(device)
        classnames, templates = zero_shot_prompts(self)
        if len(classnames) != cfg.data.num_classes:
            raise BadInput(f"{len(classnames)} class names for {cfg.data.num_classes} classes")
        weight, bias = zero_shot_head(clip, open_clip.get_tokenizer(cfg.model.open_clip_name), classnames,
                                      templates, self.logit_scale, device)
        model = classifier_from_clip(clip, cfg.model, cfg.data.num_classes).to(device)
        set_head(model, weight, bias)
        return model, {"classnames": self.classnames, "templates": self.templates, "num_templates": len(templates)}
