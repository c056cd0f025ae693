"""Rewards by spelling, for ``--reward`` and eval ``reward:``: ``KIND:TARGET`` or a path / hub id.

- a path or hub id (or ``hf:PATH_OR_ID``): an HF sequence classifier (:class:`~entrgi.reward.hf.HFRewardModel`);
- ``text:module:function`` / ``text:path/to/file.py:function``: code on text
  (:func:`~entrgi.reward.text.load_text_reward`; ranks Best-of-N samples, cannot guide);
- ``likelihood:PATH_OR_ID``: a causal LM's mean log-likelihood
  (:class:`~entrgi.reward.likelihood.LikelihoodReward`).

:func:`register_reward` adds a kind (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..registry import REWARD_LOADERS, origin_of, unknown_name_message

#: ``loader(target, *, device, dtype, device_map, template, gradient_checkpointing) -> reward``; a loader may take
#: ``**options`` and use only what applies to it.
RewardLoader = Callable[..., Any]

#: The kind of a spelling without ``KIND:``.
DEFAULT_KIND = "hf"


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
    REWARD_LOADERS.register(name, loader, origin=origin_of(loader))
    return loader


def reward_kinds() -> list[str]:
    """Every registered kind, built-ins first."""
    return REWARD_LOADERS.names()


def split_reward_spec(spec: str) -> tuple[str, str]:
    """``(kind, target)`` of a reward spelling: ``KIND:TARGET`` for a registered kind; an existing path or a hub
    id (no colon) is ``hf``. A ``word:...`` that names no kind and no file is a ``ValueError``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward {spec!r}: give a path or hub id, or KIND:TARGET with KIND one of {reward_kinds()}.")
    spec = spec.strip()
    kind, sep, target = spec.partition(":")
    if not sep or len(kind) == 1 or Path(spec).exists():  # no kind, a Windows drive letter, or a file named so
        return DEFAULT_KIND, spec
    if kind in REWARD_LOADERS:
        if not target.strip():
            raise ValueError(f"reward {spec!r}: nothing after {kind + ':'!r}; give {kind}:TARGET.")
        return kind, target.strip()
    raise ValueError(f"reward {spec!r}: " + unknown_name_message("reward kind", kind, reward_kinds())
                     + " A path or hub id needs no prefix.")


def load_reward(spec: str, *, device=None, dtype=None, device_map=None, template: str = "auto",
                gradient_checkpointing: bool = False):
    """The reward a spelling names (see the module docstring), loaded with the given options."""
    kind, target = split_reward_spec(spec)
    return REWARD_LOADERS.get(kind)(target, device=device, dtype=dtype, device_map=device_map, template=template,
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


for _name, _loader in (("hf", _hf), ("text", _text), ("likelihood", _likelihood)):
    REWARD_LOADERS.register(_name, _loader, origin=__name__, builtin=True)

__all__ = ["DEFAULT_KIND", "load_reward", "register_reward", "reward_kinds", "split_reward_spec"]
