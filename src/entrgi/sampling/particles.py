"""Particles: sequential Monte Carlo over the denoising loop, optionally EntRGi-guided (docs/method.md §4, (10)).

The K samples of a prompt are particles; every ``resample_every`` steps each is weighed by a reward on its
predicted completion and a group whose effective sample size is low is resampled systematically. The state
is a typed :class:`ParticleState`; the sampler overrides only the public hooks ``start`` and ``after_step``.
With λ = 0 and no guidance the result equals Best-of-N exactly.

The weighing reward (the *potential reward*) is the sampler's reward by default; a text reward (code on the
decoded predicted completion, :class:`~entrgi.reward.text.TextReward`) may take its place, as in FK steering.
Hybrid: guided particles take their gradients from the differentiable reward and their weights from the
potential reward (docs/rewards.md, "Text rewards in particles").
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import (MAX_SCALE, GuidanceConfig, ResolvedGuidance, SamplerConfig, check_choice, check_float,
                      check_int, check_limit, guided_methods)
from ..errors import check_rewards
from ..typecheck import check_types
from ..ops.rng import RowStreams, row_seed
from ..reward.base import RewardModel
from .outputs import GenerationOutput, rescore_tokens
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
    potential_reward: str | None = field(default=None, metadata={
        "help": "The reward that weighs the particles, spelled as --reward (e.g. text:MODULE:FUNCTION, code on the "
                "decoded predicted completion); None = the sampler's reward. With `guided`, gradients still come "
                "from the sampler's differentiable reward (hybrid)."})

    def __post_init__(self) -> None:
        if not isinstance(self.guided, bool):
            raise ValueError(f"`guided` must be True or False, got {self.guided!r}.")
        check_int("resample_every", self.resample_every, 1)
        check_float("lam", self.lam, 0.0)
        check_limit("lam", self.lam, MAX_SCALE, "a larger λ overflows the weights exp(λ·potential)")
        check_choice("potential", self.potential, POTENTIALS)
        check_float("ess_threshold", self.ess_threshold, 0.0, 1.0)
        if self.potential_reward is not None:
            from ..reward.registry import split_reward_spec
            if not isinstance(self.potential_reward, str):
                raise ValueError(f"`potential_reward` must be a reward spelling (str) or None, got "
                                 f"{type(self.potential_reward).__name__}; pass a reward object as "
                                 "ParticleSampler(..., potential_reward=...) instead.")
            try:
                split_reward_spec(self.potential_reward)
            except ValueError as e:
                raise ValueError(f"`potential_reward`: {e}") from None
        check_types(self)


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


def is_differentiable(reward) -> bool:
    """True for a reward guidance can differentiate (a :class:`~entrgi.reward.base.RewardModel`)."""
    return isinstance(reward, RewardModel)


class ParticleSampler(MaskedDiffusionSampler):
    """The masked diffusion loop with Feynman–Kac resampling of each prompt's K particles.

    Args:
        model: the DLLM adapter.
        reward: the sampler's reward: a differentiable reward model (guidance, weights unless
            ``potential_reward`` is given, final scores) or a text reward (unguided particles only: it
            weighs the particles and scores the samples). None when ``potential_reward`` is given.
        particles: the resampling settings.
        bridge: DLLM -> RM vocabulary bridge (default: by token string).
        potential_reward: a reward object (anything with ``score_texts(prompts, texts)``: a
            :class:`~entrgi.reward.text.TextReward`, a reward model) that weighs the particles on the decoded
            predicted completion; default ``particles.potential_reward`` loaded, else ``reward``.
    """

    def __init__(self, model, reward=None, particles: ParticleConfig | None = None, bridge=None,
                 potential_reward=None):
        self.particles = particles or ParticleConfig()
        if potential_reward is None and self.particles.potential_reward is not None:
            from ..reward.registry import load_reward
            potential_reward = load_reward(self.particles.potential_reward, device=model.device)
        if potential_reward is not None and not callable(getattr(potential_reward, "score_texts", None)):
            raise ValueError(f"`potential_reward` must be a reward with `score_texts` (a TextReward or a reward "
                             f"model), got {type(potential_reward).__name__}.")
        if reward is None:
            reward = potential_reward  # it also scores the final samples
        super().__init__(model, reward, bridge)
        self.potential_reward = potential_reward
        self.resample_log: list[dict[str, Any]] = []

    @property
    def weighs_text(self) -> bool:
        """True when the weights come from decoded text (a potential reward, or a text reward as ``reward``),
        False when from the reward model's estimate on hard tokens (the RM layout)."""
        return self.potential_reward is not None or not is_differentiable(self.reward)

    def check_rewards_fit(self, guidance: GuidanceConfig | ResolvedGuidance, track_reward: bool = False) -> None:
        """``ValueError`` unless the rewards fit the run: guidance (and ``track_reward``) needs a differentiable
        reward model as ``reward``; the weights need some reward."""
        if self.reward is None:
            raise ValueError("`reward` (or `potential_reward`) is required for the particle sampler.")
        config = guidance.config if isinstance(guidance, ResolvedGuidance) else guidance
        needs = "guided particles (`guided`)" if config.guided else ("`track_reward`" if track_reward else None)
        if needs and not is_differentiable(self.reward):
            name = getattr(self.reward, "name", type(self.reward).__name__)
            raise ValueError(f"{needs}: the guiding reward {name!r} ({type(self.reward).__name__}) scores decoded "
                             "text only and has no gradient. Give a differentiable reward model as `reward` and the "
                             "text reward as `potential_reward` (hybrid: gradients from the RM, particle weights "
                             "from the text), or run unguided particles (guided=False"
                             + (", track_reward=False" if track_reward else "") + ").")

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
        guidance = self.particle_guidance(guidance)
        self.check_rewards_fit(guidance, bool(kwargs.get("track_reward", False)))
        self.resample_log = []
        return super().generate(prompts, sampler, guidance, **kwargs)

    def start(self, prompts, sampler: SamplerConfig | None = None,
              guidance: GuidanceConfig | ResolvedGuidance | None = None, **kwargs) -> ParticleState:
        """:meth:`MaskedDiffusionSampler.start` with the RM layout (RM weights need it even unguided; text
        weights do not) and uniform weights; ``prompts`` must hold whole groups of ``num_samples`` rows."""
        sampler = sampler or SamplerConfig()
        if not isinstance(guidance, ResolvedGuidance):
            guidance = self.particle_guidance(guidance)
        self.check_rewards_fit(guidance, bool(kwargs.get("track_reward", False)))
        state = super().start(prompts, sampler, guidance, **kwargs)
        if state.reward_batch is None and not self.weighs_text:
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
        if self.weighs_text:
            r = self.text_potential(state, output.guided_logits)
        else:
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
        # Particle j continues from ancestor a_j: copy the canvas, the reward baseline, the carried guidance
        # shift (guide_carry) and the trace.
        idx = ancestors.to(state.x.device)
        state.x.copy_(state.x[idx])
        state.last_r = state.last_r[ancestors]
        if state.guide_shift is not None:
            state.guide_shift = state.guide_shift[idx]
        if state.trace:
            state.traces = [copy.deepcopy(state.traces[a]) for a in ancestors.tolist()]
            for j, a in enumerate(ancestors.tolist()):
                state.traces[j][-1].resampled_from = a - (j // k) * k

    def predicted_texts(self, state: DenoisingState, logits: torch.Tensor) -> list[str]:
        """The decoded predicted completion x̂0 of each row: committed tokens, and the argmax of ``logits``
        (B, L, V) at the slots still masked (the tokens :meth:`estimate` scores), decoded as the samples are."""
        resp = state.response
        x_hat = torch.where(resp == self.model.mask_token_id, logits.argmax(-1), resp)
        return [self.model.decode_response(t, state.sampler.match_released) for t in x_hat.tolist()]

    def text_potential(self, state: DenoisingState, logits: torch.Tensor) -> torch.Tensor:
        """The potential reward (B,) of :meth:`predicted_texts` (a reward model's work counted in ``state.stats``;
        code on text costs no model FLOPs)."""
        scorer = self.potential_reward if self.potential_reward is not None else self.reward
        prompts, texts = [r.prompt for r in state.rows], self.predicted_texts(state, logits)
        scores = scorer.score_texts(prompts, texts)
        if not torch.is_tensor(scores):
            scores = torch.as_tensor(list(scores), dtype=torch.float64)
        if scores.shape != (len(prompts),):
            raise ValueError(f"the potential reward returned {tuple(scores.shape)} scores for {len(prompts)} rows.")
        if hasattr(scorer, "text_ids"):
            state.stats.rm_forwards += len(prompts)
            state.stats.rm_forward_tokens += rescore_tokens(scorer, prompts, texts)
        return scores


def generate_particles(model, prompts: str | Sequence[str], reward=None, *, sampler: SamplerConfig | None = None,
                       guidance: GuidanceConfig | None = None, particles: ParticleConfig | None = None,
                       bridge=None, progress: bool = True, trace: bool = True, track_reward: bool = False,
                       callback=None, potential_reward=None) -> GenerationOutput:
    """Particle (SMC) sampling; see :class:`ParticleSampler`. ``sampler.num_samples`` = particles per prompt."""
    return ParticleSampler(model, reward, particles, bridge, potential_reward).generate(
        prompts, sampler, guidance, progress=progress, trace=trace, track_reward=track_reward, callback=callback)


__all__ = ["ParticleConfig", "ParticleSampler", "ParticleState", "effective_sample_size", "generate_particles",
           "is_differentiable", "systematic_resample"]
