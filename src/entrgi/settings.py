"""One resolution of a run's settings for every entry point (``generate``, ``eval``, ``serve``, lm-eval).

A run is a :class:`RunSettings`: the sampler, the guidance and the search. Its fields come from layers, each
overriding the ones before it:

    the dataclass defaults < the model's defaults < the preset < the config file < the flags / request fields

The model's defaults are the family's recommended sampler (``DiffusionLM.SAMPLER_DEFAULTS``; the embedded
default pair's own settings for it). A layer is a mapping with the sections ``sampler``, ``guidance`` and
``search`` (``particles`` is read as ``search``) and two spellings that stand for several fields:

- ``method``: the paper's names for a (search, rule) pair — ``none``, ``best_of_n``, a guidance rule
  (``expectation``, ``aps``, ``entrgi``, a registered one), and eval's ``aps_anchored``, ``particles``,
  ``particles_entrgi`` (:func:`method_fields`); also accepted inside ``guidance``;
- ``preset``: a registered preset's fields, applied at the preset's place in the order above whichever layer names
  it (the highest layer that names one wins).

When a higher layer sets the length L, the model's own T and block length follow it (:func:`fit_model_defaults`).
A preset with ``steps_fraction`` sets T from the *final* response length and blocks unless a config or flag layer
gives ``steps``. Errors name the field and the layer that set it. The resolved :meth:`RunSettings.to_dict` is
what records carry.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import GuidanceConfig, SamplerConfig, SearchConfig, check_choice, rule_choices
from .default_pair import GUIDANCE_DEFAULTS, SAMPLER_DEFAULTS
from .models.base import transition_name
from .models.registry import detect_family, get_family
from .presets import get_preset
from .registry import NO_RULE
from .reward.registry import split_reward_spec

SECTIONS = {"sampler": SamplerConfig, "guidance": GuidanceConfig, "search": SearchConfig}
#: Eval's method names that stand for a search strategy plus a rule (and APS's anchored remasking).
EVAL_METHODS = {
    "aps_anchored": {"guidance": {"rule": "aps"}, "search": {"strategy": "sample"},
                     "sampler": {"remasking": "maskgit_plus", "confidence_from": "guided"}},
    "particles": {"guidance": {"rule": NO_RULE}, "search": {"strategy": "particles"}},
    "particles_entrgi": {"guidance": {"rule": "entrgi"}, "search": {"strategy": "particles"}},
}
#: The remasking spelling that stands for a rule plus a setting (APS's anchored remasking).
ANCHORED = {"remasking": "maskgit_plus", "confidence_from": "guided"}


@dataclass(frozen=True)
class RunSettings:
    """The resolved settings of a run: every field filled in."""

    sampler: SamplerConfig
    guidance: GuidanceConfig
    search: SearchConfig
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "sampler": self.sampler.to_dict(), "guidance": self.guidance.to_dict(),
                "search": self.search.to_dict()}


def model_defaults(model: Any = None, family: str | None = None) -> dict[str, Any]:
    """The model's layer: for a loaded adapter its family's ``SAMPLER_DEFAULTS`` (and the embedded default pair's
    own settings for its DLLM); for a spelling (a hub id or folder; None = the embedded default pair) the same,
    read from ``config.json`` without loading weights. ``transition`` names the family's step (``masked`` or
    ``canvas``: a canvas model's ``steps`` are per canvas and do not follow the length)."""
    if model is None:
        return {"sampler": dict(SAMPLER_DEFAULTS), "guidance": dict(GUIDANCE_DEFAULTS)}
    if isinstance(model, str):
        cls = get_family(family or detect_family(model))
        return {**cls.checkpoint_defaults(model), "transition": transition_name(cls)}
    return {**{k: dict(v) for k, v in model.settings_defaults.items()},
            "transition": transition_name(model)}


