"""Repeated evaluation passes (what greedy soup does): the project's evaluator on the uint8 store vs a
reference loop in the official style (PIL decode + torchvision transforms on every pass, fp32,
DataLoader workers), and the compute-bound rate (the same forward passes on tensors already in memory)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from bench.common import demo_model, timed_passes, vit_b32, write_jpegs
from soups.runtime import autocast


def bench_eval(args) -> list[dict]:
    from open_clip import image_transform
    from torch.utils.data import DataLoader

    from soups.data.folders import FileEvalSet, FileImages
    from soups.data.store import StoredEvalSet
    from soups.evaluation.evaluator import Evaluator

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
        evaluator = Evaluator({"val": stored, "test": stored}, args.batch_size, args.precision, torch.device("cpu"),
                              progress=False)
        build_start = time.perf_counter()
        stored.array  # decoded once (counted separately: greedy's first pass pays it)
        build_seconds = time.perf_counter() - build_start
        in_memory = [x for x, _ in stored.batches(args.batch_size)]  # compute bound: tensors ready

        def project():
            evaluator.logits(model, "val")

        def compute_bound():
            with autocast(args.precision, torch.device("cpu")):  # under timed_passes' no_grad, as the evaluator
                for x in in_memory:
                    model(x)

        ref = timed_passes(args.passes, reference)
        ours = timed_passes(args.passes, project)
        bound = timed_passes(args.passes, compute_bound)
        n = len(paths)
        row = {"model": model_name, "images": n, "passes": args.passes, "image_size": size, "precision": args.precision,
               "reference_img_s": n * args.passes / sum(ref), "project_img_s": n * args.passes / sum(ours),
               "compute_bound_img_s": n * args.passes / sum(bound), "store_build_s": build_seconds}
        row["speedup"] = row["project_img_s"] / row["reference_img_s"]
        row["speedup_incl_build"] = sum(ref) / (sum(ours) + build_seconds)
        row["fraction_of_compute_bound"] = row["project_img_s"] / row["compute_bound_img_s"]
        results.append(row)
        print(json.dumps(row), flush=True)
    return results
