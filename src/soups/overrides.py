"""A command line, and the experiment and sweep files it chooses, checked before Hydra composes anything: a
setting nothing would read is one `error:` line and exit status 1, not a run that goes on without it. Hydra's own
answer to `methd=greedy` advises `+methd=greedy`, which adds a key nothing reads. Each entry point calls
`check_overrides(sys.argv[1:], conf_dir, job)` first.

What a command reads: the keys and groups of conf/<job>.yaml and of the primary configs it includes
(`composed`), the names its groups' options read by interpolation (`known_keys`), and the names that the
command line and the chosen experiment read by interpolation (`+my_root=/data 'paths.data_dir=${my_root}/x'`).
Names nested in a plug-in's settings are the plug-in's to refuse (each checks its own fields).
"""
from __future__ import annotations

import functools
import itertools
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from soups.errors import nearest

# {group: {a key an option sets ("*": any option): names the code also reads (.get) for such an option, which its
# YAML need not hold}}: the training loop's channels_last for any model; what soups.models.hf derives from a
# transformers folder's image processor; a text encoder's tokenizer from another folder (models/text.py)
READ_ALSO = {"model": {"*": {"channels_last"},
                       "hf_classifier": {"hf_resize", "hf_resize_shortest", "hf_crop", "interpolation"},
                       "text_encoder": {"tokenizer"}}}


def composed(conf_dir, config_name: str) -> list:
    """The YAML files a command composes before any experiment: conf/<config_name>.yaml and the primary configs
    its defaults list names (evaluate.yaml's `- soup`). Their keys and groups are the command's own settings."""
    conf, configs, primary = Path(conf_dir), [], [config_name]
    while primary:
        configs.append(OmegaConf.load(conf / f"{primary.pop()}.yaml"))
        primary += [d for d in configs[-1].get("defaults", []) if isinstance(d, str) and (conf / f"{d}.yaml").is_file()]
    return configs


def experiment_files(conf_dirs: list, configs: list, chosen: dict[str, list]) -> list[Path]:
    """The experiment and sweep files in use: those `chosen` names ({"experiment": [names]}, from the command
    line; `x.yaml` is `x`, as for Hydra) or else the defaults list's choice of `configs` (from `composed`), each
    the first found in `conf_dirs` (conf/, then --config-dir and hydra.searchpath, Hydra's order), then the files
    each names in its own defaults list (`defaults: [base, _self_]`: the same group's base.yaml)."""
    defaults = {k: v for c in configs for d in c.get("defaults", []) if OmegaConf.is_dict(d) for k, v in d.items()}
    wanted = [(group, name) for group in ("experiment", "sweep") for name in chosen.get(group, [defaults.get(group)])]
    found = []
    while wanted:
        group, name = wanted.pop(0)
        if not isinstance(name, str) or name == "_self_":
            continue
        name = name.split("@")[0]  # `base@_here_`
        if name.startswith("/"):  # `- /experiment/base`: a path from the config root
            group, _, name = name.lstrip("/").partition("/")
        paths = [p for d in conf_dirs if (p := Path(d) / group / f"{_stem(name)}.yaml").is_file()]
        if paths and paths[0] not in found:
            found.append(paths[0])
            own = _load(paths[0])
            includes = (own.get("defaults") if own is not None else None) or []  # `defaults:` all commented: None
            wanted += [(group, d) for d in includes if isinstance(d, str)]
    return found


def chosen_options(conf_dir, configs: list, files: list, overrides: list) -> dict[str, set[str]]:
    """{group: the option names it is composed with}, where that can be told before Hydra: the command line's
    choice (`model=vit_b32`; a sweep's every value), else the experiment files' `override /group: x` (`files`,
    from `experiment_files`: the one chosen wins over those it includes), else the defaults list's of `configs`
    (`- model: efficientnet_lite0`). A group left out is not known here (a `glob(...)` sweep, an interpolated
    name, no option chosen): then every option of it counts."""
    chosen: dict[str, set[str]] = {}
    for config in configs + [c for f in reversed(files) if (c := _load(f)) is not None]:
        for entry in config.get("defaults", None) or []:
            for key, value in (entry.items() if OmegaConf.is_dict(entry) else []):
                group = str(key).removeprefix("override ").strip().lstrip("/")
                if (Path(conf_dir) / group).is_dir():
                    chosen.pop(group, None)
                    if isinstance(value, str):
                        chosen[group] = {_stem(value)}
    for override in [o for o in overrides if (Path(conf_dir) / o.key_or_group).is_dir()
                     and o.package in (None, "", "_group_")]:  # `+model@_global_=x` puts x elsewhere
        values = [] if override.is_delete() else _choices(override)
        chosen.pop(override.key_or_group, None)
        if values and all(isinstance(v, str) and "$" not in v for v in values):
            chosen[override.key_or_group] = {_stem(v) for v in values}
    return chosen


