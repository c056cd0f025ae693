"""What the server holds: one DLLM + reward model pair, its default settings and the server's limits."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..config import GuidanceConfig, SamplerConfig, SearchConfig, check_float, check_int, method_name
from ..registry import NO_RULE
from ..sampling.outputs import CostParameters, cost_parameters
from ..settings import RunSettings, model_defaults, resolve_settings
from .cost import default_request_gflops, is_canvas

#: The id the embedded default pair is served under (``GET /v1/models``).
DEFAULT_PAIR_ID = "entrgi-default-pair"
#: ``max_request_gflops`` = None: this many times the estimated cost of the server's default request.
AUTO_BUDGET_FACTOR = 64


@dataclass(frozen=True)
class ServerLimits:
    """Caps on what one request may ask for, and how the queue and the batches are sized."""

    max_tokens: int = 256  # cap on `max_tokens` (the response length L); the model's context may lower it
    max_steps: int = 1024  # cap on `sampler.steps` (also at most L: every step commits a slot)
    max_inner_steps: int = 32  # cap on `guidance.inner_steps`
    min_vocab_chunk: int = 1024  # smallest `guidance.vocab_chunk` (tiny chunks run a Python loop over the vocabulary)
    max_samples: int = 16  # cap on `n` and `best_of`
    max_prompts: int = 16  # cap on the prompts of one completions request
    max_messages: int = 64  # cap on the messages of one chat request
    max_batch_rows: int = 64  # rows (prompt x sample) in one sampler batch; also the cap of one request
    max_body_bytes: int = 1 << 20  # larger bodies answer 413
    max_json_depth: int = 32  # deeper JSON nesting answers 400
    max_queue: int = 64  # waiting requests; one more answers 429
    timeout_s: float = 300.0  # a request still unanswered after this (queue + run) answers 504; its work stops
    batching: bool = True  # False: one request per sampler batch
    batch_wait_s: float = 0.002  # after the first request of a batch, wait this long for compatible ones
    #: estimated GFLOP (the cost count, docs/performance.md) one request may need; None = auto
    #: (AUTO_BUDGET_FACTOR x the server's default request), inf = no budget
    max_request_gflops: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_steps", "max_inner_steps", "min_vocab_chunk", "max_samples", "max_prompts",
                     "max_messages", "max_batch_rows", "max_body_bytes", "max_json_depth", "max_queue"):
            check_int(name, getattr(self, name), 1)
        check_float("timeout_s", self.timeout_s, 0.0, low_open=True)
        if self.timeout_s == float("inf"):
            raise ValueError("`timeout_s` must be finite.")
        check_float("batch_wait_s", self.batch_wait_s, 0.0, 10.0)
        if not isinstance(self.batching, bool):
            raise ValueError(f"`batching` must be True or False, got {self.batching!r}.")
        if self.max_request_gflops is not None:
            check_float("max_request_gflops", self.max_request_gflops, 0.0, low_open=True, allow_inf=True)


@dataclass
class Engine:
    """The loaded pair and the settings a request starts from (its fields override them).

    Attributes:
        model: the diffusion LM adapter.
        reward: the reward model, or None (then only ``guidance.rule = "none"`` is served).
        model_id: the name clients pass as ``model``.
        sampler, guidance, search: the model's layer of every request's settings (:func:`entrgi.resolve_settings`;
            ``num_samples`` is set per request from ``n``).
        limits: the caps of :class:`ServerLimits`.
        preset, method: the server's ``--preset`` / ``--method``, the config layer of every request's settings
            (a request's own fields, and its ``guidance.preset``, override them).
        stream_block_length: streamed requests that set no ``sampler.block_length`` decode in blocks of about
            this many tokens (semi-autoregressive, so text arrives block by block); None = no blocks.
    """

    model: Any
    reward: Any
    model_id: str
    sampler: SamplerConfig
    guidance: GuidanceConfig
    limits: ServerLimits = field(default_factory=ServerLimits)
    reward_id: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    preset: str | None = None
    method: str | None = None
    stream_block_length: int | None = 4
    search: SearchConfig = field(default_factory=SearchConfig)
    _cost: CostParameters | None = field(default=None, init=False, repr=False)
    _budget: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.stream_block_length is not None:
            check_int("stream_block_length", self.stream_block_length, 1)
        settings = self.defaults()  # a ValueError naming --preset / --method when they do not resolve
        if self.reward is None and needs_reward(settings):
            if self.method is not None or self.preset is not None:
                raise ValueError(f"`--method` / `--preset` ask for {method_name(settings.guidance, settings.search)!r}, "
                                 "which needs `--reward` (without a reward model only 'none' is served).")
            self.guidance = dataclasses.replace(self.guidance, rule="none")

    @property
    def context_length(self) -> int | None:
        return self.model.max_length

    @property
    def chat_template(self) -> bool:
        """Whether prompts are wrapped in the DLLM's chat template (the default pair has none)."""
        return bool(self.model.use_chat_template)

    @cached_property
    def shortest_prompt(self) -> int:
        """Tokens of the shortest prompt: one character, with the chat template around it."""
        return len(self.model.encode_prompt("a"))

    @property
    def max_tokens(self) -> int:
        """The largest ``max_tokens`` a request can get: the cap, lowered so that the shortest prompt still fits
        the model's context."""
        limit = self.context_length
        if limit is None:
            return self.limits.max_tokens
        return max(1, min(self.limits.max_tokens, limit - self.shortest_prompt))

    @property
    def default_max_tokens(self) -> int:
        return min(self.sampler.max_new_tokens, self.max_tokens)

    @property
    def cost_params(self) -> CostParameters:
        """The parameter counts the cost count prices tokens with (computed once)."""
        if self._cost is None:
            self._cost = cost_parameters(self.model, self.reward)
        return self._cost

    @property
    def budget_gflops(self) -> float:
        """The per-request budget: ``limits.max_request_gflops``, or the auto budget (computed once)."""
        if self.limits.max_request_gflops is not None:
            return float(self.limits.max_request_gflops)
        if self._budget is None:
            self._budget = AUTO_BUDGET_FACTOR * default_request_gflops(self)
        return self._budget

    @property
    def config_layer(self) -> dict[str, Any]:
        """The server's ``--preset`` / ``--method``: the config layer of every request's resolution."""
        return {k: v for k, v in (("preset", self.preset), ("method", self.method)) if v is not None}

    def model_layer(self, **sampler_fields: Any) -> dict[str, Any]:
        """The model's layer of a request's resolution: the server's defaults with ``sampler_fields`` over them."""
        return {"sampler": {**self.sampler.to_dict(), "batch_size": None, **sampler_fields},
                "guidance": self.guidance.to_dict(), "search": self.search.to_dict()}

    def defaults(self) -> RunSettings:
        """The settings of a request that sets nothing (one prompt, n = 1, the default length, not streamed)."""
        L = self.default_max_tokens
        steps = {} if is_canvas(self.model) else {"steps": L}  # a canvas model keeps its own steps per canvas
        return resolve_settings(model_defaults=self.model_layer(max_new_tokens=L, num_samples=1, **steps),
                                config=self.config_layer, config_source="the server's --preset / --method")

    def model_card(self) -> dict[str, Any]:
        """The ``GET /v1/models`` entry."""
        settings = self.defaults()
        budget = self.budget_gflops
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "entrgi",
                "reward_model": self.reward_id, "chat_template": self.chat_template,
                "context_length": self.context_length, "max_tokens": self.max_tokens,
                "preset": self.preset, "method": self.method, "stream_block_length": self.stream_block_length,
                "max_request_gflops": None if math.isinf(budget) else round(budget, 1),
                "default_sampler": settings.sampler.to_dict(), "default_guidance": settings.guidance.to_dict(),
                "default_search": settings.search.to_dict()}


