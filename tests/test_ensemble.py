from pathlib import Path

import pytest
import torch

from soups.pools.ingredient import Ingredient
from soups.recipes.ensemble import GreedyEnsemble, LogitEnsemble

LABELS = torch.tensor([0, 1, 2, 0])


class LogitScorer:
    def __init__(self, logits):
        self.logits = logits

    def ensemble_held_out(self, members):
        mean = torch.stack([self.logits[m.name] for m in members]).mean(0)
        return 100.0 * (mean.argmax(-1) == LABELS).float().mean().item()


def ingredient(name, held_out):
    return Ingredient(name, Path(name), {"metrics": {"val": held_out}})


def one_hot(preds, scale=1.0):
    return torch.nn.functional.one_hot(torch.tensor(preds), 3).float() * scale


def test_greedy_ensemble_adds_members_that_do_not_hurt_the_held_out_accuracy():
    logits = {"a": one_hot([0, 1, 2, 1], 2.0),     # 75%: wrong on the last
              "b": one_hot([0, 1, 1, 0], 1.0),     # 75%: wrong on the third
              "c": one_hot([1, 2, 0, 1], 10.0)}    # 0%, loud: would ruin any ensemble
    # b + a: the louder a decides both disagreements -> 75%, a tie with b alone: accepted under ">="
    pool = [ingredient("c", 0.0), ingredient("b", 75.0), ingredient("a", 75.0)]
    result = GreedyEnsemble()(pool, LogitScorer(logits))
    assert result.weights is None
    assert [i.name for i in result.ingredients] == ["b", "a"]  # ties keep pool order; c rejected
    assert [t["accepted"] for t in result.record["trace"]] == [True, True, False]
    assert result.record["inference_cost"] == 2
    assert result.record["held_out"] == LogitScorer(logits).ensemble_held_out(result.ingredients)


def test_logit_ensemble_keeps_every_ingredient():
    pool = [ingredient("a", 1.0), ingredient("b", 2.0)]
    result = LogitEnsemble()(pool, None)
    assert result.weights is None and result.ingredients == pool and result.record["inference_cost"] == 2


def test_greedy_ensemble_refuses_unknown_comparator():
    with pytest.raises(ValueError, match="comparator"):
        GreedyEnsemble(comparator="~")


def test_an_ensemble_averages_each_members_projected_logits_as_the_released_ensemble_code():
    # ObjectNet-like: class 0 <- ImageNet classes {0, 1}, class 1 <- {2, 3}. Max then mean (the released
    # ensemble branch) predicts class 0; mean then max would predict class 1.
    from soups.data.folders import MaxOverGroups
    from soups.evaluation.evaluator import Evaluator
    from soups.evaluation.scorer import PoolScorer

    class Set:
        labels = torch.tensor([0])
        project_logits = MaxOverGroups([[0, 1], [2, 3]])

        def __len__(self):
            return 1

    members = {"a": torch.tensor([[4.0, 0.0, 3.0, 3.0]]), "b": torch.tensor([[0.0, 4.0, 3.0, 3.0]])}
    scorer = PoolScorer.__new__(PoolScorer)  # the ensemble's arithmetic alone: no pool, no model
    sets = {"val": Set(), "test": Set(), "objectnet": Set()}
    scorer.evaluator = Evaluator(sets, 1, "fp32", torch.device("cpu"), progress=False)
    scorer.individual_logits = lambda m: {"objectnet": members[m.name]}
    mean = scorer.ensemble_logits([ingredient("a", 1.0), ingredient("b", 1.0)])
    assert mean["objectnet"].tolist() == [[4.0, 3.0]]  # each member's max, then the mean
    assert scorer.evaluator.projected("objectnet", mean["objectnet"]) is mean["objectnet"]  # not projected twice
    assert scorer.evaluator.metrics_of(mean)["objectnet"] == 100.0
    assert scorer.evaluator.metrics_of({"objectnet": (members["a"] + members["b"]) / 2})["objectnet"] == 0.0
