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


def nearest(name: str, names, label: str = "its settings") -> str:
    """The hint after a misspelled `name`: `did you mean x or y?` (the closest of `names`), else `<label>: [names]`."""
    import difflib

    close = difflib.get_close_matches(name, sorted(names), n=3)
    return f"did you mean {' or '.join(close)}?" if close else f"{label}: {sorted(names)}"