def needs_reward(settings: RunSettings) -> bool:
    """Whether the settings optimise through, rank by or weigh by a reward model."""
    return settings.guidance.rule != NO_RULE or settings.search.needs_reward


def default_pair_engine(device: str = "cpu", limits: ServerLimits | None = None, *, preset: str | None = None,
                        method: str | None = None, stream_block_length: int | None = 4) -> Engine:
    """The embedded default pair with its own settings (``entrgi.default_pair``) as the defaults, n = 1."""
    from ..default_pair import GUIDANCE_DEFAULTS, SAMPLER_DEFAULTS, load_default_pair

    model, reward = load_default_pair(device=device)
    return Engine(model, reward, DEFAULT_PAIR_ID, SamplerConfig(**{**SAMPLER_DEFAULTS, "num_samples": 1}),
                  GuidanceConfig(**GUIDANCE_DEFAULTS), limits or ServerLimits(), reward_id="entrgi-default-pair-rm",
                  preset=preset, method=method, stream_block_length=stream_block_length)


def load_engine(model: str | None = None, reward: str | None = None, *, family: str | None = None,
                reward_template: str = "auto", device: str = "cpu", dtype=None, device_map: str | None = None,
                served_model_name: str | None = None, limits: ServerLimits | None = None,
                preset: str | None = None, method: str | None = None,
                stream_block_length: int | None = 4) -> Engine:
    """Load the pair once: ``model`` / ``reward`` (hub ids or folders), or the embedded default pair when
    both are None. A DLLM without ``reward`` serves unguided sampling only. ``preset`` / ``method`` set the
    server's default settings (a request's own fields override them)."""
    if model is None and reward is None:
        engine = default_pair_engine(device, limits, preset=preset, method=method,
                                     stream_block_length=stream_block_length)
        if served_model_name:
            engine.model_id = served_model_name
        return engine
    from ..pair import check_differentiable, load_pair

    dllm, rm = load_pair(model, reward, family=family, dtype=dtype, device=device, device_map=device_map,
                         reward_template=reward_template)  # the rule of every front end (entrgi.pair)
    check_differentiable(rm, reward, "serving guided requests")
    sampler = SamplerConfig(**{**model_defaults(dllm)["sampler"], "num_samples": 1})  # the family's, the checkpoint's
    guidance = GuidanceConfig() if rm is not None else GuidanceConfig(rule="none")
    return Engine(dllm, rm, served_model_name or model, sampler, guidance, limits or ServerLimits(), reward_id=reward,
                  preset=preset, method=method, stream_block_length=stream_block_length)