def _swept_options(conf_dir, conf_dirs: list, configs: list, chosen: dict[str, list], overrides: list) -> dict:
    """chosen_options of every job a sweep over experiments or sweeps makes (`-m experiment=a,b`: each with its
    own files), as one {group: the union of their options}; a group unknown in one job is unknown."""
    values = [[(group, v) for v in chosen[group]] for group in ("experiment", "sweep") if group in chosen]
    jobs = [chosen_options(conf_dir, configs, experiment_files(conf_dirs, configs, {g: [v] for g, v in combo}),
                           overrides) for combo in itertools.product(*values)]
    return {group: set().union(*(job[group] for job in jobs)) for group in jobs[0]
            if all(group in job for job in jobs)}


def interpolated(text: str) -> set[str]:
    """The dotted names a YAML text or a command line's value reads by interpolation: `${greedy_rule.ties}`,
    `${oc.select: greedy_rule.ties, pool}` -> {"greedy_rule.ties"}, `${ my_root }` -> {"my_root"},
    `${paths[scratch]}` -> {"paths.scratch"}, `${.scratch}` -> {".scratch"} (relative: `_reads`); resolvers
    (`${oc.env:HOME}`, `${now:%H}`) are no names, their arguments are (`${oc.env:X,${paths.root_dir}}`)."""
    names = re.findall(r"\$\{\s*(?:oc\.select:\s*)?(\.*[A-Za-z_][\w.\[\]]*)(?=\s*[},])", text)
    return {n.replace("[", ".").replace("]", "") for n in names}


def known_keys(conf_dir, configs: list, chosen: dict[str, set[str]] | None = None) -> set[str]:
    """The top-level names a command's config can hold: the keys and the defaults' groups of the files it
    composes (`configs`, from `composed`; an experiment's other keys are other commands'), the names its
    groups' options read by interpolation (analysis=ingredients reads `${oc.select:greedy_rule.ties,pool}`; of
    a group in `chosen`, from `chosen_options`, only its chosen options: analysis=pairs reads no greedy_rule),
    and `hydra`."""
    keys = {"hydra"}
    for config in configs:
        keys |= set(config.keys()) - {"defaults"}
        for entry in config.get("defaults", []):  # "- method: [...]", "- override /model: vit_b32", "- /pool@x: y"
            for name in (entry.keys() if OmegaConf.is_dict(entry) else []):
                keys.add(str(name).removeprefix("override ").strip().lstrip("/").split("@")[0].split("/")[0])
    for group in [k for k in keys if (Path(conf_dir) / k).is_dir()]:
        for option in (Path(conf_dir) / group).glob("*.yaml"):
            if group not in (chosen or {}) or option.stem in chosen[group]:
                keys |= {name.split(".")[0] for name in interpolated(option.read_text())}
    return keys


def closed_settings(conf_dir, configs: list) -> dict[str, set[str]]:
    """The settings blocks no plug-in class checks, each with the names it can hold: the plain blocks of the
    composed files (`configs`) that are no config group (greedy_rule, statistics, reference; not search_space,
    whose axes are any hyperparameter) and the groups whose options have no `_target_` (paths, model, lora: read
    with .get, their names are those of all their options, plus READ_ALSO). A name added to one
    (`+greedy_rule.tie=...`, `+model.image_sze=64`) would be read by nothing."""
    blocks = {}
    for config in configs:
        for key, value in config.items():
            if OmegaConf.is_dict(value) and key not in ("defaults", "hydra", "search_space") \
                    and not (Path(conf_dir) / key).is_dir():
                blocks.setdefault(key, set()).update(value.keys())
    return blocks | _closed_groups(str(conf_dir))


_VALUE_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")  # Hydra's flags with a value


