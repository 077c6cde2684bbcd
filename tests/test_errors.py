"""Bad input fails before any work, with a message that says what was expected: a UserError, which the
commands print as one plain line (tests/test_plain_errors.py)."""
import json
import re
import shutil

import pytest
import torch
from hydra.errors import MissingConfigException

from conftest import TINY, compose_cfg
from soups.settings import ConfigError
from soups.errors import BadInput, MissingInput, UserError
from soups.jobs.finetune import run_finetune
from soups.io.files import write_json
from soups.jobs.soup import run_soup


def test_unknown_method(soup_cfg):
    with pytest.raises(MissingConfigException, match="method/median"):
        soup_cfg("method=median")


def test_bad_recipe_parameter_fails_before_the_pool_is_read(soup_cfg, tmp_path):
    with pytest.raises(ValueError, match="comparator"):
        run_soup(soup_cfg(f"pool.dir={tmp_path}/nowhere", "method=greedy", "method.greedy.comparator=gte"),
                 tmp_path / "out")



def test_no_sweep_yet(soup_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="no finetune sweep"):
        run_soup(soup_cfg(), tmp_path / "out")



@pytest.mark.parametrize("override, message", [("lr=-1", "lr=-1"), ("mixup=0.2", "even batch_size"),
                                               ("epochs=0", "epochs=0"), ("precision=fp8", "precision"),
                                               ("grad_clip=-1", "grad_clip"), ("warmup_steps=-5", "warmup_steps"),
                                               ("batch_size=0", "batch_size=0")])
