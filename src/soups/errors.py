"""Errors a user can fix: a setting, a path, a dataset's layout, a pool's contents, a damaged file.

The entry points end on one of these with `error: <message>` and exit status 1, no traceback
(`SOUPS_FULL_ERROR=1` shows it). Every other exception is a bug and keeps its traceback.
Each class also derives from the builtin it refines, so `except ValueError` still catches a BadInput.
"""
from __future__ import annotations

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


def composed(conf_dir, config_name: str, chosen: dict[str, list]) -> list:
    """The YAML files a command composes: conf/<config_name>.yaml, the primary configs its defaults list names
    (evaluate.yaml's `- soup`), and the experiment and sweep in use: `chosen` ({"experiment": [names]}, from the
    command line) or else the defaults list's choice."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf, configs, primary = Path(conf_dir), [], [config_name]
    while primary:
        configs.append(OmegaConf.load(conf / f"{primary.pop()}.yaml"))
        primary += [d for d in configs[-1].get("defaults", []) if isinstance(d, str) and (conf / f"{d}.yaml").is_file()]
    defaults = {k: v for c in configs for d in c.get("defaults", []) if OmegaConf.is_dict(d) for k, v in d.items()}
    for group in ("experiment", "sweep"):
        for name in chosen.get(group, [defaults.get(group)]):
            if isinstance(name, str) and (conf / group / f"{name}.yaml").is_file():
                configs.append(OmegaConf.load(conf / group / f"{name}.yaml"))
    return configs


def known_keys(conf_dir, configs: list) -> set[str]:
    """The top-level names a command's config can hold: the keys and the defaults' groups of the files it
    composes (`configs`, from `composed`), the names its groups' options read by interpolation (analysis=ingredients reads
    `${oc.select:greedy_rule.ties,pool}`), and `hydra`."""
    import re
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
            keys |= set(re.findall(r"\$\{(?:oc\.select:)?([A-Za-z_]\w*)\.", option.read_text()))
    return keys


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
    for group in sorted(d for d in conf.iterdir() if d.is_dir()):
        texts = [f.read_text() for f in sorted(group.glob("*.yaml"))]
        if texts and not any("_target_" in t or t.startswith("# @package") for t in texts):
            blocks[group.name] = {k for t in texts for k in (OmegaConf.create(t) or {}).keys()} | \
                DERIVED_KEYS.get(group.name, set())
    return blocks


def check_overrides(argv: list[str], conf_dir, config_name: str) -> None:
    """Exit 1 with one line where the command line
    - gives a config group (a folder of `conf_dir`: data, model, method, ...) a number, a bool or null (`data=123`,
      `model=null`: Hydra meets those with a bare ValueError and a page of its own traceback), or a name it has
      no file for (`method=median`: Hydra's page lists its search path);
    - names a top-level setting the config does not have (`methd=greedy`, `+lrr=1`): Hydra's own message advises
      `+methd=greedy`, which adds a key nothing reads, so the run would go on without the setting;
    - adds a name to a block no plug-in checks (`+greedy_rule.tie=official`; `closed_settings`).
    With --config-dir, --config-path, --config-name or hydra.searchpath other files may hold options and keys:
    names are then left to Hydra, as is anything else (a syntax error, shell completion, Hydra's own groups
    `hydra/...`, a name nested in a plug-in's settings: each plug-in refuses its unknown settings), whose
    messages are plain."""
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
    configs = composed(conf_dir, config_name, chosen) if own_options_only else []  # read once, for both checks
    known = known_keys(conf_dir, configs) if own_options_only and plain else None
    closed = closed_settings(conf_dir, configs) if own_options_only else {}
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
            sys.exit(f"error: {override.input_line}: no setting `{top}` in conf/{config_name}.yaml or the experiment "
                     f"in use, so nothing would read it; {hint}")
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
