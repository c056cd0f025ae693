"""The reward model's view of a batch in flight: its input layout, the DLLM -> RM embedding table, and scoring.

Built once per batch (:meth:`RewardView.build`) when the run guides, tracks the reward or weighs particles by the
reward model; the prompt prefix is encoded once when ``prefix_cache`` (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..guidance.inner_loop import ScoreFn, response_attention
from ..reward.base import RewardBatch, RewardModel
from ..reward.vocab import VocabBridge
from .outputs import ComputeStats, rm_call_tokens


@dataclass
class RewardView:
    """Attributes:
        batch: the RM's layout of the B rows (:class:`~entrgi.reward.base.RewardBatch`).
        table: (V, d) the RM's input embeddings aligned to the DLLM's ids (zeros where unmapped), on the DLLM's
            device, where φ lives.
        mapped: (V,) True where the RM has a row for the DLLM id.
        eos_ids: (E,) the ids that end a response.
    """

    batch: RewardBatch
    table: torch.Tensor
    mapped: torch.Tensor
    eos_ids: torch.Tensor

    @classmethod
    def build(cls, reward: RewardModel, bridge: VocabBridge, prompts: Sequence, response_length: int,
              eos_ids: torch.Tensor, device, *, prefix_cache: bool, compile: bool, stats: ComputeStats,
              sequence_positions: bool = False) -> RewardView:
        """The view of rows with these ``prompts``; the prefix encoding is counted in ``stats``.
        ``sequence_positions``: the RM's position ids 0 … N − 1 over the whole row (the released code's)."""
        if compile:
            if not hasattr(reward, "enable_compile"):
                raise ValueError(f"`compile`: {type(reward).__name__} has no compiled path (HFRewardModel has).")
            reward.enable_compile()
        batch = RewardBatch(reward, [reward.context(p) for p in prompts], response_length, prefix_cache=prefix_cache,
                            sequence_positions=sequence_positions)
        if batch.prefix_cached:  # the prefix is encoded once per batch
            stats.rm_forward_tokens += batch.prefix_attention.numel()
        return cls(batch, bridge.rm_table(reward.embedding_table(), device), bridge.mapped.to(device), eos_ids)

    @property
    def call_tokens(self) -> int:
        """Tokens one scoring call runs (:func:`~entrgi.sampling.outputs.rm_call_tokens`)."""
        return rm_call_tokens(self.batch)

    def score(self, embeds: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of all L response slots' embeddings (B, L, d) and attention (B, L)."""
        return self.batch.score(embeds, attention)

    def window_score(self, before: torch.Tensor | None, width: int) -> ScoreFn:
        """The score of a window of ``width`` slots that follows the committed ids ``before`` (B, lo) (None: the
        window starts the response): the slots after it are not attended (not generated yet)."""
        if before is None and width == self.batch.response_length:
            return self.score
        lo = 0 if before is None else before.shape[1]
        tail = self.batch.response_length - lo - width
        head = None if before is None else self.table[before]
        head_attn = None if before is None else response_attention(
            before, torch.zeros_like(before, dtype=torch.bool), self.eos_ids, self.mapped)

        def score(embeds: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
            rows = embeds.shape[0]
            parts = [embeds, embeds.new_zeros((rows, tail, embeds.shape[-1]))]
            masks = [attention, attention.new_zeros((rows, tail))]
            if head is not None:
                parts.insert(0, head.to(embeds.dtype))
                masks.insert(0, head_attn)
            return self.score(torch.cat(parts, 1), torch.cat(masks, 1))
        return score

    def estimate(self, response: torch.Tensor, logits: torch.Tensor, mask_token_id: int,
                 stats: ComputeStats) -> torch.Tensor:
        """RM reward (B,) of the predicted completion x̂0: the committed tokens of ``response`` (B, L), and the argmax
        of ``logits`` (B, L, V) at the slots still masked, on hard tokens (no gradient; counted in ``stats``)."""
        masked = response == mask_token_id
        x_hat = torch.where(masked, logits.argmax(-1), response)
        attn = response_attention(x_hat, torch.zeros_like(masked), self.eos_ids, self.mapped)
        stats.rm_forwards += x_hat.shape[0]
        stats.rm_forward_tokens += self.call_tokens
        return self.score(self.table[x_hat], attn).float()


__all__ = ["RewardView"]
