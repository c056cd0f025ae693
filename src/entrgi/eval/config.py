"""The evaluation run's configuration: a grid of methods × temperatures × seeds × prompt sets.

Loaded from YAML (``entrgi eval --config run.yaml``) and/or flags. A *method* of the grid is a name with the settings
it runs: an old spelling (``none``, ``best_of_n``, ``entrgi``, ``aps_anchored``, ``particles_entrgi``,
``best_of_n_matched``, ``NAME@N`` …) or a mapping with its own ``preset`` / ``method`` / sections::

    methods:
      - none
      - entrgi
      - {name: fast, preset: fast}
      - {name: bon-fast, method: best_of_n_matched, match: [fast]}

Every cell's settings come from :func:`entrgi.settings.resolve_settings`, the one resolution of every entry point:
the model's defaults < the preset (the method's, else the run's ``preset``) < the run's ``sampler`` / ``guidance``
/ ``search`` sections (the flags override them) < the method's own fields < the grid's τ, seed and N.

Fields that change results (models, the run's resolved sections, judges, metrics) form the run's *identity*: resuming
a run directory with a different identity is refused. The grid axes (methods, τ, seeds, prompt sets) and
``n_prompts`` may change between runs of the same directory: records are keyed per prompt and cell, with the cell's
resolved settings in the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import check_choice, check_float, check_int, method_name
from ..dtypes import DTYPES
from ..pair import check_pair
from ..plugins import load_plugins
from ..reward.registry import composite_spec, split_reward_spec
from ..settings import EVAL_METHODS, RunSettings, method_choices, model_defaults, resolve_settings
from ..typecheck import check_keys, check_types
from .prompts import SUBSAMPLING

#: Best-of-N with N chosen so that its estimated FLOPs match a guided method's (``match``; default the costliest).
MATCHED_BON = "best_of_n_matched"
PARTICLE_METHODS = ("particles", "particles_entrgi")
#: APS as published: straight-through guidance + anchored remasking (commit order from the guided logits).
APS_ANCHORED = "aps_anchored"


def eval_methods() -> tuple[str, ...]:
    """Every valid method spelling of the grid: the generic ones, registered rules included, then eval's own."""
    return (*method_choices(), *EVAL_METHODS, MATCHED_BON)


IDENTITY_FIELDS = ("model", "family", "reward", "reward_template", "dtype", "subsample", "subset_seed", "preset",
                   "sampler", "guidance", "search", "particles", "judges", "distinct_n", "perplexity", "track_reward",
                   "text_reward")
#: Fields of each section that the grid sets per cell (left out of the identity).
GRID_SET = {"sampler": ("temperature", "seed", "num_samples"), "guidance": (), "search": ()}


def split_method(method: str) -> tuple[str, int | None]:
    """``"best_of_n@16"`` -> ("best_of_n", 16): a method with its own number of samples / particles."""
    base, at, n = method.partition("@")
    if not at:
        return base, None
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"`methods`: the count after '@' must be a positive integer, got {method!r}.")
    return base, int(n)


