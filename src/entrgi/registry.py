"""One registry type for every part people extend, and the registries themselves.

Each part is registered by name by the module that defines it (``register_<part>``), read back with
``get_<part>`` and listed with ``list_<part>s``: model families (:mod:`entrgi.models.registry`), presets
(:mod:`entrgi.presets`), guidance rules (:mod:`entrgi.guidance.rules`), optimisers
(:mod:`entrgi.guidance.optimizers`), remasking rules (:mod:`entrgi.sampling.remasking`), search strategies
(:mod:`entrgi.sampling.search`) and reward kinds (:mod:`entrgi.reward.registry`). Built-ins are registered when
``entrgi`` is imported. An unknown name is a ``ValueError`` listing the available ones with close matches
suggested; a built-in (or reserved) name cannot be replaced; registering a name again from the same definition
(a module run twice) replaces it silently, from another one with a warning. docs/extending.md.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def unknown_name_message(kind: str, name: object, available: list[str]) -> str:
    """``Unknown <kind> 'x'. Did you mean: y? Available: [...].`` (the hint only when a name is close)."""
    close = difflib.get_close_matches(str(name), available, n=3) if isinstance(name, str) else []
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Available: {available}."


class Registry(Generic[T]):
    """Named entries of one kind. ``reserved`` names mean something outside the registry (e.g. rule ``none``)
    and can be neither registered nor looked up."""

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()):
        self.kind = kind
        self.reserved = reserved
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._builtin: set[str] = set()

    def register(self, name: str, entry: T, *, origin: str = "", builtin: bool = False) -> T:
        """Add ``entry`` as ``name`` (see the module docstring for what may be replaced)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"a {self.kind} name must start with a letter and hold only letters, digits, '_' and "
                             f"'-', got {name!r}.")
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
        if name in self._builtin:
            raise ValueError(f"{name!r} is a built-in {self.kind} and cannot be removed.")
        if name not in self._entries:
            raise ValueError(unknown_name_message(self.kind, name, self.names()))
        del self._entries[name], self._origins[name]

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (``ValueError`` naming the available ones otherwise)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        """Registered names, built-ins first, in registration order."""
        return list(self._entries)

    def is_builtin(self, name: str) -> bool:
        return name in self._builtin

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


#: The guidance rule of unguided sampling: the logits are never optimised (no registered rule).
NO_RULE = "none"
#: Dream's random reveal order (each masked slot with probability 1 − s/t): no confidence, so no rule.
ORIGIN = "origin"

#: :class:`~entrgi.models.base.DiffusionLM` adapter classes by family name.
FAMILIES: Registry = Registry("model family")
#: :class:`~entrgi.presets.Preset` s by name.
PRESETS: Registry = Registry("preset")
#: The method spellings that are not rules (:func:`entrgi.settings.method_fields`): no rule may take their names.
METHOD_SPELLINGS = ("best_of_n", "best_of_n_matched", "aps_anchored", "particles", "particles_entrgi")
#: :class:`~entrgi.guidance.rules.GuidanceRule` s: the mixing weight w of the RM input.
GUIDANCE_RULES: Registry = Registry("guidance rule", reserved=(NO_RULE, *METHOD_SPELLINGS))
#: :class:`~entrgi.guidance.optimizers.Optimizer` s of the inner loop on φ.
OPTIMIZERS: Registry = Registry("optimizer")
#: :class:`~entrgi.sampling.remasking.RemaskingRule` s: the confidence that orders the commits.
REMASKING_RULES: Registry = Registry("remasking rule", reserved=(ORIGIN, "anchored"))
#: :class:`~entrgi.sampling.search.SearchStrategy` s: what is searched (plain sampling, Best-of-N, particles).
SEARCH_STRATEGIES: Registry = Registry("search strategy")
#: Reward loaders by spelling prefix (``text:``, ``likelihood:``, ``hf:``).
REWARD_KINDS: Registry = Registry("reward kind")


def check_params(kind: str, declared: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against the ``declared`` parameters of a ``kind`` (e.g. "guidance rule 'x'"): known
    names only (close ones suggested), values of the default's type (an int for a float too), finite numbers.
    Returns the declared defaults updated with ``given``."""
    if not isinstance(given, Mapping):
        raise ValueError(f"the parameters of {kind} must be a mapping of name: value, got {type(given).__name__}.")
    out = dict(declared)
    for name, value in given.items():
        if name not in declared:
            raise ValueError(unknown_name_message(f"parameter of {kind}", name, sorted(declared)))
        default = declared[name]
        if isinstance(default, bool) or default is None:
            ok = isinstance(value, bool) if isinstance(default, bool) else True
        elif isinstance(default, numbers.Real):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (
                isinstance(default, float) or isinstance(value, numbers.Integral))
            if ok and not math.isfinite(float(value)):
                raise ValueError(f"parameter `{name}` of {kind} must be finite, got {value!r}.")
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"parameter `{name}` of {kind} must be a {type(default).__name__} like its default "
                             f"{default!r}, got {value!r}.")
        out[name] = value
    return out


def origin_of(obj: object) -> str:
    """Where a function or class was defined (``file:qualname``), to tell a re-run from a clash."""
    code = getattr(obj, "__code__", None)
    where = code.co_filename if code is not None else getattr(obj, "__module__", "")
    return f"{where}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


__all__ = ["FAMILIES", "GUIDANCE_RULES", "METHOD_SPELLINGS", "NO_RULE", "OPTIMIZERS", "ORIGIN", "PRESETS", "REMASKING_RULES",
           "REWARD_KINDS", "SEARCH_STRATEGIES", "Registry", "check_params", "origin_of", "unknown_name_message"]
