"""The evaluation run's configuration: a grid of methods × temperatures × seeds × prompt sets.

Loaded from YAML (``entrgi eval --config run.yaml``) and/or flags. Fields that change results (models,
sampler and guidance settings, judges, metrics) form the run's *identity*, on resolved values (the
sampler / guidance / particle sections hold every field, defaults filled in): resuming a run directory
with a different identity is refused. The grid axes and ``n_prompts`` may change between runs of the
same directory (results are keyed per prompt and cell).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import GuidanceConfig, SamplerConfig, check_choice, check_float, check_int, methods
from ..dtypes import DTYPES
from ..pair import check_pair
from ..plugins import load_plugins
from ..typecheck import check_keys, check_types
from .prompts import SUBSAMPLING

#: Best-of-N with N chosen so that its estimated FLOPs match the costliest guided method's.
MATCHED_BON = "best_of_n_matched"
PARTICLE_METHODS = ("particles", "particles_entrgi")
#: APS as published: straight-through guidance + anchored remasking (commit order from the guided logits).
APS_ANCHORED = "aps_anchored"


def eval_methods() -> tuple[str, ...]:
    """Every valid entry of ``methods`` (before any ``@N``): the guidance methods, registered rules included,
    then the eval-only ones."""
    return (*methods(), APS_ANCHORED, MATCHED_BON, *PARTICLE_METHODS)


IDENTITY_FIELDS = ("model", "family", "reward", "reward_template", "dtype", "subsample", "subset_seed", "sampler",
                   "guidance", "particles", "judges", "distinct_n", "perplexity", "track_reward", "text_reward")
#: Methods whose pick (and particle weights) a `text_reward` takes over: they only score decoded samples.
TEXT_SELECTED = ("best_of_n", MATCHED_BON, *PARTICLE_METHODS)
#: Fields of each section that the grid sets per cell (left out of the identity).
GRID_SET = {"sampler": ("temperature", "seed"), "guidance": ("method",), "particles": ("guided",)}


def split_method(method: str) -> tuple[str, int | None]:
    """``"best_of_n@16"`` -> ("best_of_n", 16): a method with its own number of samples / particles."""
    base, at, n = method.partition("@")
    if not at:
        return base, None
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"`methods`: the count after '@' must be a positive integer, got {method!r}.")
    return base, int(n)


def _h(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run (see ``configs/*.yaml`` for examples)."""

    out: str = _h("Run directory (results JSONL, run.json, report).", default="runs/eval")
    model: str | None = _h("Diffusion LM (hub id or folder); None = the embedded default pair.", default=None)
    family: str | None = _h("Model family adapter (None = detect).", default=None)
    reward: str | None = _h("Guiding reward: an HF classifier (hub id or folder), text:MODULE:FUNCTION, "
                            "likelihood:PATH_OR_ID, a registered KIND:TARGET, or a weighted sum W1*SPEC1+W2*SPEC2 "
                            "(in YAML also a list of {spec, weight}) (needs `model`; None = the default "
                            "pair's, or no reward when `model` is set and every method is none).", default=None)
    reward_template: str = _h("How the RM sees (prompt, response): auto/chat/plain/response.", default="auto")
    dtype: str | None = _h("Weights dtype for hub models (float32/bfloat16/float16).", default=None)
    device: str | None = _h("Device (None = cuda:LOCAL_RANK if available, else cpu).", default=None)
    prompt_sets: tuple[str, ...] = _h("Prompt sources (continuations, instructions, rm-bench, judgebench, "
                                      "reward-bench-2, file:PATH[:FIELD], hf:DATASET:SPLIT:FIELD).",
                                      default=("continuations",))
    n_prompts: int | None = _h("Prompts per set and seed (None = all).", default=None)
    subsample: str = _h("paper (shuffle with the seed, first n), fixed (one subset), none.", default="paper")
    subset_seed: int = _h("Shuffle seed of the fixed subset.", default=0)
    methods: tuple[str, ...] = _h("Methods to compare: none, best_of_n, expectation, aps, entrgi (or a registered "
                                  f"guidance rule), {APS_ANCHORED}, {MATCHED_BON}, {', '.join(PARTICLE_METHODS)}; "
                                  "'NAME@N' runs N samples (e.g. best_of_n@16).",
                                  default=("best_of_n", "expectation", "aps", "entrgi"))
    temperatures: tuple[float, ...] = _h("Sampling temperatures τ.", default=(0.1, 0.7))
    seeds: tuple[int, ...] = _h("Seeds (each its own prompt subset under `paper` subsampling).", default=(1, 2, 3))
    sampler: dict = _h("SamplerConfig overrides (not temperature/seed: the grid sets them).", default_factory=dict)
    guidance: dict = _h("GuidanceConfig overrides (not method: the grid sets it).", default_factory=dict)
    particles: dict = _h("ParticleConfig overrides for the particle methods.", default_factory=dict)
    judges: tuple[str, ...] = _h("Held-out judges: vader, rm:PATH, lmunit:PATH.", default=("vader",))
    prompts_per_batch: int = _h("Prompts generated together (x num_samples rows per forward).", default=8)
    distinct_n: tuple[int, ...] = _h("n of the distinct-n diversity metric.", default=(1, 2))
    perplexity: bool = _h("DLLM pseudo-perplexity of the outputs (one forward per token).", default=True)
    track_reward: bool = _h("Record the RM estimate of the predicted completion at every step.", default=True)
    matched_bon_n: int | None = _h("N of best_of_n_matched (None = matched on estimated FLOPs).", default=None)
    text_reward: str | None = _h(
        "A reward on decoded text (text:MODULE:FUNCTION or text:FILE.py:FUNCTION; any reward spelling) that picks the "
        "Top@1 of best_of_n / best_of_n_matched and weighs the particles (particles_entrgi: hybrid, gradients still "
        "from `reward`, or the default pair's RM); records keep `reward`'s scores and add this one's under "
        "`selection`. None = `reward` does both.", default=None)
    plugins: tuple[str, ...] = _h("Python files or modules imported first (they register guidance rules, remasking "
                                  "rules or rewards; docs/extending.md); paths relative to the working directory.",
                                  default=())

    def __post_init__(self) -> None:
        if isinstance(self.reward, (list, tuple)):  # YAML `reward: [{spec: ..., weight: ...}, ...]`: a weighted sum
            from ..reward.registry import composite_spec
            try:
                object.__setattr__(self, "reward", composite_spec(self.reward))
            except ValueError as e:
                raise ValueError(f"`reward`: {e}") from None
        for name in ("prompt_sets", "methods", "temperatures", "seeds", "judges", "distinct_n", "plugins"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                value = (value,)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
            if not value and name != "plugins":
                raise ValueError(f"`{name}` must not be empty.")
        check_types(self)  # by annotation: a string is not a boolean, a number not a path or a list
        load_plugins(self.plugins)  # first: they may register the methods and rules named below
        for m in self.methods:
            check_choice("methods", split_method(m)[0], eval_methods())
        for t in self.temperatures:
            check_float("temperatures", t, 0.0)
        for s in self.seeds:
            check_int("seeds", s, 0)
        for n in self.distinct_n:
            check_int("distinct_n", n, 1)
        if self.n_prompts is not None:
            check_int("n_prompts", self.n_prompts, 1)
        check_choice("subsample", self.subsample, SUBSAMPLING)
        check_int("subset_seed", self.subset_seed, 0)
        check_int("prompts_per_batch", self.prompts_per_batch, 1)
        if self.matched_bon_n is not None:
            check_int("matched_bon_n", self.matched_bon_n, 1)
        check_choice("reward_template", self.reward_template, ("auto", "chat", "plain", "response"))
        if self.text_reward is not None:
            from ..reward.registry import split_reward_spec
            if not isinstance(self.text_reward, str):
                raise ValueError(f"`text_reward` must be a reward spelling such as 'text:MODULE:FUNCTION', got "
                                 f"{self.text_reward!r}.")
            try:
                split_reward_spec(self.text_reward)
            except ValueError as e:
                raise ValueError(f"`text_reward`: {e}") from None
        if self.dtype is not None:
            check_choice("dtype", self.dtype, tuple(DTYPES))
        for grid_key, section in (("temperature", "sampler"), ("seed", "sampler"), ("method", "guidance")):
            if grid_key in getattr(self, section):
                raise ValueError(f"`{section}.{grid_key}` is set by the grid; use `{grid_key}s` instead.")
        for section in GRID_SET:
            check_keys(getattr(self, section), [f.name for f in dataclasses.fields(_section_class(section))],
                       f"field(s) of `{section}`")
        self.sampler_config(self.temperatures[0], self.seeds[0])  # validates the overrides now
        self.guidance_config("entrgi")
        self.particle_config(self.methods[0])  # validated always: the identity holds the resolved values
        check_pair(self.model, self.reward, [self.guidance_config(m).method for m in self.methods],
                   flags=("model", "reward"))

    # ---- derived configs ------------------------------------------------------------------------
    def sampler_config(self, temperature: float, seed: int, num_samples: int | None = None,
                       method: str | None = None) -> SamplerConfig:
        kw = {**self.sampler, "temperature": temperature, "seed": seed}
        if method is not None and split_method(method)[0] == APS_ANCHORED:
            kw["remasking"] = "anchored"
        if num_samples is not None:
            kw["num_samples"] = num_samples
        try:
            return SamplerConfig(**kw)
        except TypeError as e:
            raise ValueError(f"`sampler` has an unknown field: {e}") from e

    def guidance_config(self, method: str) -> GuidanceConfig:
        method = split_method(method)[0]
        if method == APS_ANCHORED:
            method = "aps"
        base = "best_of_n" if method == MATCHED_BON else ("entrgi" if method in PARTICLE_METHODS else method)
        try:
            return GuidanceConfig(**{**self.guidance, "method": base})
        except TypeError as e:
            raise ValueError(f"`guidance` has an unknown field: {e}") from e

    def particle_config(self, method: str):
        from ..sampling.particles import ParticleConfig
        method = split_method(method)[0]
        try:
            return ParticleConfig(**{**self.particles, "guided": method == "particles_entrgi"})
        except TypeError as e:
            raise ValueError(f"`particles` has an unknown field: {e}") from e

    # ---- identity and I/O -----------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The fields that change results, with the sampler / guidance / particle sections resolved."""
        d = dataclasses.asdict(self)
        return resolve_identity({k: d[k] for k in IDENTITY_FIELDS})

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=list).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> EvalConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the YAML must be a mapping of EvalConfig fields.")
        return cls.from_dict({**data, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        check_keys(data, [f.name for f in dataclasses.fields(cls)], "eval config keys")
        return cls(**data)


def _section_class(name: str) -> type:
    if name == "particles":
        from ..sampling.particles import ParticleConfig
        return ParticleConfig
    return {"sampler": SamplerConfig, "guidance": GuidanceConfig}[name]


def resolve_section(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every field of the ``name`` section's dataclass built from ``overrides`` (grid-set fields left out),
    JSON-normalised. Raises ValueError for an unknown field or value."""
    cls = _section_class(name)
    kw = {k: v for k, v in dict(overrides).items() if k not in GRID_SET[name]}
    try:
        obj = cls(**kw)
    except TypeError as e:
        raise ValueError(f"`{name}` has an unknown field: {e}") from e
    d = {k: v for k, v in dataclasses.asdict(obj).items() if k not in GRID_SET[name]}
    return json.loads(json.dumps(d, default=list))


def resolve_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity (as :meth:`EvalConfig.identity` makes it, or as an older run.json stored it: overrides only,
    perhaps without fields added since) with every default filled in, JSON-normalised. A section that no
    longer builds (a field since removed, a value since forbidden) is kept as stored, marked unresolved, so
    that it compares unequal."""
    defaults = json.loads(json.dumps(dataclasses.asdict(EvalConfig()), default=list))
    out = {k: identity.get(k, defaults[k]) for k in IDENTITY_FIELDS}
    out.update({k: v for k, v in identity.items() if k not in out})
    for name in GRID_SET:
        try:
            out[name] = resolve_section(name, out[name] or {})
        except (ValueError, TypeError) as e:
            out[name] = {"unresolved": json.loads(json.dumps(out[name], default=list)), "error": str(e)}
    return json.loads(json.dumps(out, default=list))


def describe_difference(name: str, here: Any, stored: Any) -> str:
    """``sampler.top_p: 0.9 here, 0.95 in the run directory`` (per field for the resolved sections)."""
    if isinstance(here, dict) and isinstance(stored, dict) and name in GRID_SET:
        keys = sorted(k for k in set(here) | set(stored) if here.get(k) != stored.get(k))
        return ", ".join(f"{name}.{k}: {here.get(k)!r} here, {stored.get(k)!r} in the run directory" for k in keys)
    return f"{name}: {here!r} here, {stored!r} in the run directory"
