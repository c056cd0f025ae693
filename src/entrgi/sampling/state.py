"""The public state of the denoising loop: the rows of a batch, the batch in flight, what one step returns.

:meth:`~entrgi.sampling.sampler.MaskedDiffusionSampler.start` makes a :class:`DenoisingState`, each
:meth:`~entrgi.sampling.sampler.MaskedDiffusionSampler.step` advances it and returns a :class:`StepOutput`.
Shapes: B rows (prompt × sample), P the padded prompt length, L response slots, V the logit width, d the
reward model's embedding width; the symbols are docs/method.md's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ResolvedGuidance, SamplerConfig
from ..guidance.inner_loop import GuideResult
from ..ops.rng import RowStreams
from ..reward.base import RewardBatch
from .outputs import ComputeStats, StepTrace
from .schedule import steps_per_block


@dataclass
class Row:
    """One trajectory: sample ``sample_index`` of prompt ``prompt_index``, with the seeds of its streams."""

    prompt_index: int
    sample_index: int
    prompt: str
    prompt_ids: list[int]  # the DLLM's prompt ids (:meth:`DiffusionLM.encode_prompt`)
    seed: int  # the row's stream: draws, hard samples, remasking (:func:`entrgi.ops.rng.row_seed`)
    trace_seed: int  # the stream of the trace's extra evaluation after the inner steps


@dataclass
class DenoisingState:
    """A batch of rows in flight.

    Attributes:
        rows: the B rows, in batch order.
        sampler, guidance: the sampler config and the guidance config resolved against it.
        x: (B, P + L) the canvas: the left-padded prompt, then the response slots (mask id until committed).
        attention_mask: (B, P + L) 1 at real tokens (0 at the prompt's left padding).
        position_ids: (B, P + L) positions that skip the padding.
        prompt_length: P, the padded prompt length.
        streams: one random stream per row (:class:`~entrgi.ops.rng.RowStreams`).
        eos_ids: (E,) the ids that end a response (``[-1]`` when the model has none).
        invalid_bias: (V,) or (L, V) 0 / −inf added to the logits: ids that are never response tokens, and
            EOS in the first ``min_new_tokens`` slots (:func:`~entrgi.sampling.sampler.response_bias`).
        trace: record a :class:`~entrgi.sampling.outputs.StepTrace` per row and step in ``traces``.
        track_reward: score the predicted completion after every step (``StepOutput.estimate``).
        stats: the compute counter this batch adds to.
        step: the global index of the step to run next (the steps of all blocks, one after another).
        traces: per row, its :class:`StepTrace` list.
        trace_streams: the streams of the trace's evaluation after the inner steps (traced guided runs).
        reward_batch: the reward model's layout of the batch (guided runs, ``track_reward``).
        table: (V, d) the RM's input embeddings aligned to the DLLM's ids (zeros where unmapped).
        rm_mapped: (V,) True where the RM has a row for the DLLM id.
        guide_shift: (B, L, V) each row's last guided logit shift (guided − prior, 0 at −inf ids), kept for
            ``guide_carry``; None until a step is guided (or without ``guide_carry``).
    """

    rows: list[Row]
    sampler: SamplerConfig
    guidance: ResolvedGuidance
    x: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_length: int
    streams: RowStreams
    eos_ids: torch.Tensor
    invalid_bias: torch.Tensor
    trace: bool = True
    track_reward: bool = False
    stats: ComputeStats = field(default_factory=ComputeStats)
    step: int = 0
    traces: list[list[StepTrace]] = field(default_factory=list)
    trace_streams: RowStreams | None = None
    reward_batch: RewardBatch | None = None
    table: torch.Tensor | None = None
    rm_mapped: torch.Tensor | None = None
    guide_shift: torch.Tensor | None = None

    # ---- the counters -------------------------------------------------------------------------------
    @property
    def steps_per_block(self) -> int:
        """Steps per block: T / number of blocks (T without blocks)."""
        return steps_per_block(self.sampler.steps, self.sampler.num_blocks)

    @property
    def block(self) -> int:
        """The block of the step to run next."""
        return self.step // self.steps_per_block

    @property
    def block_step(self) -> int:
        """The index of the step to run next within its block."""
        return self.step % self.steps_per_block

    @property
    def done(self) -> bool:
        """True once all ``sampler.steps`` steps have run."""
        return self.step >= self.sampler.steps

    # ---- views --------------------------------------------------------------------------------------
    @property
    def response(self) -> torch.Tensor:
        """(B, L) the response slots of ``x`` (a view: writing to it writes the canvas)."""
        return self.x[:, self.prompt_length:]

    def block_slots(self) -> torch.Tensor:
        """(L,) True at the response slots of the current block (all of them without blocks)."""
        length = self.sampler.block_length or self.sampler.max_new_tokens
        slots = torch.zeros(self.sampler.max_new_tokens, dtype=torch.bool, device=self.x.device)
        slots[self.block * length:(self.block + 1) * length] = True
        return slots

    @property
    def row_ids(self) -> list[tuple[int, int]]:
        """(prompt index, sample index) of each row."""
        return [(r.prompt_index, r.sample_index) for r in self.rows]


@dataclass
class StepOutput:
    """What one denoising step did (passed to ``callback(step, output)``); tensors are the live ones.

    Attributes:
        step: the global step index; block: its block.
        x: (B, P + L) the canvas after the commit; prompt_length: P.
        logits: (B, L, V) the DLLM's logits before guidance; guided_logits: after (the same tensor when the
            step is not guided); invalid ids at −inf in both.
        masked: (B, L) the masked slots before the commit; candidates: (B, L) those of the current block.
        proposal: (B, L) the drawn tokens at the candidates (the canvas elsewhere).
        committed: (B, L) the slots committed at this step.
        rows: the :class:`Row` of each row.
        estimate: (B,) the RM reward of the predicted completion when ``track_reward``, else None.
        guide: the inner loop's :class:`~entrgi.guidance.inner_loop.GuideResult` (None when not guided).

    Read fields as attributes; ``output["x"]``, ``keys()`` and ``items()`` also work (as diffusers'
    ``BaseOutput``), so callbacks written for a dict of these names keep working.
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
    estimate: torch.Tensor | None = None
    guide: GuideResult | None = None

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


__all__ = ["DenoisingState", "Row", "StepOutput"]
