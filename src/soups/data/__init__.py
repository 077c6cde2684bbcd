"""Datasets by config: `build_data(data_cfg, model_cfg, cache_dir)` builds the `TaskData` class that
`data._target_` names, the way every plug-in is built (soups.settings.build: its settings checked by type, a
misspelled key refused, before any file is read), then loads it (soups/data/base.py declares what it provides;
one module per family: mnist.py, imagenet.py, sentiment.py). Add a dataset: one module here +
conf/data/<name>.yaml with its shifts under `shifts:` (docs/extending.md)."""
from __future__ import annotations

from soups.data.base import GivenSets, TaskData
from soups.data.images import EvalSet, ImageArray
from soups.errors import BadInput
from soups.models.classifier import modality
from soups.settings import build

__all__ = ["build_data", "TaskData", "GivenSets", "EvalSet", "ImageArray"]


def build_data(data_cfg, model_cfg, cache_dir=None) -> TaskData:
    """The dataset `data_cfg` names, loaded for `model_cfg`. A dataset brings its own shifts (`data.shifts`), so
    `data=X` is never evaluated on another's. `cache_dir`: where file-based evaluation sets are stored decoded
    (soups.data.store); None: decode on every pass. Raises BadInput for another target, a bad setting, or a
    model of the other modality (images vs text)."""
    data = build(data_cfg, "data", "soups.data", TaskData)
    if data.modality != modality(model_cfg):
        if model_cfg.get("hf_classifier"):
            raise BadInput(f"data={data.name} holds {data.modality}s, but the transformers model "
                           f"{model_cfg.hf_classifier} classifies {modality(model_cfg)}s")
        example = "model=minilm_l6" if data.modality == "text" else "model=vit_s14_dinov2"
        raise BadInput(f"data={data.name} holds {data.modality}s, but model={model_cfg.get('name')} "
                       f"classifies {modality(model_cfg)}s: choose a {data.modality} model (e.g. {example})")
    return data.load(model_cfg, cache_dir)
