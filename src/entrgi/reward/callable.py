"""A reward given as a plain Python function on input embeddings (for research: probes, toy rewards,
hand-written scorers, an RM that is not a transformers classifier).

Guidance differentiates ``fn`` with respect to the response embeddings, so ``fn`` must be written in
torch and keep the graph (no ``.item()``, no ``torch.no_grad``). The embedding table is the space the
DLLM's tokens are mapped into (through the vocabulary bridge built from ``tokenizer``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import RewardModel

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CallableReward(RewardModel):
    """``fn(inputs_embeds (B, N, d), attention_mask (B, N), position_ids (B, N)) -> rewards (B,)`` as a reward.

    Args:
        fn: the reward; an ``nn.Module`` is registered as a submodule (moved by ``.to()``).
        embedding_table: E_R (V_R, d), one row per id of ``tokenizer`` (extra rows allowed); frozen,
            held without a copy (e.g. ``module.get_input_embeddings().weight``).
        tokenizer: the tokenizer whose ids index ``embedding_table`` (the bridge maps DLLM tokens to it
            by token string, and decoded texts are re-tokenised with it for the final scores).
        template: how (prompt, response) is laid out; see :class:`~entrgi.reward.base.RewardModel`
            (``response`` = the response alone).

    Inputs to ``fn`` are left-padded: ``attention_mask`` is 0 on padding and on response slots at or
    after the first EOS; the last position of every row is the last template token.
    """

    def __init__(self, fn: RewardFn, embedding_table: torch.Tensor, tokenizer, template: str = "auto"):
        super().__init__(tokenizer, template)
        if not callable(fn):
            raise ValueError(f"`fn` must be callable, got {type(fn).__name__}.")
        if not torch.is_tensor(embedding_table) or embedding_table.dim() != 2:
            raise ValueError("`embedding_table` must be a 2-D tensor (V_R, d), got "
                             f"{getattr(embedding_table, 'shape', type(embedding_table).__name__)}.")
        if embedding_table.shape[0] < len(tokenizer):
            raise ValueError(f"`embedding_table` has {embedding_table.shape[0]} rows but the tokenizer has "
                             f"{len(tokenizer)} ids: every id needs a row.")
        self.fn = fn
        self.register_buffer("table", embedding_table.detach())

    def embedding_table(self) -> torch.Tensor:
        return self.table

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> torch.Tensor:
        out = self.fn(inputs_embeds, attention_mask, position_ids)
        B = inputs_embeds.shape[0]
        if not torch.is_tensor(out) or out.numel() != B:
            raise ValueError(f"the reward function must return a tensor of {B} rewards (B,), got "
                             f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}.")
        return out.reshape(B).float()
