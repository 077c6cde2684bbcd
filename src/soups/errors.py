"""Errors a user can fix: a setting, a path, a dataset's layout, a pool's contents, a damaged file.

The entry points end on one of these with `error: <message>` and exit status 1, no traceback
(`SOUPS_FULL_ERROR=1` shows it). Every other exception is a bug and keeps its traceback.
Each class also derives from the builtin it refines, so `except ValueError` still catches a BadInput.
"""
from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Input the user can fix; the message says what was expected."""


class BadInput(UserError, ValueError):
    """A value, file or pool that exists but is wrong (a setting out of range, mixed architectures, a damaged file)."""


class NotApplicable(BadInput):
    """A recipe that cannot run on this pool (e.g. within-run averages of runs that kept none): `method=all`
    leaves it out and says why; asked for by name, it is an error."""


class MissingInput(UserError, FileNotFoundError):
    """Something the command needs is not where it was told to look (a dataset root, a pool, an init)."""


class Unavailable(UserError, RuntimeError):
    """Something the command needs cannot be obtained here (weights to download on a machine without internet)."""


@contextmanager
def said_plainly():
    """Turn a UserError raised inside into `error: <message>` on stderr and exit status 1."""
    try:
        yield
    except UserError as err:
        if os.environ.get("SOUPS_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")


def composed(conf_dir, config_name: str) -> list:
    """The YAML files a command composes before any experiment: conf/<config_name>.yaml and the primary configs
    its defaults list names (evaluate.yaml's `- soup`). Their keys and groups are the command's own settings."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf, configs, primary = Path(conf_dir), [], [config_name]
    while primary:
        configs.append(OmegaConf.load(conf / f"{primary.pop()}.yaml"))
        primary += [d for d in configs[-1].get("defaults", []) if isinstance(d, str) and (conf / f"{d}.yaml").is_file()]
    return configs


def experiments(conf_dirs: list, configs: list, chosen: dict[str, list]) -> list[tuple]:
    """The experiment and sweep files in use, as (path, config): those `chosen` names ({"experiment": [names]},
    from the command line) or else the defaults list's choice of `configs` (from `composed`), found in the first
    of `conf_dirs` (conf/, then --config-dir) that has them."""
    from pathlib import Path

    from omegaconf import OmegaConf

    defaults = {k: v for c in configs for d in c.get("defaults", []) if OmegaConf.is_dict(d) for k, v in d.items()}
    found = []
    for group in ("experiment", "sweep"):
        for name in chosen.get(group, [defaults.get(group)]):
            paths = [Path(d) / group / f"{name}.yaml" for d in conf_dirs] if isinstance(name, str) else []
            found += [(p, OmegaConf.load(p)) for p in paths if p.is_file()][:1]
    return found


def known_keys(conf_dir, configs: list) -> set[str]:
    """The top-level names a command's config can hold: the keys and the defaults' groups of the files it
    composes (`configs`, from `composed`; an experiment's other keys are other commands'), the names its
    groups' options read by interpolation (analysis=ingredients reads `${oc.select:greedy_rule.ties,pool}`),
    and `hydra`."""
    from pathlib import Path

    from omegaconf import OmegaConf

    keys = {"hydra"}
    for config in configs:
        keys |= set(config.keys()) - {"defaults"}
        for entry in config.get("defaults", []):  # "- method: [...]", "- override /model: vit_b32", "- /pool@x: y"
            for name in (entry.keys() if OmegaConf.is_dict(entry) else []):
                keys.add(str(name).removeprefix("override ").strip().lstrip("/").split("@")[0].split("/")[0])
    for group in [k for k in keys if (Path(conf_dir) / k).is_dir()]:
        for option in (Path(conf_dir) / group).glob("*.yaml"):
            keys |= interpolated(option.read_text())
    return keys


def interpolated(text: str) -> set[str]:
    """The top-level names a YAML text reads by interpolation: `${greedy_rule.ties}`,
    `${oc.select:greedy_rule.ties,pool}` -> {"greedy_rule"}; resolvers (`${oc.env:HOME}`) are no names."""
    import re

    return set(re.findall(r"\$\{(?:oc\.select:)?(?!oc\.)([A-Za-z_]\w*)\.", text))


# model keys no YAML sets: soups.models.hf derives them from a transformers folder's preprocessor config
DERIVED_KEYS = {"model": {"hf_resize", "hf_resize_shortest", "hf_crop"}}


def closed_settings(conf_dir, configs: list) -> dict[str, set[str]]:
    """The settings blocks no plug-in class checks, each with the names it can hold: the plain blocks of the
    composed files (`configs`) that are no config group (greedy_rule, statistics, reference; not search_space, whose axes are
    any hyperparameter) and the groups whose options have no `_target_` (paths, model, lora: read with .get,
    their names are those of all their options, plus DERIVED_KEYS). A name added to one (`+greedy_rule.tie=...`,
    `+model.image_sze=64`) would be read by nothing."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf, blocks = Path(conf_dir), {}
    for config in configs:
        for key, value in config.items():
            if OmegaConf.is_dict(value) and key not in ("defaults", "hydra", "search_space") and not (conf / key).is_dir():
                blocks.setdefault(key, set()).update(value.keys())
    return blocks | _closed_groups(str(conf_dir))


@functools.cache
def _closed_groups(conf_dir: str) -> dict[str, set[str]]:
    """closed_settings' groups (paths, model, lora), read once: {group: the names of all its options}."""
    from pathlib import Path

    from omegaconf import OmegaConf

    groups = {}
    for group in sorted(d for d in Path(conf_dir).iterdir() if d.is_dir()):
        texts = [f.read_text() for f in sorted(group.glob("*.yaml"))]
        if texts and not any("_target_" in t or t.startswith("# @package") for t in texts):
            groups[group.name] = {k for t in texts for k in (OmegaConf.create(t) or {}).keys()} | \
                DERIVED_KEYS.get(group.name, set())
    return groups


def check_overrides(argv: list[str], conf_dir, config_name: str, unread: dict[str, str] | None = None) -> None:
    """Exit 1 with one line where the command line
    - gives a config group (a folder of `conf_dir`: data, model, method, ...) a number, a bool or null (`data=123`,
      `model=null`: Hydra meets those with a bare ValueError and a page of its own traceback), or a name it has
      no file for (`method=median`: Hydra's page lists its search path);
    - names a top-level setting the command's config does not have (`methd=greedy`, `+lrr=1`, `lr=` for
      analyze.py even where the experiment in use sets it for finetune.py): Hydra's own message advises
      `+methd=greedy`, which adds a key nothing reads, so the run would go on without the setting;
    - names a setting the config has but this command does not read (`unread`: {name: why}; evaluate.py's
      `method=greedy`);
    - adds a name to a block no plug-in checks (`+greedy_rule.tie=official`; `closed_settings`);
    - chooses an experiment or sweep file that sets a name no command reads (`unread_in_experiment`).
    With --config-dir, --config-path, --config-name or hydra.searchpath other files may hold options and keys:
    names on the command line are then left to Hydra (an experiment file, in conf/ or --config-dir, is still
    checked), as is anything else (a syntax error, shell completion, Hydra's own groups `hydra/...`, a name nested
    in a plug-in's settings: each plug-in refuses its unknown settings), whose messages are plain."""
    import difflib
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in argv):
        return  # `-sc query=bash`: Hydra's shell completion, not overrides
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # a syntax error: Hydra says it plainly
        return
    own_options_only = not any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn",
                                             "hydra.searchpath", "+hydra.searchpath")) for a in argv)
    chosen = {o.key_or_group: _choices(o) for o in overrides if o.key_or_group in ("experiment", "sweep")}
    plain = all(isinstance(v, str) or v is None for values in chosen.values() for v in values)  # not glob(...)
    configs = composed(conf_dir, config_name)  # read once, for every check
    chosen_files = experiments([conf_dir, *_config_dirs(argv)], configs, chosen) if plain else []
    for path, _ in chosen_files:
        problem = unread_in_experiment(conf_dir, path, _config_dirs(argv))
        if problem:
            shown = f"conf/{path.relative_to(conf_dir)}" if path.is_relative_to(conf_dir) else str(path)
            sys.exit(f"error: {shown}: {problem}")
    known = known_keys(conf_dir, configs) if own_options_only and plain else None
    closed = closed_settings(conf_dir, configs + [c for _, c in chosen_files]) if own_options_only else {}
    for override in overrides:
        key = override.key_or_group
        if not key:  # `lr =1e-3`: Hydra's message names it
            continue
        top, _, rest = key.partition(".")  # method.greedy.x is method's to refuse; methd.x is nobody's
        top = top.split("/")[0]  # hydra/job_logging=disabled: Hydra's own group
        if known is not None and top and "@" not in key and top not in known and not override.is_delete() \
                and not (override.is_add() and _hydra_only(Path(conf_dir) / top)):  # +launcher=joblib
            close = difflib.get_close_matches(top, sorted(known), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"its settings and groups: {sorted(known)}"
            sys.exit(f"error: {override.input_line}: no setting `{top}` in conf/{config_name}.yaml or its groups, "
                     f"so nothing would read it; {hint}")
        if top in (unread or {}) and not override.is_delete():
            sys.exit(f"error: {override.input_line}: src/{config_name}.py does not read `{top}`: {unread[top]}")
        value = None if override.is_delete() else override.value()
        added = [rest.split(".")[0]] if rest else list(value) if isinstance(value, dict) else []  # +greedy_rule={tie: x}
        for sub in [n for n in added if top in closed and n not in closed[top]][:1]:
            close = difflib.get_close_matches(sub, sorted(closed[top]), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"its settings: {sorted(closed[top])}"
            sys.exit(f"error: {override.input_line}: {top} has no setting `{sub}`, so nothing would read it; {hint}")
        group = Path(conf_dir) / key
        if override.is_delete() or not group.is_dir():
            continue
        values = _choices(override)
        wrong = [v for v in values if v is None or isinstance(v, (bool, int, float))]
        if wrong:
            names = sorted(p.stem for p in group.glob("*.yaml"))
            drop = f" (to leave the group out: ~{override.key_or_group})" if value is None else ""
            sys.exit(f"error: {override.input_line}: `{override.key_or_group}` is a config group; expected one of "
                     f"its names {names}, got {wrong[0]!r}{drop}")
        unknown = [v for v in values if isinstance(v, str) and "$" not in v and not (group / f"{v}.yaml").is_file()]
        if unknown and own_options_only:
            names = sorted(p.stem for p in group.glob("*.yaml"))
            sys.exit(f"error: {override.input_line}: no {override.key_or_group} named {unknown[0]!r} "
                     f"(conf/{override.key_or_group}/{unknown[0]}.yaml); expected one of {names}")


def unread_in_experiment(conf_dir, path, extra_dirs: list = ()) -> str | None:
    """What is wrong with an experiment or sweep file, or None: settings without the `# @package _global_`
    header (Hydra would put them under `experiment.`, where nothing reads them), a top-level name that no
    command's config has (`known_keys` of every conf/<job>.yaml, and the names the YAML files of `extra_dirs`
    read by interpolation), or a name in a block no plug-in checks that no command's block has
    (`greedy_rule: {tie: ...}`). An experiment may set names of several commands (lr for finetune.py, data for
    all); each command's own command line is checked against its own names."""
    import difflib
    import re
    from pathlib import Path

    from omegaconf import OmegaConf

    text = Path(path).read_text()
    config = OmegaConf.create(text) or OmegaConf.create({})
    header = []  # Hydra reads `# @key value` lines up to the first other line (ConfigSource's header rule)
    for line in [line.strip() for line in text.splitlines() if line.strip()]:
        if not re.match(r"#\s*@", line):
            break
        header.append(line.lstrip("#").split())
    if set(config.keys()) - {"defaults"} and ["@package", "_global_"] not in header:
        return ("its settings would be put under `experiment.` (or `sweep.`), where nothing reads them: its first "
                "line must be `# @package _global_`, as in conf/experiment/demo_vit.yaml")
    every, closed = _every_command(str(conf_dir))
    for extra in extra_dirs:
        for option in Path(extra).rglob("*.yaml"):
            every = every | interpolated(option.read_text())
    for key, value in config.items():
        if key == "defaults":
            continue
        if key not in every:
            close = difflib.get_close_matches(key, sorted(every), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"the settings: {sorted(every)}"
            return f"`{key}`: no command has such a setting (conf/*.yaml and their groups), so nothing would read it; {hint}"
        extra_names = sorted(set(value.keys()) - closed[key]) if key in closed and OmegaConf.is_dict(value) else []
        if extra_names:
            close = difflib.get_close_matches(extra_names[0], sorted(closed[key]), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"its settings: {sorted(closed[key])}"
            return f"`{key}.{extra_names[0]}`: {key} has no setting `{extra_names[0]}`, so nothing would read it; {hint}"
    return None


@functools.cache
def _every_command(conf_dir: str) -> tuple[set[str], dict[str, set[str]]]:
    """The top-level names and the closed blocks' names of every command (conf/<job>.yaml), read once."""
    from pathlib import Path

    every, closed = set(), {}
    for job in sorted(Path(conf_dir).glob("*.yaml")):
        base = composed(conf_dir, job.stem)
        every |= known_keys(conf_dir, base)
        for key, names in closed_settings(conf_dir, base).items():
            closed.setdefault(key, set()).update(names)
    return every, closed


def _config_dirs(argv: list[str]) -> list[str]:
    """The folders --config-dir / -cd add to Hydra's search path (`-cd DIR`, `--config-dir=DIR`)."""
    dirs = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--config-dir", "-cd"):
            dirs += [value] if eq else argv[i + 1:i + 2]
    return dirs


def _hydra_only(group) -> bool:
    """Whether a config group's options configure Hydra alone (conf/launcher: `override /hydra/launcher: ...`),
    so `+launcher=joblib` adds to any command's config what Hydra itself reads."""
    from omegaconf import OmegaConf

    options = [OmegaConf.load(f) for f in sorted(group.glob("*.yaml"))] if group.is_dir() else []
    return bool(options) and all(set(o.keys()) <= {"defaults", "hydra"} and all(
        str(k).removeprefix("override ").strip().startswith("/hydra/") for d in o.get("defaults", [])
        if OmegaConf.is_dict(d) for k in d) for o in options)


def _choices(override) -> list:
    """An override's values: `a`, `[a,b]`, a sweep `a,b` -> their list; range(1,3) -> its start."""
    from hydra.core.override_parser.types import ChoiceSweep

    value = override.value()
    if not isinstance(value, (ChoiceSweep, list, str)) and hasattr(value, "start"):  # range(1,3)
        return [value.start]
    return value.list if isinstance(value, ChoiceSweep) else value if isinstance(value, list) else [value]
