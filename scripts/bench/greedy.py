"""Greedy soup wall time over K = 8 real fine-tunes (the demo model on MNIST digits, each fine-tuned
for one epoch from one shared initialization with its own learning rate and seed). The held-out and
BN-statistics images are JPEG files (digits upscaled to 384 px: an ImageNet-like decode cost).

project  GreedySoup through the soup job's scorer: uint8 store (built inside the timed run), streamed
         float32 averaging, exact early rejection.
naive    the official style: running soup in memory, each candidate loaded from disk and averaged,
         BN statistics and held-out accuracy through a PIL-decoding DataLoader, every image, every time.
Both rank by the same individual held-out accuracies (measured beforehand, as the paper's pipeline
does) and must choose the same ingredients. Each is timed `--repeats` times, alternately; medians."""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.common import CONF

LEARNING_RATES = (5e-4, 1e-3, 2e-3, 4e-3)
SEEDS = (0, 1)


def digit_jpegs(folder: Path, images, labels, size: int = 384) -> list[str]:
    paths = []
    for i, (img, label) in enumerate(zip(images, labels.tolist())):
        path = folder / f"{label:02d}" / f"{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.numpy()).convert("RGB").resize((size, size), Image.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def fine_tunes(model_cfg, data, folder: Path) -> list[Path]:
    from omegaconf import OmegaConf

    from soups.io.files import atomic_save_safetensors
    from soups.models.classifier import build_classifier
    from soups.training.loop import finetune

    torch.manual_seed(0)
    model = build_classifier(model_cfg, 10, cache_dir=folder / "cache")  # channels_last per config
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train = data.train_set(None, 1.0)
    paths = []
    for lr in LEARNING_RATES:
        for seed in SEEDS:
            model.load_state_dict(init)
            torch.manual_seed(seed)
            cfg = OmegaConf.create({"batch_size": 64, "num_workers": 0, "seed": seed, "mixup": 0.0,
                                    "label_smoothing": 0.0, "epochs": 1, "lr": lr, "wd": 0.01, "warmup_steps": 2,
                                    "grad_clip": 1.0, "model": model_cfg, "precision": "fp32"})
            finetune(model, train, cfg, 10, torch.device("cpu"))
            paths.append(folder / f"lr{lr}_seed{seed}.safetensors")
            atomic_save_safetensors(model.state_dict(), paths[-1])
    return paths


def naive_greedy(paths, held_out, model, loader_of):
    """The official-style loop; returns (chosen indices, held-out accuracy, held-out images forwarded)."""
    from safetensors.torch import load_file
    from torch.optim.swa_utils import update_bn

    ranked = sorted(range(len(paths)), key=lambda i: -held_out[i])
    soup, n, best, chosen, forwarded = load_file(str(paths[ranked[0]])), 1, held_out[ranked[0]], [ranked[0]], 0
    for i in ranked[1:]:
        candidate = load_file(str(paths[i]))
        mixed = {k: v * (n / (n + 1)) + candidate[k] * (1 / (n + 1)) if v.is_floating_point() else v
                 for k, v in soup.items()}
        model.load_state_dict(mixed)
        with torch.no_grad():
            update_bn((x for x, _ in loader_of("bn")), model)
            model.eval()
            correct = total = 0
            for x, y in loader_of("val"):
                correct += int((model(x).argmax(-1) == y).sum())
                total += len(y)
        forwarded += total
        score = 100.0 * correct / total
        if score >= best:
            soup, n, best = mixed, n + 1, score
            chosen.append(i)
    return chosen, best, forwarded


PHASES = {  # (file, function) of the project's greedy soup -> phase
    ("store.py", "_build"): "decode into the store (once)",
    ("evaluator.py", "recalibrate_bn"): "BN statistics of candidates",
    ("evaluator.py", "measure"): "held-out passes",
    ("files.py", "load_weights"): "loading weights",
    ("averaging.py", "peek_with"): "averaging",
    ("averaging.py", "add"): "averaging",
    ("files.py", "state_digest"): "hashing weights (cache keys)",
}


