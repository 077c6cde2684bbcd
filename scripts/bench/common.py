"""What every benchmark shares: the machine's description, real JPEG files, the two models, timers,
and peak memory of a child process."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
CONF = ROOT / "conf"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}; torch {torch.__version__}"


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = rng.integers(200, photo.shape[0]), rng.integers(260, photo.shape[1])
        top, left = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
        view = Image.fromarray(photo[top:top + h, left:left + w]).resize((500, 375), Image.BICUBIC)
        path = folder / f"n{i % 10:08d}" / f"img_{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        view.save(path, quality=90)
        paths.append(str(path))
    return paths


def vit_b32():
    import open_clip

    from soups.models.classifier import ImageClassifier

    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    return ImageClassifier(clip.visual, clip.visual.output_dim, 1000, normalize_features=True).eval(), 224, \
        (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def demo_model():
    from omegaconf import OmegaConf

    from soups.models.classifier import build_classifier

    cfg = OmegaConf.load(CONF / "model" / "efficientnet_lite0.yaml")
    model = build_classifier(cfg, 10, load_pretrained=False).eval()
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model, int(cfg.image_size), tuple(cfg.mean), tuple(cfg.std)


@torch.no_grad()
def timed_passes(passes: int, one_pass) -> list[float]:
    out = []
    for _ in range(passes):
        start = time.perf_counter()
        one_pass()
        out.append(time.perf_counter() - start)
    return out



PEAK_MB = """
import re
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, kept across exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
"""


def run_child(code: str) -> str:
    """stdout of `code` run in a fresh interpreter with src/ and scripts/ importable and `peak_mb()` defined."""
    prelude = f"import sys\nsys.path[:0] = [{str(SRC)!r}, {str(ROOT / 'scripts')!r}]\n" + PEAK_MB
    done = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return done.stdout