@dataclass(frozen=True)
class MethodEntry:
    """One method of the grid.

    Attributes:
        name: what records and tables call it (unique in the run).
        method: a method spelling (None: the run's guidance and search as they are).
        preset: a preset for this method (None: the run's).
        sampler, guidance, search: its own fields, over the run's sections.
        n: samples (or particles) per prompt (None: ``sampler.num_samples``; ``NAME@N``).
        matched: Best-of-N matched to a cost; match: the methods whose cost it matches (empty: the costliest guided).
        label: the table's label (None: from the name).
    """

    name: str
    method: str | None = None
    preset: str | None = None
    sampler: Mapping[str, Any] = field(default_factory=dict)
    guidance: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)
    n: int | None = None
    matched: bool = False
    match: tuple[str, ...] = ()
    label: str | None = None

    @classmethod
    def parse(cls, entry: str | Mapping[str, Any]) -> MethodEntry:
        """A ``methods`` entry: a spelling (``entrgi``, ``best_of_n@16``) or a mapping (see the module docstring)."""
        if isinstance(entry, str):
            base, n = split_method(entry)
            check_choice("methods", base, eval_methods())
            return cls(entry, None if base == MATCHED_BON else base, n=n, matched=base == MATCHED_BON)
        if not isinstance(entry, Mapping):
            raise ValueError(f"`methods`: an entry must be a method name or a mapping with a `name`, got {entry!r}.")
        known = {f.name for f in dataclasses.fields(cls)} - {"matched"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"`methods`: unknown keys {unknown} in {entry!r}; known: {sorted(known)}.")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"`methods`: a mapping entry needs a `name` (a string), got {entry!r}.")
        method = entry.get("method")
        if method is not None:
            check_choice(f"methods[{name}].method", method, eval_methods())
        for key in ("sampler", "guidance", "search"):
            if not isinstance(entry.get(key, {}), Mapping):
                raise ValueError(f"`methods[{name}].{key}` must be a mapping of field: value.")
        n = entry.get("n")
        matched = method == MATCHED_BON or n == "matched"
        if n == "matched":
            n = None
        elif n is not None:
            check_int(f"methods[{name}].n", n, 1)
        match = entry.get("match", ())
        match = (match,) if isinstance(match, str) else tuple(match)
        if match and not matched:
            raise ValueError(f"`methods[{name}].match` applies to a method at matched compute only ({MATCHED_BON!r} "
                             "or `n: matched`).")
        return cls(name, None if method == MATCHED_BON else method, entry.get("preset"), dict(entry.get("sampler", {})),
                   dict(entry.get("guidance", {})), dict(entry.get("search", {})), n, matched, match,
                   entry.get("label"))

    @property
    def layer(self) -> dict[str, Any]:
        """Its fields as a settings layer (:func:`entrgi.settings.resolve_settings`)."""
        method = "best_of_n" if self.matched and self.method is None and not self.search else self.method
        out: dict[str, Any] = {"sampler": dict(self.sampler), "guidance": dict(self.guidance),
                               "search": dict(self.search)}
        if method is not None:
            out["method"] = method
        if self.preset is not None:
            out["preset"] = self.preset
        return out


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
    threads: int | None = _h("CPU threads of torch (None = torch's default).", default=None)
    prompt_sets: tuple[str, ...] = _h("Prompt sources (continuations, instructions, rm-bench, judgebench, "
                                      "reward-bench-2, file:PATH[:FIELD], hf:DATASET:SPLIT:FIELD).",
                                      default=("continuations",))
    n_prompts: int | None = _h("Prompts per set and seed (None = all).", default=None)
    subsample: str = _h("paper (shuffle with the seed, first n), fixed (one subset), none.", default="paper")
    subset_seed: int = _h("Shuffle seed of the fixed subset.", default=0)
    preset: str | None = _h("A preset for every method without its own (docs/fast-guidance.md).", default=None)
    methods: tuple = _h(f"Methods to compare: none, best_of_n, expectation, aps, entrgi (or a registered guidance "
                        f"rule), {APS_ANCHORED}, {MATCHED_BON}, {', '.join(PARTICLE_METHODS)}; 'NAME@N' runs N "
                        "samples (e.g. best_of_n@16); in YAML also {name, method, preset, sampler, guidance, search, "
                        "n, match, label} mappings.", default=("best_of_n", "expectation", "aps", "entrgi"))
    temperatures: tuple[float, ...] = _h("Sampling temperatures τ.", default=(0.1, 0.7))
    seeds: tuple[int, ...] = _h("Seeds (each its own prompt subset under `paper` subsampling).", default=(1, 2, 3))
    sampler: dict = _h("SamplerConfig fields of every method (not temperature/seed: the grid sets them).",
                       default_factory=dict)
    guidance: dict = _h("GuidanceConfig fields of every method.", default_factory=dict)
    search: dict = _h("SearchConfig fields of every method (the particle settings).", default_factory=dict)
    particles: dict = _h("The particle settings (SearchConfig fields; read as `search`).", default_factory=dict)
    judges: tuple[str, ...] = _h("Held-out judges: vader, rm:PATH, lmunit:PATH.", default=("vader",))
    prompts_per_batch: int = _h("Prompts generated together (x num_samples rows per forward).", default=8)
    distinct_n: tuple[int, ...] = _h("n of the distinct-n diversity metric.", default=(1, 2))
    perplexity: bool = _h("DLLM pseudo-perplexity of the outputs (one forward per token).", default=True)
    track_reward: bool = _h("Record the RM estimate of the predicted completion at every step (counted apart from "
                            "the method's cost).", default=True)
    matched_bon_n: int | None = _h("N of best_of_n_matched (None = matched on estimated FLOPs).", default=None)
    text_reward: str | None = _h(
        "A reward on decoded text (text:MODULE:FUNCTION or text:FILE.py:FUNCTION; any reward spelling) that picks the "
        "Top@1 of the Best-of-N methods and weighs the particles (particles_entrgi: hybrid, gradients still from "
        "`reward`, or the default pair's RM); records keep `reward`'s scores and add this one's under `selection`. "
        "None = `reward` does both.", default=None)
    plugins: tuple[str, ...] = _h("Python files or modules imported first (they register guidance rules, remasking "
                                  "rules or rewards; docs/extending.md); paths relative to the working directory.",
                                  default=())

    def __post_init__(self) -> None:
        if isinstance(self.reward, (list, tuple)):  # YAML `reward: [{spec: ..., weight: ...}, ...]`: a weighted sum
            try:
                object.__setattr__(self, "reward", composite_spec(self.reward))
            except ValueError as e:
                raise ValueError(f"`reward`: {e}") from None
        for name in ("prompt_sets", "methods", "temperatures", "seeds", "judges", "distinct_n", "plugins"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)) or (name == "methods" and isinstance(value, Mapping)):
                value = (value,)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
            if not value and name != "plugins":
                raise ValueError(f"`{name}` must not be empty.")
        check_types(self)  # by annotation: a string is not a boolean, a number not a path or a list
        load_plugins(self.plugins)  # first: they may register the methods and rules named below
        entries = self.entries
        names = [e.name for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"`methods`: the names {dup} appear twice; give each method its own name.")
        for e in entries:
            unknown = [m for m in e.match if m not in names]
            if unknown:
                raise ValueError(f"`methods[{e.name}].match`: no method named {unknown[0]!r} in the run.")
        for t in self.temperatures:
            check_float("temperatures", t, 0.0)
        for s in self.seeds:
            check_int("seeds", s, 0)
        for n in self.distinct_n:
            check_int("distinct_n", n, 1)
        if self.n_prompts is not None:
            check_int("n_prompts", self.n_prompts, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        check_choice("subsample", self.subsample, SUBSAMPLING)
        check_int("subset_seed", self.subset_seed, 0)
        check_int("prompts_per_batch", self.prompts_per_batch, 1)
        if self.matched_bon_n is not None:
            check_int("matched_bon_n", self.matched_bon_n, 1)
        check_choice("reward_template", self.reward_template, ("auto", "chat", "plain", "response"))
        if self.text_reward is not None:
            if not isinstance(self.text_reward, str):
                raise ValueError(f"`text_reward` must be a reward spelling such as 'text:MODULE:FUNCTION', got "
                                 f"{self.text_reward!r}.")
            try:
                split_reward_spec(self.text_reward)
            except ValueError as e:
                raise ValueError(f"`text_reward`: {e}") from None
        if self.dtype is not None:
            check_choice("dtype", self.dtype, tuple(DTYPES))
        for grid_key in ("temperature", "seed"):
            if grid_key in self.sampler:
                raise ValueError(f"`sampler.{grid_key}` is set by the grid; use `{grid_key}s` instead.")
        for e in entries:  # every method's settings, validated now (before any model work)
            self.settings(e, self.temperatures[0], self.seeds[0])
        check_pair(self.model, self.reward, [self.method_of(e) for e in entries], flags=("model", "reward"))

    # ---- the methods and their settings -----------------------------------------------------------------------
    @property
    def entries(self) -> list[MethodEntry]:
        """The grid's methods, parsed."""
        return [MethodEntry.parse(m) for m in self.methods]

    def entry(self, name: str) -> MethodEntry:
        return next(e for e in self.entries if e.name == name)

    def config_layer(self) -> dict[str, Any]:
        """The run's own sections as a settings layer (the preset of the methods without their own)."""
        layer = {"sampler": dict(self.sampler), "guidance": dict(self.guidance),
                 "search": {**self.particles, **self.search}}
        if self.preset is not None:
            layer["preset"] = self.preset
        return layer

    def model_layer(self) -> dict[str, Any]:
        """The model's layer before it is loaded: the embedded pair's own settings, or (a hub id or folder) none: the
        runner resolves with the loaded model's (:func:`entrgi.settings.model_defaults`)."""
        return model_defaults(None) if self.model is None else {}

    def settings(self, entry: MethodEntry | str, temperature: float, seed: int, num_samples: int | None = None,
                 model_layer: dict[str, Any] | None = None) -> RunSettings:
        """The resolved settings of one cell (:func:`entrgi.settings.resolve_settings`); ``model_layer``: the loaded
        model's defaults (default :meth:`model_layer`)."""
        entry = self.entry(entry) if isinstance(entry, str) else entry
        layer = entry.layer
        grid = {"temperature": temperature, "seed": seed}
        n = num_samples if num_samples is not None else entry.n
        if n is not None:
            grid["num_samples"] = n
        layer["sampler"] = {**layer["sampler"], **grid}
        return resolve_settings(model_defaults=self.model_layer() if model_layer is None else model_layer,
                                config=self.config_layer(), overrides=layer, config_source="the run's sections",
                                overrides_source=f"method {entry.name!r}")

    def method_of(self, entry: MethodEntry) -> str:
        """The paper's name of ``entry``'s resolved rule and search (``none`` only for plain unguided sampling: the
        one method that runs without a reward)."""
        s = self.settings(entry, self.temperatures[0], self.seeds[0])
        return method_name(s.guidance, s.search)

    # ---- identity and I/O -----------------------------------------------------------------------------------
    def identity(self, model_layer: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fields that change results, with the run's sections resolved (every default filled in)."""
        d = dataclasses.asdict(self)
        base = resolve_settings(model_defaults=self.model_layer() if model_layer is None else model_layer,
                                config=self.config_layer())
        out = {k: d[k] for k in IDENTITY_FIELDS if k not in ("sampler", "guidance", "search", "particles")}
        for name, section in (("sampler", base.sampler), ("guidance", base.guidance), ("search", base.search)):
            out[name] = {k: v for k, v in section.to_dict().items() if k not in GRID_SET[name]}
        return json.loads(json.dumps(out, default=list))

    def identity_hash(self, model_layer: dict[str, Any] | None = None) -> str:
        return hashlib.sha256(json.dumps(self.identity(model_layer), sort_keys=True,
                                         default=list).encode()).hexdigest()[:16]

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


def describe_difference(name: str, here: Any, stored: Any) -> str:
    """``sampler.top_p: 0.9 here, 0.95 in the run directory`` (per field for the resolved sections)."""
    if isinstance(here, dict) and isinstance(stored, dict) and name in GRID_SET:
        keys = sorted(k for k in set(here) | set(stored) if here.get(k) != stored.get(k))
        return ", ".join(f"{name}.{k}: {here.get(k)!r} here, {stored.get(k)!r} in the run directory" for k in keys)
    return f"{name}: {here!r} here, {stored!r} in the run directory"


#: Settings fields added after records were keyed, with the value that leaves a run as it was: left out of
#: :func:`settings_key` at that value, so the records of runs started before they existed keep their keys.
LATER_FIELDS = {("sampler", "match_reference"): None}


def settings_key(settings: RunSettings) -> str:
    """A short hash of a cell's resolved settings (part of its records' keys); :data:`LATER_FIELDS` at their
    neutral value are left out."""
    d = settings.to_dict()
    for (section, name), neutral in LATER_FIELDS.items():
        if name in d.get(section, {}) and d[section][name] == neutral:
            del d[section][name]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["APS_ANCHORED", "GRID_SET", "IDENTITY_FIELDS", "MATCHED_BON", "PARTICLE_METHODS", "EvalConfig",
           "MethodEntry", "describe_difference", "eval_methods", "settings_key", "split_method"]
