"""Rewards by spelling, for ``--reward`` and eval ``reward:``: ``KIND:TARGET`` or a path / hub id.

- a path or hub id (or ``hf:PATH_OR_ID``): an HF sequence classifier (:class:`~entrgi.reward.hf.HFRewardModel`);
- ``text:module:function`` / ``text:path/to/file.py:function``: code on text
  (:func:`~entrgi.reward.text.load_text_reward`; ranks Best-of-N samples, cannot guide);
- ``likelihood:PATH_OR_ID``: a causal LM's mean log-likelihood
  (:class:`~entrgi.reward.likelihood.LikelihoodReward`);
- ``reference:exact`` / ``numeric`` / ``contains`` / ``MODULE:FUNCTION``: a match against each prompt's reference
  answer (:class:`~entrgi.reward.reference.ReferenceReward`; text only, references set per batch);
- ``W1*SPEC1+W2*SPEC2...`` (every term weighted, ``-`` for a negative weight): the weighted sum of those rewards
  (:func:`~entrgi.reward.composite.weighted_sum`: differentiable when every member is).

:func:`register_reward` adds a kind (docs/extending.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..registry import REWARD_KINDS, origin_of, unknown_name_message

#: ``loader(target, *, device, dtype, device_map, template, gradient_checkpointing) -> reward``; a loader may take
#: ``**options`` and use only what applies to it.
RewardLoader = Callable[..., Any]

#: The kind of a spelling without ``KIND:``.
DEFAULT_KIND = "hf"
#: What :func:`split_reward_spec` calls a weighted sum ``W1*SPEC1+W2*SPEC2`` (not a registrable kind).
COMPOSITE_KIND = "weighted_sum"


def register_reward(name: str, loader: RewardLoader | None = None):
    """Make ``name:TARGET`` load a reward with ``loader(TARGET, **options)``; as a decorator
    ``@register_reward("name")`` (returns the loader unchanged). Built-in kinds cannot be replaced."""
    if loader is None:
        def decorate(fn: RewardLoader) -> RewardLoader:
            register_reward(name, fn)
            return fn
        return decorate
    if not callable(loader):
        raise ValueError(f"the loader of reward kind {name!r} must be a function (target, **options) -> reward, "
                         f"got {type(loader).__name__}.")
    REWARD_KINDS.register(name, loader, origin=origin_of(loader))
    return loader


def get_reward(kind: str) -> RewardLoader:
    """The loader registered for reward kind ``kind`` (``ValueError`` naming the available ones otherwise)."""
    return REWARD_KINDS.get(kind)


def list_rewards() -> list[str]:
    """Every registered reward kind, built-ins first."""
    return REWARD_KINDS.names()


_NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_HEAD = re.compile(rf"\s*([+-]?)\s*({_NUMBER})\s*\*\s*")  # a term's weight: [sign] number *
_NEXT = re.compile(rf"\s*[+-]\s*{_NUMBER}\s*\*")  # where the next term starts


def split_composite_spec(spec: str) -> list[tuple[float, str]] | None:
    """``[(weight, member spelling), ...]`` of ``W1*SPEC1+W2*SPEC2...`` (``-W*SPEC`` subtracts), or None when
    ``spec`` is not a weighted sum (it does not start with ``NUMBER*``, or it is an existing path)."""
    if not isinstance(spec, str) or not _HEAD.match(spec) or Path(spec.strip()).exists():
        return None
    terms, pos = [], 0
    while pos < len(spec):
        head = _HEAD.match(spec, pos)
        if head is None or (terms and not head.group(1)):
            raise ValueError(f"reward {spec!r}: expected WEIGHT*SPEC at {spec[pos:pos + 20]!r}; a weighted sum is "
                             "W1*SPEC1+W2*SPEC2 with a weight on every term (e.g. 0.7*PATH+0.3*likelihood:PATH).")
        nxt = _NEXT.search(spec, head.end())
        end = nxt.start() if nxt else len(spec)
        member = spec[head.end():end].strip()
        weight = float(head.group(2)) * (-1.0 if head.group(1) == "-" else 1.0)
        if not member:
            raise ValueError(f"reward {spec!r}: the term with weight {head.group(1)}{head.group(2)} names no reward; "
                             "write WEIGHT*SPEC.")
        if not math.isfinite(weight):
            raise ValueError(f"reward {spec!r}: weight {head.group(2)!r} is not a finite number.")
        terms.append((weight, member))
        pos = end
    return terms


def composite_spec(terms: Sequence[Any]) -> str:
    """The ``W1*SPEC1+W2*SPEC2`` spelling of ``[{"spec": ..., "weight": ...}, ...]`` (the YAML list form of a
    weighted sum; a bare string in the list has weight 1)."""
    if isinstance(terms, (str, bytes)) or not isinstance(terms, Sequence) or not terms:
        raise ValueError("a weighted-sum reward must be a non-empty list of {spec: ..., weight: ...}, got "
                         f"{terms!r}.")
    parts, wanted = [], []
    for i, t in enumerate(terms):
        if isinstance(t, str):
            t = {"spec": t}
        if not isinstance(t, dict) or set(t) - {"spec", "weight"} or not isinstance(t.get("spec"), str) \
                or not t["spec"].strip():
            raise ValueError(f"reward term {i} {t!r}: expected {{spec: SPELLING, weight: NUMBER}} (weight optional, "
                             "default 1).")
        w = t.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"reward term {i}: `weight` must be a finite number, got {w!r}.")
        wanted.append((float(w), t["spec"].strip()))
        parts.append(f"{'-' if w < 0 else ('+' if parts else '')}{abs(float(w))!r}*{t['spec'].strip()}")
    spec = "".join(parts)
    if split_composite_spec(spec) != wanted:  # a member spelling that itself holds 'WEIGHT*' terms
        raise ValueError(f"reward terms {terms!r}: a member spelling must not itself be a weighted sum.")
    return spec


def split_reward_spec(spec: str) -> tuple[str, str]:
    """``(kind, target)`` of a reward spelling: ``KIND:TARGET`` for a registered kind; an existing path or a hub
    id (no colon) is ``hf``. A ``word:...`` that names no kind and no file is a ``ValueError``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward {spec!r}: give a path or hub id, or KIND:TARGET with KIND one of {list_rewards()}.")
    spec = spec.strip()
    terms = split_composite_spec(spec)
    if terms is not None:
        for _, member in terms:
            split_reward_spec(member)
        return COMPOSITE_KIND, spec
    kind, sep, target = spec.partition(":")
    if not sep or len(kind) == 1 or Path(spec).exists():  # no kind, a Windows drive letter, or a file named so
        return DEFAULT_KIND, spec
    if kind in REWARD_KINDS:
        if not target.strip():
            raise ValueError(f"reward {spec!r}: nothing after {kind + ':'!r}; give {kind}:TARGET.")
        return kind, target.strip()
    raise ValueError(f"reward {spec!r}: " + unknown_name_message("reward kind", kind, list_rewards())
                     + " A path or hub id needs no prefix.")


