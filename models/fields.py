"""Frozen config dataclasses as command-line flags and as JSON dicts.

Every field of a config dataclass is a flag (``fpn_channels`` -> ``--fpn-channels``; booleans
get a ``--no-...`` twin; tuples take several values, or repeat with ``append``) whose help text
is the field's ``metadata["help"]`` (`help_meta`), shown with its default. Configs check their
values in ``__post_init__`` with `check`, which raises a `ConfigError` naming the flag.

The configs are `models.config.TrainConfig` and one per architecture in
`models.architectures`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "add_field_flags",
    "check",
    "config_from_dict",
    "config_to_dict",
    "flag_name",
    "help_meta",
]

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the flag."""


def flag_name(name: str) -> str:
    """The command-line flag of a field: ``fpn_channels`` -> ``--fpn-channels``."""
    return "--" + name.replace("_", "-")


def help_meta(text: str, **more: Any) -> dict[str, Any]:
    """A field's metadata: its help text, and ``choices`` / ``metavar`` / ``append`` /
    ``aliases`` (more flag names)."""
    return {"help": text, **more}


def check(ok: bool, name: str, expected: str, value: Any) -> None:
    """ConfigError ``--flag: expected ..., got ...`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{flag_name(name)}: expected {expected}, got {value!r}")


def _optional_str(text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def _add_field_flag(group: Any, f: dataclasses.Field[Any], hint: Any) -> None:
    meta = dict(f.metadata)
    default = f.default
    shown = "''" if default == "" else ("none" if default is None else default)
    if isinstance(default, tuple):
        shown = " ".join(str(v) for v in default) or "none"
    kwargs: dict[str, Any] = {
        "dest": f.name,
        "default": argparse.SUPPRESS,  # only explicit flags reach the namespace
        "help": f"{meta['help']} (default: {shown})",
    }
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
        if "metavar" in meta:  # the metavar hides the choices: list them in the help
            listed = ", ".join(c for c in meta["choices"] if c)
            kwargs["help"] = f"{meta['help']}; one of: {listed} (default: {shown})"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is tuple:
        kwargs["type"] = args[0]
        if meta.get("append"):
            kwargs["action"] = "append"
        else:
            kwargs["nargs"] = "+" if args[-1] is Ellipsis else len(args)
    elif origin in (typing.Union, types.UnionType) and type(None) in args:
        kwargs["type"] = _optional_str
    else:
        kwargs["type"] = hint
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    elif kwargs.get("type") in (int, float):
        kwargs["metavar"] = "N" if kwargs["type"] is int else "X"
    group.add_argument(flag_name(f.name), *meta.get("aliases", ()), **kwargs)


def add_field_flags(group: Any, cls: type) -> None:
    """One flag per field of the dataclass ``cls`` in the argparse (group) ``group``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _add_field_flag(group, f, hints[f.name])


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def config_from_dict(cls: type[C], values: Mapping[str, Any], *, where: str = "config") -> C:
    """A config from a dict as `config_to_dict` wrote it; ValueError naming unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{where}: {cls.__name__} has no fields {unknown}; expected some of {sorted(names)}"
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
