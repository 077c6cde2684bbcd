"""The GPU half of the performance checks (scripts/gpu_check.sh runs it; ~5 minutes on one H100).

eval     ViT-B/32 evaluation from the uint8 store in bf16 (images/s; goal on an H100: >= 20,000), next to
         the compute bound (the same forward passes on batches already on the GPU) and the reference
         loop (PIL decode + transforms every pass, fp32, DataLoader workers)
train    ViT-B/32 training steps/s: `finetune` (bf16 autocast, fused AdamW, no per-step syncs) vs the
         fp32 reference loop, with the reference's time by phase
learned  a learned soup over 72 synthetic ViT-B/32 ingredients stacked in bf16 on the one GPU: peak
         GPU memory and time per epoch
Random weights throughout (speed does not depend on them). Prints one JSON line per result.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

from bench.common import machine, vit_b32, write_jpegs  # noqa: E402


def emit(row: dict, out: Path | None) -> None:
    print(json.dumps(row), flush=True)
    if out:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def check_eval(args, device) -> dict:
    from open_clip import image_transform
    from torch.utils.data import DataLoader

    from soups.data.folders import FileEvalSet, FileImages
    from soups.data.store import StoredEvalSet
    from soups.evaluation.evaluator import Evaluator

    tmp = Path(tempfile.mkdtemp(prefix="gpu-eval-"))
    paths = write_jpegs(tmp / "images", args.images)
    labels = torch.tensor([i % 10 for i in range(len(paths))])
    model, size, mean, std = vit_b32()
    model = model.to(device)
    transform = image_transform(size, is_train=False, mean=mean, std=std)
    stored = StoredEvalSet(FileEvalSet("gpu", paths, labels, transform, num_workers=args.workers), tmp / "store")
    start = time.perf_counter()
    stored.array
    build_s = time.perf_counter() - start
    evaluator = Evaluator({"val": stored, "test": stored}, args.batch_size, "bf16", device, progress=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def rate(one_pass, passes):
        one_pass()  # warm-up (kernels chosen, pages mapped)
        sync()
        start = time.perf_counter()
        for _ in range(passes):
            one_pass()
        sync()
        return len(paths) * passes / (time.perf_counter() - start)

    on_device = [x for x, _ in stored.batches(args.batch_size, device=device)]

    @torch.no_grad()
    def compute_bound():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            for x in on_device:
                model(x)

    @torch.no_grad()
    def reference():
        loader = DataLoader(FileImages(paths, labels, transform), batch_size=args.batch_size, num_workers=args.workers)
        for x, _ in loader:
            model(x.to(device))

    project = rate(lambda: evaluator.logits(model, "val"), args.passes)
    bound = rate(compute_bound, args.passes)
    ref = rate(reference, 1)
    return {"check": "eval", "model": "ViT-B/32", "images": len(paths), "batch_size": args.batch_size,
            "project_bf16_img_s": project, "compute_bound_bf16_img_s": bound, "reference_fp32_img_s": ref,
            "fraction_of_compute_bound": project / bound, "speedup": project / ref, "store_build_s": build_s,
            "goal_h100_img_s": 20000}


def check_train(args, device) -> dict:
    from bench.training import compare

    return {"check": "train", "model": "ViT-B/32",
            **compare("vit_b32", args.train_batch_size, args.train_steps, "bf16", device, args.workers)}


def check_learned(args, device) -> dict:
    from soups.data.images import EvalSet, ImageArray
    from soups.pools.ingredient import Ingredient
    from soups.recipes.learned import LearnedSoup

    model, size, mean, std = vit_b32()
    model = model.to(device)
    init = {k: v.to(device) for k, v in model.state_dict().items()}

    class Context:  # synthetic ingredients: the init plus seeded noise, made on the GPU when loaded
        precision = "bf16"

        def __init__(self):
            self.model, self.device = model, device

        def held_out_set(self):
            return held_out

        def load(self, ingredient):
            gen = torch.Generator(device).manual_seed(int(ingredient.name))
            return {k: v + 1e-3 * torch.randn(v.shape, generator=gen, device=device) if v.is_floating_point() else v
                    for k, v in init.items()}

        def digest(self, ingredient):
            return ingredient.name

        def recall(self, key):
            return None

        def remember(self, key, record):
            pass

    gen = torch.Generator().manual_seed(0)
    n = args.learned_images
    held_out = EvalSet(ImageArray("held_out", torch.randint(0, 256, (n, size, size, 3), generator=gen,
                                                            dtype=torch.uint8), torch.arange(n) % 1000), size, mean, std)
    pool = [Ingredient(str(i), Path(f"synthetic_{i}"), {}) for i in range(args.ingredients)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = LearnedSoup(epochs=1, batch_size=args.batch_size, ingredient_dtype="bfloat16")(pool, Context())
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    total = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    return {"check": "learned", "ingredients": args.ingredients, "held_out_images": n,
            "peak_gpu_gib": peak, "gpu_gib": total, "seconds_incl_stacking_and_merge": seconds,
            "learned_loss": result.record.get("held_out_loss")}


CHECKS = {"eval": check_eval, "train": check_train, "learned": check_learned}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CHECKS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--train-batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--ingredients", type=int, default=72)
    parser.add_argument("--learned-images", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is for a GPU machine (--device cpu runs a small smoke version)")
    emit({"command": " ".join(["python", *sys.argv]), "machine": machine(), "date": time.strftime("%Y-%m-%d")}, args.out)
    scratch = Path(tempfile.mkdtemp(prefix="soups-benchmark-"))
    tempfile.tempdir = str(scratch)  # every benchmark's files (JPEGs, ingredients: GBs) go here and are removed
    try:
        for name in args.only.split(","):
            start = time.perf_counter()
            row = CHECKS[name.strip()](args, device)
            emit({**row, "wall_s": time.perf_counter() - start}, args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