def load_reward(spec: str, *, device=None, dtype=None, device_map=None, template: str = "auto",
                gradient_checkpointing: bool = False):
    """The reward a spelling names (see the module docstring), loaded with the given options."""
    kind, target = split_reward_spec(spec)
    if kind == COMPOSITE_KIND:
        return _composite(target, device=device, dtype=dtype, device_map=device_map, template=template,
                          gradient_checkpointing=gradient_checkpointing)
    return REWARD_KINDS.get(kind)(target, device=device, dtype=dtype, device_map=device_map, template=template,
                                    gradient_checkpointing=gradient_checkpointing)


def _only_hf(kind: str, gradient_checkpointing: bool) -> None:
    if gradient_checkpointing:
        raise ValueError(f"gradient checkpointing (`--rm-checkpointing`) applies to HF sequence-classifier rewards, "
                         f"not to {kind!r} rewards.")


def _hf(target: str, *, device=None, dtype=None, device_map=None, template="auto", gradient_checkpointing=False):
    from .hf import HFRewardModel
    return HFRewardModel.from_pretrained(target, dtype=dtype, device=device, device_map=device_map, template=template,
                                         gradient_checkpointing=gradient_checkpointing)


def _text(target: str, *, gradient_checkpointing=False, **_device_options):
    from .text import load_text_reward
    _only_hf("text", gradient_checkpointing)
    return load_text_reward(target)  # code on strings: no device, dtype or template


def _likelihood(target: str, *, device=None, dtype=None, device_map=None, template="auto",
                gradient_checkpointing=False):
    from .likelihood import LikelihoodReward
    _only_hf("likelihood", gradient_checkpointing)
    return LikelihoodReward.from_pretrained(target, dtype=dtype, device=device, device_map=device_map,
                                            template=template)


def _reference(target: str, *, gradient_checkpointing=False, **_device_options):
    from .reference import load_reference_reward
    _only_hf("reference", gradient_checkpointing)
    return load_reference_reward(target)


def _composite(spec: str, *, gradient_checkpointing=False, **options):
    """The weighted sum of a ``W1*SPEC1+W2*SPEC2`` spelling; ``gradient_checkpointing`` goes to its HF members."""
    from .composite import weighted_sum
    terms = split_composite_spec(spec)
    kinds = [split_reward_spec(m)[0] for _, m in terms]
    if gradient_checkpointing and DEFAULT_KIND not in kinds:
        _only_hf("weighted-sum", gradient_checkpointing)
    members = [load_reward(m, gradient_checkpointing=gradient_checkpointing and k == DEFAULT_KIND, **options)
               for (_, m), k in zip(terms, kinds)]
    return weighted_sum(members, [w for w, _ in terms], names=[m for _, m in terms])


for _name, _loader in (("hf", _hf), ("text", _text), ("likelihood", _likelihood), ("reference", _reference)):
    REWARD_KINDS.register(_name, _loader, origin=__name__, builtin=True)

__all__ = ["COMPOSITE_KIND", "DEFAULT_KIND", "composite_spec", "get_reward", "list_rewards", "load_reward", "register_reward",
           "split_composite_spec", "split_reward_spec"]
