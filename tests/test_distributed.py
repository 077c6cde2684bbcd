"""torchrun data parallelism on CPU: 2 gloo processes take the steps one process takes, and evaluate
a model in shards to the single-process result."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from conftest import ROOT, compose_cfg
from soups.data import build_data
from soups.distributed import Group, gather_shards, shard_rows, sum_over_ranks, sync_batchnorm, unwrap
from soups.eval_cache import EvaluationCache, hash_ids
from soups.evaluate import Evaluator
from soups.io import read_json
from soups.models import build_classifier
from test_resume import ENV, finetune_command

# LayerNorm model (torch has no SyncBatchNorm on CPU), no random augmentation: the same steps exactly
SETTINGS = ["model=tiny_vit", "epochs=2", "randaug=null", "mixup=0.0", "logger=none", "threads=1"]
TOLERANCE = 1e-5  # gradients are summed across processes in another order than within one


def test_two_gloo_processes_end_with_the_weights_of_one_process(tmp_path):
    single = tmp_path / "single"
    subprocess.run(finetune_command(tmp_path, *SETTINGS, f"hydra.run.dir={single}"), env=ENV, check=True,
                   capture_output=True)
    command = finetune_command(tmp_path, *SETTINGS)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *command[1:]]
    done = subprocess.run(torchrun, env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "logs" / "finetune" / "runs").iterdir())
    assert len(runs) == 1  # one run dir: rank 1 worked in rank 0's and left no folder of its own
    a, b = load_file(str(single / "model.safetensors")), load_file(str(runs[0] / "model.safetensors"))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < TOLERANCE, f"largest weight difference {worst:.2e}"
    one, two = read_json(single / "run.json"), read_json(runs[0] / "run.json")
    assert [r["step"] for r in one["history"]] == [r["step"] for r in two["history"]]
    assert all(abs(x["train_loss"] - y["train_loss"]) < 1e-4 for x, y in zip(one["history"], two["history"]))
    assert abs(one["metrics"]["val"] - two["metrics"]["val"]) <= 1.0
    # the 2 ranks evaluated halves of every set: one process evaluating the same weights agrees
    cfg = compose_cfg("finetune", tmp_path, finetune_command(tmp_path, *SETTINGS)[2:])  # the runs' overrides
    data = build_data(cfg.data, cfg.shifts, cfg.model, None)
    model = build_classifier(cfg.model, cfg.data.num_classes, load_pretrained=False)
    model.load_state_dict(b)
    evaluator = Evaluator(data.eval_sets(), cfg.eval_batch_size, cfg.precision, torch.device("cpu"), progress=False)
    logits = evaluator.all_logits(model)
    assert evaluator.metrics_of(logits) == two["metrics"]
    cache = EvaluationCache(tmp_path / "cache", two["evaluation_key"])
    for name, eval_set in evaluator.sets.items():  # the gathered logits, in the sets' order
        gathered = cache.get_logits(two["sha256"], name, hash_ids(eval_set.sample_ids))
        assert torch.allclose(gathered, logits[name], atol=1e-5), name


def _shard_worker(rank: int, world_size: int, port: int, n: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        group = Group(rank, world_size)
        rows = shard_rows(n, group)
        part = torch.arange(n, dtype=torch.float32).repeat(3, 1).T[rows.start:rows.stop]  # row i = [i, i, i]
        results[rank] = (gather_shards(group, part, n), sum_over_ranks(group, len(rows) + rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("n", [7, 2])
def test_shards_cover_every_row_once_and_gather_in_order(n):
    world_size = 2
    assert [list(shard_rows(7, Group(r, 3))) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_shard_worker, args=(world_size, 29500 + n, n, results), nprocs=world_size)
        for rank in range(world_size):
            gathered, total = results[rank]
            assert torch.equal(gathered, torch.arange(n, dtype=torch.float32).repeat(3, 1).T)
            assert total == n + sum(range(world_size))  # counts summed over the ranks


def test_evaluation_needs_an_image_per_rank():
    tiny = {"val": torch.zeros(1), "test": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"fewer images than the 2 ranks"):
        Evaluator(tiny, 8, "fp32", torch.device("cpu"), group=Group(0, 2))


def test_synchronized_batchnorm_is_undone_after_training_holding_the_same_tensors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4 * 36)))
    tensors = {k: v.data_ptr() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3, 8, 8)
    model.eval()
    before = model(x)
    sync_batchnorm(model)
    assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][1], nn.SyncBatchNorm)
    unwrap(model)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2][1]) is nn.BatchNorm1d
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == tensors
    assert not model.training and torch.equal(model(x), before)