def test_bad_hyperparameters(finetune_cfg, tmp_path, override, message):
    extra = ["batch_size=15"] if "mixup" in override else []
    with pytest.raises(ValueError, match=message):
        run_finetune(finetune_cfg(override, *extra), tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # refused before the init was built



def test_a_trial_without_a_search_space_is_refused_not_run_with_defaults(finetune_cfg, tmp_path):
    with pytest.raises(ConfigError, match="search_space, which is empty"):
        run_finetune(finetune_cfg("trial=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()


def pool_copy(tiny_sweep, dst, edit):
    """The tiny sweep with each run.json changed by edit(run name, record) (returning the new record)."""
    shutil.copytree(tiny_sweep[1], dst, ignore=shutil.ignore_patterns("wandb"))
    for run in sorted(dst.iterdir()):
        write_json(edit(run.name, json.loads((run / "run.json").read_text())), run / "run.json")
    return dst


def without(key):
    return lambda name, info: {k: v for k, v in info.items() if k != key}


@pytest.mark.parametrize("edit, message", [
    (without("config"), "lacks ['config.model', 'config.data.num_classes']"),
    (lambda name, info: {**info, "config": {**info["config"], "model": {"name": "x", "image_size": 32}}},
     "lacks ['config.model.open_clip_name (or timm_name, text_encoder)']"),
    (without("init"), "lacks ['init.sha256']"),
    (lambda name, info: [1, 2], "holds a JSON list"),
])
def test_run_records_without_what_a_soup_reads_are_skipped_and_named(tiny_sweep, soup_cfg, tmp_path, edit, message):
    pool = pool_copy(tiny_sweep, tmp_path / "pool", edit)
    with pytest.raises(UserError, match=re.escape(message)):
        run_soup(soup_cfg(f"pool.dir={pool}"), tmp_path / "out")


@pytest.mark.parametrize("overrides, error, message", [
    (["pool.runs=a_run_dir"], BadInput, "expected a list of run dirs"),
    (["pool.dir={tmp}/a_file"], MissingInput, "is a file, not a folder"),
    (["method=wise_ft", "method.wise_ft.alphas=[nan]"], BadInput, "alphas=[nan]: expected a non-empty list of finite"),
    (["method=wise_ft", "method.wise_ft.alphas=5"], BadInput, "alphas=5"),
    (["method=learned", "method.learned.lr=abc"], BadInput, "method.learned: lr='abc': expected float"),
    (["method=greedy_random", "method.greedy_random.orders=2.5"], BadInput, "orders=2.5: expected int"),
])
def test_bad_pool_and_recipe_settings_are_user_errors(soup_cfg, tmp_path, overrides, error, message):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(error, match=re.escape(message)):
        run_soup(soup_cfg(*[o.format(tmp=tmp_path) for o in overrides]), tmp_path / "out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_a_bad_setting(soup_cfg, finetune_cfg, tmp_path):
    with pytest.raises(ConfigError, match="device='cuda'"):
        run_soup(soup_cfg("device=cuda"), tmp_path / "out")
    with pytest.raises(ConfigError, match="device='cuda:1'"):
        run_finetune(finetune_cfg("device=cuda:1"), tmp_path / "run")


@pytest.mark.parametrize("overrides, error, message", [
    (["model.image_size=0"], ConfigError, "model.image_size=0 (expected an integer >= 1"),
    (["model.image_size=-8"], ConfigError, "model.image_size=-8"),
    (["model.std=[0.5,0,0.5]"], ConfigError, "model.std=[0.5, 0, 0.5] (expected 3 finite numbers > 0"),
    (["trial=abc"], ConfigError, "trial='abc'"),
    (["data.train_per_class=-5"], BadInput, "must be >= 1"),
    (["head.Cs=[]"], BadInput, "head: Cs=[]: expected a non-empty list of positive numbers"),
    (["head.max_iter=ten"], BadInput, "head: max_iter='ten': expected int"),
    (["logger=wandb", "logger.mode=loud"], BadInput, "logger: mode='loud': expected one of online, offline"),
    (["logger=wandb", "logger.init_timeout=soon"], BadInput, "logger: init_timeout='soon': expected float"),
])
def test_bad_model_trial_and_data_settings_are_user_errors(finetune_cfg, tmp_path, overrides, error, message):
    with pytest.raises(error, match=re.escape(message)):
        run_finetune(finetune_cfg(*overrides), tmp_path / "run")


def test_an_init_checkpoint_of_another_architecture_is_named_not_loaded(tiny_sweep, tmp_path):
    weights = tiny_sweep[1] / "0" / "model.safetensors"  # tiny_efficientnet weights; the model here: tiny_vit
    cfg = compose_cfg("finetune", tmp_path, [*[a for a in TINY if not a.startswith("head.")], "model=tiny_vit",
                                             "head=checkpoint", f"head.path={weights}"])
    with pytest.raises(BadInput, match="does not fit model=tiny_vit with 10 classes"):
        run_finetune(cfg, tmp_path / "run")


def test_wise_ft_on_alpha_zero_alone_completes(tiny_sweep, soup_cfg, tmp_path):
    rows = run_soup(soup_cfg(f"pool.dir={tiny_sweep[1]}", "method=wise_ft", "method.wise_ft.alphas=[0]"), tmp_path / "out")
    assert rows[-1]["metrics"]["test"] == rows[0]["metrics"]["test"]  # alpha 0 is the initialization


def test_method_all_leaves_out_the_recipes_that_need_a_missing_init_and_runs_the_rest(tiny_sweep, soup_cfg, tmp_path):
    """method=all on a pool whose shared initialization is gone (or, for other tools' checkpoints, not named) was
    refused as a whole; asked by name, such a recipe still is (test_plain_errors.py)."""
    def gone(name, info):
        return {**info, "init": {**info["init"], "dir": str(tmp_path / "cleaned-cache" / "init")}}

    pool = pool_copy(tiny_sweep, tmp_path / "pool", gone)
    rows = run_soup(soup_cfg(f"pool.dir={pool}", "method=all"), tmp_path / "out")
    needing = ["lora_factor_mean", "model_stock", "ties", "dare", "wise_ft"]
    report = (tmp_path / "out" / "report.md").read_text()
    left_out = report.split("Recipes left out")[1].split("\n\n")[0]
    why = f"it interpolates with the pool's shared initialization: its weights {tmp_path}/cleaned-cache/init"
    assert all(f"- {name}: {why}" in left_out for name in needing), left_out
    ran = {r.get("method") for r in rows}
    assert {"uniform", "greedy", "learned", "fisher", "ensemble"} <= ran and not ran & set(needing)


def test_a_fine_tuning_experiment_given_to_soup_py_is_refused_not_ignored(soup_cfg, tmp_path):
    with pytest.raises(BadInput, match=re.escape("fine-tuning settings ['lr', 'epochs', 'search_space']")):
        run_soup(soup_cfg("experiment=demo_vit"), tmp_path / "out")


def test_a_fine_tuning_experiment_given_to_evaluate_py_is_refused_not_ignored(tmp_path):
    """It fills the cache src/soup.py reads, and src/soup.py refuses the same experiment."""
    from soups.jobs.evaluate import run_evaluate

    with pytest.raises(BadInput, match=re.escape("fine-tuning settings ['lr', 'epochs', 'search_space']") +
                       ".*src/evaluate.py works on the pool"):
        run_evaluate(compose_cfg("evaluate", tmp_path, ["experiment=demo_vit"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
