"""Every bad setting is refused before any work, with a message naming it: schemas fuzzed with hypothesis."""
import math
import re
from dataclasses import fields

import pytest
from omegaconf import OmegaConf, open_dict
from hypothesis import given, settings
from hypothesis import strategies as st

import commands
from conftest import ROOT, TINY, compose_cfg
from soups.overrides import (check_overrides, chosen_options, closed_settings, composed, experiment_files, known_keys,
                             unread_in_experiment)
from soups.settings import FinetuneSettings, SoupSettings, checked

ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                      st.sampled_from(["1e-3", "3", "auto", "cpu", "cuda:0", "rand-m9-n2", "fp32", "bf16", "yes"]))

# What an accepted value must be, stated apart from the schema: (type, condition)
ACCEPTED = {
    "lr": (float, lambda v: math.isfinite(v) and v > 0), "wd": (float, lambda v: math.isfinite(v) and v >= 0),
    "epochs": (int, lambda v: v >= 1), "batch_size": (int, lambda v: v >= 1),
    "warmup_steps": (int, lambda v: v >= 0), "grad_clip": (float, lambda v: math.isfinite(v) and v >= 0),
    "label_smoothing": (float, lambda v: 0 <= v < 1), "mixup": (float, lambda v: math.isfinite(v) and v >= 0),
    "crop_scale": (float, lambda v: 0 < v <= 1), "eval_batch_size": (int, lambda v: v >= 1),
    "num_workers": (int, lambda v: v >= 0), "seed": (int, lambda v: v >= 0),
    "precision": (str, lambda v: v in ("fp32", "bf16", "fp16")), "compile": (bool, lambda v: True),
    "threads": ((int, type(None)), lambda v: v is None or v >= 1),
    "state_every_steps": ((int, type(None)), lambda v: v is None or v >= 1),
    "randaug": ((str, type(None)), lambda v: v is None or v.startswith("rand-")),
    "bn_recalibration": ((str, bool), lambda v: v in ("auto", True, False)),
}
# soup.py: null batch size = the pool's own
SOUP_ACCEPTED = {**ACCEPTED, "eval_batch_size": ((int, type(None)), lambda v: v is None or v >= 1)}


