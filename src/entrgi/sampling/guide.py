"""Step 2 of a denoising step: reward guidance of the open slots' logits (docs/method.md (4)–(9)).

:class:`Guide` decides which rows the guidance schedule guides now (:mod:`entrgi.guidance.schedules`), runs the inner
loop on their open slots (:func:`entrgi.guidance.inner_loop.guide_logits`), carries the guided shift over the steps
it skips (``guide_carry``) and counts what it ran: the method's cost in ``state.stats``, the trace's extra
evaluation in ``state.observer_stats``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from ..config import ResolvedGuidance
from ..errors import NonFiniteError
from ..guidance.inner_loop import GuideResult, guide_logits, mean_entropy_weight
from ..guidance.schedules import carry_shift, guide_rows, needs_entropy_weight
from ..ops.rng import RowStreams
from .reward_view import RewardView
from .state import DenoisingState


@dataclass
class GuideStep:
    """What the guidance did at one step: the logits to draw from (B, W, V), the inner loop's result (None when no
    row was guided), the rows guided (B,) and, when the schedule read it, the rows' mean entropy weight (B,)."""

    logits: torch.Tensor
    result: GuideResult | None
    rows: torch.Tensor
    entropy_weight: torch.Tensor | None = None


class Guide:
    """The guidance stage of one batch (it holds the carried shift of ``guide_carry``).

    Args:
        view: the reward model's view of the batch.
        guidance: the resolved guidance settings.
        streams: the rows' streams (hard samples); trace_streams: those of the trace's extra evaluation (None: no
            trace).
        recompute: the RM's backward reruns its forward (gradient checkpointing), for the cost count.
        inner_loop: the M steps on φ (:func:`~entrgi.guidance.inner_loop.guide_logits`, or one with its signature).
        reproduction: the batch's reproduction mode (``DenoisingState.reproduction``), passed to the inner loop as
            ``reproduction=`` when not None (the released code's inner loop).
    """

    def __init__(self, view: RewardView, guidance: ResolvedGuidance, streams: RowStreams,
                 trace_streams: RowStreams | None = None, recompute: bool = False, inner_loop=guide_logits,
                 reproduction=None):
        self.view, self.guidance, self.streams, self.trace_streams = view, guidance, streams, trace_streams
        self.recompute, self.inner_loop, self.reproduction = recompute, inner_loop, reproduction
        self.shift: torch.Tensor | None = None  # (B, W, V) each row's last guided shift (guide_carry)

    def __call__(self, state: DenoisingState, logits: torch.Tensor, masked: torch.Tensor,
                 candidates: torch.Tensor) -> GuideStep:
        cfg = self.guidance.config
        w = mean_entropy_weight(logits, masked, self.guidance.entropy_temperature).cpu() \
            if needs_entropy_weight(cfg) else None
        rows = guide_rows(cfg, state.transition.schedule_step(state), masked, candidates, w)
        guided, result = logits, None
        if rows.any():
            at = masked if bool(rows[masked.any(-1)].all()) else masked & rows.unsqueeze(-1)
            transition = state.transition
            with torch.enable_grad(), record_function("entrgi.guide"):
                try:
                    extra = {} if self.reproduction is None else {"reproduction": self.reproduction}
                    result = self.inner_loop(logits, at, transition.window_ids(state), transition.rm_score(state),
                                             self.view.table, self.view.mapped, self.guidance, self.view.eos_ids,
                                             self.streams, self.trace_streams, **extra)
                except NonFiniteError as e:  # name the denoising step and the (prompt, sample) of the rows
                    raise e.located(state.step, transition.max_steps(state), state.row_ids) from None
            guided = result.logits
            self.count(state, int(at.sum()), result)
        if cfg.guide_carry:  # the rows not guided now reuse their last guided shift (guidance/schedules.py)
            guided, self.shift = carry_shift(self.shift, logits, guided, masked, rows)
        return GuideStep(guided, result, rows, w)

    def count(self, state: DenoisingState, n_open: int, result: GuideResult) -> None:
        """The cost of one inner loop (docs/performance.md, "Cost count"): the RM forward and backward passes that
        ran over what each call runs, the soft embeddings (one product per forward and per backward) over the n
        guided slots; the trace's extra no-grad evaluation goes to ``observer_stats``."""
        cfg = self.guidance.config
        V, d = self.view.table.shape
        width = min(cfg.soft_top_k, V) if cfg.soft_top_k is not None else V
        tokens, B = self.view.call_tokens, state.x.shape[0]
        forwards = cfg.inner_steps if result.forwards is None else result.forwards
        backwards = cfg.inner_steps if result.backwards is None else result.backwards
        state.stats.count_inner_loop(B, tokens, n_open, width, d, forwards, backwards, recompute=self.recompute)
        if result.traced:
            state.observer_stats.count_inner_loop(B, tokens, n_open, width, d, 0, 0, extra=1)

    def reorder(self, index: torch.Tensor) -> None:
        """Rows continue from the rows ``index`` (B,) (particle resampling): their carried shifts follow."""
        if self.shift is not None:
            self.shift = self.shift[index]


__all__ = ["Guide", "GuideStep"]
