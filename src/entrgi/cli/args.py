"""Config dataclasses as argparse flags: one ``--flag-name`` per field, help and choices from metadata."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _parse_optional(inner: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else inner(text)
    parse.__name__ = f"{inner.__name__} or none"
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                       skip: tuple[str, ...] = (), registry_choices: bool = True) -> None:
    """Add one flag per field of ``cls`` (defaults left unset so only given flags override). ``registry_choices``
    False: values a registry decides are not checked here (the plugins that register them have not run yet)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        args = typing.get_args(tp)
        optional = (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args
        base = next(a for a in args if a is not type(None)) if optional else tp
        help_text = f.metadata.get("help", "")
        default = f.default
        help_text += f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(base) is tuple:  # tuple[T, ...] -> several values
            base = typing.get_args(base)[0]
            kw["nargs"] = "+"
        elif base is dict:
            continue  # nested sections come from YAML (or their own flags)
        choices = f.metadata.get("choices")
        if callable(choices):  # a registry decides: read it now, after the plugins were loaded
            choices = choices() if registry_choices else None
            if choices is not None:
                kw["help"] += f"; one of: {', '.join(choices)}"
        if choices:
            kw["choices"] = list(choices)
        kw["type"] = _parse_optional(base) if optional else base
        kw["metavar"] = f.name.upper()
        parser.add_argument(flag, **kw)


def given_fields(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def dataclass_from_args(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    """Build ``cls`` from the flags that were given, on top of ``base`` (or the defaults)."""
    given = given_fields(cls, args)
    return dataclasses.replace(base, **given) if base is not None else cls(**given)
