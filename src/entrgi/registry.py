"""Registries of the parts people extend: guidance rules, remasking rules and reward loaders, by name.

Each :class:`Registry` fills its built-ins from one module the first time it is read (so the configs can
validate names without importing the guidance or sampling code). An unknown name is a ``ValueError``
listing the available names, with close matches suggested. How to add each: ``docs/extending.md``.
"""

from __future__ import annotations

import difflib
import importlib
import re
import warnings
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def unknown_name_message(kind: str, name: object, available: list[str]) -> str:
    """``Unknown <kind> 'x'. Did you mean: y? Available: [...].`` (the hint only when a name is close)."""
    close = difflib.get_close_matches(str(name), available, n=3) if isinstance(name, str) else []
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Available: {available}."


class Registry(Generic[T]):
    """Named entries of one kind. ``reserved`` names exist outside the registry (e.g. method ``none``)."""

    def __init__(self, kind: str, builtins: str, reserved: tuple[str, ...] = ()):
        self.kind = kind
        self.reserved = reserved
        self._builtins_module = builtins
        self._loaded = False
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._builtin: set[str] = set()

    def _ensure(self) -> None:
        if not self._loaded:
            self._loaded = True  # before the import: the module registers through this object
            try:
                importlib.import_module(self._builtins_module)
            except BaseException:
                self._loaded = False
                raise

    def register(self, name: str, entry: T, *, origin: str = "", builtin: bool = False) -> T:
        """Add ``entry`` as ``name``. Built-in and reserved names cannot be replaced; registering a name again
        from the same ``origin`` (a module run twice) replaces it silently, from elsewhere with a warning."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"a {self.kind} name must start with a letter and hold only letters, digits, '_' and "
                             f"'-', got {name!r}.")
        if not builtin:
            self._ensure()
        if name in self.reserved or name in self._builtin:
            raise ValueError(f"{name!r} is a built-in {self.kind}: register yours under another name.")
        if name in self._entries and self._origins[name] != origin:
            warnings.warn(f"the {self.kind} {name!r} (from {self._origins[name] or 'unknown'}) is replaced by the "
                          f"one from {origin or 'unknown'}.", stacklevel=3)
        self._entries[name] = entry
        self._origins[name] = origin
        if builtin:
            self._builtin.add(name)
        return entry

    def unregister(self, name: str) -> None:
        """Remove a registered (not built-in) entry; unknown names are a ``ValueError``."""
        self._ensure()
        if name in self._builtin:
            raise ValueError(f"{name!r} is a built-in {self.kind} and cannot be removed.")
        if name not in self._entries:
            raise ValueError(unknown_name_message(self.kind, name, self.names()))
        del self._entries[name], self._origins[name]

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (``ValueError`` naming the available ones otherwise)."""
        self._ensure()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        """Registered names, built-ins first, in registration order."""
        self._ensure()
        return list(self._entries)

    def is_builtin(self, name: str) -> bool:
        self._ensure()
        return name in self._builtin

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


#: Methods that sample without guidance, so without a guidance rule: plain sampling and Best-of-N.
PLAIN_METHODS = ("none", "best_of_n")
#: Dream's random reveal order (each masked slot with probability 1 − s/t): no confidence, so no rule.
ORIGIN = "origin"
#: Remasking spellings that stand for a rule plus a setting (APS's anchored remasking = maskgit_plus ranked on the
#: guided logits); :class:`~entrgi.config.SamplerConfig` rewrites them, so a config never holds an alias.
REMASKING_ALIASES: dict[str, dict[str, str]] = {"anchored": {"remasking": "maskgit_plus", "confidence_from": "guided"}}

#: The mixing weight w of the RM input (:mod:`entrgi.guidance.rules`).
GUIDANCE_RULES: Registry = Registry("guidance rule", "entrgi.guidance.rules", reserved=PLAIN_METHODS)
#: The confidence that orders the commits (:mod:`entrgi.sampling.remasking`).
REMASKING_RULES: Registry = Registry("remasking rule", "entrgi.sampling.remasking",
                                     reserved=(ORIGIN, *REMASKING_ALIASES))
#: Reward loaders by spelling prefix (``text:``, ``likelihood:``, ``hf:``) (:mod:`entrgi.reward.registry`).
REWARD_LOADERS: Registry = Registry("reward kind", "entrgi.reward.registry")


def origin_of(obj: object) -> str:
    """Where a function or class was defined (``file:qualname``), to tell a re-run from a clash."""
    code = getattr(obj, "__code__", None)
    where = code.co_filename if code is not None else getattr(obj, "__module__", "")
    return f"{where}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


__all__ = ["GUIDANCE_RULES", "ORIGIN", "PLAIN_METHODS", "REMASKING_ALIASES", "REMASKING_RULES", "REWARD_LOADERS",
           "Registry", "origin_of", "unknown_name_message"]