def valid_as_given(kind, condition, value) -> bool:
    """A value of the field's own type (an int for a float field too) within its range."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return isinstance(value, kinds) and condition(value)


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("config")
    return {FinetuneSettings: compose_cfg("finetune", tmp, TINY), SoupSettings: compose_cfg("soup", tmp, [])}


@pytest.mark.parametrize("schema", [FinetuneSettings, SoupSettings])
def test_the_shipped_defaults_pass(configs, schema):
    checked(configs[schema].copy(), schema)


@settings(max_examples=300, deadline=None, derandomize=True)  # the same examples on every run
@given(data=st.data())
def test_any_value_of_any_setting_is_accepted_correctly_or_refused_by_name(configs, data):
    schema = data.draw(st.sampled_from([FinetuneSettings, SoupSettings]))
    name = data.draw(st.sampled_from([f.name for f in fields(schema)]))
    value = data.draw(ANY_VALUE)
    rules = SOUP_ACCEPTED if schema is SoupSettings else ACCEPTED
    cfg = configs[schema].copy()
    cfg[name] = value
    try:
        cfg = checked(cfg, schema)
    except ValueError as err:
        assert f"{name}=" in str(err) and "expected" in str(err)
        assert not (name in rules and valid_as_given(*rules[name], value)), f"{name}={value!r} refused"
        return
    if name in rules:
        kind, condition = rules[name]
        accepted = cfg[name]
        assert isinstance(accepted, kind) and not (kind in (int, float) and isinstance(accepted, bool)), accepted
        assert condition(accepted), f"{name}={value!r} was accepted as {accepted!r}"


def test_all_problems_are_named_at_once_and_values_are_converted(configs):
    cfg = configs[FinetuneSettings].copy()
    cfg.lr, cfg.epochs, cfg.label_smoothing = -1, 0, float("nan")
    with pytest.raises(ValueError, match=r"lr=-1 .*epochs=0 .*label_smoothing=nan"):
        checked(cfg, FinetuneSettings)
    cfg = configs[FinetuneSettings].copy()
    cfg.lr, cfg.compile = "3e-5", "false"  # quoted on the command line
    typed = checked(cfg, FinetuneSettings)
    assert typed.lr == 3e-5 and typed.compile is False
    assert cfg.lr == "3e-5" and cfg.compile == "false"  # the config given is never edited in place
    cfg.mixup, cfg.batch_size = "0.2", "3"  # rules across fields see the converted values
    with pytest.raises(ValueError, match="mixup needs an even batch_size, got batch_size=3"):
        checked(cfg, FinetuneSettings)


def test_the_command_line_refuses_bad_values_before_any_work(tmp_path):
    soup = commands.project("src/soup.py", "logger=none", "bn_recalibration=sometimes", tmp=tmp_path)
    assert soup.returncode == 1 and "Traceback" not in soup.stderr
    assert "error: bad config: bn_recalibration='sometimes' (expected auto, true or false)" in soup.stderr
    done = commands.project("src/finetune.py", *TINY, "lr=-1", "device=gpu", tmp=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: bad config: device='gpu' (expected auto, cpu, or a torch device this machine has" in done.stderr
    assert "lr=-1 (expected a finite number > 0)" in done.stderr
    assert not (tmp_path / "cache").exists()  # nothing built


@pytest.mark.parametrize("script, override, got", [("soup.py", "data=123", "123"), ("soup.py", "model=null", "None (to leave the group out: ~model)"),
                                                    ("finetune.py", "-m data=mnist,1.5", "1.5"),
                                                    ("analyze.py", "analysis=true", "True"), ("evaluate.py", "pool=7", "7"),
                                                    ("soup.py", "method=[uniform,3]", "3"),
                                                    ("finetune.py", "-m data=range(1,3)", "1")])
def test_a_number_or_null_for_a_config_group_is_one_line_not_hydras_traceback(tmp_path, script, override, got):
    proc = commands.project(f"src/{script}", *override.split(), tmp=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    group = override.split()[-1].split("=")[0]  # the message names the group's real choices
    names = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    assert proc.stderr.strip() == (f"error: {override.split()[-1]}: `{group}` is a config group; expected one of "
                                   f"its names {names}, got {got}")


@pytest.mark.parametrize("script, override, unknown", [("soup.py", "method=median", "median"),
                                                        ("soup.py", "method=[uniform,nonexistent]", "nonexistent"),
                                                        ("finetune.py", "-m data=mnist,mnsit", "mnsit")])
def test_an_unknown_name_for_a_config_group_is_one_line_with_its_names(tmp_path, script, override, unknown):
    """Hydra's own answer was 26 lines (its search path and a hint about HYDRA_FULL_ERROR)."""
    proc = commands.project(f"src/{script}", *override.split(), tmp=tmp_path)
    group = override.split()[-1].split("=")[0]
    names = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {override.split()[-1]}: no {group} named {unknown!r} (conf/{group}/{unknown}.yaml); expected one "
        f"of {names}"), proc.stderr[-2000:]
    assert not (tmp_path / "logs").exists()  # refused before Hydra made a run folder


def known(job: str) -> set[str]:
    """The top-level names `python src/<job>.py` accepts with its default options (soups.overrides.known_keys)."""
    configs = composed(ROOT / "conf", job)
    files = experiment_files([ROOT / "conf"], configs, {})
    return known_keys(ROOT / "conf", configs, chosen_options(ROOT / "conf", configs, files, []))


def closed(job: str, chosen: dict | None = None) -> dict[str, set[str]]:
    configs = composed(ROOT / "conf", job)
    files = experiment_files([ROOT / "conf"], configs, chosen or {})
    return closed_settings(ROOT / "conf", configs + [OmegaConf.load(f) for f in files])


