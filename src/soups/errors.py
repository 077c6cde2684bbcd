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


def check_group_choices(argv: list[str], conf_dir) -> None:
    """Exit 1 with one line where a config group (a folder of `conf_dir`: data, model, method, ...) is given a
    number, a bool or null on the command line (`data=123`, `model=null`: Hydra meets those with a bare
    ValueError and a page of its own traceback), or a name it has no file for (`method=median`: Hydra's page
    lists its search path). With --config-dir or hydra.searchpath other folders may hold options: names are
    then left to Hydra, as is anything else (a syntax error, an unknown key), whose messages are plain."""
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # a syntax error: Hydra says it plainly
        return
    own_options_only = not any(a.startswith(("--config-dir", "-cd", "hydra.searchpath", "+hydra.searchpath"))
                               for a in argv)
    for override in overrides:
        group = Path(conf_dir) / override.key_or_group
        if override.is_delete() or not group.is_dir():
            continue
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else value if isinstance(value, list) else [value]
        if not isinstance(value, (ChoiceSweep, list, str)) and hasattr(value, "start"):  # range(1,3)
            values = [value.start]
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
