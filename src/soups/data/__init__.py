"""Datasets by config: `build_data(data_cfg, model_cfg, cache_dir)` constructs the `TaskData`
class that `data._target_` names (soups/data/base.py declares what it provides; one module per family:
mnist.py, imagenet.py). Add a dataset: one module here + conf/data/<name>.yaml (docs/extending.md), its shifts under `shifts:`."""
from __future__ import annotations

from soups.data.base import GivenSets, TaskData
from soups.data.images import EvalSet, ImageArray
from soups.errors import BadInput
from soups.models.classifier import modality
from soups.settings import class_in

__all__ = ["build_data", "TaskData", "GivenSets", "EvalSet", "ImageArray"]

# runs recorded before data configs named their class (run.json without data._target_)
BY_NAME = {"mnist": "soups.data.mnist.MnistData", "imagenet": "soups.data.imagenet.ImageNetData"}


def build_data(data_cfg, model_cfg, cache_dir=None) -> TaskData:
    """A dataset brings its own shifts (`data.shifts`), so `data=X` is never evaluated on another's.
    `cache_dir`: where file-based evaluation sets are stored decoded (soups.data.store); None: decode on
    every pass. Raises BadInput if `data._target_` is not an TaskData class of this package."""
    target = data_cfg.get("_target_") or BY_NAME.get(data_cfg.get("name"))
    cls = class_in(target, "soups.data", TaskData) if target else None
    if cls is None:
        raise BadInput(f"data._target_={target!r}: expected an TaskData class in soups.data "
                       f"(e.g. soups.data.mnist.MnistData; add new datasets to src/soups/data/)")
    if cls.modality != modality(model_cfg):
        example = "model=minilm_l6" if cls.modality == "text" else "model=vit_s14_dinov2"
        raise BadInput(f"data={data_cfg.get('name')} holds {cls.modality}s, but model={model_cfg.get('name')} "
                       f"classifies {modality(model_cfg)}s: choose a {cls.modality} model (e.g. {example})")
    if data_cfg.get("shifts") is None:
        raise BadInput(f"data={data_cfg.get('name')} names no shifts: give its config a `shifts:` node (its shift "
                       f"sets' settings; `shifts: {{names: []}}` for none)")
    return cls(data_cfg, model_cfg, cache_dir)
