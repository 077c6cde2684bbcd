"""A soup folder in the format its ecosystem loads, with the one line that loads it (also in EXPORT.md):

    python scripts/export_soup.py logs/soup/runs/<run>/greedy --to open_clip [--clip FILE]
    python scripts/export_soup.py logs/soup/runs/<run>/greedy --to timm
    python scripts/export_soup.py logs/soup/runs/<run>/greedy --to safetensors

- open_clip: `open_clip.pt`, a whole CLIP state dict whose image tower is the soup's, loadable by
  `open_clip.create_model_and_transforms(name, pretrained="open_clip.pt")` (`import soups.models.classifier` first
  for this project's registered models; a timm tower run at another size than timm's default is created
  with force_image_size and then loaded, since open_clip sizes it after loading `pretrained`); the text tower comes from
  `--clip` (a whole-CLIP checkpoint: one of the ingredients, or open_clip's pretrained file), else from the
  model's pretrained weights (model.pretrained). The soup's classification head is not part of a CLIP:
  `head.safetensors` holds it (logits = normalize(encode_image(x)) @ weight.T + bias, with normalize only
  where the soup's model.normalize_features is true).
- timm (pools of plain timm classifiers, model=timm; and open_clip models whose image tower is a timm model run
  as it is, e.g. the demos' EfficientNet-Lite0 and DINOv2 ViT-S/14, with the head as timm's classifier):
  `timm.safetensors` for `timm.create_model(name, checkpoint_path="timm.safetensors", num_classes=N, ...)`,
  with the timm transform that preprocesses as the soup was measured.
- safetensors: `model.safetensors` as it is, plus its config (export.json) for any loader.
Soups of transformers folders (pool=hf, pool=lora, model=hf) need no export: src/soup.py already wrote
`<soup>/hf/` (`from_pretrained`) and, for LoRA pools, `<soup>/adapter/` (`PeftModel.from_pretrained`).
Writes are atomic; files from other tools are read with weights_only=True (soups/io/foreign.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf


def export(soup_dir: Path, to: str, clip_file: Path | None = None) -> dict:
    """Write the export into soup_dir; returns {file: ..., load: the one-liner}. Raises BadInput."""
    from soups.errors import BadInput
    from soups.io.files import atomic_save_safetensors, load_weights, read_json, write_json
    from soups.names import RUN_INFO_NAME, WEIGHTS_NAME

    info_file = soup_dir / RUN_INFO_NAME
    if not info_file.is_file() or not (soup_dir / WEIGHTS_NAME).is_file():
        raise BadInput(f"{soup_dir} is not a soup folder (no {RUN_INFO_NAME} and {WEIGHTS_NAME}); an ensemble "
                       f"has no weights to export")
    info = read_json(info_file)
    model_cfg = OmegaConf.create(info["config"]["model"])
    classes = int(info["config"]["data"]["num_classes"])
    weights = load_weights(soup_dir / WEIGHTS_NAME)
    native = _written_by_soup(soup_dir, model_cfg)
    if to in ("timm", "open_clip") and (model_cfg.get("hf_classifier") or model_cfg.get("text_encoder")):
        kind = "transformers" if model_cfg.get("hf_classifier") else "sentence-encoder"
        raise BadInput(f"--to {to} exports open_clip or timm models; this soup is a {kind} model "
                       f"({model_cfg.get('name')}): " + (f"src/soup.py already wrote {', '.join(native)} for it, or "
                                                         if native else "") + "use --to safetensors")
    if to == "timm" and not model_cfg.get("timm_name"):  # an open_clip model whose image tower is a timm model
        out = soup_dir / "timm.safetensors"
        name, kwargs, state = _timm_tower_classifier(model_cfg, weights, classes)
        atomic_save_safetensors(state, out, metadata={"format": "timm", "model": name})
        size = int(model_cfg.image_size)
        load = (f"model = timm.create_model({name!r}, checkpoint_path={str(out)!r}, num_classes={classes}"
                + "".join(f", {k}={v!r}" for k, v in kwargs.items()) + "); "
                f"preprocess = timm.data.create_transform(input_size={size}, interpolation='bicubic', crop_pct=1.0, "
                f"mean={tuple(model_cfg.mean)}, std={tuple(model_cfg.std)})")
    elif to == "timm":
        out = soup_dir / "timm.safetensors"
        atomic_save_safetensors(weights, out, metadata={"format": "timm", "model": model_cfg.timm_name})
        kwargs = "".join(f", {k}={v!r}" for k, v in (model_cfg.get("timm_kwargs") or {}).items())
        load = (f"timm.create_model({model_cfg.timm_name!r}, checkpoint_path={str(out)!r}, "
                f"num_classes={classes}{kwargs})")
    elif to == "open_clip":
        if model_cfg.get("timm_name"):
            raise BadInput(f"--to open_clip exports open_clip models; this soup is a plain timm classifier "
                           f"({model_cfg.timm_name}): use --to timm or safetensors")
        out = soup_dir / "open_clip.pt"
        state = _whole_clip(model_cfg, weights, clip_file, info)
        _atomic_torch_save(state, out)
        head = soup_dir / "head.safetensors"
        atomic_save_safetensors({"weight": weights["head.weight"], "bias": weights["head.bias"]}, head)
        norm = "F.normalize(model.encode_image(x), dim=-1)" if model_cfg.normalize_features else "model.encode_image(x)"
        name, size = model_cfg.open_clip_name, int(model_cfg.image_size)
        # the soup was measured at model.image_size with model.mean/std: the one-liner builds and preprocesses so
        # (open_clip would otherwise resize a ViT's position grid to its config's size, and normalize by its own)
        norm_args = _preprocess_args(name, list(model_cfg.mean), list(model_cfg.std))
        if _timm_tower_resized(name, size):  # open_clip sizes a timm tower after loading `pretrained`: load after
            create = (f"model = open_clip.create_model({name!r}, force_image_size={size}); "
                      f"model.load_state_dict(torch.load({str(out)!r}, weights_only=True)); "
                      f"preprocess = open_clip.image_transform({size}, is_train=False, "
                      f"mean={tuple(model_cfg.mean)}, std={tuple(model_cfg.std)})")
        else:
            forced = f", force_image_size={size}" if _native_size(name) != size else ""
            create = (f"model, _, preprocess = open_clip.create_model_and_transforms({name!r}, "
                      f"pretrained={str(out)!r}{forced}{norm_args})")
        load = f"{create}; h = safetensors.torch.load_file({str(head)!r}); logits = {norm} @ h['weight'].T + h['bias']"
    elif to == "safetensors":
        out = soup_dir / WEIGHTS_NAME
        load = f"safetensors.torch.load_file({str(out)!r})  # keys as in {soup_dir / 'export.json'}"
        if native:
            load += f"\n# or the folders src/soup.py wrote for its own library: {', '.join(native)}"
    else:
        raise BadInput(f"--to {to}: expected open_clip, timm or safetensors")
    record = {"format": to, "file": str(out), "load": load, "model": OmegaConf.to_container(model_cfg),
              "num_classes": classes, "metrics": info.get("metrics")}
    write_json(record, soup_dir / "export.json")
    (soup_dir / "EXPORT.md").write_text(f"# {soup_dir.name}: exported as {to}\n\n```python\n{load}\n```\n")
    return record


def _written_by_soup(soup_dir: Path, model_cfg) -> list[str]:
    """The library folders src/soup.py wrote beside a transformers soup (hf/, adapter/), as load one-liners."""
    loads = {"hf": "AutoModelFor...Classification.from_pretrained({!r})", "adapter": "PeftModel.from_pretrained(base, {!r})"}
    return [loads[name].format(str(soup_dir / name)) for name in loads if (soup_dir / name / "config.json").is_file()
            or (soup_dir / name / "adapter_config.json").is_file()] if model_cfg.get("hf_classifier") else []


def _whole_clip(model_cfg, weights: dict, clip_file: Path | None, info: dict) -> dict:
    """A whole CLIP's state dict: the text side from `clip_file` or the pretrained model, the soup's tower."""
    from soups.errors import BadInput
    from soups.io.foreign import read_checkpoint
    from soups.models.classifier import create_clip, text_tower_clip

    if clip_file is not None:
        clip, _ = read_checkpoint(clip_file, "auto")
    elif model_cfg.get("pretrained"):
        clip = text_tower_clip(model_cfg).state_dict()
    else:  # never a randomly initialised text tower passed off as a CLIP's
        raise BadInput(f"the soup's model ({model_cfg.get('name')}) has no pretrained text tower (model.pretrained "
                       f"is null) for a whole open_clip CLIP: give --clip FILE (a whole-CLIP checkpoint of "
                       f"{model_cfg.get('open_clip_name')}, e.g. one open_clip_train wrote), or export --to safetensors "
                       f"(image tower and head)")
    from soups.io.files import nonfinite_tensors

    template = create_clip(model_cfg, load_pretrained=False).state_dict()
    text = [k for k in template if not k.startswith("visual.")]
    missing = [k for k in text if k not in clip]
    shapes = [k for k in text if k in clip and clip[k].shape != template[k].shape]
    if missing or shapes:
        raise BadInput(f"--clip {clip_file} is not a whole {model_cfg.open_clip_name} CLIP: it lacks {missing[:3]}, "
                       f"other shapes at {shapes[:3]}")
    bad = nonfinite_tensors({k: clip[k] for k in text})
    if bad:
        raise BadInput(f"--clip {clip_file} holds NaN or inf in {bad[:3]}")
    return {k: (weights[k] if k.startswith("visual.") else clip[k]).contiguous() for k in template}


def _timm_tower_classifier(model_cfg, weights: dict, classes: int) -> tuple[str, dict, dict]:
    """(timm name, create_model kwargs, timm state dict) of a soup whose image tower is a timm model that open_clip
    runs as it is (`timm_proj: none`, timm's own pooling) and whose head reads the tower's features unnormalized:
    then timm's classifier of `classes` outputs is the soup's head, and timm.create_model(name, num_classes,
    global_pool, img_size for a ViT) gives the soup's logits. The state is held against that model's own state
    dict (every key, every shape) before anything is written, so timm's strict load of the file cannot fail or
    load it partly. Raises BadInput otherwise."""
    import open_clip
    import timm

    import soups.models.classifier  # noqa: F401 - registers this project's model configs
    from soups.errors import BadInput

    name = model_cfg.get("open_clip_name")
    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    tower = vision.get("timm_model_name")
    way_out = "use --to open_clip (with --clip FILE where the model has no pretrained text tower) or --to safetensors"
    if not tower or vision.get("timm_proj") != "none" or vision.get("timm_pool") in ("abs_attn", "rot_attn"):
        raise BadInput(f"--to timm exports timm classifiers; the image tower of {name} is "
                       + (f"timm {tower} with an open_clip projection or pooling on top" if tower else "not a timm model")
                       + f": {way_out}")
    if model_cfg.normalize_features:
        raise BadInput(f"--to timm: the soup's head reads L2-normalized features (model.normalize_features=true), "
                       f"which a timm classifier cannot do: {way_out}")
    prefix = "visual.trunk."
    kwargs = {"global_pool": vision.get("timm_pool", "avg")}
    if any(k.startswith(prefix + "patch_embed.") for k in weights):
        kwargs["img_size"] = int(model_cfg.image_size)  # a ViT's position grid is the soup's size (open_clip resized it)
    model = timm.create_model(tower, pretrained=False, num_classes=classes, **kwargs)
    classifier = model.pretrained_cfg["classifier"]
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    state.update({f"{classifier}.weight": weights.get("head.weight"), f"{classifier}.bias": weights.get("head.bias")})
    state = {k: v for k, v in state.items() if v is not None}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise BadInput(f"--to timm: the soup's weights are not a timm {tower} of {classes} classes"
                       + (f"; missing {missing[:3]}" if missing else "") + (f"; extra {unexpected[:3]}" if unexpected else "")
                       + (f"; other shapes {shapes[:3]}" if shapes else "") + f": {way_out}")
    return tower, kwargs, {k: v.contiguous() for k, v in state.items()}


def _timm_tower_resized(name: str, image_size: int) -> bool:
    """Whether the image tower is a timm model run at another size than its timm default."""
    import open_clip

    import soups.models.classifier  # noqa: F401 - registers this project's model configs

    vision = open_clip.get_model_config(name)["vision_cfg"]
    if not vision.get("timm_model_name"):
        return False
    import timm

    default = timm.create_model(vision["timm_model_name"], pretrained=False).pretrained_cfg.get("input_size")
    return default is None or int(default[-1]) != image_size


def _native_size(name: str) -> int:
    """The image size of open_clip's config for `name`."""
    import open_clip

    size = open_clip.get_model_config(name)["vision_cfg"].get("image_size", 224)
    return int(size[-1] if isinstance(size, (list, tuple)) else size)


def _preprocess_args(name: str, mean: list, std: list) -> str:
    """`, image_mean=..., image_std=...` where the soup's normalization is not open_clip's for `name` (its
    config's preprocess_cfg, else OpenAI's), so the returned `preprocess` feeds the model what the soup saw."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    own = open_clip.get_model_config(name).get("preprocess_cfg", {})
    same = all(abs(a - b) < 1e-6 for a, b in zip([*mean, *std], [*own.get("mean", OPENAI_DATASET_MEAN),
                                                                   *own.get("std", OPENAI_DATASET_STD)]))
    return "" if same else f", image_mean={tuple(mean)}, image_std={tuple(std)}"


def _atomic_torch_save(state: dict, out: Path) -> None:
    import torch

    from soups.io.files import atomic_write

    atomic_write(out, lambda tmp: torch.save(state, tmp))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("soup_dir", type=Path, help="a soup folder (logs/soup/runs/<run>/<method>)")
    parser.add_argument("--to", required=True, choices=["open_clip", "timm", "safetensors"])
    parser.add_argument("--clip", type=Path, help="open_clip: a whole-CLIP checkpoint whose text tower to keep")
    args = parser.parse_args(argv)
    from soups.errors import said_plainly

    with said_plainly():
        record = export(args.soup_dir, args.to, args.clip)
        print(f"wrote {record['file']}\nload it with:\n  {record['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
