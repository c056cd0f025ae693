"""Observers of the denoising loop: what watches a step without being part of the method.

- :class:`RewardTracker` (``track_reward``): the reward model's score of the predicted completion after every step
  (``StepOutput.estimate``, ``StepTrace.estimate``);
- :class:`Tracer` (``trace``): one :class:`~entrgi.sampling.outputs.StepTrace` per row and step.

Their model calls are counted in ``state.observer_stats``, apart from the method's cost (``state.stats``).
"""

from __future__ import annotations

import torch

from ..guidance.inner_loop import mean_entropy_weight
from ..guidance.schedules import ran_values
from .outputs import StepTrace
from .state import DenoisingState, StepOutput


class RewardTracker:
    """Sets ``output.estimate``: the RM reward (B,) of the predicted completion x̂0 (committed tokens, the argmax of
    the guided logits at the slots still masked)."""

    def __init__(self, mask_token_id: int):
        self.mask_token_id = mask_token_id

    def on_step(self, state: DenoisingState, output: StepOutput) -> None:
        output.estimate = state.reward_view.estimate(state.response, output.guided_logits, self.mask_token_id,
                                                     state.observer_stats)


class Tracer:
    """Appends a :class:`~entrgi.sampling.outputs.StepTrace` to ``state.traces[b]`` for every row the step ran for."""

    def on_step(self, state: DenoisingState, output: StepOutput) -> None:
        if output.entropy_weight is None:
            output.entropy_weight = mean_entropy_weight(output.logits, output.masked,
                                                        state.guidance.entropy_temperature).cpu()
        w = output.entropy_weight
        guided = [False] * len(state.rows) if output.guided_rows is None else output.guided_rows.tolist()
        active = [True] * len(state.rows) if output.active is None else output.active.tolist()
        result = output.guide
        for b in range(len(state.rows)):
            if not active[b]:
                continue
            committed = output.committed[b].nonzero().flatten().tolist()
            state.traces[b].append(StepTrace(
                step=output.step, block=output.block, masked=int(output.masked[b].sum()), committed=committed,
                entropy_weight=None if torch.isnan(w[b]) else float(w[b]),
                rewards=ran_values(result.rewards[b]) if guided[b] else [],
                grad_norms=ran_values(result.grad_norms[b]) if guided[b] else [],
                estimate=None if output.estimate is None else float(output.estimate[b]),
                num_committed=len(committed), guided=guided[b]))


__all__ = ["RewardTracker", "Tracer"]
