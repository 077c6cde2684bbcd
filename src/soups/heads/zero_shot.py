"""The shared initialization as CLIP's zero-shot classifier: per class, the prompt templates' text
embeddings, normalized, averaged, renormalized, times the logit scale, applied to L2-normalized image
features (the paper's zero-shot init; open_clip's build_zero_shot_classifier)."""
from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch

from soups.errors import BadInput
from soups.heads import Head, set_head
from soups.models import classifier_from_clip, create_clip


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


@torch.no_grad()
def zero_shot_head(clip, tokenizer, classnames: list[str], templates: list, logit_scale: float,
                   device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's zero-shot classifier as a linear head on L2-normalized image features: per class, the
    normalized text embeddings of every template, averaged and renormalized, times the logit scale."""
    clip.eval()
    weights = open_clip.build_zero_shot_classifier(clip, tokenizer, classnames, templates, num_classes_per_batch=10,
                                         device=device)  # [dim, classes], unit columns
    weight = logit_scale * weights.T.float().cpu()
    return weight, torch.zeros(len(classnames))


def zero_shot_prompts(head_cfg) -> tuple[list[str], list]:
    """Class names and prompt templates the head names (open_clip ships ImageNet's), or given as lists
    (templates: strings with one `{}`). Raises BadInput."""
    classnames, templates = head_cfg.classnames, head_cfg.templates
    if isinstance(classnames, str):
        classnames = {"imagenet": open_clip.IMAGENET_CLASSNAMES}.get(classnames, None)
    if isinstance(templates, str):
        templates = {"openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
                     "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES}.get(templates, None)
    elif templates is not None:
        templates = [t.format if isinstance(t, str) and "{}" in t else None for t in templates]
        templates = None if None in templates or not templates else templates
    if classnames is None or templates is None:
        raise BadInput(f"head.classnames={head_cfg.classnames!r} / head.templates={head_cfg.templates!r}; "
                       f"available: classnames imagenet or a list, templates openai | simple or a list of "
                       f"strings with {{}}")
    return list(classnames), list(templates)
