"""What :func:`entrgi.generate` returns: samples with rewards, a per-step trace, compute counts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import GuidanceConfig, SamplerConfig


@dataclass
class StepTrace:
    """One denoising step of one sample.

    Attributes:
        step: global step index (blocks run one after another).
        block: block index (0 without blocks).
        masked: masked response slots before this step's commit.
        committed: response positions (0-based within the response) committed at this step.
        entropy_weight: mean EntRGi weight w over the masked slots (pre-guidance logits).
        rewards: RM reward seen before each inner step, then after the last one (M + 1 values;
            empty when the step is not guided).
        grad_norms: ‖∇_φ R‖ over the sample's masked slots at each inner step (M values).
        estimate: RM reward of the predicted completion after this step (``track_reward``), else None.
        resampled_from: particle sampler only: the index (within its prompt) of the particle this one
            was copied from after this step, when a resampling happened.
    """

    step: int
    block: int
    masked: int
    committed: list[int]
    entropy_weight: float | None
    rewards: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    estimate: float | None = None
    resampled_from: int | None = None


@dataclass
class Sample:
    """One trajectory: the decoded response, its tokens, its reward on discrete text, its trace."""

    prompt_index: int
    sample_index: int
    prompt: str
    text: str
    token_ids: list[int]
    reward: float | None = None
    trace: list[StepTrace] | None = None

    def to_dict(self, with_trace: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_trace:
            d.pop("trace")
        return d


@dataclass
class ComputeStats:
    """Work done, counted in rows (one row = one sequence through one model call)."""

    dllm_forwards: int = 0
    rm_forwards: int = 0
    rm_backwards: int = 0
    wall_time_s: float = 0.0

    def add(self, other: ComputeStats) -> None:
        for k in ("dllm_forwards", "rm_forwards", "rm_backwards", "wall_time_s"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class GenerationOutput:
    """``samples[i][k]``: sample k of prompt i."""

    samples: list[list[Sample]]
    sampler: SamplerConfig
    guidance: GuidanceConfig
    stats: ComputeStats

    def best(self, prompt_index: int) -> Sample:
        """The highest-reward sample of a prompt (Best-of-N / Top@1's pick)."""
        group = self.samples[prompt_index]
        if any(s.reward is None for s in group):
            raise ValueError("samples have no rewards: pass a reward model to score them.")
        return max(group, key=lambda s: s.reward)

    def top1(self) -> list[float]:
        """Per prompt, the max reward over its K samples."""
        return [self.best(i).reward for i in range(len(self.samples))]

    def avg(self) -> list[float]:
        """Per prompt, the mean reward over its K samples."""
        return [math.fsum(s.reward for s in g) / len(g) for g in self.samples]

    def to_dict(self, with_trace: bool = True) -> dict[str, Any]:
        return {
            "sampler": self.sampler.to_dict(),
            "guidance": self.guidance.to_dict(),
            "stats": asdict(self.stats),
            "samples": [[s.to_dict(with_trace) for s in g] for g in self.samples],
        }
