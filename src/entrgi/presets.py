"""Named presets: a recommended combination of sampler, guidance and search fields, by name.

``--preset fast`` (``generate``, ``eval``, ``serve``), ``preset: fast`` in an eval YAML or ``"preset": "fast"`` in a
request start from the preset's fields; fields given explicitly still override them (the order of
:func:`entrgi.settings.resolve_settings`: defaults < the model's defaults < preset < config file < flags/request).

``fast``: a quarter as many denoising steps as slots (T = L/4), guidance on every 2nd of them with more inner
steps (M = 5) and a larger step (lr 3.0), the guided logit shift carried over the unguided steps, the soft
embedding over the 512 most likely ids, plus parallel (threshold) decoding on the guided logits: the RM passes
cost what the skipped DLLM forwards cost. The lr is tuned on the default pair (demo lr 1.0; the paper's Dream
default is 0.5): with another pair, start from the preset and set ``--lr``. Chosen on the default pair (L = 16,
K = 4, τ = 0.7) with ``scripts/frontier.py``; the measured frontier is in docs/fast-guidance.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import check_float
from .registry import PRESETS, origin_of


@dataclass(frozen=True)
class Preset:
    """A name for a set of ``SamplerConfig``, ``GuidanceConfig`` and ``SearchConfig`` fields."""

    name: str
    description: str
    sampler: Mapping[str, Any] = field(default_factory=dict)
    guidance: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)
    #: T as a fraction of the response length L (None: keep ``steps``); see :meth:`steps_for`
    steps_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.steps_fraction is not None:
            check_float("steps_fraction", self.steps_fraction, 0.0, 1.0, low_open=True)

    def steps_for(self, max_new_tokens: int, block_length: int | None = None) -> int | None:
        """The preset's T for a response of ``max_new_tokens`` slots: ``steps_fraction`` × L rounded to a
        multiple of the number of blocks, at least one step per block (None without ``steps_fraction``)."""
        if self.steps_fraction is None:
            return None
        blocks = 1 if not block_length else max(1, max_new_tokens // block_length)
        return max(blocks, round(self.steps_fraction * max_new_tokens / blocks) * blocks)


def register_preset(preset: Preset) -> Preset:
    """Register ``preset`` under its name (a built-in name cannot be taken)."""
    if not isinstance(preset, Preset):
        raise ValueError(f"register_preset takes a Preset, got {type(preset).__name__}.")
    return PRESETS.register(preset.name, preset, origin=origin_of(preset))


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (a ``ValueError`` naming the known ones otherwise)."""
    return name if isinstance(name, Preset) else PRESETS.get(name)


def list_presets() -> list[str]:
    """Every registered preset, built-ins first."""
    return PRESETS.names()


PRESETS.register("fast", Preset(
    "fast",
    "EntRGi's reward at no more than the cost of plain sampling: T = L/4 denoising steps (4 slots per step), "
    "guided on every 2nd step with M = 5 inner steps at lr 3.0 and the guided logit shift carried over the "
    "steps between (guide_every=2, inner_steps=5, guide_carry), soft embeddings over the 512 most likely ids "
    "(soft_top_k=512), parallel decoding on the guided logits (commit every slot whose draw has probability "
    "> 0.9): 0.17x full EntRGi's cost and 0.98x plain sampling's (T = L) on the default pair, above EntRGi "
    "on Top@1, Avg@4 and VADER (docs/fast-guidance.md).",
    sampler={"parallel_threshold": 0.9, "confidence_from": "guided"},
    guidance={"guide_every": 2, "inner_steps": 5, "guide_carry": True, "lr": 3.0, "soft_top_k": 512},
    steps_fraction=0.25,
), origin=__name__, builtin=True)

__all__ = ["Preset", "get_preset", "list_presets", "register_preset"]