def where_the_time_goes(run) -> dict:
    """One more project run under cProfile: seconds per phase (cumulative time of its entry function)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(run)
    total = time.perf_counter() - start
    phases = {"total": total}
    for (file, line, function), row in pstats.Stats(profiler).stats.items():
        phase = PHASES.get((Path(file).name, function))
        if phase:
            phases[phase] = phases.get(phase, 0.0) + row[3]  # cumulative seconds
    phases["other"] = total - sum(v for k, v in phases.items() if k != "total")
    return {k: round(v, 2) for k, v in phases.items()}


def bench_greedy(args) -> list[dict]:
    from omegaconf import OmegaConf
    from open_clip import image_transform
    from torch.utils.data import DataLoader

    from soups.data import GivenSets, build_data
    from soups.data.folders import FileEvalSet, FileImages
    from soups.data.store import StoredEvalSet
    from soups.evaluation.evaluator import near_equal_sizes
    from soups.evaluation.scorer import EvalSettings, PoolScorer
    from soups.models.classifier import build_classifier
    from soups.pools import OpenPool
    from soups.pools.ingredient import Ingredient
    from soups.recipes.greedy import GreedySoup

    tmp = Path(tempfile.mkdtemp(prefix="bench-greedy-"))
    model_cfg = OmegaConf.load(CONF / "model" / "efficientnet_lite0.yaml")
    data = build_data(OmegaConf.load(CONF / "data" / "mnist.yaml"),
                      model_cfg)
    per_class = torch.cat([(data.val.labels == c).nonzero().flatten()[:args.images // 10] for c in range(10)])
    files = {"val": (digit_jpegs(tmp / "val", data.val.images[per_class], data.val.labels[per_class]),
                     data.val.labels[per_class]),
             "bn": (digit_jpegs(tmp / "bn", data.train.images, data.train.labels), data.train.labels)}
    transform = image_transform(model_cfg.image_size, is_train=False, mean=tuple(model_cfg.mean),
                                std=tuple(model_cfg.std))
    start = time.perf_counter()
    paths = fine_tunes(model_cfg, data, tmp)
    print(f"# {len(paths)} fine-tunes in {time.perf_counter() - start:.0f} s", flush=True)

    def scorer_over(cache_dir: Path):
        """The soup job's scorer, built the one way it is built (a pool + evaluation settings), over the
        benchmark's JPEG sets stored under `cache_dir`."""
        sets = {n: StoredEvalSet(FileEvalSet(n, p, y, transform, num_workers=args.workers), cache_dir)
                for n, (p, y) in files.items()}
        run_cfg = OmegaConf.create({"data": {"name": "bench-jpegs", "shifts": {"names": []}}, "model": model_cfg})
        pool = OpenPool([], run_cfg, build_classifier(model_cfg, 10, load_pretrained=False), "bench", {}, None)
        settings = EvalSettings(batch_size=args.batch_size, cache_logits=False, bn_recalibration=True,
                                cache_dir=str(cache_dir))
        return PoolScorer(pool, settings, torch.device("cpu"), GivenSets({"val": sets["val"], "test": sets["val"]},
                                                                         sets["bn"]), progress=False)

    ranking = scorer_over(tmp / "ranking")  # individual held-out accuracies (not timed, as in the paper)
    held_out = [ranking.individual_metrics(Ingredient(p.stem, p, {}))["val"] for p in paths]
    pool = [Ingredient(p.stem, p, {"metrics": {"val": acc}}) for p, acc in zip(paths, held_out)]

    model = build_classifier(model_cfg, 10, load_pretrained=False)
    loaders = {n: DataLoader(FileImages(p, y, transform), batch_size=args.batch_size, num_workers=args.workers)
               for n, (p, y) in files.items() if n != "bn"}
    # BN statistics from the same near-equal batches as the project's (update_bn weighs each batch alike)
    sizes = near_equal_sizes(len(files["bn"][0]), args.batch_size)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    loaders["bn"] = DataLoader(FileImages(*files["bn"], transform), num_workers=args.workers,
                               batch_sampler=[list(range(a, a + n)) for a, n in zip(starts, sizes)])
    timings = {"project": [], "naive": []}
    for repeat in range(args.repeats):  # alternated, so drifts in the machine's speed hit both alike
        start = time.perf_counter()
        chosen, best, naive_forwarded = naive_greedy(paths, held_out, model, loaders.__getitem__)
        timings["naive"].append(time.perf_counter() - start)
        start = time.perf_counter()
        scorer = scorer_over(tmp / f"timed-{repeat}")  # cold: the store is built inside the timed run
        result = GreedySoup()(pool, scorer)
        timings["project"].append(time.perf_counter() - start)
    project_s, naive_s = statistics.median(timings["project"]), statistics.median(timings["naive"])

    def profiled():
        scorer = scorer_over(tmp / "profiled")
        scorer.held_out_set().array, scorer.bn_sample.array  # the stores first: no phase contains another
        GreedySoup()(pool, scorer)

    profile = where_the_time_goes(profiled)
    project_chosen = [paths.index(i.weights) for i in result.ingredients]
    row = {"k": len(paths), "held_out_images": len(files["val"][0]), "bn_images": len(files["bn"][0]),
           "individual_held_out": [round(a, 2) for a in held_out], "project_s": project_s, "naive_s": naive_s,
           "speedup": naive_s / project_s, "timings_s": timings, "project_chosen": project_chosen, "naive_chosen": chosen,
           "same_choices": sorted(project_chosen) == sorted(chosen),
           "project_held_out": result.record["held_out"], "naive_held_out": best,
           "project_held_out_images_forwarded": scorer.images_forwarded,
           "naive_held_out_images_forwarded": naive_forwarded, "project_profile_s": profile}
    print(json.dumps(row), flush=True)
    return [row]
