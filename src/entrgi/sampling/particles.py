"""Particles: sequential Monte Carlo over the denoising loop, optionally EntRGi-guided (docs/method.md §4, (10)).

The K samples of a prompt are particles; every ``resample_every`` steps each is weighed by the RM on its
predicted completion and a group whose effective sample size is low is resampled systematically. The state
is a typed :class:`ParticleState`; the sampler overrides only the public hooks ``start`` and ``after_step``.
With λ = 0 and no guidance the result equals Best-of-N exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import (GuidanceConfig, ResolvedGuidance, SamplerConfig, check_choice, check_float, check_int,
                      guided_methods)
from ..errors import check_rewards
from ..ops.rng import RowStreams, row_seed
from .outputs import GenerationOutput
from .sampler import MaskedDiffusionSampler
from .state import DenoisingState, StepOutput

POTENTIALS = ("diff", "value")


@dataclass(frozen=True)
class ParticleConfig:
    """Resampling settings of the particle sampler."""

    guided: bool = field(default=False, metadata={"help": "EntRGi-guide every particle (GuidanceConfig applies)."})
    resample_every: int = field(default=4, metadata={"help": "Steps between weightings / resamplings (r)."})
    lam: float = field(default=1.0, metadata={"help": "λ in the weight exp(λ·potential)."})
    potential: str = field(default="diff", metadata={
        "help": "diff: r_now − r_at_last_resampling (FK steering); value: r_now.", "choices": POTENTIALS})
    ess_threshold: float = field(default=1.0, metadata={
        "help": "Resample when ESS < this × K (1.0: at every interval unless the weights are uniform)."})

    def __post_init__(self) -> None:
        if not isinstance(self.guided, bool):
            raise ValueError(f"`guided` must be True or False, got {self.guided!r}.")
        check_int("resample_every", self.resample_every, 1)
        check_float("lam", self.lam, 0.0)
        check_choice("potential", self.potential, POTENTIALS)
        check_float("ess_threshold", self.ess_threshold, 0.0, 1.0)


def systematic_resample(weights: torch.Tensor, u: float) -> torch.Tensor:
    """Ancestor indices (K,) for normalised ``weights`` (K,) with one uniform ``u`` in [0, 1):
    particle j takes the ancestor whose cumulative-weight interval holds (u + j) / K."""
    k = weights.shape[0]
    w = weights.double() / weights.double().sum()
    scaled = k * torch.cumsum(w, 0)  # K·CDF; snap float noise so that equal weights give exact integers
    scaled = torch.where((scaled - scaled.round()).abs() < 1e-9, scaled.round(), scaled)
    points = u + torch.arange(k, dtype=torch.float64, device=weights.device)
    return torch.searchsorted(scaled, points, right=True).clamp(max=k - 1)


def effective_sample_size(weights: torch.Tensor) -> float:
    """1 / Σ w² for normalised weights."""
    return float(1.0 / (weights.double() ** 2).sum())


@dataclass
class ParticleState(DenoisingState):
    """A :class:`~entrgi.sampling.state.DenoisingState` plus the particle weights (docs/method.md (10)).

    Attributes:
        k: particles per prompt (K); rows ``g·K .. g·K + K − 1`` are prompt group g.
        group_streams: one random stream per group (the systematic resampling's uniform).
        log_w: (B,) float64 log-weights, on the CPU.
        last_r: (B,) float64 each particle's reward at the last weighting (the "diff" potential's baseline).
    """

    k: int = 1
    group_streams: RowStreams | None = None
    log_w: torch.Tensor | None = None
    last_r: torch.Tensor | None = None

    @classmethod
    def of(cls, state: DenoisingState, **particles: Any) -> ParticleState:
        """``state``'s fields (the same tensors) with the particle fields ``particles``."""
        return cls(**{f.name: getattr(state, f.name) for f in dataclasses.fields(DenoisingState)}, **particles)


