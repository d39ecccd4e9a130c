"""Command-line flags generated from a recipe dataclass: one mechanism for every command.

    cifarlab fast-train --help     # one flag per `cifarlab.fast.FastConfig` field

Each field becomes `--field-name` (or its `flag=` metadata) with the field's type, help text
and `choices`; booleans get `--x/--no-x`, tuples take several values, `kv=True` dict fields
take repeatable `KEY=VALUE` (JSON values). Every flag defaults to "not given", so a preset's
own values stay unless the user overrides them (`overrides(args, cls)`).

Written here rather than taken from a library (tyro, simple-parsing): those build whole
parsers from a dataclass's defaults, while we need flags on existing argparse subcommands
whose defaults come from a preset chosen at run time. It is argparse and ~70 lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any


def _kv(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _base_type(tp: Any) -> Any:
    """`int | None` -> int; other annotations unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def flag_name(f: dataclasses.Field[Any]) -> str:
    return "--" + str(f.metadata.get("flag", f.name.replace("_", "-")))


def add_recipe_flags(
    parser: argparse.ArgumentParser | Any, cls: type, skip: tuple[str, ...] = ()
) -> None:
    """Add one flag per field of the dataclass `cls` (except `skip`) to `parser`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        help_text = f"{f.metadata.get('help', '')} (default: {default})".strip()
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if f.metadata.get("kv"):
            kw.update(action="append", type=_kv, metavar="KEY=VALUE")
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            kw.update(nargs="+", type=typing.get_args(tp)[0], metavar="N")
        else:
            kw["type"] = tp
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag_name(f), **kw)


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` given on the command line, as field -> value."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.metadata.get("kv"):
            value = dict(value)
        elif isinstance(value, list):
            value = tuple(value)
        out[f.name] = value
    return out