def check_overrides(argv: list[str], conf_dir, config_name: str, unread: dict[str, str] | None = None) -> None:
    """Exit 1 with one line where the command line
    - gives a config group (a folder of `conf_dir`: data, model, method, ...) a number, a bool or null (`data=123`,
      `model=null`: Hydra meets those with a bare ValueError and a page of its own traceback), or a name it has
      no file for (`method=median`: Hydra's page lists its search path);
    - names a top-level setting the command's config does not have and nothing reads by interpolation
      (`methd=greedy`, `+lrr=1`, `lr=` for analyze.py even where the experiment in use sets it for finetune.py),
      or puts a group under such a name (`+head@h2=zero`);
    - names a setting the config has but this command does not read (`unread`: {name: why}; evaluate.py's
      `method=greedy`; a group's `none` option, `logger=none`, turns off what is not done anyway and passes);
    - adds a name to a block no plug-in checks (`+greedy_rule.tie=official`; `closed_settings` of any command);
    - chooses an experiment or sweep file that `unread_in_experiment` refuses.
    With --config-dir, --config-path, --config-name or hydra.searchpath other files may hold options and keys:
    names on the command line are then left to Hydra (the experiment files, in conf/, --config-dir or
    hydra.searchpath, are still checked), as is anything else (a syntax error, a file Hydra cannot read, shell
    completion, Hydra's own groups `hydra/...`, a name nested in a plug-in's settings: each plug-in refuses its
    unknown settings), whose messages are plain."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in argv):
        return  # `-sc query=bash`: Hydra's shell completion, not overrides
    try:
        flag_values = {i + 1 for i, a in enumerate(argv) if a in _VALUE_FLAGS}  # `-cd '~/confs'` is no override
        overrides = OverridesParser.create().parse_overrides([a for i, a in enumerate(argv) if i not in flag_values and (
            "=" in a or a.startswith("~")) and not a.startswith("-")])  # `~experiment` too
    except Exception:  # a syntax error: Hydra says it plainly
        return
    own_options_only = not any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn",
                                             "hydra.searchpath", "+hydra.searchpath")) for a in argv)
    extra_dirs = _config_dirs(argv, overrides)
    chosen = {o.key_or_group: [_stem(v) for v in _choices(o)] for o in overrides
              if o.key_or_group in ("experiment", "sweep")}
    plain = all(isinstance(v, str) or v is None for values in chosen.values() for v in values)  # not glob(...)
    configs = composed(conf_dir, config_name)  # read once, for every check
    files = experiment_files([conf_dir, *extra_dirs], configs, chosen) if plain else []
    read = set().union(*(interpolated(a) for a in argv), *(interpolated(_text(f)) for f in files),
                       *(interpolated(_text(f)) for d in extra_dirs for f in Path(d).rglob("*.yaml")))
    packaged = {(o.key_or_group, _stem(v)) for o in overrides if o.package == "_global_" for v in _choices(o)}
    options = _swept_options(conf_dir, [conf_dir, *extra_dirs], configs, chosen, overrides) if plain else {}
    for path in files:  # `+experiment@_global_=x` places a file without the header where the header would
        problem = unread_in_experiment(conf_dir, path, extra_dirs, read, (path.parent.name, path.stem) not in packaged,
                                       options)
        if problem:
            shown = f"conf/{path.relative_to(conf_dir)}" if path.is_relative_to(conf_dir) else str(path)
            sys.exit(f"error: {shown}: {problem}")
    known = known_keys(conf_dir, configs, options) | {n.split(".")[0] for n in read if n[0] != "."} \
        if own_options_only else None
    closed = _merged(closed_settings(conf_dir, configs + [c for f in files if (c := _load(f)) is not None]),
                     _every_command(str(conf_dir))[1]) if own_options_only else {}
    closed = _narrowed(closed, options, conf_dir, extra_dirs)  # model=vit_b32: its keys, not minilm's
    for override in overrides:
        key = override.key_or_group
        if not key:  # `lr =1e-3`: Hydra's message names it
            continue
        top, _, rest = key.partition(".")  # method.greedy.x is method's to refuse; methd.x is nobody's
        top = top.split("/")[0]  # hydra/job_logging=disabled: Hydra's own group
        package = (override.package or "").split(".")[0]  # +head@h2=zero puts a head where nothing reads it
        top = package if package and package not in ("_global_", "_here_", "_group_") else top
        if known is not None and top and top not in known and not override.is_delete() \
                and not (override.is_add() and _hydra_only(Path(conf_dir) / key.split("/")[0])):  # +launcher=joblib
            hint = nearest(top, known, "its settings and groups")
            sys.exit(f"error: {override.input_line}: no setting `{top}` in conf/{config_name}.yaml or its groups, "
                     f"so nothing would read it; {hint}")
        group = Path(conf_dir) / key
        turned_off = group.is_dir() and [_stem(v) for v in _choices(override)] == ["none"]
        if top in (unread or {}) and not override.is_delete() and not turned_off:
            sys.exit(f"error: {override.input_line}: src/{config_name}.py does not read `{top}`: {unread[top]}")
        value = None if override.is_delete() else override.value()
        added = [rest.split(".")[0]] if rest else list(value) if isinstance(value, dict) else []  # +greedy_rule={tie: x}
        for sub in [n for n in added if top in closed and n not in closed[top] and not _reads(read, f"{top}.{n}")][:1]:
            hint = nearest(sub, closed[top])
            sys.exit(f"error: {override.input_line}: {top} has no setting `{sub}`, so nothing would read it; {hint}")
        if override.is_delete() or not group.is_dir():
            continue
        values = _choices(override)
        wrong = [v for v in values if v is None or isinstance(v, (bool, int, float))]
        if wrong:
            names = sorted(p.stem for p in group.glob("*.yaml"))
            drop = f" (to leave the group out: ~{override.key_or_group})" if value is None else ""
            sys.exit(f"error: {override.input_line}: `{override.key_or_group}` is a config group; expected one of "
                     f"its names {names}, got {wrong[0]!r}{drop}")
        unknown = [v for v in values
                   if isinstance(v, str) and "$" not in v and not (group / f"{_stem(v)}.yaml").is_file()]
        if unknown and own_options_only:
            names = sorted(p.stem for p in group.glob("*.yaml"))
            sys.exit(f"error: {override.input_line}: no {override.key_or_group} named {unknown[0]!r} "
                     f"(conf/{override.key_or_group}/{_stem(unknown[0])}.yaml); expected one of {names}")


def unread_in_experiment(conf_dir, path, extra_dirs: list = (), read: set[str] = frozenset(),
                         needs_header: bool = True, chosen: dict[str, set[str]] | None = None) -> str | None:
    """What is wrong with an experiment or sweep file, or None (also for a file Hydra cannot read: Hydra says
    why): settings without the `# @package _global_` header (Hydra would put them under `experiment.`, where
    nothing reads them); a config group set as a plain value (`launcher: slurm` loads no launcher: the defaults
    list chooses groups); a top-level name that no command's config has (`known_keys` of every conf/<job>.yaml)
    and nothing reads by interpolation (`read`; check_overrides adds the YAML files of `extra_dirs`); or a name
    in a block no plug-in checks that no command's block has (`greedy_rule: {tie: ...}`; of a closed group in
    `chosen`, from `chosen_options`, its chosen options' names: `model: {max_length: 64}` on vit_b32). An experiment may set
    names of several commands (lr for finetune.py, data for all); each command's own command line is checked
    against its own."""
    text, config = _text(path), _load(path)
    if config is None:
        return None
    header = []  # Hydra reads `# @key value` lines up to the first other line (ConfigSource's header rule)
    for line in [line.strip() for line in text.splitlines() if line.strip()]:
        if not re.match(r"#\s*@", line):
            break
        header.append(line.lstrip("#").split())
    if needs_header and set(config.keys()) - {"defaults"} and ["@package", "_global_"] not in header:
        return ("its settings would be put under `experiment.` (or `sweep.`), where nothing reads them: its first "
                "line must be `# @package _global_`, as in conf/experiment/demo_vit.yaml")
    every, closed = _every_command(str(conf_dir))
    every = every | {n.split(".")[0] for n in read if n[0] != "."}
    closed = _narrowed(closed, chosen or {}, conf_dir, extra_dirs)
    for key, value in config.items():
        key = str(key)
        if key == "defaults":
            continue
        if any((Path(d) / str(key)).is_dir() for d in [conf_dir, *extra_dirs]) and value is not None \
                and not OmegaConf.is_config(value):
            return (f"`{key}: {value}` sets the config group {key} as a plain value, so no {key}/{value}.yaml is "
                    f"loaded and nothing reads it; choose it in the defaults list: `- override /{key}: {value}`")
        if key not in every:
            hint = nearest(key, every, "the settings")
            return (f"`{key}`: no command has such a setting (conf/*.yaml and their groups), so nothing would read "
                    f"it; {hint}")
        extra_names = sorted(n for n in set(value.keys()) - closed.get(key, set()) if not _reads(read, f"{key}.{n}")) \
            if key in closed and OmegaConf.is_dict(value) else []
        if extra_names:
            hint = nearest(extra_names[0], closed[key])
            return (f"`{key}.{extra_names[0]}`: {key} has no setting `{extra_names[0]}`, so nothing would read it; "
                    f"{hint}")
    return None


@functools.cache
def _every_command(conf_dir: str) -> tuple[set[str], dict[str, set[str]]]:
    """The top-level names and the closed blocks' names of every command (conf/<job>.yaml, and the blocks the
    project's experiments fill: `reference`), read once."""
    every, closed = set(), {}
    for job in sorted(Path(conf_dir).glob("*.yaml")):
        base = composed(conf_dir, job.stem)
        every |= known_keys(conf_dir, base)
        closed = _merged(closed, closed_settings(conf_dir, base))
    shipped = [OmegaConf.load(f) for f in sorted(Path(conf_dir).glob("experiment/*.yaml"))]
    return every, _merged(closed, closed_settings(conf_dir, shipped))  # reference: null until paper_vit_b32 sets it


