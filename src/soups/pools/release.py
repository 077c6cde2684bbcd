"""`pool=paper_vit_b32`: the paper's 72 released ViT-B/32 checkpoints (model_0 = the linear-probe init, 71
fine-tunes of it), fetched by scripts/download_checkpoints.py and converted once to safetensors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from soups.io.checkpoints import convert_official_file
from soups.errors import BadInput, MissingInput
from soups.io.files import sha256_file
from soups.pools.ingredient import Ingredient
from soups.models.classifier import build_classifier
from soups.pools import OpenPool, Pool


def load_release_pool(release_cfg, template_state: dict, cache_dir: str | Path) -> tuple[list[Ingredient], Ingredient]:
    """(all ingredients, the init ingredient). Every file is checked before any conversion."""
    folder = Path(release_cfg.dir).expanduser()
    names = [f"model_{i}" for i in range(int(release_cfg.models))]
    hint = f"fetch them with: python scripts/download_checkpoints.py --out {folder}"
    if release_cfg.init not in names:
        raise BadInput(f"pool.init={release_cfg.init!r} is not one of model_0..model_{len(names) - 1}")
    missing = [n for n in names if not (folder / f"{n}.pt").is_file()]
    if missing:
        raise MissingInput(f"{len(missing)} released checkpoints missing from {folder} "
                           f"(e.g. {missing[:3]}); {hint}")
    record_path = folder / "sha256.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    hparams_path = folder / "hparam_info.json"
    hparams = json.loads(hparams_path.read_text()) if hparams_path.is_file() else {}
    sources = {}
    for name in names:
        path = folder / f"{name}.pt"
        digest = sha256_file(path)
        if name + ".pt" in record and record[name + ".pt"] != digest:
            raise BadInput(f"{path} does not match the sha256 recorded at download: truncated or modified; {hint}")
        sources[name] = (path, digest)
    ingredients = []
    for name, (path, digest) in sources.items():
        converted = convert_official_file(path, Path(cache_dir) / "release", expected=template_state,
                                          source_sha256=digest)
        ingredients.append(Ingredient(name, converted, {"hparams": hparams.get(name, {}), "source": str(path),
                                                        "source_sha256": digest}))
    return ingredients, ingredients[names.index(release_cfg.init)]


@dataclass
class Release(Pool):
    dir: str            # the folder scripts/download_checkpoints.py filled
    models: int = 72    # model_0 .. model_{models-1}
    init: str = "model_0"  # the shared init among them (the linear probe)

    def open(self, cfg, device) -> OpenPool:
        missing = [k for k in ("model", "data") if not cfg.get(k)]
        if missing:
            raise BadInput(f"the released pool needs {missing} in the config; use experiment=paper_vit_b32")
        held_out = cfg.data.get("held_out")
        if held_out is not None and not held_out.get("idxs_file"):
            # a seeded split of ImageNet train is ~98% images these models trained on
            raise BadInput("the released models were fine-tuned on ImageNet train minus the paper's held-out 2% "
                           "(imagenet_98_idxs.npy, fetched beside them by scripts/download_checkpoints.py); a seeded "
                           "data.held_out split would score them on images they trained on and steer greedy by it: "
                           "set data.held_out.idxs_file=<that file>, or use experiment=paper_vit_b32")
        run_cfg = OmegaConf.create({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")})
        model = build_classifier(run_cfg.model, run_cfg.data.num_classes, load_pretrained=False).to(device)
        ingredients, init = load_release_pool(self, model.state_dict(), cfg.paths.cache_dir)
        return OpenPool(ingredients, run_cfg, model, Path(self.dir).name, {}, Path(init.weights), init)
