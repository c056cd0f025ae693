"""What the server holds: one DLLM + reward model pair, its default configs and the server's limits."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import GuidanceConfig, SamplerConfig
from ..config import check_float, check_int

#: The id the embedded default pair is served under (``GET /v1/models``).
DEFAULT_PAIR_ID = "entrgi-default-pair"


@dataclass(frozen=True)
class ServerLimits:
    """Caps on what one request may ask for, and how the queue and the batches are sized."""

    max_tokens: int = 256  # cap on `max_tokens` (the response length L)
    max_steps: int = 1024  # cap on `sampler.steps`
    max_inner_steps: int = 32  # cap on `guidance.inner_steps`
    max_samples: int = 16  # cap on `n` and `best_of`
    max_prompts: int = 16  # cap on the prompts of one completions request
    max_batch_rows: int = 64  # rows (prompt x sample) in one sampler batch; also the cap of one request
    max_body_bytes: int = 1 << 20  # larger bodies answer 413
    max_queue: int = 64  # waiting requests; one more answers 429
    timeout_s: float = 300.0  # a request still unanswered after this (queue + run) answers 504
    batching: bool = True  # False: one request per sampler batch
    batch_wait_s: float = 0.002  # after the first request of a batch, wait this long for compatible ones

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_steps", "max_inner_steps", "max_samples", "max_prompts", "max_batch_rows",
                     "max_body_bytes", "max_queue"):
            check_int(name, getattr(self, name), 1)
        check_float("timeout_s", self.timeout_s, 0.0, low_open=True)
        if self.timeout_s == float("inf"):
            raise ValueError("`timeout_s` must be finite.")
        check_float("batch_wait_s", self.batch_wait_s, 0.0, 10.0)
        if not isinstance(self.batching, bool):
            raise ValueError(f"`batching` must be True or False, got {self.batching!r}.")


@dataclass
class Engine:
    """The loaded pair and the settings a request starts from (its fields override them).

    Attributes:
        model: the diffusion LM adapter.
        reward: the reward model, or None (then only ``guidance.rule = "none"`` is served).
        model_id: the name clients pass as ``model``.
        sampler, guidance: the server's default configs (``num_samples`` is set per request from ``n``).
        limits: the caps of :class:`ServerLimits`.
    """

    model: Any
    reward: Any
    model_id: str
    sampler: SamplerConfig
    guidance: GuidanceConfig
    limits: ServerLimits = field(default_factory=ServerLimits)
    reward_id: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if self.reward is None and self.guidance.rule != "none":
            self.guidance = dataclasses.replace(self.guidance, rule="none")

    @property
    def context_length(self) -> int | None:
        return self.model.max_length

    @property
    def chat_template(self) -> bool:
        """Whether prompts are wrapped in the DLLM's chat template (the default pair has none)."""
        return bool(self.model.use_chat_template)

    def model_card(self) -> dict[str, Any]:
        """The ``GET /v1/models`` entry."""
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "entrgi",
                "reward_model": self.reward_id, "chat_template": self.chat_template,
                "context_length": self.context_length, "max_tokens": self.limits.max_tokens,
                "default_sampler": self.sampler.to_dict(), "default_guidance": self.guidance.to_dict()}


def default_pair_engine(device: str = "cpu", limits: ServerLimits | None = None) -> Engine:
    """The embedded default pair with its own settings (``entrgi.default_pair``) as the defaults, n = 1."""
    from ..default_pair import GUIDANCE_DEFAULTS, SAMPLER_DEFAULTS, load_default_pair

    model, reward = load_default_pair(device=device)
    return Engine(model, reward, DEFAULT_PAIR_ID, SamplerConfig(**{**SAMPLER_DEFAULTS, "num_samples": 1}),
                  GuidanceConfig(**GUIDANCE_DEFAULTS), limits or ServerLimits(), reward_id="entrgi-default-pair-rm")


def load_engine(model: str | None = None, reward: str | None = None, *, family: str | None = None,
                reward_template: str = "auto", device: str = "cpu", dtype=None, device_map: str | None = None,
                served_model_name: str | None = None, limits: ServerLimits | None = None) -> Engine:
    """Load the pair once: ``model`` / ``reward`` (hub ids or folders), or the embedded default pair when
    both are None. A DLLM without ``reward`` serves unguided sampling only."""
    if model is None and reward is None:
        engine = default_pair_engine(device, limits)
        if served_model_name:
            engine.model_id = served_model_name
        return engine
    from ..pair import check_differentiable, load_pair

    dllm, rm = load_pair(model, reward, family=family, dtype=dtype, device=device, device_map=device_map,
                         reward_template=reward_template)  # the rule of every front end (entrgi.pair)
    check_differentiable(rm, reward, "serving guided requests")
    sampler = type(dllm).recommended_sampler(num_samples=1)
    guidance = GuidanceConfig() if rm is not None else GuidanceConfig(rule="none")
    return Engine(dllm, rm, served_model_name or model, sampler, guidance, limits or ServerLimits(), reward_id=reward)
