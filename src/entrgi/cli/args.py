"""Config dataclasses as argparse flags: one ``--flag-name`` per field, help and choices from metadata."""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import types
import typing
from typing import Any

import yaml

from ..config import GuidanceConfig, SamplerConfig, SearchConfig
from ..presets import get_preset, list_presets
from ..settings import method_choices


def _parse_optional(inner: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else inner(text)
    parse.__name__ = f"{inner.__name__} or none"
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                       skip: tuple[str, ...] = (), rename: dict[str, str] | None = None,
                       registry_choices: bool = True) -> None:
    """Add one flag per field of ``cls`` (defaults left unset so only given flags override; ``rename``: field ->
    flag where the flag is not the field's name). ``registry_choices`` False: values a registry decides are not
    checked here (the plugins that register them have not run yet)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = (rename or {}).get(f.name, "--" + f.name.replace("_", "-"))
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
        if base is tuple:  # a bare tuple (entries of several forms, e.g. eval's methods): names on the command line
            base = str
            kw["nargs"] = "+"
        elif typing.get_origin(base) is tuple:  # tuple[T, ...] -> several values
            base = typing.get_args(base)[0]
            kw["nargs"] = "+"
        elif base is dict or typing.get_origin(base) in (dict, collections.abc.Mapping):
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


def add_settings_args(parser: argparse.ArgumentParser, *, method: bool = True, preset: bool = True,
                      skip: dict[str, tuple[str, ...]] | None = None, registry_choices: bool = True) -> None:
    """The flags of a run's settings: ``--preset``, ``--method``, one per ``SamplerConfig`` / ``GuidanceConfig`` /
    ``SearchConfig`` field (``--search`` for the strategy), ``--rule-param`` and ``--optimizer-param``.
    ``registry_choices`` False: names a registry decides are left to the resolution (plugins not loaded yet)."""
    skip = skip or {}
    if preset:
        parser.add_argument("--preset", choices=list_presets() if registry_choices else None, default=None,
                            help="Start from a named combination of fields (the other flags override it): "
                                 + "; ".join(f"{n}: {get_preset(n).description}" for n in list_presets()))
    if method:
        parser.add_argument("--method", choices=method_choices() if registry_choices else None, default=None,
                            help="The paper's method names for a rule and a search: none (rule none, search sample), "
                                 "best_of_n (rule none, search best_of_n), or a guidance rule (that rule, search "
                                 "sample). --rule and --search set them one by one.")
    add_dataclass_args(parser.add_argument_group("sampler (SamplerConfig)"), SamplerConfig, skip.get("sampler", ()),
                       registry_choices=registry_choices)
    guidance = parser.add_argument_group("guidance (GuidanceConfig)")
    add_dataclass_args(guidance, GuidanceConfig, skip.get("guidance", ()), registry_choices=registry_choices)
    for name in ("rule", "optimizer"):
        guidance.add_argument(f"--{name}-param", action="append", metavar="NAME=VALUE", dest=f"{name}_param_items",
                              help=f"A parameter of the {name} (repeat for several; VALUE read as YAML: 2.0, true, "
                                   "text).")
    add_dataclass_args(parser.add_argument_group("search (SearchConfig)"), SearchConfig, skip.get("search", ()),
                       rename={"strategy": "--search"}, registry_choices=registry_choices)


def parse_params(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["p=2.0", "flag=true"]`` -> {"p": 2.0, "flag": True} (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or ():
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"`{flag}` {item!r}: give NAME=VALUE, e.g. {flag} power=2.0.")
        try:
            out[name.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            out[name.strip()] = value
    return out


def settings_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as a layer of :func:`entrgi.settings.resolve_settings`."""
    layer: dict[str, Any] = {"sampler": given_fields(SamplerConfig, args),
                             "guidance": given_fields(GuidanceConfig, args),
                             "search": given_fields(SearchConfig, args)}
    for name in ("rule", "optimizer"):
        params = parse_params(getattr(args, f"{name}_param_items", None), f"--{name}-param")
        if params:
            layer["guidance"][f"{name}_params"] = params
    for key in ("method", "preset"):
        if getattr(args, key, None) is not None:
            layer[key] = getattr(args, key)
    return layer


def given_fields(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


