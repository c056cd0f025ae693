"""Gradient-guided particles: sequential Monte Carlo over the denoising loop, optionally EntRGi-guided.

The K samples of a prompt are particles. Every ``resample_every`` steps each particle is scored by the
RM on its predicted completion x̂0 (committed tokens + argmax of the logits at the masked slots);
its log-weight grows by λ·(r_now − r_at_last_resampling) (Feynman–Kac "difference" potential), and
when the effective sample size falls below ``ess_threshold``·K the group is resampled systematically:
particle j continues from the state of ancestor a_j, with its own random stream, so clones diverge.
With ``guided`` each particle is also EntRGi-guided at every step. The answer is the best final
particle; Top@1 / Avg@K read the final particles as for any method.

With λ = 0 and no guidance every weight is equal, systematic resampling is the identity, and the
result equals Best-of-N exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import GuidanceConfig, SamplerConfig, check_choice, check_float, check_int
from ..errors import check_rewards
from ..ops.rng import RowStreams, row_seed
from .outputs import ComputeStats, GenerationOutput
from .sampler import MaskedDiffusionSampler, _Batch

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


class ParticleSampler(MaskedDiffusionSampler):
    """The masked diffusion loop with Feynman–Kac resampling of each prompt's K particles."""

    def __init__(self, model, reward, particles: ParticleConfig | None = None, bridge=None):
        super().__init__(model, reward, bridge)
        self.particles = particles or ParticleConfig()
        self.resample_log: list[dict[str, Any]] = []

    def generate(self, prompts, sampler: SamplerConfig | None = None, guidance: GuidanceConfig | None = None,
                 **kwargs) -> GenerationOutput:
        sampler = sampler or SamplerConfig()
        k = sampler.num_samples
        if sampler.batch_size is not None and sampler.batch_size % k:
            raise ValueError(f"`batch_size` ({sampler.batch_size}) must be a multiple of `num_samples` ({k}) for "
                             "particles: a prompt's particles are resampled together.")
        if self.reward is None:
            raise ValueError("`reward` is required for the particle sampler.")
        guidance = guidance or GuidanceConfig()
        if not self.particles.guided:
            guidance = dataclasses.replace(guidance, method="best_of_n")
        elif guidance.method not in ("expectation", "aps", "entrgi"):
            guidance = dataclasses.replace(guidance, method="entrgi")
        self.resample_log = []
        return super().generate(prompts, sampler, guidance, **kwargs)

    def _start(self, rows, cfg, rg, trace, track_reward) -> _Batch:
        batch = super()._start(rows, cfg, rg, trace, track_reward)
        if batch.reward_batch is None:  # the estimate needs the RM layout even without guidance
            self._attach_reward(batch)
        k = cfg.num_samples
        groups = [rows[g:g + k] for g in range(0, len(rows), k)]
        batch.extra = {
            "k": k,
            "group_streams": RowStreams([row_seed(cfg.seed, g[0].prompt_ids, 0, stream="resample") for g in groups],
                                        batch.x.device),
            "log_w": torch.zeros(len(rows), dtype=torch.float64),
            "last_r": torch.zeros(len(rows), dtype=torch.float64),
        }
        return batch

    def _after_step(self, batch: _Batch, state: dict[str, Any], step: int, stats: ComputeStats) -> None:
        pc, ex = self.particles, batch.extra
        total = batch.cfg.steps
        if (step + 1) % pc.resample_every or step + 1 >= total:
            return
        r = state["estimate"] if state.get("estimate") is not None else self._estimate(batch, state["guided_logits"],
                                                                                       stats)
        r = r.double().cpu()
        check_rewards(r, "the particle weighting (reward of the predicted completion)", batch.guidance.config.method,
                      [(row.prompt_index, row.sample_index) for row in batch.rows], step, total)
        incr = r - ex["last_r"] if pc.potential == "diff" else r
        ex["log_w"] += pc.lam * incr
        k = ex["k"]
        uniforms = ex["group_streams"].uniform_rows(1)[:, 0].tolist()
        ancestors = torch.arange(len(batch.rows))
        for g, u in enumerate(uniforms):
            sl = slice(g * k, (g + 1) * k)
            w = torch.softmax(ex["log_w"][sl], 0)
            ess = effective_sample_size(w)
            resample = ess < pc.ess_threshold * k - 1e-9
            if resample:
                ancestors[sl] = systematic_resample(w, u) + g * k
            self.resample_log.append({"step": step, "group": g, "ess": ess, "resampled": bool(resample),
                                      "ancestors": (ancestors[sl] - g * k).tolist()})
            if resample:
                ex["log_w"][sl] = 0.0
        ex["last_r"] = r
        if torch.equal(ancestors, torch.arange(len(batch.rows))):
            return
        # Particle j continues from ancestor a_j: copy the canvas, the reward baseline and the trace.
        idx = ancestors.to(batch.x.device)
        batch.x.copy_(batch.x[idx])
        ex["last_r"] = ex["last_r"][ancestors]
        if batch.trace:
            batch.traces = [copy.deepcopy(batch.traces[a]) for a in ancestors.tolist()]
            for j, a in enumerate(ancestors.tolist()):
                batch.traces[j][-1].resampled_from = a - (j // k) * k


def generate_particles(model, prompts: str | Sequence[str], reward, *, sampler: SamplerConfig | None = None,
                       guidance: GuidanceConfig | None = None, particles: ParticleConfig | None = None,
                       bridge=None, progress: bool = True, trace: bool = True, track_reward: bool = False,
                       callback=None) -> GenerationOutput:
    """Particle (SMC) sampling; see :class:`ParticleSampler`. ``sampler.num_samples`` = particles per prompt."""
    return ParticleSampler(model, reward, particles, bridge).generate(
        prompts, sampler, guidance, progress=progress, trace=trace, track_reward=track_reward, callback=callback)


__all__ = ["ParticleConfig", "ParticleSampler", "effective_sample_size", "generate_particles", "systematic_resample"]
