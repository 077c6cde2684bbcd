"""Training-step throughput: the project's `finetune` loop vs an fp32 reference loop in the official
style (contiguous tensors, torch's default AdamW, `loss.item()` every step, an unpinned DataLoader). Same
model, data, batch size and steps; the first steps (warm-up, any compilation) are not counted. The
reference is timed phase by phase (data, forward, backward, optimizer): where its time goes bounds
what any loop can gain on the same device."""
from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from bench.common import CONF

SKIP = 5  # steps not counted


def exactly(dataset, batch_size: int, steps: int) -> Subset:
    """The first images, cycled if needed: one epoch of exactly SKIP + `steps` batches."""
    return Subset(dataset, [i % len(dataset) for i in range((SKIP + steps) * batch_size)])


def project_steps_per_s(model, dataset, model_cfg, batch_size: int, steps: int, precision: str,
                        device=torch.device("cpu"), workers: int = 0) -> float:
    from omegaconf import OmegaConf

    from soups.training.loop import finetune

    dataset = exactly(dataset, batch_size, steps)
    cfg = OmegaConf.create({"batch_size": batch_size, "num_workers": workers, "seed": 0, "mixup": 0.0,
                            "label_smoothing": 0.0, "epochs": 1, "lr": 1e-4, "wd": 0.1, "warmup_steps": 2,
                            "grad_clip": 1.0, "model": model_cfg, "precision": precision})
    stamps = {}
    finetune(model.to(device), dataset, cfg, 10, device, log_every=SKIP,
             on_log=lambda r: stamps.setdefault(r["step"], time.perf_counter()))
    last = max(stamps)
    return (last - SKIP) / (stamps[last] - stamps[SKIP])


def reference_profile(model, dataset, batch_size: int, steps: int, device=torch.device("cpu"), workers: int = 0) -> dict:
    """Phases are timed with a device sync at each boundary (the reference syncs every step anyway)."""
    model.to(device).train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loader = DataLoader(exactly(dataset, batch_size, steps), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)  # torch's default implementation
    phases, done = dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0), 0
    previous_end = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        sync()
        loaded = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        sync()
        forward = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        sync()
        backward = time.perf_counter()
        optimizer.step()
        loss.item()  # the per-step host sync of a printed loss
        end = time.perf_counter()
        if done >= SKIP:
            for name, seconds in zip(phases, (loaded - previous_end, forward - loaded, backward - forward,
                                              end - backward)):
                phases[name] += seconds
        done, previous_end = done + 1, end
    total = sum(phases.values())
    return {"steps_per_s": steps / total, "share": {k: round(v / total, 3) for k, v in phases.items()}}


MODELS = {  # name: (model config, batch size, counted steps)
    "demo EfficientNet-Lite0 at 64 px": ("efficientnet_lite0", 64, 25),
    "ViT-B/32 at 224 px (random init)": ("vit_b32", 16, 10),
}


def compare(config: str, batch_size: int, steps: int, precision: str, device=torch.device("cpu"),
            workers: int = 0) -> dict:
    """The fp32 reference loop and `finetune` in `precision` on the same model config (random init),
    the same MNIST training digits and the same steps."""
    from omegaconf import OmegaConf

    from soups.data import build_data
    from soups.models.classifier import build_classifier

    model_cfg = OmegaConf.load(CONF / "model" / f"{config}.yaml")
    data = build_data(OmegaConf.load(CONF / "data" / "mnist.yaml"),
                      model_cfg)
    train = data.train_set(None, 1.0)

    def fresh_model():
        torch.manual_seed(0)
        return build_classifier(model_cfg, 10, load_pretrained=False)

    reference = reference_profile(fresh_model().to(memory_format=torch.contiguous_format), train, batch_size, steps,
                                  device, workers)
    ours = project_steps_per_s(fresh_model(), train, model_cfg, batch_size, steps, precision, device, workers)
    return {"batch_size": batch_size, "steps": steps, "precision": precision,
            "channels_last": bool(model_cfg.get("channels_last")), "reference_fp32_steps_per_s": reference["steps_per_s"],
            "project_steps_per_s": ours, "speedup": ours / reference["steps_per_s"],
            "reference_time_share": reference["share"]}


def bench_training(args) -> list[dict]:
    results = []
    for label, (config, batch_size, steps) in MODELS.items():
        row = {"model": label, **compare(config, batch_size, steps, args.precision)}  # channels_last per config
        results.append(row)
        print(json.dumps(row), flush=True)
    return results