def method_fields(method: str) -> dict[str, dict[str, Any]]:
    """The section fields a ``method`` spelling stands for: ``none`` = no rule, plain sampling; ``best_of_n`` =
    no rule, Best-of-N; a guidance rule = that rule, plain sampling; eval's :data:`EVAL_METHODS`."""
    if method in EVAL_METHODS:
        return {k: dict(v) for k, v in EVAL_METHODS[method].items()}
    if method == "best_of_n":
        return {"guidance": {"rule": NO_RULE}, "search": {"strategy": "best_of_n"}}
    if isinstance(method, str) and method in rule_choices():
        return {"guidance": {"rule": method}, "search": {"strategy": "sample"}}
    check_choice("method", method, [*method_choices(), *EVAL_METHODS])
    raise AssertionError("unreachable: check_choice raised")


def method_choices() -> tuple[str, ...]:
    """Every ``method`` spelling outside eval (``none``, ``best_of_n``, the guidance rules)."""
    return ("none", "best_of_n", *rule_choices()[1:])


def _sections(layer: Mapping[str, Any], source: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """A layer as {section: fields} with its spellings expanded, and the preset it names."""
    if not isinstance(layer, Mapping):
        raise ValueError(f"{source}: settings must be a mapping of sections, got {type(layer).__name__}.")
    unknown = sorted(set(layer) - {*SECTIONS, "particles", "method", "preset", "transition"})
    if unknown:
        raise ValueError(f"{source}: unknown settings {unknown}; known: sampler, guidance, search, method, preset.")
    out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name in (*SECTIONS, "particles"):
        fields = layer.get(name) or {}
        if not isinstance(fields, Mapping):
            raise ValueError(f"{source}: `{name}` must be a mapping of field: value, got {type(fields).__name__}.")
        out["search" if name == "particles" else name].update(fields)
    guidance = out["guidance"]
    method = layer.get("method", guidance.pop("method", None))
    if "method" in layer and "method" in guidance:
        raise ValueError(f"{source}: give `method` once (top level or in `guidance`).")
    if method is not None:
        for section, fields in method_fields(method).items():
            given = {k: v for k, v in out[section].items() if k in fields and v != fields[k]}
            if given:
                raise ValueError(f"{source}: `method` {method!r} and {section}.{next(iter(given))} = "
                                 f"{next(iter(given.values()))!r} disagree: give one.")
            out[section] = {**fields, **out[section]}
    if out["sampler"].get("remasking") == "anchored":
        warnings.warn("`remasking` 'anchored' is read as remasking 'maskgit_plus' with confidence_from 'guided' "
                      "(its spelling since 0.2).", DeprecationWarning, stacklevel=3)
        out["sampler"] = {**out["sampler"], **ANCHORED}
    preset = layer.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ValueError(f"{source}: `preset` must be a preset name, got {preset!r}.")
    return out, preset


def resolve_settings(*, model_defaults: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                     overrides: Mapping[str, Any] | None = None, config_source: str = "the config file",
                     overrides_source: str = "the flags") -> RunSettings:
    """The :class:`RunSettings` of the layers (see the module docstring). ``model_defaults``: the model's layer
    (:func:`entrgi.models.model_defaults`); ``config``: a config file's; ``overrides``: flags or request fields.
    ``*_source`` name the layers in errors."""
    layers = [("the model's defaults", model_defaults or {}), (config_source, config or {}),
              (overrides_source, overrides or {})]
    parsed = [(source, *_sections(layer, source)) for source, layer in layers]
    named = next(((source, p) for source, _, p in reversed(parsed) if p is not None), None)
    preset_name = named[1] if named else None
    try:
        preset = get_preset(preset_name) if preset_name is not None else None
    except ValueError as e:
        raise ValueError(f"`preset`: {e} ({named[0]})") from None
    if preset is not None:  # at its place: above the model's defaults, below the config file
        fields = {"sampler": dict(preset.sampler), "guidance": dict(preset.guidance), "search": dict(preset.search)}
        parsed.insert(1, (f"preset {preset.name!r}", fields, None))
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    origin: dict[tuple[str, str], str] = {}
    for source, sections, _ in parsed:
        for name, fields in sections.items():
            if name == "guidance" and "rule" in fields and "rule_params" not in fields:
                merged[name].pop("rule_params", None)  # another rule: the earlier rule's parameters do not apply
            if name == "guidance" and "optimizer" in fields and "optimizer_params" not in fields:
                merged[name].pop("optimizer_params", None)
            merged[name].update(fields)
            origin.update({(name, k): source for k in fields})
    if layers[0][1].get("transition", "masked") == "masked":  # a canvas model's steps are per canvas
        fit_model_defaults(merged["sampler"], origin, layers[0][1].get("sampler") or {})
    if preset is not None and preset.steps_fraction is not None:
        explicit = any("steps" in sections["sampler"] for source, sections, _ in parsed[2:])
        if not explicit:
            sampler = merged["sampler"]
            length = sampler.get("max_new_tokens", SamplerConfig.max_new_tokens)
            block = sampler.get("block_length")
            if isinstance(length, int) and not isinstance(length, bool):
                sampler["steps"] = preset.steps_for(length, block if isinstance(block, int) else None)
                origin[("sampler", "steps")] = f"preset {preset.name!r} (steps_fraction {preset.steps_fraction})"
    built = {name: _build(name, fields, origin) for name, fields in merged.items()}
    if built["search"].potential_reward is not None:
        try:
            split_reward_spec(built["search"].potential_reward)
        except ValueError as e:
            raise ValueError(f"`search.potential_reward`: {e}") from None
    return RunSettings(built["sampler"], built["guidance"], built["search"], preset_name)


def fit_model_defaults(sampler: dict[str, Any], origin: dict[tuple[str, str], str], model: Mapping[str, Any]) -> None:
    """When a layer above the model's defaults sets the length L, the model's own ``steps`` and ``block_length``
    (written for its own L) follow it: T keeps the model's ratio T / L (T = L for Dream and LLaDA), a block
    length that does not divide L becomes one block, and T is rounded down to a multiple of the blocks."""
    model_source = "the model's defaults"
    length = sampler.get("max_new_tokens")
    if origin.get(("sampler", "max_new_tokens"), model_source) == model_source or not _is_int(length) or length < 1:
        return
    block = sampler.get("block_length")
    if origin.get(("sampler", "block_length")) == model_source and _is_int(block) and (block >= length
                                                                                     or length % block):
        sampler["block_length"] = None
        origin[("sampler", "block_length")] = f"{model_source} (one block: it does not divide L = {length})"
    steps, model_length = sampler.get("steps"), model.get("max_new_tokens")
    if origin.get(("sampler", "steps")) == model_source and _is_int(steps) and _is_int(model_length):
        blocks = length // sampler["block_length"] if _is_int(sampler.get("block_length")) else 1
        fitted = max(1, round(steps * length / model_length))
        sampler["steps"] = max(blocks, fitted - fitted % blocks)
        origin[("sampler", "steps")] = f"{model_source} (T / L = {steps} / {model_length} kept for L = {length})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _build(section: str, fields: dict[str, Any], origin: dict[tuple[str, str], str]) -> Any:
    cls = SECTIONS[section]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        where = origin.get((section, unknown[0]), "the settings")
        raise ValueError(f"`{section}.{unknown[0]}` ({where}) is not a {cls.__name__} field.{hint}")
    try:
        return cls(**fields)
    except ValueError as e:
        named = re.search(r"`([a-z_]+)`", str(e))
        where = origin.get((section, named.group(1))) if named else None
        raise ValueError(f"{e} (`{section}.{named.group(1)}` from {where})" if where else str(e)) from None


__all__ = ["EVAL_METHODS", "RunSettings", "method_choices", "method_fields", "model_defaults", "resolve_settings"]
