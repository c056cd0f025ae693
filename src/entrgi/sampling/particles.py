"""Particles: sequential Monte Carlo over the denoising loop (the ``particles`` search strategy; docs/method.md §4,
(10)), with any guidance rule.

The K samples of a prompt are particles; every ``resample_every`` steps each is weighed by a reward on its predicted
completion and a group whose effective sample size is low is resampled systematically. The state is the
:class:`ParticleResampler` observer's; with λ = 0 and no guidance the result equals Best-of-N exactly.

The weighing reward (the *potential reward*) is the sampler's reward by default; a text reward (code on the decoded
predicted completion, :class:`~entrgi.reward.text.TextReward`) may take its place, as in FK steering. Hybrid: guided
particles take their gradients from the differentiable reward and their weights from the potential reward
(docs/rewards.md, "Text rewards in particles").
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..config import SearchConfig, method_name
from ..errors import check_rewards
from ..ops.rng import RowStreams, row_seed
from ..reward.base import RewardModel
from .outputs import rescore_tokens
from .state import DenoisingState, StepOutput


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


def is_differentiable(reward) -> bool:
    """True for a reward guidance can differentiate (a :class:`~entrgi.reward.base.RewardModel`)."""
    return isinstance(reward, RewardModel)


class ParticleResampler:
    """The particles' weights and resampling, run after every step (:class:`~entrgi.sampling.state.StepObserver`).

    Args:
        search: the strategy's settings (``resample_every``, ``lam``, ``potential``, ``ess_threshold``).
        state: the batch; its rows must be whole groups of ``num_samples`` particles per prompt.
        model: the DLLM adapter (decodes the predicted completions a text potential reads).
        potential: the reward that weighs the particles on decoded text (``score_texts``), or None to weigh them by
            the reward model's estimate on hard tokens (``state.reward_view``).

    Attributes:
        k: particles per prompt; rows ``g·K .. g·K + K − 1`` are prompt group g.
        log_w: (B,) float64 log-weights, on the CPU; last_r: (B,) each particle's reward at the last weighting.
        log: one entry per group and weighting (step, group, ESS, resampled, ancestors); ``log`` appends to a
            list the caller keeps (the sampler's ``search_log``).
    """

    def __init__(self, search: SearchConfig, state: DenoisingState, model, potential=None,
                 log: list[dict[str, Any]] | None = None):
        k = state.sampler.num_samples
        rows = state.rows
        if len(rows) % k or any(r.sample_index != j % k for j, r in enumerate(rows)):
            raise ValueError(f"the particle sampler needs whole groups of `num_samples` ({k}) rows per prompt.")
        self.search, self.model, self.potential, self.k = search, model, potential, k
        self.group_streams = RowStreams([row_seed(state.sampler.seed, rows[g].prompt_ids, 0, stream="resample")
                                         for g in range(0, len(rows), k)], state.x.device)
        self.log_w = torch.zeros(len(rows), dtype=torch.float64)
        self.last_r = torch.zeros(len(rows), dtype=torch.float64)
        self.log: list[dict[str, Any]] = [] if log is None else log

    def on_step(self, state: DenoisingState, output: StepOutput) -> None:
        """Every ``resample_every`` steps (not after the last): weigh each particle by its predicted completion's
        reward and resample each group whose ESS is below the threshold."""
        pc, step, total = self.search, output.step, state.sampler.steps
        if (step + 1) % pc.resample_every or step + 1 >= total:
            return
        r = self.rewards(state, output).double().cpu()
        check_rewards(r, "the particle weighting (reward of the predicted completion)",
                      method_name(state.guidance.config, state.search), state.row_ids, step, total)
        incr = r - self.last_r if pc.potential == "diff" else r
        self.log_w += pc.lam * incr
        k = self.k
        uniforms = self.group_streams.uniform_rows(1)[:, 0].tolist()
        ancestors = torch.arange(len(state.rows))
        for g, u in enumerate(uniforms):
            sl = slice(g * k, (g + 1) * k)
            w = torch.softmax(self.log_w[sl], 0)
            ess = effective_sample_size(w)
            resample = ess < pc.ess_threshold * k - 1e-9
            if resample:
                ancestors[sl] = systematic_resample(w, u) + g * k
            self.log.append({"step": step, "group": g, "ess": ess, "resampled": bool(resample),
                             "ancestors": (ancestors[sl] - g * k).tolist()})
            if resample:
                self.log_w[sl] = 0.0
        self.last_r = r
        if not torch.equal(ancestors, torch.arange(len(state.rows))):
            self.reorder(state, ancestors)

    def rewards(self, state: DenoisingState, output: StepOutput) -> torch.Tensor:
        """The potential (B,) of each particle's predicted completion: the text reward on its decoded text, or the
        reward model's estimate on hard tokens (the one ``track_reward`` made this step, now part of the method)."""
        if self.potential is not None:
            return self.text_potential(state, output.guided_logits)
        if output.estimate is not None:  # the tracker's estimate serves as the weights: the method's cost now
            state.observer_stats.move_rm_forward(state.stats, len(state.rows), state.reward_view.call_tokens)
            return output.estimate
        return state.reward_view.estimate(state.response, output.guided_logits, self.model.mask_token_id,
                                          state.stats)

    def reorder(self, state: DenoisingState, ancestors: torch.Tensor) -> None:
        """Particle j continues from ancestor a_j: its canvas, reward baseline, carried guidance shift and trace."""
        idx = ancestors.to(state.x.device)
        state.x.copy_(state.x[idx])
        self.last_r = self.last_r[ancestors]
        if state.guide is not None:
            state.guide.reorder(idx)
        if state.traces and any(state.traces):
            state.traces[:] = [copy.deepcopy(state.traces[a]) for a in ancestors.tolist()]
            for j, a in enumerate(ancestors.tolist()):
                state.traces[j][-1].resampled_from = a - (j // self.k) * self.k

    def predicted_texts(self, state: DenoisingState, logits: torch.Tensor) -> list[str]:
        """The decoded predicted completion x̂0 of each row: committed tokens, and the argmax of ``logits`` (B, L, V)
        at the slots still masked, decoded as the samples are."""
        resp = state.response
        x_hat = torch.where(resp == self.model.mask_token_id, logits.argmax(-1), resp)
        return [self.model.decode_response(t, state.sampler.match_released) for t in x_hat.tolist()]

    def text_potential(self, state: DenoisingState, logits: torch.Tensor) -> torch.Tensor:
        """The potential reward (B,) of :meth:`predicted_texts` (a reward model's work counted in ``state.stats``;
        code on text costs no model FLOPs)."""
        prompts, texts = [r.prompt for r in state.rows], self.predicted_texts(state, logits)
        scores = self.potential.score_texts(prompts, texts)
        if not torch.is_tensor(scores):
            scores = torch.as_tensor(list(scores), dtype=torch.float64)
        if scores.shape != (len(prompts),):
            raise ValueError(f"the potential reward returned {tuple(scores.shape)} scores for {len(prompts)} rows.")
        if hasattr(self.potential, "text_ids"):
            state.stats.rm_forwards += len(prompts)
            state.stats.rm_forward_tokens += rescore_tokens(self.potential, prompts, texts)
        return scores


__all__ = ["ParticleResampler", "effective_sample_size", "is_differentiable", "systematic_resample"]
