"""`pool.release`: the paper's 72 released ViT-B/32 checkpoints (model_0 = the linear-probe init, 71
fine-tunes of it), fetched by scripts/download_checkpoints.py and converted once to safetensors."""
from __future__ import annotations

import json
from pathlib import Path

from soups.checkpoints import convert_official_file
from soups.errors import BadInput, MissingInput
from soups.files import sha256_file
from soups.ingredient import Ingredient


def load_release_pool(release_cfg, template_state: dict, cache_dir: str | Path) -> tuple[list[Ingredient], Ingredient]:
    """(all ingredients, the init ingredient). Every file is checked before any conversion."""
    folder = Path(release_cfg.dir).expanduser()
    names = [f"model_{i}" for i in range(int(release_cfg.models))]
    hint = f"fetch them with: python scripts/download_checkpoints.py --out {folder}"
    if release_cfg.init not in names:
        raise BadInput(f"pool.release.init={release_cfg.init!r} is not one of model_0..model_{len(names) - 1}")
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
