"""Speed and memory of evaluation and souping, each measured side by side with a reference in the same
run; prints ratios (results go to BENCHMARKS.md, never into tests).

    python scripts/benchmark.py                      # every benchmark
    python scripts/benchmark.py --only eval --images 1000 --passes 3
    python scripts/benchmark.py --only memory

eval    repeated evaluation passes (what greedy soup does): the project's evaluator on the uint8 store
        vs a reference loop in the official style (PIL decode + torchvision transforms on every pass,
        fp32, DataLoader workers), and the compute-bound rate (the same forward passes on tensors
        already in memory). Images: real photographs (scikit-learn's two sample photos), cut into
        random 500x375 views and written as JPEG files.
memory  peak RSS of a uniform and a greedy soup over K = 4 and K = 16 ingredients (ViT-B/32 image
        towers, random weights; each soup in a fresh process).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


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

    from soups.models import ImageClassifier

    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    return ImageClassifier(clip.visual, clip.visual.output_dim, 1000, normalize_features=True).eval(), 224, \
        (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def demo_model():
    from omegaconf import OmegaConf

    from soups.models import build_classifier

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "efficientnet_lite0.yaml")
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


def bench_eval(args) -> list[dict]:
    from open_clip import image_transform
    from torch.utils.data import DataLoader

    from soups.data.imagenet import FileEvalSet, FileImages
    from soups.data.store import StoredEvalSet
    from soups.evaluate import Evaluator

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    paths = write_jpegs(tmp / "images", args.images)
    labels = torch.tensor([i % 10 for i in range(len(paths))])
    results = []
    for model_name, build in (("ViT-B/32 (random init)", vit_b32), ("demo EfficientNet-Lite0", demo_model)):
        model, size, mean, std = build()
        transform = image_transform(size, is_train=False, mean=mean, std=std)

        def reference():  # the official style: decode + transform every pass, fp32, workers
            loader = DataLoader(FileImages(paths, labels, transform), batch_size=args.batch_size,
                                num_workers=args.workers)
            for images, _ in loader:
                model(images)

        stored = StoredEvalSet(FileEvalSet("bench", paths, labels, transform, num_workers=args.workers),
                               tmp / f"cache-{size}")
        evaluator = Evaluator({"val": stored, "test": stored}, args.batch_size, "fp32", torch.device("cpu"),
                              progress=False)
        build_start = time.perf_counter()
        stored.array  # decoded once (counted separately: greedy's first pass pays it)
        build_seconds = time.perf_counter() - build_start
        in_memory = [x for x, _ in stored.batches(args.batch_size)]  # compute bound: tensors ready

        def project():
            evaluator.logits(model, "val")

        def compute_bound():
            for x in in_memory:
                model(x)

        ref = timed_passes(args.passes, reference)
        ours = timed_passes(args.passes, project)
        bound = timed_passes(args.passes, compute_bound)
        n = len(paths)
        row = {"model": model_name, "images": n, "passes": args.passes, "image_size": size,
               "reference_img_s": n * args.passes / sum(ref), "project_img_s": n * args.passes / sum(ours),
               "compute_bound_img_s": n * args.passes / sum(bound), "store_build_s": build_seconds}
        row["speedup"] = row["project_img_s"] / row["reference_img_s"]
        row["speedup_incl_build"] = sum(ref) / (sum(ours) + build_seconds)
        row["fraction_of_compute_bound"] = row["project_img_s"] / row["compute_bound_img_s"]
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


MEMORY_CHILD = """
import re, sys
sys.path.insert(0, {src!r})
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, kept across exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
import torch
from soups.averaging import RunningAverage, average
from soups.io import load_weights
paths = {paths!r}
base = peak_mb()
if {recipe!r} == "uniform":
    average(load_weights(p) for p in paths)
else:  # greedy's memory pattern: accumulator + one candidate, peeked, then added or dropped
    running = RunningAverage()
    running.add(load_weights(paths[0]))
    for i, p in enumerate(paths[1:]):
        candidate = load_weights(p)
        peek = running.peek_with(candidate)
        del peek
        if i % 2 == 0:
            running.add(candidate)
        del candidate
    running.result()
print(peak_mb(), base)
"""


def bench_memory(args) -> list[dict]:
    from soups.io import atomic_save_safetensors

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    model, *_ = vit_b32()
    state = model.state_dict()
    size_mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    paths = []
    for i in range(16):
        gen = torch.Generator().manual_seed(i)
        atomic_save_safetensors({k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                                 for k, v in state.items()}, tmp / f"ingredient_{i}.safetensors")
        paths.append(str(tmp / f"ingredient_{i}.safetensors"))
    del model, state
    results = []
    for recipe in ("uniform", "greedy"):
        peaks = {}
        for k in (4, 16):
            code = MEMORY_CHILD.format(src=str(ROOT / "src"), paths=paths[:k], recipe=recipe)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            peaks[k] = tuple(map(float, out.split()))
        row = {"recipe": recipe, "ingredient_mb": round(size_mb), "peak_rss_mb_k4": round(peaks[4][0]),
               "peak_rss_mb_k16": round(peaks[16][0]), "ratio_k16_k4": peaks[16][0] / peaks[4][0],
               "process_baseline_mb": round(peaks[4][1])}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="eval,memory", help="comma-separated: eval, memory")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in ("eval", "memory")]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected eval, memory")
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(report), flush=True)
    if "eval" in wanted:
        report["eval"] = bench_eval(args)
    if "memory" in wanted:
        report["memory"] = bench_memory(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
