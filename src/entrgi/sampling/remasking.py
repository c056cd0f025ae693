"""Remasking (confidence) rules by name: which masked slots a step commits first (docs/method.md (3)).

A rule maps the logits of the candidate slots (n, V) and their drawn tokens (n,) to a confidence (n,),
higher = committed earlier. Built-ins: ``maskgit_plus`` q(x̃), ``topk_margin`` q₁ − q₂, ``entropy``
Σ q log q, ``low_confidence`` softmax(φ)(x̃) (τ-free) and ``random``; Dream's ``origin`` reveals without a
confidence and stays in the sampler. A registered name is a valid ``SamplerConfig.remasking`` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops.logit_ops import scale
from ..registry import REMASKING_RULES, origin_of

#: ``confidence(logits (n, V), tokens (n,), temperature, uniforms (n,) float64 or None) -> (n,)``: the (prior or
#: guided) logits of the candidate slots, float32/float64 with −inf at ids never drawn; ``temperature`` the sampling
#: τ (1.0 when sampling is greedy); ``uniforms`` the rows' own random numbers when the rule asks for them.
ConfidenceFn = Callable[[torch.Tensor, torch.Tensor, float, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class RemaskingRule:
    """A confidence rule; each row's confidence must depend on that row only (rows are scored in blocks)."""

    name: str
    confidence: ConfidenceFn
    needs_uniforms: bool = False
    description: str = ""


def register_remasking_rule(rule: str | RemaskingRule, confidence: ConfidenceFn | None = None, *,
                            needs_uniforms: bool = False, description: str = ""):
    """Register a remasking rule; the same three spellings as
    :func:`~entrgi.guidance.rules.register_guidance_rule` (a :class:`RemaskingRule`, a name and a function, or
    a decorator). Built-in names, ``origin`` and ``anchored`` (APS's remasking) cannot be taken."""
    if isinstance(rule, RemaskingRule):
        if confidence is not None:
            raise ValueError("give either a RemaskingRule or a name and a confidence function, not both.")
        return REMASKING_RULES.register(rule.name, rule, origin=origin_of(rule.confidence))
    if confidence is None:
        def decorate(fn: ConfidenceFn) -> ConfidenceFn:
            register_remasking_rule(rule, fn, needs_uniforms=needs_uniforms, description=description)
            return fn
        return decorate
    if not callable(confidence):
        raise ValueError(f"the confidence of remasking rule {rule!r} must be a function (logits, tokens, "
                         f"temperature, uniforms) -> confidence, got {type(confidence).__name__}.")
    return REMASKING_RULES.register(rule, RemaskingRule(rule, confidence, needs_uniforms, description),
                                    origin=origin_of(confidence))


def get_remasking_rule(name: str | RemaskingRule) -> RemaskingRule:
    """The rule registered as ``name`` (a :class:`RemaskingRule` is returned as is)."""
    return name if isinstance(name, RemaskingRule) else REMASKING_RULES.get(name)


def list_remasking_rules() -> list[str]:
    """Every registered rule, built-ins first (``origin`` is not one: it has no confidence)."""
    return REMASKING_RULES.names()


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """q = softmax(logits / τ) in float64 (n, V), unfiltered: what the built-in rules score."""
    return scale(logits.double(), temperature).softmax(-1)


def _maskgit_plus(logits, tokens, temperature, uniforms=None):
    return probabilities(logits, temperature).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _low_confidence(logits, tokens, temperature, uniforms=None):
    return _maskgit_plus(logits, tokens, 1.0)  # LLaDA's generate: softmax(logits), whatever τ


def _topk_margin(logits, tokens, temperature, uniforms=None):
    q = probabilities(logits, temperature)
    top2 = q.topk(2, dim=-1).values if q.shape[-1] > 1 else torch.cat([q, torch.zeros_like(q)], -1)
    return top2[..., 0] - top2[..., 1]


def _entropy(logits, tokens, temperature, uniforms=None):
    q = probabilities(logits, temperature)
    return torch.where(q > 0, q * q.clamp_min(1e-300).log(), torch.zeros_like(q)).sum(-1)


def _random(logits, tokens, temperature, uniforms):
    return uniforms.double()


for _rule in (
    RemaskingRule("maskgit_plus", _maskgit_plus, description="probability of the drawn token"),
    RemaskingRule("topk_margin", _topk_margin, description="p1 − p2"),
    RemaskingRule("entropy", _entropy, description="−H (the paper's choice)"),
    RemaskingRule("low_confidence", _low_confidence, description="LLaDA: softmax(logits) prob. of the draw, τ-free"),
    RemaskingRule("random", _random, needs_uniforms=True, description="uniform random order"),
):
    REMASKING_RULES.register(_rule.name, _rule, origin=__name__, builtin=True)

__all__ = ["RemaskingRule", "get_remasking_rule", "probabilities", "register_remasking_rule", "list_remasking_rules"]