@functools.cache
def _closed_groups(conf_dir: str) -> dict[str, set[str]]:
    """closed_settings' groups (paths, model, lora), read once: {group: the names of all its options}."""
    groups = {}
    for group in sorted(d for d in Path(conf_dir).iterdir() if d.is_dir()):
        texts = [f.read_text() for f in sorted(group.glob("*.yaml"))]
        if texts and not any("_target_" in t or t.startswith("# @package") for t in texts):
            groups[group.name] = {k for t in texts for k in (OmegaConf.create(t) or {}).keys()} | \
                set().union(*READ_ALSO.get(group.name, {}).values())
    return groups


def _narrowed(closed: dict[str, set[str]], chosen: dict[str, set[str]], conf_dir, extra_dirs) -> dict[str, set[str]]:
    """`closed` with each closed group that `chosen` (from chosen_options) names narrowed to the names its chosen
    options can hold (`_option_keys`); a group whose option files are not all found keeps every option's."""
    narrowed = {g: _option_keys([conf_dir, *extra_dirs], g, names) for g, names in chosen.items()
                if g in closed and g in _closed_groups(str(conf_dir))}
    return closed | {g: keys for g, keys in narrowed.items() if keys}


def _option_keys(dirs: list, group: str, names: set[str]) -> set[str]:
    """The names a closed group's options `names` can hold: each one's keys (the first file found in `dirs`:
    conf/, then --config-dir and hydra.searchpath, Hydra's order) and what READ_ALSO adds for them; empty where
    one has no file."""
    files = [next((f for d in dirs if (f := Path(d) / group / f"{n}.yaml").is_file()), None) for n in names]
    if None in files:
        return set()
    also, keys = READ_ALSO.get(group, {}), set()
    for own in [set((c or {}).keys()) for c in map(_load, files)]:
        keys |= own | set().union(*(names for key, names in also.items() if key == "*" or key in own))
    return keys


