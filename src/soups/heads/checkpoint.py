"""Start every fine-tune from given weights: a project checkpoint (.safetensors: a run's, a soup's or an
init's model.safetensors) or an official one (e.g. model_0.pt, the paper's linear-probe init)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from soups.io.checkpoints import convert_official_file
from soups.errors import BadInput
from soups.io.files import load_weights, sha256_file
from soups.heads import Head
from soups.models.classifier import build_classifier


@dataclass
class Checkpoint(Head):
    path: str

    def __call__(self, cfg, data, device):
        model = build_classifier(cfg.model, cfg.data.num_classes, load_pretrained=False).to(device)
        path = Path(self.path).expanduser()
        if path.suffix != ".safetensors":
            path = convert_official_file(path, Path(cfg.paths.cache_dir) / "release", expected=model.state_dict())
        state, expected = load_weights(path), model.state_dict()
        wrong = sorted(set(state) ^ set(expected))
        wrong += [k for k in state if k in expected and state[k].shape != expected[k].shape]
        if wrong:
            raise BadInput(f"head.path={path} does not fit model={cfg.model.name} with {cfg.data.num_classes} classes "
                           f"({len(wrong)} tensors missing, extra or of another shape, e.g. {wrong[:3]}): weights of "
                           f"another architecture or dataset?")
        model.load_state_dict(state, strict=True)
        return model, {"path": str(self.path), "sha256": sha256_file(path)}
