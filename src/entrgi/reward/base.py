"""Reward models read through input embeddings, and the batch layout that feeds them.

A reward model scores ``[context prefix ; response ; context suffix]``: the prefix and suffix come from the
RM's formatting of the prompt and stay constant, the response slots carry the embeddings guidance optimises.
:class:`RewardBatch` lays a batch out left-padded, position ids skipping padding and masked-out slots, and
can encode the prompt prefix once for causal RMs (the prefix cache; docs/rewards.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..conversation import Prompt, prompt_messages, prompt_text
from ..models.base import special_token_wrap

PLACEHOLDER = "<<ENTRGI_RESPONSE_PLACEHOLDER>>"
TEMPLATES = ("auto", "chat", "plain", "response")


@dataclass(frozen=True)
class RewardContext:
    """RM token ids before and after the response slots, for one prompt."""

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]


class RewardModel(nn.Module):
    """Base class: a scalar reward read through input embeddings.

    Subclasses provide :meth:`embedding_table` (E_R, (V_R, d)) and :meth:`forward_embeds`; the
    template handling, the layout and the discrete re-scoring are shared.

    Args:
        tokenizer: the RM's tokenizer.
        template: ``chat`` (the tokenizer's chat template, user prompt + assistant response), ``plain``
            (prompt text, a space, the response), ``response`` (the response alone) or ``auto``
            (chat when the tokenizer has a chat template, else plain).
    """

    def __init__(self, tokenizer, template: str = "auto"):
        super().__init__()
        if template not in TEMPLATES:
            raise ValueError(f"`template` must be one of {list(TEMPLATES)}, got {template!r}.")
        if template == "auto":
            template = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
        self.tokenizer = tokenizer
        self.template = template
        self._head, self._tail = special_token_wrap(tokenizer)
        self._contexts: dict[str, RewardContext] = {}

    # ---- to implement ---------------------------------------------------------------------------
    def embedding_table(self) -> torch.Tensor:
        """E_R: the RM's input-embedding rows (V_R, d)."""
        raise NotImplementedError

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of a left-padded batch; ``attention_mask`` (B, N) marks the real tokens (a causal
        RM reads its score at each row's last attended position, an encoder pools attended ones)."""
        raise NotImplementedError

    # ---- optional: prefix cache (causal decoders) -----------------------------------------------
    @property
    def supports_prefix_cache(self) -> bool:
        """True when :meth:`encode_prefix` / :meth:`forward_embeds_cached` are exact for this RM (a causal
        decoder: a position's state depends only on the positions before it)."""
        return False

    def encode_prefix(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor) -> Any:
        """The state of a left-padded prefix batch (B, P, d) that later calls continue from (no gradient)."""
        raise NotImplementedError

    def forward_embeds_cached(self, prefix: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                              position_ids: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of ``[prefix ; inputs_embeds]``: ``inputs_embeds`` (B, T, d) and ``position_ids``
        (B, T) cover the continuation, ``attention_mask`` (B, P + T) the prefix and the continuation."""
        raise NotImplementedError

    # ---- text formatting ------------------------------------------------------------------------
    def render(self, prompt: Prompt, response: str) -> tuple[str, str, str]:
        """(text before, response, text after) as the RM's template lays them out; a
        :class:`~entrgi.conversation.Conversation` prompt is the whole conversation (``plain``: its plain text)."""
        if self.template == "chat":
            conv = [*prompt_messages(prompt), {"role": "assistant", "content": PLACEHOLDER}]
            text = self.tokenizer.apply_chat_template(conv, tokenize=False)
            if text.count(PLACEHOLDER) != 1:
                raise ValueError("the reward tokenizer's chat template must render the assistant content once.")
            before, after = text.split(PLACEHOLDER)
            return before, response, after
        if self.template == "plain":
            return prompt_text(prompt) + " ", response, ""
        return "", response, ""

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def context(self, prompt: Prompt) -> RewardContext:
        """Prefix/suffix ids around the response for ``prompt`` (cached per prompt)."""
        if prompt not in self._contexts:
            before, _, after = self.render(prompt, "")
            prefix = self._encode(before)
            bos = getattr(self.tokenizer, "bos_token_id", None)
            head = self._head[1:] if (self._head and prefix and self._head[0] == bos == prefix[0]) else self._head
            self._contexts[prompt] = RewardContext(tuple(head + prefix), tuple(self._encode(after) + self._tail))
        return self._contexts[prompt]

    def text_ids(self, prompt: Prompt, response: str) -> list[int]:
        """Discrete RM ids of (prompt, response): prefix + tokenised response + suffix."""
        ctx = self.context(prompt)
        return [*ctx.prefix_ids, *self._encode(response), *ctx.suffix_ids]

    @property
    def device(self) -> torch.device:
        return self.embedding_table().device

    # ---- discrete re-scoring --------------------------------------------------------------------
    @torch.no_grad()
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Rewards (B,) of decoded texts on discrete tokens (float32, CPU)."""
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) differ in length.")
        out = []
        table = self.embedding_table()
        for i in range(0, len(prompts), batch_size):
            ids = [self.text_ids(p, r) for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
            input_ids, attn = left_pad(ids, 0, table.device)
            out.append(self.forward_embeds(table[input_ids], attn, position_ids_from(attn)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists: (ids (B, N), attention mask (B, N) long)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), n), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, n - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            attn[b, n - len(r):] = 1
    return ids.to(device), attn.to(device)


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only attended tokens: cumsum(mask) − 1, clamped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def sequence_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0 … N − 1 of every row, whatever is attended: what a transformers model uses when it is given
    no position ids (the released code's reward model calls; ``SamplerConfig.match_released``)."""
    B, N = attention_mask.shape
    return torch.arange(N, device=attention_mask.device).expand(B, N)


def rescore_texts(reward: RewardModel, prompts: Sequence[str], texts: Sequence[str], released: bool = False
                  ) -> torch.Tensor:
    """Rewards (B,) of decoded texts: ``reward.score_texts``, or with ``released`` the reward's
    ``score_texts_released`` when it has one and reads a chat template (the released code's re-scoring, which
    always renders one; ``SamplerConfig.match_released``)."""
    if released and hasattr(reward, "score_texts_released") and getattr(reward, "template", None) == "chat":
        return reward.score_texts_released(prompts, texts)
    return reward.score_texts(prompts, texts)


class RewardBatch:
    """The RM's input for B rows, built once per batch: ``[pad ; prefix_b ; L slots ; suffix_b]``.

    :meth:`inputs` scatters response embeddings (B, L, d) into the slots; prefix and suffix
    embeddings are constants. Slots whose ``response_attention`` is False (at or after the first
    EOS, or unmapped tokens) are not attended to and do not advance the position ids.

    Args:
        reward: the reward model; its device holds the layout (inputs from elsewhere are moved there).
        contexts: one :class:`RewardContext` per row.
        response_length: L.
        prefix_cache: encode ``[pad ; prefix_b]`` once (no gradient) and run each call on
            ``[L slots ; pad ; suffix_b]`` only, when ``reward.supports_prefix_cache``; otherwise (or False)
            every call runs the whole row. Same rewards and gradients up to float rounding.
        sequence_positions: position ids 0 … N − 1 over the whole row (:func:`sequence_position_ids`, the
            released code's) instead of counting attended tokens only.
    """

    def __init__(self, reward: RewardModel, contexts: Sequence[RewardContext], response_length: int, *,
                 prefix_cache: bool = False, sequence_positions: bool = False):
        table = reward.embedding_table()
        self.reward = reward
        self.positions = sequence_position_ids if sequence_positions else position_ids_from
        self.response_length = response_length
        self.device = table.device
        self.prefix_cached = bool(prefix_cache and reward.supports_prefix_cache
                                  and any(c.prefix_ids for c in contexts))
        L = response_length
        if self.prefix_cached:
            prefix_ids, self.prefix_attention = left_pad([c.prefix_ids for c in contexts], 0, self.device)
            suffix_ids, suffix_attn = left_pad([c.suffix_ids for c in contexts], 0, self.device)
            B = len(contexts)
            ids = torch.cat([torch.zeros((B, L), dtype=torch.long, device=self.device), suffix_ids], 1)
            self.slot_mask = torch.zeros(ids.shape, dtype=torch.bool, device=self.device)
            self.slot_mask[:, :L] = True  # (B, L + S)
            self.base_attention = torch.cat([torch.zeros((B, L), dtype=torch.long, device=self.device),
                                             suffix_attn], 1)  # (B, L + S)
            with torch.no_grad():
                self.prefix_state = reward.encode_prefix(table[prefix_ids], self.prefix_attention,
                                                         self.positions(self.prefix_attention))
        else:
            rows, slots = [], []
            for c in contexts:
                rows.append([*c.prefix_ids, *([0] * L), *c.suffix_ids])
                slots.append([False] * len(c.prefix_ids) + [True] * L + [False] * len(c.suffix_ids))
            ids, attn = left_pad(rows, 0, self.device)
            slot_mask, _ = left_pad([list(map(int, s)) for s in slots], 0, self.device)
            self.slot_mask = slot_mask.bool()  # (B, N_R)
            self.base_attention = attn.masked_fill(self.slot_mask, 0)  # (B, N_R)
        with torch.no_grad():
            self.static_embeds = table[ids].masked_fill(self.slot_mask.unsqueeze(-1), 0.0)  # (B, N_R, d)

    def inputs(self, response_embeds: torch.Tensor, response_attention: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds (B, N, d), attention_mask (B, N'), position_ids (B, N)) of the part a call runs:
        the whole row (N' = N = N_R), or with the prefix cache the slots and suffix (N = L + S) with the
        attention mask over prefix and tail (N' = P + N)."""
        embeds = self.static_embeds.masked_scatter(
            self.slot_mask.unsqueeze(-1), response_embeds.to(device=self.device, dtype=self.static_embeds.dtype))
        attn = self.base_attention.masked_scatter(self.slot_mask, response_attention.to(self.device).long())
        if not self.prefix_cached:
            return embeds, attn, self.positions(attn)
        full = torch.cat([self.prefix_attention, attn], 1)  # (B, P + L + S)
        return embeds, full, self.positions(full)[:, self.prefix_attention.shape[1]:]

    def score(self, response_embeds: torch.Tensor, response_attention: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) on the reward model's device, differentiable w.r.t. ``response_embeds``."""
        if self.prefix_cached:
            return self.reward.forward_embeds_cached(self.prefix_state, *self.inputs(response_embeds,
                                                                                     response_attention))
        return self.reward.forward_embeds(*self.inputs(response_embeds, response_attention))