@pytest.mark.parametrize("script, override, key, hint", [
    ("soup.py", "methd=greedy", "methd", "did you mean method?"),
    ("soup.py", "+methd=greedy", "methd", "did you mean method?"),  # what Hydra's own message advised
    ("soup.py", "++methd.greedy.order=held_out", "methd", "did you mean method?"),
    ("finetune.py", "-m lr=1e-3,3e-3 +lrr=1", "lrr", "did you mean lr?"),
    ("finetune.py", "+method=greedy", "method", None),  # a group of soup.py, not of finetune.py
    ("analyze.py", "+statistics.ece_bins=10", "statistics", None),  # soup.py's, not analyze.py's
    ("analyze.py", "experiment=text_demo lr=1e-3", "lr", None),  # the experiment sets lr for finetune.py
    ("evaluate.py", "+shardz=2", "shardz", "did you mean shard or shards?")])
def test_a_setting_the_config_does_not_have_is_one_line_not_a_key_nothing_reads(tmp_path, script, override, key, hint):
    """Hydra answers `methd=greedy` with 'To append to your config use +methd=greedy', and `+methd=greedy`
    ran the default recipes with the setting silently unread."""
    proc = commands.project(f"src/{script}", *override.split(), tmp=tmp_path)
    job = script.removesuffix(".py")
    hint = hint or f"its settings and groups: {sorted(known(job))}"
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {override.split()[-1]}: no setting `{key}` in conf/{job}.yaml or its groups, so nothing "
        f"would read it; {hint}"), proc.stderr[-2000:]
    assert not (tmp_path / "logs").exists()  # refused before Hydra made a run folder


@pytest.mark.parametrize("script, override, hint", [
    ("soup.py", "+greedy_rule.tie=official", "greedy_rule has no setting `tie`, so nothing would read it; did you mean ties?"),
    ("soup.py", "+statistics.bins=10", "statistics has no setting `bins`, so nothing would read it; did you mean ece_bins?"),
    ("finetune.py", "+paths.dataa=/data", "paths has no setting `dataa`, so nothing would read it; did you mean data_dir?"),
    ("soup.py", "+greedy_rule={tie:official}", "greedy_rule has no setting `tie`, so nothing would read it; did you mean ties?"),
    ("finetune.py", "+model.image_sze=64", "model has no setting `image_sze`, so nothing would read it; did you mean image_size?"),
    ("finetune.py", "+lora.alpah=32", "lora has no setting `alpah`, so nothing would read it; did you mean alpha?")])
