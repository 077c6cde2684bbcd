"""torch.compile as an option (`compile: true`): the numbers of the eager model, and weights loaded into
the model in place (as the soup job does for every candidate) reach the compiled forward."""
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from soups.data import EvalSet, ImageArray
from soups.evaluation.cache import evaluation_key
from soups.evaluation.evaluator import Evaluator


def tiny_net(seed: int) -> nn.Module:  # no conv bias before BN: its gradient is rounding noise, which Adam amplifies
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def evaluators():
    gen = torch.Generator().manual_seed(0)
    images = ImageArray("val", torch.randint(0, 256, (30, 8, 8, 3), generator=gen, dtype=torch.uint8),
                        torch.arange(30) % 5)
    sets = {n: EvalSet(images, 8, [0.5] * 3, [0.25] * 3) for n in ("val", "test")}
    return [Evaluator(sets, 16, "fp32", torch.device("cpu"), progress=False, compile=c) for c in (False, True)]


def test_compiled_evaluation_matches_eager_and_follows_weights_loaded_in_place():
    eager, compiled = evaluators()
    model = tiny_net(0)
    assert torch.allclose(compiled.logits(model, "val"), eager.logits(model, "val"), atol=1e-5)
    runner = compiled.runner(model)
    model.load_state_dict(tiny_net(1).state_dict())  # a greedy candidate: same module, new weights
    assert compiled.runner(model) is runner  # compiled once per model
    assert torch.allclose(compiled.logits(model, "val"), eager.logits(tiny_net(1), "val"), atol=1e-5)


def test_compiled_evaluations_have_their_own_cache_key():
    cfg = OmegaConf.create({"data": {"name": "mnist", "shifts": {"names": []}}, "model": {"name": "m"}})
    assert evaluation_key(cfg, "fp32", 256) != evaluation_key(cfg, "fp32", 256, compiled=True)
    assert evaluation_key(cfg, "fp32", 256) == evaluation_key(cfg, "fp32", 256, compiled=False)


@pytest.mark.slow
def test_compiled_training_steps_match_eager():
    from torch.utils.data import TensorDataset

    from soups.training.loop import finetune

    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 8, 8, generator=gen), torch.arange(32) % 5)
    cfg = {"batch_size": 8, "num_workers": 0, "seed": 0, "mixup": 0.0, "label_smoothing": 0.0, "epochs": 1,
           "lr": 1e-2, "wd": 0.01, "warmup_steps": 1, "grad_clip": 1.0, "model": {}, "precision": "fp32"}
    states = []
    for compile in (False, True):
        model = tiny_net(0)
        finetune(model, data, OmegaConf.create({**cfg, "compile": compile}), 5, torch.device("cpu"))
        states.append(model.state_dict())
    assert all(torch.allclose(states[0][k].float(), states[1][k].float(), atol=1e-4) for k in states[0])
