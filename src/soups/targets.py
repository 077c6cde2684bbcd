"""Config groups choose their code by `_target_` (a class path), as Hydra's instantiate does. A target is
accepted only if it names a subclass of the group's base class defined inside the group's package, so
a config cannot make the project import or run other code; nothing outside that package is imported."""
from __future__ import annotations

from hydra.utils import get_object


def class_in(path: str, package: str, base: type) -> type | None:
    """The class `path` names if it is a subclass of `base` defined in `package` (e.g. "soups.data"), else None."""
    prefix = package + "."
    if not str(path).startswith(prefix):
        return None
    try:
        found = get_object(str(path))  # e.g. soups.recipes.greedy.logging.os.system reaches os.system: refused below
    except Exception:  # noqa: BLE001 - not found: no such class
        return None
    ok = isinstance(found, type) and found.__module__.startswith(prefix) and issubclass(found, base)
    return found if ok else None
