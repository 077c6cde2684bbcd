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

import commands
from conftest import ROOT, compose_cfg
from soups.data import EvalSet, ImageArray, build_data
from soups.distributed import Group, gather_shards, shard_rows, sum_over_ranks, sync_batchnorm, unwrap
from soups.evaluation.cache import EvaluationCache, hash_ids
from soups.evaluation.evaluator import Evaluator
from soups.io.files import read_json
from soups.models.classifier import build_classifier
from test_resume import finetune_command

# LayerNorm model (torch has no SyncBatchNorm on CPU), no random augmentation: the same steps exactly
SETTINGS = ["model=tiny_vit", "epochs=2", "randaug=null", "mixup=0.0", "logger=none", "threads=1"]
TOLERANCE = 1e-5  # gradients are summed across processes in another order than within one


def test_two_gloo_processes_end_with_the_weights_of_one_process(tmp_path):
    single = tmp_path / "single"
    commands.run(finetune_command(tmp_path, *SETTINGS, f"hydra.run.dir={single}"), check=True, capture_output=True)
    command = finetune_command(tmp_path, *SETTINGS)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *command[1:]]
    done = subprocess.run(torchrun, capture_output=True, text=True, cwd=ROOT)
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
    data = build_data(cfg.data, cfg.model, None)
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
        sets, model = tiny_evaluation(n)
        sharded = Evaluator(sets, 2, "fp32", torch.device("cpu"), progress=False, group=group)
        results[rank] = (gather_shards(group, part, n), sum_over_ranks(group, len(rows) + rank),
                         sharded.evaluate(model), sharded.logits(model, "test"))
    finally:
        dist.destroy_process_group()


def tiny_evaluation(n: int):
    """Sets of n random images and a seeded linear classifier."""
    images = ImageArray("x", torch.randint(0, 255, (n, 6, 6), dtype=torch.uint8,
                                           generator=torch.Generator().manual_seed(0)), torch.arange(n) % 3)
    sets = {name: EvalSet(images, 4, (0.5,) * 3, (0.25,) * 3) for name in ("val", "test", "shift")}
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    torch.manual_seed(0)
    model[1].reset_parameters()
    return sets, model


@pytest.mark.parametrize("n", [7, 2])
def test_shards_cover_every_row_once_and_evaluate_to_the_single_process_result(n):
    world_size = 2
    assert [list(shard_rows(7, Group(r, 3))) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    sets, model = tiny_evaluation(n)
    single = Evaluator(sets, 2, "fp32", torch.device("cpu"), progress=False)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_shard_worker, args=(world_size, 29500 + n, n, results), nprocs=world_size)
        for rank in range(world_size):
            gathered, total, metrics, logits = results[rank]
            assert total == n + sum(range(world_size))  # counts summed over the ranks
            assert metrics == single.evaluate(model)  # every rank: the single-process accuracies
            if rank == 0:  # rows gathered in order on rank 0, nothing elsewhere
                assert torch.equal(gathered, torch.arange(n, dtype=torch.float32).repeat(3, 1).T)
                assert torch.allclose(logits, single.logits(model, "test"), atol=1e-6)
            else:
                assert gathered is None and logits is None


def test_evaluation_needs_an_image_per_rank():
    tiny = {"val": torch.zeros(1), "test": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"fewer images than the 2 ranks"):
        Evaluator(tiny, 8, "fp32", torch.device("cpu"), group=Group(0, 2))


def test_synchronized_batchnorm_is_undone_after_training_with_the_same_layers_and_tensors(tmp_path):
    cfg = compose_cfg("finetune", tmp_path, ["model=tiny_efficientnet"])
    model = build_classifier(cfg.model, 10, load_pretrained=False).eval()  # timm BatchNormAct2d layers
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert any(type(m).__name__ == "BatchNormAct2d" for m in layers.values())
    x = torch.randn(2, 3, cfg.model.image_size, cfg.model.image_size)
    before = model(x)
    sync_batchnorm(model)
    synced = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert synced.keys() == layers.keys() and all(isinstance(m, nn.SyncBatchNorm) for m in synced.values())
    assert all(synced[k].weight is layers[k].weight and synced[k].running_var is layers[k].running_var
               for k in layers)  # trained in place: the original layers see every update
    synced_act = [m.act for m in synced.values() if hasattr(m, "act")]
    assert synced_act and all(not isinstance(a, nn.ReLU) for a in synced_act)  # activations kept
    unwrap(model)
    assert {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)} == layers
    assert not model.training and torch.equal(model(x), before)
