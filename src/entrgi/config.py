"""Validated configuration dataclasses: the sampler (how tokens are committed), the guidance (how a step is
guided) and the search (what is searched: plain sampling, Best-of-N, particles).

Every field is checked in ``__post_init__`` with an error that names the field, the rule and the value, before any
model is touched. ``dataclasses.replace(config, **changes)`` re-validates. The same fields are the CLI flags
(``entrgi.cli``), the YAML keys of evaluation runs and the fields of a server request; one function combines them
(:func:`entrgi.settings.resolve_settings`). Rule, optimiser, remasking and strategy names are checked against their
registries (:mod:`entrgi.registry`, docs/extending.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .registry import (
    GUIDANCE_RULES,
    NO_RULE,
    OPTIMIZERS,
    ORIGIN,
    REMASKING_RULES,
    SEARCH_STRATEGIES,
    check_params,
)
from .reproduction import REFERENCE_SAMPLERS, check_guidance, check_sampler
from .typecheck import check_types

CONFIDENCE_SOURCES = ("prior", "guided")
SCHEDULES = ("linear", "uniform")
SAMPLING = ("inverse_cdf", "gumbel")
KV_CACHE_MODES = ("none", "prefix", "dual")  # entrgi.models.cache
POTENTIALS = ("diff", "value")

# ---- documented limits (docs/performance.md, "Limits"): beyond them a run takes hours, its memory grows without
# bound, or its floats overflow to inf/NaN (which would then look like the reward model's fault).
#: Denoising steps T (the masked samplers also need T <= max_new_tokens: :func:`check_masked_steps`).
MAX_STEPS = 1 << 16
#: Trajectories K per prompt.
MAX_NUM_SAMPLES = 1024
#: Inner optimisation steps M per denoising step.
MAX_INNER_STEPS = 100
#: Chunks of the vocabulary per soft embedding: `vocab_chunk` >= ceil(V / this) (:func:`check_vocab_chunk`).
MAX_VOCAB_CHUNKS = 1024
#: Largest temperature, step size `lr`, `kl_weight` or λ; smallest positive temperature.
MAX_SCALE = 1e6
MIN_TEMPERATURE = 1e-6


def rule_choices() -> tuple[str, ...]:
    """Every valid ``GuidanceConfig.rule``: ``none`` (no guidance), then the registered guidance rules."""
    return (NO_RULE, *GUIDANCE_RULES.names())


def remasking_choices() -> tuple[str, ...]:
    """Every valid ``SamplerConfig.remasking``: origin, then the registered remasking rules."""
    return (ORIGIN, *REMASKING_RULES.names())


def _help(text: str, choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None, **kw: Any) -> Any:
    """A dataclass field whose help text (and allowed values, or a function giving them when a registry
    decides) become its CLI flag's."""
    return field(metadata={"help": text, "choices": choices}, **kw)


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an int in [minimum, maximum]."""
    rng = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer {rng}, got {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be an integer {rng}, got {value}.")


def check_float(name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False, allow_inf: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number in the given interval.

    NaN is always refused, ±inf unless ``allow_inf`` (no field allows it today: an infinite temperature,
    step size or λ gives NaN logits or weights, not a limit)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    rng = f"in {left}{low}, {high}{right}" if high is not None else (f"> {low}" if low_open else f">= {low}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"`{name}` must be a number {rng}, got {value!r}.")
    if not allow_inf and isinstance(value, float) and math.isinf(value):
        raise ValueError(f"`{name}` must be a finite number {rng}, got {value!r}.")
    if value < low or (low_open and value == low):
        raise ValueError(f"`{name}` must be {rng}, got {value}.")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"`{name}` must be {rng}, got {value}.")


def check_limit(name: str, value: float, maximum: float, why: str) -> None:
    """Raise ``ValueError`` when ``value`` (already checked to be a number) exceeds the documented ``maximum``."""
    if value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum:g} ({why}), got {value:g}.")


def check_temperature(name: str, value: float) -> None:
    """A temperature (already checked >= 0): 0, or in [MIN_TEMPERATURE, MAX_SCALE] (logits / τ stay finite)."""
    if value > MAX_SCALE or 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"`{name}` must be 0 or in [{MIN_TEMPERATURE:g}, {MAX_SCALE:g}] (beyond, logits / τ "
                         f"overflow to inf/NaN), got {value:g}.")


def check_masked_steps(sampler: SamplerConfig) -> None:
    """``ValueError`` unless ``steps`` <= ``max_new_tokens``: the masked samplers commit at least one slot per step
    (a canvas model's steps are per canvas and are not checked here)."""
    if sampler.steps > sampler.max_new_tokens:
        raise ValueError(f"`steps` ({sampler.steps}) must be <= `max_new_tokens` ({sampler.max_new_tokens}) for the "
                         "masked diffusion sampler (each step commits at least one of the L slots); set `steps` to "
                         f"at most {sampler.max_new_tokens}.")


def check_vocab_chunk(guidance: GuidanceConfig, vocab_size: int) -> None:
    """``ValueError`` when ``vocab_chunk`` splits a vocabulary of ``vocab_size`` ids into more than
    :data:`MAX_VOCAB_CHUNKS` chunks per soft embedding (hours of tiny matmuls)."""
    chunk = guidance.vocab_chunk
    if chunk is not None and guidance.soft_top_k is None and -(-vocab_size // chunk) > MAX_VOCAB_CHUNKS:
        least = -(-vocab_size // MAX_VOCAB_CHUNKS)
        raise ValueError(f"`vocab_chunk` = {chunk} splits the vocabulary of {vocab_size} ids into "
                         f"{-(-vocab_size // chunk)} chunks per soft embedding (at most {MAX_VOCAB_CHUNKS}): use "
                         f"`vocab_chunk` >= {least}, or None (one dense pass).")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (suggesting close spellings)."""
    if value not in choices:
        close = difflib.get_close_matches(value, list(choices), n=3) if isinstance(value, str) else []
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.{hint}")


@dataclass(frozen=True)
class SamplerConfig:
    """How the masked diffusion LM commits tokens (Dream's sampler, with LLaDA's blocks as an option)."""

    max_new_tokens: int = _help("Response length L (masked slots appended to the prompt).", default=128)
    steps: int = _help("Denoising steps T over the whole response (split evenly over the blocks when `block_length` is "
                       f"set); at most {MAX_STEPS}, and for the masked samplers at most `max_new_tokens`; canvas "
                       "models (DiffusionGemma): the most denoising steps per canvas.", default=128)
    num_samples: int = _help(f"Trajectories K per prompt, at most {MAX_NUM_SAMPLES}.", default=4)
    temperature: float = _help(f"Sampling temperature τ; 0 = greedy, else in [{MIN_TEMPERATURE:g}, {MAX_SCALE:g}] "
                               "(canvas models: 0 = argmax canvases, the default 0.7 = the model's t_max -> t_min "
                               "schedule).", default=0.7)
    top_p: float = _help("Nucleus filter for sampled tokens, in (0, 1].", default=0.95)
    top_k: int | None = _help("Keep only the top-k ids when sampling (None = off).", default=None)
    sampling: str = _help(
        "How a token is drawn: inverse_cdf (one uniform per position) or gumbel (LLaDA: float64 Gumbel-max "
        "over the vocabulary). Same distribution, different random numbers.", default="inverse_cdf", choices=SAMPLING)
    remasking: str = _help(
        "Which masked positions to commit: origin (random), maskgit_plus (prob. of the draw), topk_margin "
        "(p1 - p2), entropy (-H, the paper's choice), low_confidence (LLaDA: softmax(logits) prob. of the draw, τ-free), "
        "random, or a registered rule (docs/extending.md). APS's anchored remasking is maskgit_plus with "
        "confidence_from=guided (the old spelling `anchored` is read so by the settings resolution).",
        default="entropy", choices=lambda: (*remasking_choices(), "anchored"))
    remasking_temperature: float = _help(
        "0 = commit the top-n confidences; > 0 = draw positions from softmax(confidence / this).", default=0.0)
    confidence_from: str = _help(
        "Logits that rank positions: prior (pre-guidance, the paper's code) or guided (APS's anchored remasking).",
        default="prior", choices=CONFIDENCE_SOURCES)
    deprioritize_eos: bool = _help("Give sampled EOS candidates confidence -inf (committed last).", default=True)
    match_released: bool = _help(
        "Reproduce the authors' released code where the project deliberately differs (docs/differences.md): "
        "only <|endoftext|> is EOS (so <|im_end|> is an ordinary token: not committed last, does not end the "
        "RM's view); the response text is the decode of all L slots with special tokens skipped (text after "
        "an EOS kept, nothing stripped); prompts are used raw (eval prompt sets: not stripped, empty ones "
        "kept). False = the project's rule: cut at the first EOS of the model's set, strip. Also the released "
        "code's numerics, token for token: float32 top-p / confidences / draws, non-token ids kept, its RM view "
        "and inner loop (docs/differences.md).", default=False)
    match_reference: str | None = _help(
        "Reproduce a family's own unguided sampler token for token: dream (diffusion_generate), llada (generate.py); "
        "None = off (docs/differences.md).", default=None, choices=REFERENCE_SAMPLERS)
    eps: float = _help("Dream's schedule end point: ts = linspace(1, eps, T + 1).", default=1e-3)
    schedule: str = _help("Commit counts: linear (Dream, int(n(1 - s/t))) or uniform (LLaDA, n/T per step).",
                          default="linear", choices=SCHEDULES)
    block_length: int | None = _help(
        "LLaDA-style semi-autoregressive blocks of this many tokens (None = one block over the response).",
        default=None)
    seed: int = _help("Run seed; each (prompt, sample) gets its own stream derived from it.", default=0)
    batch_size: int | None = _help("Rows (prompt x sample) per forward pass (None = all at once).", default=None)
    min_new_tokens: int = _help(
        "No EOS in the first this-many response slots (EOS logits −inf there), so every response has at least "
        "this many tokens; in [0, max_new_tokens] (as HF generate's).", default=0)
    kv_cache: str = _help(
        "APPROXIMATION, Dream/LLaDA with blocks: DLLM keys/values computed once per block and reused for its "
        "steps: prefix (prompt + finished blocks) or dual (also the blocks after it); none = exact.",
        default="none", choices=KV_CACHE_MODES)
    parallel_threshold: float | None = _help(
        "Parallel (threshold) decoding, as Fast-dLLM: also commit every candidate of the current block whose "
        "drawn token has probability > this under the confidence logits (softmax(logits/τ)); T becomes a "
        "maximum (a block ends once it has no masked slot). In [0, 1]; 1.0 adds nothing; None = off.",
        default=None)

    # ---- canvas (block diffusion) models only: DiffusionGemma (entrgi.sampling.canvas); None = the model's own ----
    entropy_bound: float | None = _help(
        "Canvas models: accept the lowest-entropy tokens while sum(H) - max(H) <= this (native default 0.1).",
        default=None)
    t_min: float | None = _help("Canvas models: temperature at the last denoising step (native default 0.4).",
                                default=None)
    t_max: float | None = _help("Canvas models: temperature at the first denoising step (native default 0.8).",
                                default=None)
    stability_threshold: int | None = _help(
        "Canvas models: adaptive stop once the argmax canvas stayed unchanged this many steps (native default 1).",
        default=None)
    confidence_threshold: float | None = _help(
        "Canvas models: adaptive stop once the mean entropy of the tempered logits is below this (native default "
        "0.005).", default=None)

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_int("steps", self.steps, 1)
        check_limit("steps", self.steps, MAX_STEPS, "the documented limit; the masked samplers need steps <= "
                    "max_new_tokens")
        check_int("num_samples", self.num_samples, 1)
        check_limit("num_samples", self.num_samples, MAX_NUM_SAMPLES, "the documented limit; more samples per prompt "
                    "need memory without bound")
        check_float("temperature", self.temperature, 0.0)
        check_temperature("temperature", self.temperature)
        check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if self.top_k is not None:
            check_int("top_k", self.top_k, 1)
        check_choice("sampling", self.sampling, SAMPLING)
        if self.remasking == "anchored":
            raise ValueError("`remasking` 'anchored' is APS's anchored remasking: give remasking='maskgit_plus' and "
                             "confidence_from='guided' (the CLI, YAML and requests still read 'anchored' so).")
        check_choice("remasking", self.remasking, remasking_choices())
        check_float("remasking_temperature", self.remasking_temperature, 0.0)
        check_temperature("remasking_temperature", self.remasking_temperature)
        check_choice("confidence_from", self.confidence_from, CONFIDENCE_SOURCES)
        if not isinstance(self.deprioritize_eos, bool):
            raise ValueError(f"`deprioritize_eos` must be True or False, got {self.deprioritize_eos!r}.")
        if not isinstance(self.match_released, bool):
            raise ValueError(f"`match_released` must be True or False, got {self.match_released!r}.")
        if self.match_reference is not None:
            check_choice("match_reference", self.match_reference, REFERENCE_SAMPLERS)
        check_float("eps", self.eps, 0.0, 1.0, low_open=True, high_open=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.block_length is not None:
            check_int("block_length", self.block_length, 1, self.max_new_tokens)
            if self.max_new_tokens % self.block_length:
                raise ValueError(
                    f"`max_new_tokens` ({self.max_new_tokens}) must be a multiple of `block_length` "
                    f"({self.block_length}).")
            if self.steps % self.num_blocks:
                raise ValueError(f"`steps` ({self.steps}) must be a multiple of the number of blocks "
                                 f"(max_new_tokens / block_length = {self.num_blocks}).")
        check_int("seed", self.seed, 0)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        check_int("min_new_tokens", self.min_new_tokens, 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"`min_new_tokens` must be <= `max_new_tokens` ({self.max_new_tokens}), got "
                             f"{self.min_new_tokens}.")
        check_choice("kv_cache", self.kv_cache, KV_CACHE_MODES)
        if self.parallel_threshold is not None:
            check_float("parallel_threshold", self.parallel_threshold, 0.0, 1.0)
        if self.entropy_bound is not None:
            check_float("entropy_bound", self.entropy_bound, 0.0, low_open=True)
        for name in ("t_min", "t_max"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), 0.0)
                check_temperature(name, getattr(self, name))
        if self.t_min is not None and self.t_max is not None and self.t_max <= self.t_min:
            raise ValueError(f"`t_max` ({self.t_max}) must be > `t_min` ({self.t_min}).")
        if self.stability_threshold is not None:
            check_int("stability_threshold", self.stability_threshold, 0)
        if self.confidence_threshold is not None:
            check_float("confidence_threshold", self.confidence_threshold, 0.0, low_open=True)
        check_types(self)  # every field by its annotation (the checks above give the range messages)
        check_sampler(self)  # a reproduction mode: only the reference's settings

    @property
    def num_blocks(self) -> int:
        return 1 if self.block_length is None else self.max_new_tokens // self.block_length

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


class Params(dict):
    """The parameters of a guidance rule or optimiser: an immutable, hashable name -> value mapping (a ``dict``, so
    it prints and serialises as one). Change them with ``dataclasses.replace`` on the config."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("rule and optimizer parameters are read-only: use dataclasses.replace on the config.")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __reduce__(self):
        return Params, (dict(self),)


@dataclass(frozen=True)
class GuidanceConfig:
    """How a denoising step is guided: the rule (the RM's input), the inner loop (M steps of an optimiser on φ),
    its cost switches and its schedule. ``rule="none"`` samples without guidance."""

    rule: str = _help(
        "none (no guidance), expectation (w = 0), aps (w = 1, straight-through), entrgi (w = normalised entropy), "
        "or a registered guidance rule (docs/extending.md).", default="entrgi", choices=rule_choices)
    rule_params: Mapping[str, Any] = _help(
        "The rule's own parameters (name: value; docs/extending.md); the rule's defaults for the others.",
        default_factory=Params)
    inner_steps: int = _help(f"Optimisation steps M on the logits per denoising step, at most {MAX_INNER_STEPS}.",
                             default=3)
    optimizer: str = _help("adam (released code, fresh state each step), ascent (poster: φ += lr·∇R) or a "
                           "registered optimizer (docs/extending.md).", default="adam",
                           choices=lambda: tuple(OPTIMIZERS.names()))
    optimizer_params: Mapping[str, Any] = _help("The optimizer's own parameters (name: value).",
                                                default_factory=Params)
    lr: float = _help(f"Step size η on the logits (Adam's lr; for ascent lr = 1/β), in (0, {MAX_SCALE:g}].",
                      default=0.5)
    entropy_temperature: float | None = _help(
        "Temperature of the entropy in w; 1.0 as the released code, None = the sampling τ (the formula).",
        default=1.0)
    relaxation_temperature: float | None = _help(
        "Temperature of q = softmax(φ/·) for the soft and hard embeddings; None = the sampling τ.", default=None)
    hard_top_p: float | None = _help("Top-p of the hard sample ẽ; None = the sampler's top_p.", default=None)
    # ---- cost switches (docs/performance.md). The first three keep results (to float rounding). ----
    prefix_cache: bool = _help(
        "Encode the RM's prompt prefix once per batch and reuse its keys/values at every inner and denoising "
        "step (causal decoder RMs; others run the whole row). Same rewards to float rounding.", default=True)
    vocab_chunk: int | None = _help(
        "Ids per chunk when the soft embedding q·E and its gradient are computed over the vocabulary in "
        "chunks (no (n, V) intermediates besides the gradient); None = one dense softmax and matmul. Same "
        f"values to float rounding. At most {MAX_VOCAB_CHUNKS} chunks: at least V / {MAX_VOCAB_CHUNKS}.", default=4096)
    compile: bool = _help(
        "torch.compile the reward model's forward (off: measured not to pay on CPU; see docs/performance.md).",
        default=False)
    soft_top_k: int | None = _help(
        "APPROXIMATION, changes results: the soft embedding uses only the k most likely ids (renormalised), "
        "and only their logits get a gradient. None = exact.", default=None)
    # ---- guidance schedules (entrgi.guidance.schedules): the defaults guide every row at every step ----
    guide_every: int = _help("Guide only at the steps 0, k, 2k, ... of each block (1 = every step).", default=1)
    guide_until: float = _help(
        "Guide a row only while less than this fraction of its response is committed, in (0, 1] (1 = always).",
        default=1.0)
    guide_min_weight: float = _help(
        "Guide a row only while the mean EntRGi weight (normalised entropy) of its masked slots is at least "
        "this, in [0, 1] (0 = always).", default=0.0)
    inner_tol: float | None = _help(
        "Stop a row's M inner steps once an inner step raised its reward by less than this (None = run all M).",
        default=None)
    kl_weight: float = _help(
        "λ of the KL penalty: the inner loop maximises R − λ·Σ_slots KL(softmax(φ/τ) ‖ softmax(φ₀/τ)), φ₀ the "
        "prior logits, τ the relaxation temperature (docs/rewards.md, KL penalty); 0 = off (in [0, 1e6]).",
        default=0.0)
    guide_carry: bool = _help(
        "On the steps the schedule does not guide, add the row's last guided logit shift (guided − prior "
        "logits, per slot) to the prior logits of its still-masked slots, so the guidance keeps steering "
        "without RM passes. Off = unguided steps use the prior logits alone.", default=False)

    def __post_init__(self) -> None:
        check_choice("rule", self.rule, rule_choices())
        params = {} if self.rule == NO_RULE else GUIDANCE_RULES.get(self.rule).params
        check_params(f"guidance rule {self.rule!r} (`rule_params`)", params, self.rule_params)
        object.__setattr__(self, "rule_params", Params(self.rule_params))
        check_int("inner_steps", self.inner_steps, 0)
        check_limit("inner_steps", self.inner_steps, MAX_INNER_STEPS, "the documented limit; the cost grows linearly")
        check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS.names()))
        check_params(f"optimizer {self.optimizer!r} (`optimizer_params`)", OPTIMIZERS.get(self.optimizer).params,
                     self.optimizer_params)
        object.__setattr__(self, "optimizer_params", Params(self.optimizer_params))
        check_float("lr", self.lr, 0.0, low_open=True)
        check_limit("lr", self.lr, MAX_SCALE, "a larger step overflows the guided logits to inf/NaN")
        if self.entropy_temperature is not None:
            check_float("entropy_temperature", self.entropy_temperature, 0.0)
            check_temperature("entropy_temperature", self.entropy_temperature)
        if self.relaxation_temperature is not None:
            check_float("relaxation_temperature", self.relaxation_temperature, 0.0, low_open=True)
            check_temperature("relaxation_temperature", self.relaxation_temperature)
        if self.hard_top_p is not None:
            check_float("hard_top_p", self.hard_top_p, 0.0, 1.0, low_open=True)
        for name in ("prefix_cache", "compile", "guide_carry"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.vocab_chunk is not None:
            check_int("vocab_chunk", self.vocab_chunk, 1)
        if self.soft_top_k is not None:
            check_int("soft_top_k", self.soft_top_k, 1)
        check_int("guide_every", self.guide_every, 1)
        check_float("guide_until", self.guide_until, 0.0, 1.0, low_open=True)
        check_float("guide_min_weight", self.guide_min_weight, 0.0, 1.0)
        if self.inner_tol is not None:
            check_float("inner_tol", self.inner_tol, 0.0)
        check_float("kl_weight", self.kl_weight, 0.0)
        check_limit("kl_weight", self.kl_weight, MAX_SCALE, "a larger λ overflows the inner loop's objective")
        check_types(self)  # every field by its annotation (the checks above give the range messages)

    @property
    def guided(self) -> bool:
        """True when the logits are optimised (a guidance rule with M >= 1)."""
        return self.rule != NO_RULE and self.inner_steps > 0

    def resolve(self, sampler: SamplerConfig) -> ResolvedGuidance:
        """Fill the ``None`` temperatures / top-p from the sampler and check the pair is coherent."""
        check_guidance(sampler, self)  # a reproduction mode: only the reference's guidance
        relax = sampler.temperature if self.relaxation_temperature is None else self.relaxation_temperature
        if self.guided and relax == 0:
            raise ValueError(
                "`relaxation_temperature` must be > 0 for guided methods: with the sampler's `temperature` = 0 "
                "(greedy) the soft embedding softmax(φ/0) is one-hot and has no gradient. Set "
                "`relaxation_temperature` (e.g. 1.0) or a positive `temperature`.")
        if self.rule != NO_RULE and self.inner_steps == 0:
            warnings.warn(f"`inner_steps` = 0: rule {self.rule!r} leaves the logits unchanged "
                          "(identical to rule 'none').", stacklevel=3)
        ent = sampler.temperature if self.entropy_temperature is None else self.entropy_temperature
        top_p = sampler.top_p if self.hard_top_p is None else self.hard_top_p
        return ResolvedGuidance(self, relaxation_temperature=relax, entropy_temperature=ent, hard_top_p=top_p,
                                top_k=sampler.top_k)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def _deprecated_method(init: Callable[..., None]) -> Callable[..., None]:
    """``GuidanceConfig(method=...)``, the old spelling: a rule name (or ``none``) is the ``rule``, with a warning;
    the search spellings (``best_of_n``, particles) are an error that says where they went."""
    def __init__(self, *args: Any, method: str | None = None, **kwargs: Any) -> None:
        if method is not None:
            if method not in rule_choices():
                raise ValueError(f"`method` {method!r} is not a guidance rule: what is searched is "
                                 "`SearchConfig.strategy` now (e.g. generate(..., search=SearchConfig('best_of_n'))), "
                                 "and `GuidanceConfig.rule` is the guidance rule.")
            if "rule" in kwargs and kwargs["rule"] != method:
                raise ValueError(f"give `rule` only (`method` {method!r} is its old name).")
            warnings.warn("GuidanceConfig(method=...) is deprecated: use rule=...", DeprecationWarning, stacklevel=2)
            kwargs["rule"] = method
        init(self, *args, **kwargs)
    __init__.__wrapped__ = init  # type: ignore[attr-defined]
    return __init__


GuidanceConfig.__init__ = _deprecated_method(GuidanceConfig.__init__)  # type: ignore[method-assign]


@dataclass(frozen=True)
class SearchConfig:
    """What is searched for each prompt, whatever the guidance rule: ``sample`` (K independent trajectories),
    ``best_of_n`` (K trajectories ranked by the reward: it needs one), ``particles`` (K particles resampled by the
    reward of their predicted completion, sequential Monte Carlo: docs/method.md §4) or a registered strategy.
    K is ``SamplerConfig.num_samples``. The other fields are the particles' (docs/method.md (10))."""

    strategy: str = _help("sample (K trajectories), best_of_n (K ranked by the reward), particles (SMC over K) or a "
                          "registered search strategy.", default="sample",
                          choices=lambda: tuple(SEARCH_STRATEGIES.names()))
    resample_every: int = _help("particles: steps between weightings / resamplings (r).", default=4)
    lam: float = _help("particles: λ in the weight exp(λ·potential).", default=1.0)
    potential: str = _help("particles: diff = r_now − r at the last resampling (FK steering); value = r_now.",
                           default="diff", choices=POTENTIALS)
    ess_threshold: float = _help("particles: resample when ESS < this × K (1.0: at every interval unless the "
                                 "weights are uniform).", default=1.0)
    potential_reward: str | None = _help(
        "particles: the reward that weighs the particles, spelled as --reward (e.g. text:MODULE:FUNCTION, code on "
        "the decoded predicted completion); None = the sampler's reward. With a guidance rule, gradients still come "
        "from the differentiable reward (hybrid).", default=None)

    def __post_init__(self) -> None:
        check_choice("strategy", self.strategy, tuple(SEARCH_STRATEGIES.names()))
        check_int("resample_every", self.resample_every, 1)
        check_float("lam", self.lam, 0.0)
        check_limit("lam", self.lam, MAX_SCALE, "a larger λ overflows the weights exp(λ·potential)")
        check_choice("potential", self.potential, POTENTIALS)
        check_float("ess_threshold", self.ess_threshold, 0.0, 1.0)
        if self.potential_reward is not None and (not isinstance(self.potential_reward, str)
                                                  or not self.potential_reward.strip()):
            raise ValueError(f"`potential_reward` must be a reward spelling (str) or None, got "
                             f"{self.potential_reward!r}; pass a reward object to the sampler instead.")
        check_types(self)

    @property
    def needs_reward(self) -> bool:
        """True when the strategy ranks or weighs by a reward (every strategy but ``sample``)."""
        return SEARCH_STRATEGIES.get(self.strategy).needs_reward

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def method_name(guidance: GuidanceConfig, search: SearchConfig | None = None) -> str:
    """The paper's name of a (rule, search) pair, for messages: ``entrgi``, ``best_of_n``, ``particles+entrgi``."""
    strategy = "sample" if search is None else search.strategy
    if strategy == "sample":
        return guidance.rule
    return strategy if guidance.rule == NO_RULE else f"{strategy}+{guidance.rule}"


def to_plain(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-ready data (``Params`` as dicts, tuples as lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


@dataclass(frozen=True)
class ResolvedGuidance:
    """A :class:`GuidanceConfig` with every ``None`` filled in from the sampler."""

    config: GuidanceConfig
    relaxation_temperature: float
    entropy_temperature: float
    hard_top_p: float
    top_k: int | None