class ParticleSampler(MaskedDiffusionSampler):
    """The masked diffusion loop with Feynman–Kac resampling of each prompt's K particles."""

    def __init__(self, model, reward, particles: ParticleConfig | None = None, bridge=None):
        super().__init__(model, reward, bridge)
        self.particles = particles or ParticleConfig()
        self.resample_log: list[dict[str, Any]] = []

    def particle_guidance(self, guidance: GuidanceConfig | None) -> GuidanceConfig:
        """The guidance the particles run: Best-of-N sampling unless ``particles.guided`` (then EntRGi unless
        ``guidance`` is another gradient method)."""
        guidance = guidance or GuidanceConfig()
        if not self.particles.guided:
            return dataclasses.replace(guidance, method="best_of_n")
        if guidance.method not in guided_methods():
            return dataclasses.replace(guidance, method="entrgi")
        return guidance

    def generate(self, prompts, sampler: SamplerConfig | None = None, guidance: GuidanceConfig | None = None,
                 **kwargs) -> GenerationOutput:
        sampler = sampler or SamplerConfig()
        k = sampler.num_samples
        if sampler.batch_size is not None and sampler.batch_size % k:
            raise ValueError(f"`batch_size` ({sampler.batch_size}) must be a multiple of `num_samples` ({k}) for "
                             "particles: a prompt's particles are resampled together.")
        if self.reward is None:
            raise ValueError("`reward` is required for the particle sampler.")
        self.resample_log = []
        return super().generate(prompts, sampler, self.particle_guidance(guidance), **kwargs)

    def start(self, prompts, sampler: SamplerConfig | None = None,
              guidance: GuidanceConfig | ResolvedGuidance | None = None, **kwargs) -> ParticleState:
        """:meth:`MaskedDiffusionSampler.start` with the RM layout (the weights need it even unguided) and
        uniform weights; ``prompts`` must hold whole groups of ``num_samples`` rows."""
        if self.reward is None:
            raise ValueError("`reward` is required for the particle sampler.")
        sampler = sampler or SamplerConfig()
        if not isinstance(guidance, ResolvedGuidance):
            guidance = self.particle_guidance(guidance)
        state = super().start(prompts, sampler, guidance, **kwargs)
        if state.reward_batch is None:
            self.attach_reward(state)
        k = sampler.num_samples
        rows = state.rows
        if len(rows) % k or any(r.sample_index != j % k for j, r in enumerate(rows)):
            raise ValueError(f"the particle sampler needs whole groups of `num_samples` ({k}) rows per prompt.")
        groups = [rows[g:g + k] for g in range(0, len(rows), k)]
        return ParticleState.of(
            state, k=k,
            group_streams=RowStreams([row_seed(sampler.seed, g[0].prompt_ids, 0, stream="resample") for g in groups],
                                     state.x.device),
            log_w=torch.zeros(len(rows), dtype=torch.float64), last_r=torch.zeros(len(rows), dtype=torch.float64))

    def after_step(self, state: ParticleState, output: StepOutput) -> None:
        """Every ``resample_every`` steps (not after the last): weigh each particle by its predicted
        completion's reward and resample each group whose ESS is below the threshold."""
        pc, step, total = self.particles, output.step, state.sampler.steps
        if (step + 1) % pc.resample_every or step + 1 >= total:
            return
        r = output.estimate if output.estimate is not None else self.estimate(state, output.guided_logits)
        r = r.double().cpu()
        check_rewards(r, "the particle weighting (reward of the predicted completion)", state.guidance.config.method,
                      state.row_ids, step, total)
        incr = r - state.last_r if pc.potential == "diff" else r
        state.log_w += pc.lam * incr
        k = state.k
        uniforms = state.group_streams.uniform_rows(1)[:, 0].tolist()
        ancestors = torch.arange(len(state.rows))
        for g, u in enumerate(uniforms):
            sl = slice(g * k, (g + 1) * k)
            w = torch.softmax(state.log_w[sl], 0)
            ess = effective_sample_size(w)
            resample = ess < pc.ess_threshold * k - 1e-9
            if resample:
                ancestors[sl] = systematic_resample(w, u) + g * k
            self.resample_log.append({"step": step, "group": g, "ess": ess, "resampled": bool(resample),
                                      "ancestors": (ancestors[sl] - g * k).tolist()})
            if resample:
                state.log_w[sl] = 0.0
        state.last_r = r
        if torch.equal(ancestors, torch.arange(len(state.rows))):
            return
        # Particle j continues from ancestor a_j: copy the canvas, the reward baseline and the trace.
        idx = ancestors.to(state.x.device)
        state.x.copy_(state.x[idx])
        state.last_r = state.last_r[ancestors]
        if state.trace:
            state.traces = [copy.deepcopy(state.traces[a]) for a in ancestors.tolist()]
            for j, a in enumerate(ancestors.tolist()):
                state.traces[j][-1].resampled_from = a - (j // k) * k


def generate_particles(model, prompts: str | Sequence[str], reward, *, sampler: SamplerConfig | None = None,
                       guidance: GuidanceConfig | None = None, particles: ParticleConfig | None = None,
                       bridge=None, progress: bool = True, trace: bool = True, track_reward: bool = False,
                       callback=None) -> GenerationOutput:
    """Particle (SMC) sampling; see :class:`ParticleSampler`. ``sampler.num_samples`` = particles per prompt."""
    return ParticleSampler(model, reward, particles, bridge).generate(
        prompts, sampler, guidance, progress=progress, trace=trace, track_reward=track_reward, callback=callback)


__all__ = ["ParticleConfig", "ParticleSampler", "ParticleState", "effective_sample_size", "generate_particles",
           "systematic_resample"]
