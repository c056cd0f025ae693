"""The public state of the denoising loop: the rows of a batch, the batch in flight, what one step returns.

:meth:`~entrgi.sampling.sampler.DiffusionSampler.start` makes a :class:`DenoisingState`, each
:meth:`~entrgi.sampling.sampler.DiffusionSampler.step` advances it and returns a :class:`StepOutput`. Every model
family runs through this one state; what is particular to a family's transition (DiffusionGemma's canvases) lives
in its typed ``transition_state``. Shapes: B rows (prompt × sample), P the padded prompt length, L response slots,
W the slots of the step's window (L, or one canvas), V the logit width, d the reward model's embedding width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..config import ResolvedGuidance, SamplerConfig, SearchConfig
from ..conversation import Prompt
from ..guidance.inner_loop import GuideResult
from ..ops.rng import RowStreams
from ..reproduction import Reproduction
from .outputs import ComputeStats, StepTrace


@dataclass
class Row:
    """One trajectory: sample ``sample_index`` of prompt ``prompt_index``, with the seeds of its streams."""

    prompt_index: int
    sample_index: int
    prompt: Prompt
    prompt_ids: list[int]  # the DLLM's prompt ids (:meth:`DiffusionLM.encode_prompt`)
    seed: int  # the row's stream: draws, hard samples, remasking (:func:`entrgi.ops.rng.row_seed`)
    trace_seed: int  # the stream of the trace's extra evaluation after the inner steps


class StepObserver(Protocol):
    """Something run after every step that ran (a trace, the reward estimate, particle resampling): it reads
    ``output`` and may update ``state`` (particles copy rows)."""

    def on_step(self, state: DenoisingState, output: StepOutput) -> None: ...


@dataclass
class DenoisingState:
    """A batch of rows in flight.

    Attributes:
        rows: the B rows, in batch order.
        sampler, guidance, search: the run's configs (the guidance resolved against the sampler).
        x: (B, P + L) the canvas: the left-padded prompt, then the response slots (the mask id until committed;
            a canvas family's current canvas lives in ``transition_state`` until its block is finished).
        attention_mask: (B, P + L) 1 at real tokens (0 at the prompt's left padding).
        position_ids: (B, P + L) positions that skip the padding.
        prompt_length: P, the padded prompt length.
        streams: one random stream per row (:class:`~entrgi.ops.rng.RowStreams`).
        eos_ids: (E,) the ids that end a response (``[-1]`` when the model has none).
        invalid_bias: (V,) or (L, V) 0 / −inf added to the logits: ids that are never response tokens, and EOS in
            the first ``min_new_tokens`` slots (:func:`~entrgi.sampling.masked.response_bias`).
        transition: the family's step stages (:class:`~entrgi.sampling.masked.MaskedTransition`, or DiffusionGemma's
            :class:`~entrgi.sampling.canvas.CanvasTransition`); transition_state: its own typed state.
        guide: the guidance stage (None when the run is not guided).
        observers: run after every step, in order (:class:`StepObserver`).
        stats: the method's compute (what the run costs); observer_stats: what watching it added (the trace's
            extra reward evaluations, the ``track_reward`` estimates): not part of ``stats.flops``.
        step: the global index of the step to run next; finished: True once the transition has no step left.
        traces: per row, its :class:`StepTrace` list (filled by the trace observer).
        reward_view: the reward model's view of the batch (guided runs, ``track_reward``, RM-weighted particles).
        reproduction: the reference sampler the batch reproduces and its choices (``match_released`` /
            ``match_reference``; :class:`~entrgi.reproduction.Reproduction`), None = the project's sampler.
    """

    rows: list[Row]
    sampler: SamplerConfig
    guidance: ResolvedGuidance
    search: SearchConfig
    x: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_length: int
    streams: RowStreams
    eos_ids: torch.Tensor
    invalid_bias: torch.Tensor
    transition: Any = None
    transition_state: Any = None
    guide: Any = None
    observers: list[StepObserver] = field(default_factory=list)
    stats: ComputeStats = field(default_factory=ComputeStats)
    observer_stats: ComputeStats = field(default_factory=ComputeStats)
    step: int = 0
    finished: bool = False
    traces: list[list[StepTrace]] = field(default_factory=list)
    reward_view: Any = None
    reproduction: Reproduction | None = None

    @property
    def done(self) -> bool:
        """True once the transition has run all its steps."""
        return self.finished

    @property
    def response(self) -> torch.Tensor:
        """(B, L) the response slots of ``x`` (a view: writing to it writes the canvas)."""
        return self.x[:, self.prompt_length:]

    @property
    def row_ids(self) -> list[tuple[int, int]]:
        """(prompt index, sample index) of each row."""
        return [(r.prompt_index, r.sample_index) for r in self.rows]

    # ---- the masked transition's counters (blocks of T / number of blocks steps) ----------------------------
    @property
    def steps_per_block(self) -> int:
        """Steps per block: T / number of blocks (T without blocks)."""
        return self.sampler.steps // self.sampler.num_blocks

    @property
    def block(self) -> int:
        """The block of the step to run next."""
        return self.step // self.steps_per_block

    @property
    def block_step(self) -> int:
        """The index of the step to run next within its block."""
        return self.step % self.steps_per_block

    def block_slots(self) -> torch.Tensor:
        """(L,) True at the response slots of the current block (all of them without blocks)."""
        length = self.sampler.block_length or self.sampler.max_new_tokens
        slots = torch.zeros(self.sampler.max_new_tokens, dtype=torch.bool, device=self.x.device)
        slots[self.block * length:(self.block + 1) * length] = True
        return slots


@dataclass
class StepOutput:
    """What one denoising step did (passed to ``callback(step, output)`` and to the observers); tensors are the
    live ones.

    Attributes:
        step: the global step index; block: its block (a canvas family: its canvas).
        x: (B, P + L) the canvas after the commit; prompt_length: P.
        window: the response slots the step's logits cover: ``slice(lo, lo + W)`` (all L for the masked families).
        logits: (B, W, V) the DLLM's logits before guidance; guided_logits: after (the same tensor when the step is
            not guided); invalid ids at −inf in both.
        masked: (B, W) the open slots before the commit (masked; a canvas family: not accepted yet);
            candidates: (B, W) those the step may commit (the current block's).
        proposal: (B, W) the drawn tokens at the candidates (the canvas elsewhere).
        committed: (B, W) the slots committed (accepted) at this step.
        rows: the :class:`Row` of each row.
        active: (B,) the rows the step ran for (None = all).
        estimate: (B,) the RM reward of the predicted completion when ``track_reward`` (set by its observer).
        guide: the inner loop's :class:`~entrgi.guidance.inner_loop.GuideResult` (None when not guided).
        guided_rows: (B,) the rows guided at this step; entropy_weight: (B,) the mean EntRGi weight of each row's
            open slots when it was computed (the schedule, the trace), else None.

    Read fields as attributes; ``output["x"]``, ``keys()`` and ``items()`` also work (as diffusers' ``BaseOutput``).
    """

    step: int
    block: int
    x: torch.Tensor
    prompt_length: int
    logits: torch.Tensor
    guided_logits: torch.Tensor
    masked: torch.Tensor
    candidates: torch.Tensor
    proposal: torch.Tensor
    committed: torch.Tensor
    rows: list[Row]
    window: slice = field(default_factory=lambda: slice(0, None))
    active: torch.Tensor | None = None
    estimate: torch.Tensor | None = None
    guide: GuideResult | None = None
    guided_rows: torch.Tensor | None = None
    entropy_weight: torch.Tensor | None = None

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((k, getattr(self, k)) for k in self.keys())

    def __getitem__(self, name: str) -> Any:
        if name not in self.keys():
            raise KeyError(name)
        return getattr(self, name)


__all__ = ["DenoisingState", "Row", "StepObserver", "StepOutput"]
