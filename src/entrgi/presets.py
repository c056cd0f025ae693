"""Named presets: a recommended combination of sampler and guidance fields, by name.

``entrgi generate --preset fast`` / ``entrgi eval --preset fast`` (or ``preset: fast`` at the top of an eval
YAML) start from the preset's fields; fields given explicitly (flags, the YAML's ``sampler`` / ``guidance``
sections) still override them, and the resolved config (``--json``, ``run.json``) shows the result.

``fast``: a quarter as many denoising steps as slots (T = L/4), guidance on every 2nd of them with more
inner steps (M = 5) and a larger step (lr 3.0), the guided logit shift carried over the unguided steps, the
soft embedding over the 512 most likely ids, plus parallel (threshold) decoding on the guided logits: the RM
passes cost what the skipped DLLM forwards cost. The lr is tuned on the default pair (demo lr 1.0; the
paper's Dream default is 0.5): with another pair, start from the preset and set ``--lr``. Chosen on the
default pair (demo settings, L = 16, K = 4, τ = 0.7) with ``scripts/frontier.py``; the measured frontier is
in docs/fast-guidance.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import GuidanceConfig, SamplerConfig


@dataclass(frozen=True)
class Preset:
    """A name for a set of :class:`SamplerConfig` and :class:`GuidanceConfig` fields."""

    name: str
    description: str
    sampler: Mapping[str, Any] = field(default_factory=dict)
    guidance: Mapping[str, Any] = field(default_factory=dict)
    #: T as a fraction of the response length L (None: keep ``steps``); see :meth:`steps_for`
    steps_fraction: float | None = None

    def steps_for(self, max_new_tokens: int, block_length: int | None = None) -> int | None:
        """The preset's T for a response of ``max_new_tokens`` slots: ``steps_fraction`` × L rounded to a
        multiple of the number of blocks, at least one step per block (None without ``steps_fraction``)."""
        if self.steps_fraction is None:
            return None
        blocks = 1 if not block_length else max(1, max_new_tokens // block_length)
        return max(blocks, round(self.steps_fraction * max_new_tokens / blocks) * blocks)

    def fill_steps(self, fields: Mapping[str, Any], default_length: int = SamplerConfig.max_new_tokens) -> dict:
        """Sampler ``fields`` (a mapping of SamplerConfig fields) with ``steps`` = :meth:`steps_for` their
        ``max_new_tokens`` (``default_length`` when absent) and ``block_length``, unless they give ``steps``
        or the preset has no ``steps_fraction`` (values of the wrong type are left to SamplerConfig)."""
        out = dict(fields)
        length = out.get("max_new_tokens", default_length)
        if self.steps_fraction is not None and "steps" not in out and isinstance(length, int):
            block = out.get("block_length")
            out["steps"] = self.steps_for(length, block if isinstance(block, int) else None)
        return out

    def with_steps(self, sampler: SamplerConfig) -> SamplerConfig:
        """``sampler`` with ``steps`` = :meth:`steps_for` its length and blocks (unchanged without a fraction)."""
        steps = self.steps_for(sampler.max_new_tokens, sampler.block_length)
        return sampler if steps is None else dataclasses.replace(sampler, steps=steps)

    def configs(self, sampler: SamplerConfig | None = None,
                guidance: GuidanceConfig | None = None) -> tuple[SamplerConfig, GuidanceConfig]:
        """``sampler`` and ``guidance`` (default: the defaults) with this preset's fields set (and its
        ``steps`` for the sampler's length)."""
        return (self.with_steps(dataclasses.replace(sampler or SamplerConfig(), **self.sampler)),
                dataclasses.replace(guidance or GuidanceConfig(), **self.guidance))


PRESETS: dict[str, Preset] = {
    "fast": Preset(
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
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ``ValueError`` naming the known ones otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"`preset` must be one of {preset_names()}, got {name!r}.")
    return PRESETS[name]


def add_preset_arg(parser) -> None:
    """The ``--preset NAME`` flag of ``entrgi generate`` / ``entrgi eval``."""
    parser.add_argument("--preset", choices=preset_names(), default=None,
                        help="Start from a named combination of sampler and guidance fields (flags and the YAML's "
                             "sections override it): " + "; ".join(f"{p.name}: {p.description}"
                                                                    for p in PRESETS.values()))


def expand_preset(data: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """An eval config mapping with a preset's fields filled into its ``sampler`` / ``guidance`` sections.

    The preset is ``name`` if given (the ``--preset`` flag), else the mapping's own ``preset`` key (YAML);
    the key is removed either way. Fields the sections already hold win over the preset's."""
    out = dict(data)
    own = out.pop("preset", None)
    name = name if name is not None else own
    if name is None:
        return out
    preset = get_preset(name)
    for section, fields in (("sampler", preset.sampler), ("guidance", preset.guidance)):
        given = out.get(section) or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"`{section}` must be a mapping of field: value, got {type(given).__name__}.")
        out[section] = {**fields, **given}
    out["sampler"] = preset.fill_steps(out["sampler"])
    return out


__all__ = ["PRESETS", "Preset", "add_preset_arg", "expand_preset", "get_preset", "preset_names"]
