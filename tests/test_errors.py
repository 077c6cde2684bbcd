"""Bad input fails before any work, with a message that says what was expected."""
import pytest
from hydra.errors import MissingConfigException

from soups.finetune_job import run_finetune
from soups.soup_job import run_soup


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
    from soups.config import ConfigError
    from soups.finetune_job import run_finetune

    with pytest.raises(ConfigError, match="search_space, which is empty"):
        run_finetune(finetune_cfg("trial=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()
