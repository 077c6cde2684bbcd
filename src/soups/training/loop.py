"""One fine-tune: AdamW, cosine schedule with linear warmup, grad clipping, label smoothing, mixup."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from soups.distributed import SINGLE, Group, RankSlices, mean_over_ranks, unwrap, wrap
from soups.errors import BadInput
from soups.training.resume import load_train_state, save_train_state, training_settings
from soups.training.within_run import WithinRun
from soups.runtime import autocast


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run has failed (its weights are garbage)."""


def finite_mean_loss(pending: list[torch.Tensor], group: Group, step: int) -> float:
    """The mean of the losses since the last log (over all ranks: every rank stops alike)."""
    loss = mean_over_ranks(group, torch.stack(pending).mean()).item()
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"non-finite training loss ({loss}) by step {step}; lower lr or check the data")
    return loss


def make_optimizer(model: nn.Module, lr: float, wd: float, device: torch.device,
                   decay_1d: bool = False) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm parameters (1-d tensors) unless `decay_1d` (the official
    model-soups finetune.py decays every parameter)."""
    decay = [p for p in model.parameters() if p.requires_grad and (p.ndim >= 2 or decay_1d)]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2 and not decay_1d]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, **fast)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Update:
    """One optimizer update from a batch: forward under autocast, loss in fp32, backward (scaled for fp16),
    clip, step. Returns the (detached) loss."""
    model: nn.Module
    forward: Callable  # the model as the processes share it (DDP-wrapped, maybe compiled)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    cfg: object
    device: torch.device
    mixup: Mixup | None
    loss_fn: Callable = field(init=False)
    last_lr: float | None = field(init=False, default=None)

    def __post_init__(self):
        self.loss_fn = SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(
            label_smoothing=self.cfg.label_smoothing)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.cfg.model.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        targets = labels
        if self.mixup:
            images, targets = self.mixup(images, labels)
        with autocast(self.cfg.precision, self.device):
            logits = self.forward(images)
        loss = self.loss_fn(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # a no-op scale unless fp16
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) when fp16 gradients overflowed
        self.scaler.update()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the lr this update used (the curve's value)
        self.scheduler.step()
        return loss.detach()


def _update(model, total: int, cfg, num_classes: int, device, group: Group) -> Update:
    optimizer = make_optimizer(model, cfg.lr, cfg.wd, device, bool(cfg.get("wd_1d")))
    scheduler = cosine_with_warmup(optimizer, min(cfg.warmup_steps, total), total)
    forward = wrap(model, group, device)  # same parameters; saved weights keep plain names
    if cfg.get("compile"):
        forward = torch.compile(forward)
    mixup = (Mixup(mixup_alpha=cfg.mixup, label_smoothing=cfg.label_smoothing, num_classes=num_classes)
             if cfg.mixup > 0 else None)
    # fp16 needs loss scaling (small gradients underflow to 0 in fp16); bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    return Update(model, forward, optimizer, scheduler, scaler, cfg, device, mixup)


def finetune(model: nn.Module, dataset: Dataset, cfg, num_classes: int, device: torch.device,
             on_log: Callable[[dict], None] | None = None, log_every: int = 10,
             state_dir: Path | None = None, group: Group = SINGLE, within: WithinRun | None = None) -> list[dict]:
    """Trains `model` in place (BN in train mode); returns the logged loss/lr curve. With `state_dir`,
    the training state is saved there after every epoch (and every `state_every_steps` steps, if set) and a
    run finding one there goes on from it. Raises NonFiniteLoss on a NaN/inf loss, BadInput if one batch is
    more than the training set. Under torchrun (`group`), each process takes its slice of every batch.
    `within` (soups.training.within_run) keeps the EMA after every update and the checkpoints."""
    # Workers are not persistent: each epoch's order and worker seeds then follow from the generator's
    # state at its start, which is what a resumed run restores.
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = RankSlices(len(dataset), cfg.batch_size, group, generator)  # one process: shuffle + drop_last
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", generator=generator,
                        collate_fn=getattr(dataset, "collate", None))  # text: dynamic padding per batch
    if len(loader) == 0:
        raise BadInput(f"batch_size={cfg.batch_size} exceeds the {len(dataset)} training images")
    total = int(cfg.epochs) * len(loader)
    if within and within.keep and within.every > total:
        raise BadInput(f"checkpoint_every_steps={within.every} exceeds the run's {total} updates: no checkpoint "
                       f"would be kept (keep_checkpoints={within.keep})")
    update = _update(model, total, cfg, num_classes, device, group)
    history, step, pending, start_epoch = [], 0, [], 0
    settings = training_settings(cfg)
    resumed = state_dir and load_train_state(state_dir, model=model, optimizer=update.optimizer,
                                             scheduler=update.scheduler, generator=generator, scaler=update.scaler,
                                             settings=settings,
                                             ema=within.ema.module if within and within.ema else None)
    if resumed:
        start_epoch, step, history = resumed["epoch"], resumed["step"], resumed["history"]
        pending = [torch.tensor(v, device=device) for v in resumed["pending"]]
        batches.skip = resumed["batches_done"]
    every = int(cfg.get("state_every_steps") or 0)

    def save_state(epoch: int, batches_done: int, epoch_start: torch.Tensor) -> None:
        if pending:  # never save a state that has gone non-finite since the last log
            finite_mean_loss(pending, group, step)
        if state_dir and group.is_main:
            save_train_state(state_dir, model=model, optimizer=update.optimizer, scheduler=update.scheduler,
                             epoch_generator_state=epoch_start, epoch=epoch, batches_done=batches_done, step=step,
                             history=history, pending=[float(v) for v in pending], scaler=update.scaler,
                             settings=settings, ema=within.state_dict() if within else None)

    model.train()
    bar = tqdm(total=total, initial=step, desc="fine-tune", leave=False, disable=None)
    for epoch in range(start_epoch, int(cfg.epochs)):
        epoch_start, done = generator.get_state(), batches.skip  # the state this epoch's order comes from
        for images, labels in loader:
            pending.append(update(images, labels))
            step, done = step + 1, done + 1
            if within:
                within.after_step(model, step)
            if step % log_every == 0 or step == total:  # one host sync per log_every steps
                record = {"step": step, "epoch": epoch, "train_loss": finite_mean_loss(pending, group, step),
                          "lr": update.last_lr}
                pending = []
                history.append(record)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}")
                if on_log:
                    on_log(record)
            bar.update(1)
            if every and step % every == 0 and done < len(batches):  # mid-epoch; the epoch's end saves below
                save_state(epoch, done, epoch_start)
        if within:
            within.after_epoch(model, step)
        save_state(epoch + 1, 0, generator.get_state())
    bar.close()
    unwrap(model)
    return history
