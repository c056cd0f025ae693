"""Guidance rules by name: the mixing weight w in the reward model's input ê = ē + stopgrad(w · (ẽ − ē)).

A rule maps the logits of the masked slots (..., V) to w (...,) in [0, 1] (docs/method.md (6)–(7)), and may
declare parameters of its own (``GuidanceConfig.rule_params``). Built-ins: ``expectation`` (w = 0, no hard
sample), ``aps`` (w = 1) and ``entrgi`` (normalised entropy). ``none`` (no guidance) is not a rule. A registered
name is a valid ``GuidanceConfig.rule``, ``--rule`` / ``--method`` and eval ``methods`` entry (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ops.logit_ops import upcast
from ..registry import GUIDANCE_RULES, NO_RULE, check_params, origin_of
from .mixing import entropy_weight

#: ``weight(logits (..., V), entropy_temperature, **params) -> w (...,)``: logits detached, float32/float64, −inf
#: at ids that can never be drawn; ``entropy_temperature`` the resolved ``GuidanceConfig.entropy_temperature``;
#: ``params`` the rule's declared parameters (its defaults, then ``GuidanceConfig.rule_params``).
WeightFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class GuidanceRule:
    """A mixing rule: ``weight`` gives w per slot. ``needs_hard_sample=False`` declares w ≡ 0: the RM input is
    ē alone, no hard sample ẽ is drawn (no random numbers are used) and ``weight`` is not called while guiding.
    ``params``: the rule's own parameters and their defaults (a value's type is the parameter's type)."""

    name: str
    weight: WeightFn
    needs_hard_sample: bool = True
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, logits: torch.Tensor, entropy_temperature: float = 1.0, **params: Any) -> torch.Tensor:
        return self.weight(logits, entropy_temperature, **{**self.params, **params})


def register_guidance_rule(rule: str | GuidanceRule, weight: WeightFn | None = None, *,
                           needs_hard_sample: bool = True, description: str = "",
                           params: Mapping[str, Any] | None = None):
    """Register a guidance rule under its name; returns the :class:`GuidanceRule`.

    ``register_guidance_rule(GuidanceRule(...))``, ``register_guidance_rule("name", fn, params={"p": 1.0})``, or
    as a decorator ``@register_guidance_rule("name", params=...)`` (which returns the function unchanged).
    Built-in names and ``none`` cannot be taken; registering a name again from the same function replaces it."""
    if isinstance(rule, GuidanceRule):
        if weight is not None:
            raise ValueError("give either a GuidanceRule or a name and a weight function, not both.")
        return GUIDANCE_RULES.register(rule.name, rule, origin=origin_of(rule.weight))
    if weight is None:
        def decorate(fn: WeightFn) -> WeightFn:
            register_guidance_rule(rule, fn, needs_hard_sample=needs_hard_sample, description=description,
                                   params=params)
            return fn
        return decorate
    if not callable(weight):
        raise ValueError(f"the weight of guidance rule {rule!r} must be a function (logits, entropy_temperature, "
                         f"**params) -> w, got {type(weight).__name__}.")
    declared = dict(params or {})
    check_params(f"guidance rule {rule!r}", declared, declared)
    return GUIDANCE_RULES.register(rule, GuidanceRule(rule, weight, needs_hard_sample, description, declared),
                                   origin=origin_of(weight))


def get_guidance_rule(name: str | GuidanceRule) -> GuidanceRule:
    """The rule registered as ``name`` (a :class:`GuidanceRule` is returned as is)."""
    return name if isinstance(name, GuidanceRule) else GUIDANCE_RULES.get(name)


def list_guidance_rules() -> list[str]:
    """Every registered rule, built-ins first (``none``, no guidance, is not a rule)."""
    return GUIDANCE_RULES.names()


def rule_choices() -> tuple[str, ...]:
    """Every valid ``GuidanceConfig.rule``: ``none``, then the registered rules."""
    return (NO_RULE, *GUIDANCE_RULES.names())


def _zeros(logits: torch.Tensor, entropy_temperature: float = 1.0) -> torch.Tensor:
    return torch.zeros(logits.shape[:-1], dtype=upcast(logits).dtype, device=logits.device)


def _ones(logits: torch.Tensor, entropy_temperature: float = 1.0) -> torch.Tensor:
    return torch.ones(logits.shape[:-1], dtype=upcast(logits).dtype, device=logits.device)


for _rule in (
    GuidanceRule("expectation", _zeros, needs_hard_sample=False, description="w = 0: the expected embedding ē"),
    GuidanceRule("aps", _ones, description="w = 1: the sampled token ẽ, straight-through gradient"),
    GuidanceRule("entrgi", entropy_weight, description="w = H(softmax(φ / τ_H)) / log V"),
):
    GUIDANCE_RULES.register(_rule.name, _rule, origin=__name__, builtin=True)

__all__ = ["GuidanceRule", "get_guidance_rule", "list_guidance_rules", "register_guidance_rule",
           "rule_choices"]