def test_a_name_added_to_a_block_no_plug_in_checks_is_one_line(tmp_path, script, override, hint):
    """`+greedy_rule.tie=official` ran greedy with its default ties rule: nothing reads greedy_rule.tie."""
    proc = commands.project(f"src/{script}", override, tmp=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {override}: {hint}", proc.stderr[-2000:]
    assert not (tmp_path / "logs").exists()


def test_the_blocks_checked_here_are_those_no_plug_in_checks():
    soup = closed("soup")
    assert soup.keys() == {"greedy_rule", "statistics", "paths", "model", "lora"}
    assert soup["greedy_rule"] == {"comparator", "ties"} and soup["statistics"] == {"ece_bins", "resamples", "level", "seed"}
    assert soup["paths"] == {"root_dir", "log_dir", "cache_dir", "data_dir"}
    assert {"image_size", "timm_kwargs", "hf_classifier", "hf_crop"} <= soup["model"]  # hf_crop: derived, in no YAML
    assert soup["lora"] == {"r", "alpha", "dropout", "target_modules", "rslora"}
    assert closed("finetune").keys() == {"paths", "model", "lora"}  # search_space: any hyperparameter
    assert "reference" in closed("soup", {"experiment": ["paper_vit_b32"]})


def test_the_known_settings_are_the_configs_the_command_composes():
    finetune, soup = known("finetune"), known("soup")
    assert {"lr", "wd_1d", "trial", "head", "lora", "sweep", "launcher", "hydra"} <= finetune  # keys and groups
    assert not {"method", "pool", "statistics", "analysis", "reference"} & finetune
    assert {"method", "pool", "statistics", "greedy_rule", "reference", "model", "data"} <= soup and "lr" not in soup
    assert {"shards", "shard", "method", "launcher"} <= known("evaluate")  # evaluate.yaml: `- soup`
    analyze = composed(ROOT / "conf", "analyze")  # greedy_rule: read by interpolation, in analysis=ingredients only
    assert "greedy_rule" in known_keys(ROOT / "conf", analyze, {"analysis": {"ingredients"}})
    assert "greedy_rule" in known_keys(ROOT / "conf", analyze)  # the option unknown: every option counts
    assert "greedy_rule" not in known("analyze") and "greedy_rule" not in finetune  # analysis=pairs by default
    assert "lr" not in known("analyze") and "oc" not in known("finetune")  # ${oc.env:...} is a resolver, no name


@pytest.mark.parametrize("job, argv", [
    ("soup", ["hydra/job_logging=disabled"]), ("finetune", ["-m", "hydra/launcher=joblib"]),  # Hydra's own groups
    ("soup", ["-m", "+launcher=joblib", "method=greedy"]),  # a group that configures Hydra alone, appended
    ("soup", ["-sc", "query=bash"]), ("soup", ["--shell-completion", "install=bash"]),  # completion, not overrides
    ("soup", ["--config-path", "/elsewhere", "extra_key=1"]), ("soup", ["-cd", "/elsewhere", "+extra_key=1"]),
    ("finetune", ["-cd", "/elsewhere", "model=vit_b32", "+model.foo=1"]),  # its model/ may hold another vit_b32
    ("finetune", ["-cd", "~/confs", "~experiment"]),  # a flag's value starting with ~ is no override
    ("finetune", ["-m", "experiment=text_demo,text_demo_lora"]),  # each experiment's files with its own model
    ("soup", ["-m", "experiment=text_demo,text_demo_lora"]),
    ("finetune", ["-m", "experiment=demo_vit,text_demo", "+model.max_length=64"]),  # text_demo's jobs read it
    ("finetune", ["~experiment", "model=hf", "model.hf_classifier=/x", "+model.interpolation=bicubic"]),  # hf reads it
    ("finetune", ["~experiment", "model=hf", "model.hf_classifier=/x", "+model.channels_last=true"]),  # any model's
    ("finetune", ["experiment=text_demo", "+model.tokenizer=/path/tok"]),  # a text encoder's tokenizer folder
    ("analyze", ["analysis=ingredients", "+greedy_rule.ties=official"]),  # ingredients.yaml reads it (oc.select)
    ("soup", ["reference=null"]), ("soup", ["experiment=paper_vit_b32", "reference.source=mine"]),
    ("soup", ["-m", "experiment=glob(paper*)", "reference=null"]), ("analyze", ["experiment=text_demo", "seed=1"]),
    ("evaluate", ["experiment=paper_vit_b32", "precision=fp32"]), ("evaluate", ["~logger"]),
    ("finetune", ["+search_space.lr=[log_uniform,1e-5,1e-3]", "trial=0"]), ("finetune", ["~experiment", "lr=1e-3"]),
    ("finetune", ["model=timm", "model.timm_name=resnet18", "+model.timm_kwargs.drop_path_rate=0.1"]),
    ("soup", ["+model.hf_crop=224"]), ("finetune", ["model=hf", "+model.hf_crop=224"]),  # soup.py: the pool's model
    ("finetune", ["-m", "model=vit_b32,minilm_l6", "+model.max_length=64"]),  # one of the sweep's models reads it
    ("finetune", ["experiment=text_demo", "model.max_length=64"]),  # the experiment's model: minilm_l6
    ("soup", ["lr", "=1e-3"])])  # a stray space: Hydra's own message
def test_the_override_checks_leave_legitimate_command_lines_to_hydra(job, argv):
    check_overrides(argv, ROOT / "conf", job)  # no SystemExit


def documented_commands() -> list[tuple[str, list[str]]]:
    """Each `python src/<job>.py ...` the README, docs/, the Makefile, BENCHMARKS, scripts/, the notebooks and the
    comments of conf/ show, as (job, arguments); a command continued over lines is read up to its first line's end."""
    docs = [ROOT / "README.md", ROOT / "Makefile", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"),
            *(ROOT / "scripts").rglob("*.py"), *(ROOT / "scripts").rglob("*.sh"), *(ROOT / "notebooks").glob("*.ipynb"),
            *(ROOT / "conf").rglob("*.yaml")]
    return [(m.group(1), [a.strip("'\"") for a in m.group(2).split()]) for f in docs for line in f.read_text().splitlines()
            for m in re.finditer(r"src/(soup|finetune|analyze|evaluate)\.py((?:\s+[^\s#`|;&)\"\\]+)*)", line)]


def test_every_command_the_documentation_shows_passes_the_override_checks():
    """And Hydra's own argument parser: `finetune.py experiment=x -m lr=1e-5,3e-5` is refused by argparse (no
    override may follow a flag that follows one), so `-m` goes first."""
    from hydra._internal.utils import get_args_parser

    shown = documented_commands()
    assert len(shown) > 100
    for job, args in shown:
        get_args_parser().parse_args(args)  # SystemExit: `unrecognized arguments`
        check_overrides(args, ROOT / "conf", job)  # SystemExit would name the command


def test_every_fine_tune_command_the_documentation_shows_builds_its_data(tmp_path):
    """`finetune.py model=hf ... data=sentiment` (docs/own-checkpoints.md) was refused: the default experiment,
    demo_vit, sets MNIST's sizes (data.val_per_class), which the sentiment data does not have. A sweep's first
    value stands for it (`lr=1e-5,3e-5` -> `lr=1e-5`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from soups.data import TaskData
    from soups.settings import build

    shown = [args for job, args in documented_commands() if job == "finetune" and any(a.startswith("data=") for a in args)
             and not any("<" in a or "..." in a for a in args)]  # data=<name>: a placeholder
    assert len(shown) >= 3
    for args in shown:
        given = [a for a in args if ("=" in a or a.startswith("~")) and not a.startswith("-")]  # ~experiment too
        parsed = OverridesParser.create().parse_overrides(given)
        overrides = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
                     for o in parsed if not o.key_or_group.startswith("hydra")]
        cfg = compose_cfg("finetune", tmp_path, overrides)
        build(cfg.data, "data", "soups.data", TaskData)  # BadInput would name the settings


SOUP_ONLY = "it fills the evaluation cache and makes no soup: give it to src/soup.py"


@pytest.mark.parametrize("override, why", [
    ("method=greedy", SOUP_ONLY), ("+greedy_rule.ties=official", SOUP_ONLY), ("statistics.resamples=10", SOUP_ONLY),
    ("logger=wandb", "it has nothing to log: the numbers of the pool's models are the soup job's rows, and its "
                     "evaluate.json")])
def test_a_setting_evaluate_py_inherits_but_does_not_read_is_one_line(tmp_path, override, why):
    """evaluate.yaml composes soup.yaml: `logger=wandb` was overridden by its own `logger: null`, and the recipes'
    settings were accepted and never read."""
    proc = commands.project("src/evaluate.py", override, tmp=tmp_path)
    top = override.lstrip("+").split(".")[0].split("=")[0]
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {override}: src/evaluate.py does not read `{top}`: {why}"), proc.stderr[-2000:]
    assert not (tmp_path / "logs").exists()


HEADER = "# @package _global_\n"


@pytest.mark.parametrize("text, problem", [
    (HEADER + "lrr: 1e-3\n", "`lrr`: no command has such a setting (conf/*.yaml and their groups), so nothing would "
                             "read it; did you mean lr?"),
    (HEADER + "greedy_rule:\n  tie: official\n", "`greedy_rule.tie`: greedy_rule has no setting `tie`, so nothing "
                                                  "would read it; did you mean ties?"),
    (HEADER + "model:\n  image_sze: 64\n", "`model.image_sze`: model has no setting `image_sze`, so nothing would "
                                            "read it; did you mean image_size?"),
    ("lr: 1e-3\n", None), ("# my sweep\n" + HEADER + "lr: 1e-3\n", None)])  # Hydra reads a header before any other line
def test_an_experiment_file_that_sets_a_name_nothing_reads_is_one_line(tmp_path, text, problem):
    """A user's experiment (--config-dir) with `lrr:`, or without `# @package _global_` (Hydra then puts `lr` under
    `experiment.lr`: the run trains at the default lr), ran with the setting silently unread."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(text)
    problem = problem or ("its settings would be put under `experiment.` (or `sweep.`), where nothing reads them: its "
                          "first line must be `# @package _global_`, as in conf/experiment/demo_vit.yaml")
    assert unread_in_experiment(ROOT / "conf", tmp_path / "experiment" / "mine.yaml") == problem
    with pytest.raises(SystemExit, match=re.escape(f"error: {tmp_path}/experiment/mine.yaml: {problem}")):
        check_overrides(["--config-dir", str(tmp_path), "experiment=mine"], ROOT / "conf", "finetune")