def _merged(*blocks: dict[str, set[str]]) -> dict[str, set[str]]:
    out = {}
    for block in blocks:
        for key, names in block.items():
            out[key] = out.get(key, set()) | names
    return out


def _reads(read: set[str], name: str) -> bool:
    """Whether an interpolation reads `name` or a name inside it (`paths.scratch` for `${paths.scratch.x}`); a
    relative one (`${.scratch}`) may read its last name in any block."""
    last = name.split(".")[-1]
    return any(r == name or r.startswith(f"{name}.") or (r.startswith(".") and r.lstrip(".").split(".")[0] == last)
               for r in read)


def _load(path):
    """A YAML file's mapping, or None where it is none (a syntax error, a duplicate key, a list, not UTF-8)."""
    try:
        config = OmegaConf.load(path)
    except Exception:  # Hydra reports it plainly when it reads the file
        return None
    return config if OmegaConf.is_dict(config) else None


def _text(path) -> str:
    """A file's text, or "" where it cannot be read as UTF-8 (a folder named x.yaml, a dangling link, latin-1):
    Hydra says so if it ever reads it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _stem(value):
    """`greedy.yaml` -> `greedy`: Hydra accepts an option's file name."""
    return value.removesuffix(".yaml") if isinstance(value, str) else value


def _config_dirs(argv: list[str], overrides: list) -> list[str]:
    """The folders Hydra searches besides conf/: --config-dir / -cd (the last one given, as argparse keeps
    it) and the file:// entries of hydra.searchpath."""
    dirs = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--config-dir", "-cd"):
            dirs = [value] if eq else argv[i + 1:i + 2]
    for override in overrides:
        if override.key_or_group == "hydra.searchpath" and isinstance(override.value(), list):
            dirs += [str(v).removeprefix("file://") for v in override.value() if not str(v).startswith("pkg://")]
    return dirs


def _hydra_only(group) -> bool:
    """Whether a config group's options configure Hydra alone (conf/launcher: `override /hydra/launcher: ...`),
    so `+launcher=joblib` adds to any command's config what Hydra itself reads."""
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
