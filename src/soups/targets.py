"""Config groups choose their code by `_target_` (a class path), as Hydra's instantiate does: `method`
(soups.recipes), `head` (soups.heads), `logger` (soups.tracking), `data` (soups.data). A target is accepted
only if it names a subclass of the group's base class defined inside the group's package, so a config
cannot make the project import or run other code; nothing outside that package is imported."""
from __future__ import annotations

import dataclasses
import types
import typing

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from soups.errors import BadInput


def class_in(path: str, package: str, base: type) -> type | None:
    """The class `path` names if it is a subclass of `base` defined in `package` (e.g. "soups.data"), else None."""
    prefix = package + "."
    if not str(path).startswith(prefix):
        return None
    try:
        found = get_object(str(path))  # e.g. soups.recipes.greedy.logging.os.system reaches os.system: refused below
    except Exception:  # noqa: BLE001 - not found: no such class
        return None
    home = isinstance(found, type) and (found.__module__ == package or found.__module__.startswith(prefix))
    ok = home and issubclass(found, base)
    return found if ok else None


def build(node, where: str, package: str, base: type):
    """The object config `node` describes: its `_target_` (and any nested one) must be a `base` class in
    `package`. Raises BadInput naming `where` (e.g. "head") for a refused target or a bad setting."""
    check_targets(where, node, package, base)
    if not OmegaConf.is_dict(node) or node.get("_target_") is None:
        raise BadInput(f"{where}: expected a config with _target_ (naming a {base.__name__} class in {package})")
    missing = [k for k in node if OmegaConf.is_missing(node, k)]
    if missing:  # `???` in the YAML: a setting the user must give
        raise BadInput(f"{where}: give {', '.join(f'{where}.{k}' for k in missing)} (required, no default)")
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        raise BadInput(f"{where}: {err.__cause__ or err}") from err


def check_targets(where: str, node, package: str, base: type) -> None:
    """Every `_target_` at any depth of `node` must be a `base` class defined in `package` (where a new one
    goes), so a config cannot make instantiation run other code. Only that package's modules are imported."""
    if OmegaConf.is_dict(node):
        target = node.get("_target_")
        if target is not None and class_in(target, package, base) is None:
            folder = "src/" + package.replace(".", "/")
            article = "an" if base.__name__[0] in "AEIOU" else "a"
            raise BadInput(f"{where}._target_={target!r}: expected {article} {base.__name__} class in {package} "
                           f"(add new ones to {folder}/)")
        for key in node:  # a `???` value is no target (build names it as missing)
            if not OmegaConf.is_missing(node, key):
                check_targets(f"{where}.{key}", node[key], package, base)
    elif OmegaConf.is_list(node):
        for i, child in enumerate(node):
            check_targets(f"{where}[{i}]", child, package, base)


def _number(kind):
    def convert(value):
        if isinstance(value, bool):
            return None
        try:
            out = kind(value)
        except (TypeError, ValueError):
            return None
        return out if kind is float or out == float(value) else None  # 2.5 is no int
    return convert


SCALARS = {int: _number(int), float: _number(float), bool: lambda v: v if isinstance(v, bool) else None,
           str: lambda v: v if isinstance(v, str) else None}


class Settings:
    """Base of the dataclasses a config group builds (recipes, heads, loggers): fields typed int, float,
    bool or str (or one of them | None) are converted and checked on construction, so `lr=abc` is a
    BadInput naming the field. A subclass with its own __post_init__ calls super().__post_init__() first."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            kind, value = hints.get(spec.name), getattr(self, spec.name)
            optional = _optional_of(kind)
            if optional is not None:
                if value is None:
                    continue
                kind = optional
            if kind in SCALARS:
                converted = SCALARS[kind](value)
                if converted is None:
                    raise BadInput(f"{spec.name}={value!r}: expected {kind.__name__}")
                setattr(self, spec.name, converted)


def _optional_of(kind):
    """X for `X | None` / Optional[X], else None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0]
    return None
