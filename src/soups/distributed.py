"""Data-parallel fine-tuning under torchrun (`torchrun --nproc_per_node=N src/finetune.py ...`) or as a
multi-task submitit job (`launcher=slurm hydra.launcher.tasks_per_node=N`).

Each process trains on its slice of every global batch (the batches a single process would draw, in the
same order), DDP averages the gradients, so N processes take the steps one process would (up to the
order of floating-point sums). NCCL on GPUs, gloo on CPU. Only rank 0 logs and writes. Evaluation is
sharded: each rank forwards a contiguous part of every set; counts are summed over the ranks and logits
gathered on rank 0 (`shard_rows`, `sum_over_ranks`, `gather_shards`). BatchNorm layers are synchronized on GPUs
(SyncBatchNorm); on CPU torch has no SyncBatchNorm, so BN statistics are per process there.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from soups.errors import BadInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = Group()


def _env_from_submitit() -> None:
    """A job with several tasks under submitit (launcher=slurm or submitit_local, tasks_per_node > 1):
    torch's env:// variables (rank, world size, master address) from the job's environment."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def join(device: torch.device) -> tuple[Group, torch.device]:
    """The process group torchrun (or a multi-task submitit job) set up in the environment, or a single
    process; and this rank's device."""
    _env_from_submitit()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE, device
    group = Group(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s", group.rank, world_size, device)
    return group, device


def leave(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def share(group: Group, value):
    """Rank 0's `value` on every rank (e.g. its run dir: each torchrun process composes its own)."""
    if not group.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(group: Group, value: torch.Tensor) -> torch.Tensor:
    if not group.active:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / group.world_size


def sum_over_ranks(group: Group, count: int) -> int:
    if not group.active:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(total)
    return int(total.item())


def shard_rows(n: int, group: Group) -> range:
    """This rank's contiguous part of 0..n-1 (sizes differ by at most one; all of it in one process)."""
    return range(n * group.rank // group.world_size, n * (group.rank + 1) // group.world_size)


def gather_shards(group: Group, part: torch.Tensor, n: int) -> torch.Tensor | None:
    """Every rank's `part` (its `shard_rows(n)` rows, CPU) concatenated in rank order: on rank 0; None
    on the others (only rank 0 writes)."""
    if not group.active:
        return part
    sizes = [len(shard_rows(n, Group(r, group.world_size))) for r in range(group.world_size)]
    padded = part.new_zeros((max(sizes), *part.shape[1:]), device=_comm_device())
    padded[:len(part)] = part.to(padded.device)
    parts = [torch.empty_like(padded) for _ in sizes] if group.is_main else None
    dist.gather(padded, parts, dst=0)
    return torch.cat([p[:size].cpu() for p, size in zip(parts, sizes)]) if group.is_main else None


def _comm_device() -> torch.device:
    """NCCL exchanges tensors on the rank's GPU; gloo on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def wrap(model: nn.Module, group: Group, device: torch.device) -> nn.Module:
    """What the training loop calls: the model itself, or DDP around it (same parameters). On GPUs its
    BatchNorm layers are SyncBatchNorm until `unwrap`."""
    if not group.active:
        return model
    if device.type == "cuda":
        sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


_ORIGINALS = "_batchnorm_before_sync"  # where sync_batchnorm keeps the layers it replaced


def sync_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm layer of `model` (not the model itself) becomes its synchronized twin, in place,
    holding the same tensors; timm's BatchNormAct2d keeps its activation (timm's converter)."""
    from timm.layers import convert_sync_batchnorm

    originals = {name: m for name, m in model.named_modules()
                 if name and isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for name, module in model.named_children():
        setattr(model, name, convert_sync_batchnorm(module))
    model.__dict__[_ORIGINALS] = originals


def unwrap(model: nn.Module) -> None:
    """After training, undoes `sync_batchnorm`: the original layers again (their tensors were trained in
    place), so BN recalibration and evaluation run per rank while the group is still up (a synchronized
    layer in train mode would pool the ranks' statistics)."""
    for name, original in model.__dict__.pop(_ORIGINALS, {}).items():
        parent_name, _, child = name.rpartition(".")
        original.train(model.get_submodule(name).training)
        setattr(model.get_submodule(parent_name), child, original)


class RankSlices(Sampler):
    """Batches for one rank: each global batch of the single-process order (a permutation drawn from
    `generator`, as DataLoader(shuffle=True, drop_last=True, generator=...) draws it), cut into
    `world_size` slices. In one process: exactly that DataLoader's batches, with resumable position."""

    def __init__(self, n: int, batch_size: int, group: Group, generator: torch.Generator):
        if batch_size % group.world_size:
            raise BadInput(f"batch_size={batch_size} must split evenly over {group.world_size} processes")
        self.n, self.batch_size, self.group, self.generator = n, batch_size, group, generator
        self.per_rank = batch_size // group.world_size
        self.skip = 0  # batches of the next epoch already done (a run resumed mid-epoch); reset after it

    def __len__(self):
        return self.n // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator)
        start = self.group.rank * self.per_rank
        first, self.skip = self.skip, 0
        for b in range(first, len(self)):
            yield order[b * self.batch_size + start: b * self.batch_size + start + self.per_rank].tolist()
        # RandomSampler then draws its (empty) `num_samples % n` tail, advancing the generator once more;
        # drawn here too, so the next epoch's order is one process's next order as well (tested)
        torch.randperm(self.n, generator=self.generator)