def test_a_users_experiment_is_checked_by_the_entry_point_and_a_good_one_runs(tmp_path):
    mine = tmp_path / "mine" / "experiment"
    mine.mkdir(parents=True)
    (mine / "typo.yaml").write_text(HEADER + "defaults:\n  - override /model: tiny_vit\nwarmup_step: 2\n")
    proc = commands.project("src/finetune.py", "-cd", str(tmp_path / "mine"), "experiment=typo", tmp=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {mine}/typo.yaml: `warmup_step`: no command has such a setting (conf/*.yaml and their groups), so "
        f"nothing would read it; did you mean warmup_steps?"), proc.stderr[-2000:]
    assert not (tmp_path / "logs").exists()
    (mine / "good.yaml").write_text(HEADER + "defaults:\n  - override /model: tiny_vit\nlr: 0.5\ngreedy_rule:\n"
                                              "  ties: official\n")  # greedy_rule: soup.py's, set here for it
    proc = commands.project("src/finetune.py", "--cfg", "job", f"--config-dir={tmp_path / 'mine'}", "experiment=good",
                            tmp=tmp_path)
    assert commands.succeeded(proc) and "\nlr: 0.5\n" in proc.stdout


@pytest.mark.parametrize("job, argv", [
    ("finetune", ["+my_root=/data", "paths.data_dir=${my_root}/x"]),  # a name read by interpolation
    ("soup", ["+paths.scratch=/data", "paths.data_dir=${paths.scratch}/x"]),
    ("soup", ["method=greedy.yaml"]), ("soup", ["method=[uniform.yaml,greedy]"]),  # Hydra takes an option's file name
    ("finetune", ["-cd", "{tmp}/a", "experiment=helper"]),  # a helper name its own settings read
    ("finetune", ["-cd", "{tmp}/a", "experiment=broken"]),  # a YAML error: Hydra's message, not a traceback here
    ("finetune", ["-cd", "{tmp}/b", "-cd", "{tmp}/a", "experiment=helper"]),  # argparse keeps the last -cd
    ("finetune", ["-cd", "{tmp}/a", "-cd", "{tmp}/b", "experiment=late"]),
    ("soup", ["+paths.scratch=/s", "paths.cache_dir=${.scratch}/c"]), ("finetune", ["+n=4", "batch_size=${n}"]),
    ("soup", ["+my_root=/d", "paths.data_dir=${oc.select: my_root, /data}"]), ("soup", ["+my_root=/d", "paths.data_dir=${ my_root }"]),
    ("soup", ["+paths.scratch=/s", "paths.cache_dir=${paths[scratch]}/c"]),
    ("finetune", ["-cd", "{tmp}/a", "experiment=commented_defaults"]),  # `defaults:` with every entry commented out
    ("finetune", ["-cd", "{tmp}/a", "experiment=text_model", "model=minilm_l6"]),  # the command line's model reads it
    ("soup", ["-cd", "{tmp}/a", "+experiment@_global_=headerless"])])  # the package is given on the command line
def test_names_read_by_interpolation_and_hydras_own_forms_pass(tmp_path, job, argv):
    """False refusals a user found: a helper key read through `${...}`, `method=greedy.yaml`, a broken file."""
    for folder, name, text in [("a", "helper", HEADER + "scratch: /s\npaths:\n  scratch_dir: /t\n  data_dir: ${scratch}"
                                "/data\n  cache_dir: ${paths.scratch_dir}/cache\n"), ("a", "broken", "lr: [1e-4\n"),
                               ("b", "helper", "lr: 1\n"), ("a", "late", "lr: 1\n"), ("b", "late", HEADER + "lr: 1\n"),
                               ("a", "commented_defaults", HEADER + "defaults:\n#  - override /model: vit_b32\nlr: 1\n"),
                               ("a", "headerless", "precision: bf16\n"),
                               ("a", "text_model", HEADER + "defaults:\n  - override /model: vit_b32\nmodel:\n  max_length: 64\n")]:
        (tmp_path / folder / "experiment").mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "experiment" / f"{name}.yaml").write_text(text)
    (tmp_path / "a" / "notes").mkdir()  # files Hydra never reads, in the searched folder
    (tmp_path / "a" / "notes" / "latin1.yaml").write_bytes(b"# caf\xe9\nfoo: 1\n")
    (tmp_path / "a" / "notes" / "folder.yaml").mkdir()
    (tmp_path / "a" / "notes" / "dangling.yaml").symlink_to(tmp_path / "nowhere")
    check_overrides([a.replace("{tmp}", str(tmp_path)) for a in argv], ROOT / "conf", job)  # no SystemExit


@pytest.mark.parametrize("job, argv, files, shown, problem", [
    ("finetune", ["experiment=mine"], {"mine": HEADER + "defaults:\n  - override /model: vit_b32\nmodel:\n  max_length: 64\n"},
     "mine", "`model.max_length`: model has no setting `max_length`, so nothing would read it; its settings: "),  # minilm_l6's
    ("finetune", ["experiment=mine"], {"mine": HEADER + "launcher: slurm\n"}, "mine",
     "`launcher: slurm` sets the config group launcher as a plain value, so no launcher/slurm.yaml is loaded and "
     "nothing reads it; choose it in the defaults list: `- override /launcher: slurm`"),
    ("finetune", ["experiment=mine"], {"mine": HEADER + "defaults:\n  - base\n  - _self_\nlr: 1\n",
                                       "base": HEADER + "warmup_step: 3\n"}, "base",  # an experiment's own defaults
     "`warmup_step`: no command has such a setting (conf/*.yaml and their groups), so nothing would read it; did you "
     "mean warmup_steps?"),
    ("soup", ["experiment=mine"], {"mine": HEADER + "defaults:\n  - /experiment/base@_here_\n  - _self_\nlr: 1\n",
                                   "base": HEADER + "precison: fp16\n"}, "base",  # a path from the config root
     "`precison`: no command has such a setting (conf/*.yaml and their groups), so nothing would read it; did you "
     "mean precision?"),
    ("finetune", ["experiment=mine.yaml"], {"mine": "# mine\n" + HEADER + "lr: 1\n"}, "mine", None),
    ("finetune", ["hydra.searchpath=[file://{tmp}]", "experiment=mine"], {"mine": "lr: 1\n"}, "mine", None)])
def test_an_experiment_is_checked_however_hydra_finds_it(tmp_path, job, argv, files, shown, problem):
    (tmp_path / "experiment").mkdir()
    for name, text in files.items():
        (tmp_path / "experiment" / f"{name}.yaml").write_text(text)
    args = [a.format(tmp=tmp_path) for a in argv] + ([] if "searchpath" in argv[0] else ["-cd", str(tmp_path)])
    problem = problem or ("its settings would be put under `experiment.` (or `sweep.`), where nothing reads them: its "
                          "first line must be `# @package _global_`, as in conf/experiment/demo_vit.yaml")
    with pytest.raises(SystemExit, match=re.escape(f"error: {tmp_path}/experiment/{shown}.yaml: {problem}")):
        check_overrides(args, ROOT / "conf", job)


@pytest.mark.parametrize("job, argv, message", [
    ("analyze", ["analysis=ingredients", "+greedy_rule.tie=official"],
     "greedy_rule has no setting `tie`, so nothing would read it; did you mean ties?"),
    ("analyze", ["+greedy_rule.ties=official"], "no setting `greedy_rule` in conf/analyze.yaml"),  # pairs reads none
    ("analyze", ["-m", "analysis=pairs,landscape", "+greedy_rule.ties=official"], "no setting `greedy_rule`"),
    ("finetune", ["model=vit_b32", "+model.max_length=64"], "model has no setting `max_length`"),  # a text model's
    ("finetune", ["+model.timm_kwargs.drop_path_rate=0.1"], "model has no setting `timm_kwargs`"),  # the demo's ViT: open_clip
    ("finetune", ["model=vit_b32", "+model.hf_crop=224"], "model has no setting `hf_crop`"),  # model=hf derives it
    ("finetune", ["+model@_global_=minilm_l6", "+model.max_length=64"], "model has no setting `max_length`"),  # elsewhere
    ("finetune", ["~experiment", "model=vit_b32", "+model.max_length=64"], "model has no setting `max_length`"),
    ("finetune", ["~experiment", "+lrr=1"], "no setting `lrr` in conf/finetune.yaml"),  # `~experiment` parsed too
    ("finetune", ["-m", "experiment=glob(demo_*)", "+lrr=1"], "no setting `lrr` in conf/finetune.yaml or its groups"),
    ("soup", ["+now=1"], "no setting `now` in conf/soup.yaml"),  # hydra/default.yaml's ${now:...} is a resolver
    ("finetune", ["+head@h2=zero"], "no setting `h2` in conf/finetune.yaml"),  # a head put where nothing reads it
    ("soup", ["+reference.sourc=x"], "reference has no setting `sourc`, so nothing would read it; did you mean source?")])
def test_a_block_or_name_is_checked_whatever_the_command_or_experiment(job, argv, message):
    """analyze.py reads greedy_rule (by interpolation, in analysis=ingredients) without declaring the block;
    glob(...) experiments; a name of another option of the group than the chosen one (max_length is minilm_l6's)."""
    with pytest.raises(SystemExit, match=re.escape(message)):
        check_overrides(argv, ROOT / "conf", job)


def test_evaluate_py_accepts_a_group_turned_off(tmp_path):
    """`logger=none` in an override list shared with soup.py turns off what evaluate.py does not do anyway."""
    proc = commands.project("src/evaluate.py", "--cfg", "job", "logger=none", tmp=tmp_path)
    assert commands.succeeded(proc) and "task_name: evaluate" in proc.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "conf").glob("experiment/*.yaml")) + sorted((ROOT / "conf").glob("sweep/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_experiment_and_sweep_of_the_project_sets_only_names_a_command_reads(path):
    assert unread_in_experiment(ROOT / "conf", path) is None


def test_a_top_level_shifts_group_is_refused_not_recorded_and_ignored(configs):
    """Shifts belong to the dataset (data.shifts); the old `shifts=` group would be recorded and silently unused."""
    cfg = configs[FinetuneSettings].copy()
    with open_dict(cfg):
        cfg.shifts = {"names": ["rotate"]}
    with pytest.raises(ValueError, match=r"shifts=.*data.shifts.names"):
        checked(cfg, FinetuneSettings)
