"""CLIP's zero-shot classifier as a linear head: per class, the prompt templates' text embeddings, normalized,
averaged, renormalized, times the logit scale, applied to L2-normalized image features (open_clip's
build_zero_shot_classifier). Used by the zero-shot init (soups/heads/zero_shot.py) and by pools of whole-CLIP
checkpoints (soups/pools/checkpoint_files.py)."""
from __future__ import annotations

import open_clip
import torch

from soups.errors import BadInput


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
