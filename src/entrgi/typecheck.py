"""Config values checked against the type annotations of their dataclass fields: one rule for YAML, JSON, flags
and Python callers.

A string is not a boolean (YAML's quoted ``"no"`` stays text and is refused, never read as true), a number is not
a path, a name or a list, a list of numbers is not a list of names, and a text field is never empty (``--out ''``
is not the current folder). Call :func:`check_types` from a dataclass's ``__post_init__``; :func:`check_keys`
refuses the unknown keys of a mapping, naming the closest known key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_LISTS = (tuple, list, Sequence)
_MAPPINGS = (dict, Mapping)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def kind(value: Any) -> str:
    """What ``value`` is, in the words of a config file: a string, an integer, a list, ..."""
    if value is None:
        return "null"
    for tp, word in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                     (Mapping, "a mapping"), ((list, tuple), "a list")):
        if isinstance(value, tp):
            return word
    return f"a {type(value).__name__}"


def describe(tp: Any) -> str:
    """What a field of type ``tp`` takes, in words ("an integer or null", "a list of non-empty strings")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is type(None) or tp is None:
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in _LISTS or tp in _LISTS:
        inner = args[0] if args else Any
        return "a list" if inner is Any else f"a list of {_plural(describe(inner))}"
    if origin in _MAPPINGS or tp in _MAPPINGS:
        return "a mapping of key: value"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}.get(
        tp, f"a {getattr(tp, '__name__', tp)}")


def _plural(text: str) -> str:
    for article in ("a ", "an "):
        if text.startswith(article):
            text = text[len(article):]
    return {"true or false": "booleans", "integer": "integers", "number": "numbers",
            "non-empty string": "non-empty strings"}.get(text, text + "s")


def type_problem(value: Any, tp: Any, name: str) -> str | None:
    """``None`` when ``value`` fits ``tp``, else what is wrong, naming ``name`` (``methods[1]`` for an element)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return None
    if origin in (typing.Union, types.UnionType):
        if any(type_problem(value, a, name) is None for a in args):
            return None
        return _wrong(name, tp, value)
    if tp is type(None) or tp is None:
        return None if value is None else _wrong(name, tp, value)
    if origin in _LISTS or tp in _LISTS:
        if not isinstance(value, (list, tuple)):
            return _wrong(name, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple
            if len(value) != len(args):
                return f"`{name}` must be a list of {len(args)} values, got {len(value)}: {value!r}."
            elems = list(zip(value, args))
        else:
            elems = [(v, args[0] if args else Any) for v in value]
        for i, (v, a) in enumerate(elems):
            problem = type_problem(v, a, f"{name}[{i}]")
            if problem:
                return problem
        return None
    if origin in _MAPPINGS or tp in _MAPPINGS:
        return None if isinstance(value, Mapping) else _wrong(name, tp, value)
    if origin is typing.Literal:
        return None if value in args else _wrong(name, tp, value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str) and bool(value.strip())
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:  # an annotation this module does not read (a Callable, a Protocol): left to the field's own check
        ok = True
    return None if ok else _wrong(name, tp, value)


def _wrong(name: str, tp: Any, value: Any) -> str:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    what = "an empty string" if isinstance(value, str) and not value.strip() else kind(value)
    return f"`{name}` must be {describe(tp)}, got {shown} ({what})."


def check_types(obj: Any, skip: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` naming the first field of the dataclass instance ``obj`` whose value does not fit its
    annotation (``skip``: fields checked otherwise). Strings must be non-empty; ``bool`` takes only True/False."""
    hints = _hints(type(obj))
    skipped = set(skip)
    for f in dataclasses.fields(obj):
        if f.name in skipped or f.name not in hints:
            continue
        problem = type_problem(getattr(obj, f.name), hints[f.name], f.name)
        if problem:
            raise ValueError(problem)


def closest(name: Any, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (``None`` when none is close)."""
    if not isinstance(name, str):
        return None
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def check_keys(data: Mapping, known: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` for keys of ``data`` not in ``known``: ``unknown {what} ['methodz'] (did you mean
    'methods'?); known: [...]``."""
    known = list(known)
    unknown = [k for k in data if k not in known]
    if not unknown:
        return
    guesses = [(k, closest(k, known)) for k in unknown]
    hints = [f"{g!r}" + (f" for {k!r}" if len(unknown) > 1 else "") for k, g in guesses if g]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise ValueError(f"unknown {what} {[k if isinstance(k, str) else repr(k) for k in unknown]}{hint}; "
                     f"known: {sorted(known)}.")


__all__ = ["check_keys", "check_types", "closest", "describe", "kind", "type_problem"]
