"""Weighted sums of rewards: R = Σ_i w_i · R_i, each R_i possibly on its own tokenizer.

:class:`CompositeReward` sums differentiable members: on one tokenizer its table is the members' tables
side by side, on several :meth:`CompositeReward.guidance_view` gives the guidance loop one view per batch.
:class:`CompositeTextReward` sums any members on decoded text and is never differentiated
(docs/rewards.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import RewardBatch, RewardContext, RewardModel
from .text import TextReward, load_text_reward
from .vocab import VocabBridge


def _check_weights(weights: Sequence[float] | None, n: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * n
    weights = list(weights)
    if len(weights) != n:
        raise ValueError(f"`weights` has {len(weights)} entries for {n} rewards.")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(float(w)):
            raise ValueError(f"`weights[{i}]` must be a finite number, got {w!r}.")
    return tuple(float(w) for w in weights)


def _names(rewards: Sequence[Any], names: Sequence[str] | None) -> tuple[str, ...]:
    if names is not None:
        names = [str(x) for x in names]
        if len(names) != len(rewards):
            raise ValueError(f"`names` has {len(names)} entries for {len(rewards)} rewards.")
        return tuple(names)
    return tuple(f"{i}:{getattr(r, 'name', None) or type(r).__name__}" for i, r in enumerate(rewards))


def same_vocabulary(a, b) -> bool:
    """True when two tokenizers give every token string the same id."""
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def _finite(scores: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(scores).all():
        bad = (~torch.isfinite(scores)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"reward {name!r} gave non-finite scores (items {bad}); rewards must be finite.")
    return scores


class CompositeReward(RewardModel):
    """Σ_i w_i · R_i over differentiable rewards (see the module docstring for the two layouts).

    Args:
        rewards: the members (:class:`~entrgi.reward.base.RewardModel`; registered as submodules).
        weights: one finite weight per member (default 1.0 each; negative = a penalty).
        names: how errors and :attr:`names` call them (default ``"i:ClassName"``).
    """

    def __init__(self, rewards: Sequence[RewardModel], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None):
        rewards = list(rewards)
        if not rewards:
            raise ValueError("`rewards` must hold at least one reward.")
        for i, r in enumerate(rewards):
            if not isinstance(r, RewardModel):
                raise ValueError(f"`rewards[{i}]` is a {type(r).__name__}, not a differentiable RewardModel; a sum "
                                 "with text rewards scores texts only: use CompositeTextReward (or weighted_sum).")
        first = rewards[0]
        super().__init__(first.tokenizer, first.template)
        self.members = nn.ModuleList(rewards)
        self.weights = _check_weights(weights, len(rewards))
        self.names = _names(rewards, names)
        self.shared_vocabulary = all(same_vocabulary(first.tokenizer, r.tokenizer) for r in rewards[1:])
        self._concat: tuple[tuple, torch.Tensor] | None = None

    # ---- the shared layout ----------------------------------------------------------------------
    def _layout_error(self, why: str) -> ValueError:
        return ValueError(f"CompositeReward{list(self.names)}: {why}, so they cannot share one embedding layout. "
                          "Such a composite scores texts (best_of_n / particles); gradients need the sampler to "
                          "use CompositeReward.guidance_view (one RewardBatch and vocabulary bridge per member).")

    def render(self, prompt: str, response: str) -> tuple[str, str, str]:
        return self.members[0].render(prompt, response)

    def context(self, prompt: str) -> RewardContext:
        """The members' common prefix/suffix ids for ``prompt`` (ValueError when they differ)."""
        if not self.shared_vocabulary:
            raise self._layout_error("the members use different tokenizers")
        if prompt not in self._contexts:
            contexts = [m.context(prompt) for m in self.members]
            for name, c in zip(self.names[1:], contexts[1:]):
                if c != contexts[0]:
                    raise self._layout_error(f"member {name!r} lays out prompt {str(prompt)[:40]!r} differently from "
                                             f"{self.names[0]!r} (another template)")
            self._contexts[prompt] = contexts[0]
        return self._contexts[prompt]

    def text_ids(self, prompt: str, response: str) -> list[int]:
        ctx = self.context(prompt)
        return [*ctx.prefix_ids, *self.members[0]._encode(response), *ctx.suffix_ids]

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def dims(self) -> tuple[int, ...]:
        """Columns of each member in the side-by-side table."""
        return tuple(int(m.embedding_table().shape[1]) for m in self.members)

    def embedding_table(self) -> torch.Tensor:
        """``[E_1 | E_2 | …]`` (min_i V_i, Σ d_i) on the first member's device, in the widest dtype (a copy,
        kept while the members' tables stay the same)."""
        if not self.shared_vocabulary:
            raise self._layout_error("the members use different tokenizers")
        tables = [m.embedding_table() for m in self.members]
        if len(tables) == 1:
            return tables[0]
        key = tuple((t.data_ptr(), tuple(t.shape), t.dtype, t.device) for t in tables)
        if self._concat is None or self._concat[0] != key:
            rows = min(t.shape[0] for t in tables)
            dtype = tables[0].dtype
            for t in tables[1:]:
                dtype = torch.promote_types(dtype, t.dtype)
            device = tables[0].device
            self._concat = (key, torch.cat([t[:rows].detach().to(device=device, dtype=dtype) for t in tables], -1))
        return self._concat[1]

    def _parts(self, embeds: torch.Tensor) -> list[torch.Tensor]:
        """The member columns of side-by-side embeddings, each on its member's device and dtype."""
        if len(self.members) == 1:
            return [embeds]
        out, lo = [], 0
        for m, d in zip(self.members, self.dims):
            t = m.embedding_table()
            out.append(embeds[..., lo:lo + d].to(device=t.device, dtype=t.dtype))
            lo += d
        return out

    def _sum(self, rewards: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        total = None
        for w, r in zip(self.weights, rewards):
            term = w * r.float().to(device)
            total = term if total is None else total + term
        return total

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> torch.Tensor:
        rewards = []
        for m, part in zip(self.members, self._parts(inputs_embeds)):
            dev = part.device
            rewards.append(m.forward_embeds(part, attention_mask.to(dev), position_ids.to(dev)))
        return self._sum(rewards, inputs_embeds.device)

    @property
    def supports_prefix_cache(self) -> bool:
        """When any member has one (the others get whole rows back)."""
        return any(m.supports_prefix_cache for m in self.members)

    @torch.no_grad()
    def encode_prefix(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor) -> list[tuple[str, Any]]:
        states = []
        for m, part in zip(self.members, self._parts(inputs_embeds)):
            dev = part.device
            args = (part, attention_mask.to(dev), position_ids.to(dev))
            states.append(("cache", m.encode_prefix(*args)) if m.supports_prefix_cache else ("rows", args))
        return states

    def forward_embeds_cached(self, prefix: list[tuple[str, Any]], inputs_embeds: torch.Tensor,
                              attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        rewards = []
        for m, part, (kind, state) in zip(self.members, self._parts(inputs_embeds), prefix):
            dev = part.device
            attn, pos = attention_mask.to(dev), position_ids.to(dev)
            if kind == "cache":
                rewards.append(m.forward_embeds_cached(state, part, attn, pos))
            else:  # whole rows: [pad ; prefix ; slots ; pad ; suffix], the same attended tokens and positions
                p_embeds, _, p_pos = state
                rewards.append(m.forward_embeds(torch.cat([p_embeds, part], 1), attn, torch.cat([p_pos, pos], 1)))
        return self._sum(rewards, inputs_embeds.device)

    # ---- discrete re-scoring --------------------------------------------------------------------
    @torch.no_grad()
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Σ_i w_i · (member i's own discrete scores) (B,), float32 on CPU; any tokenizers."""
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) differ in length.")
        scores = [_finite(m.score_texts(prompts, responses, batch_size=batch_size).float().cpu(), n)
                  for m, n in zip(self.members, self.names)]
        return self._sum(scores, torch.device("cpu"))

    # ---- one layout per member ------------------------------------------------------------------
    def guidance_view(self, model, prompts: Sequence[str], response_length: int, *, prefix_cache: bool = True,
                      device: torch.device | str | None = None,
                      bridges: Sequence[VocabBridge] | None = None) -> GuidanceView:
        """The guidance loop's inputs for one batch, one RewardBatch and vocabulary bridge per member.

        Args:
            model: the DLLM adapter (its ``tokenizer``, ``logit_width`` and ``invalid_token_ids``).
            prompts: one prompt per batch row.
            response_length: L.
            prefix_cache: passed to each member's :class:`~entrgi.reward.base.RewardBatch`.
            device: where φ lives (the DLLM's device; the table is put there).
            bridges: one DLLM -> member bridge each (default: by token string, as the sampler builds).
        """
        device = torch.device(device) if device is not None else model.device
        if bridges is None:
            bridges = [VocabBridge.from_tokenizers(model.tokenizer, m.tokenizer, model.logit_width,
                                                   exclude=model.invalid_token_ids) for m in self.members]
        bridges = list(bridges)
        if len(bridges) != len(self.members):
            raise ValueError(f"`bridges` has {len(bridges)} entries for {len(self.members)} rewards.")
        tables = [b.rm_table(m.embedding_table(), device) for b, m in zip(bridges, self.members)]
        dtype = tables[0].dtype
        for t in tables[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        mapped = bridges[0].mapped.to(device)
        for b in bridges[1:]:
            mapped = mapped & b.mapped.to(device)
        if not bool(mapped.any()):
            raise ValueError(f"CompositeReward{list(self.names)}: no DLLM token is visible to every member.")
        batches = [RewardBatch(m, [m.context(p) for p in prompts], response_length, prefix_cache=prefix_cache)
                   for m in self.members]
        table = torch.cat([t.to(dtype) for t in tables], -1)
        return GuidanceView(table, mapped, batches, self.weights, tuple(t.shape[1] for t in tables), bridges)


@dataclass
class GuidanceView:
    """What the guidance loop takes from a reward for one batch, for a sum of members each with its own
    layout: ``table`` (V, Σ d_i) aligned to the DLLM's ids (member i's bridge table in its columns),
    ``mapped`` (V,) ids every member sees, and :meth:`score` (B,) of response embeddings in that table's
    space. A drop-in for the sampler's (``reward_batch``, ``table``, ``rm_mapped``)::

        view = reward.guidance_view(model, [r.prompt for r in rows], L, prefix_cache=..., device=device)
        batch.reward_batch, batch.table, batch.rm_mapped = view, view.table, view.mapped
    """

    table: torch.Tensor
    mapped: torch.Tensor
    batches: list[RewardBatch]
    weights: tuple[float, ...]
    dims: tuple[int, ...]
    bridges: list[VocabBridge]

    def score(self, response_embeds: torch.Tensor, response_attention: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i · member i's reward (B,) on ``response_embeds``' device, differentiable."""
        total, lo = None, 0
        for w, batch, d in zip(self.weights, self.batches, self.dims):
            part = response_embeds[..., lo:lo + d]
            lo += d
            term = w * batch.score(part, response_attention).float().to(response_embeds.device)
            total = term if total is None else total + term
        return total


class CompositeTextReward(TextReward):
    """Σ_i w_i · R_i on decoded text, any members: RewardModels (their ``score_texts``), TextRewards,
    plain ``(prompt, response) -> float`` functions or ``module:function`` strings (made TextRewards).

    Not differentiable; for Best-of-N, particle weights and judges.
    """

    def __init__(self, rewards: Sequence[Any], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None, name: str | None = None):
        rewards = list(rewards)
        if not rewards:
            raise ValueError("`rewards` must hold at least one reward.")
        members = []
        for i, r in enumerate(rewards):
            if isinstance(r, str):
                r = load_text_reward(r)
            elif not callable(getattr(r, "score_texts", None)):
                if not callable(r):
                    raise ValueError(f"`rewards[{i}]` is a {type(r).__name__}: expected a reward, a function or "
                                     "'module:function'.")
                r = TextReward(r)
            members.append(r)
        self.members = members
        self.weights = _check_weights(weights, len(members))
        self.names = _names(members, names)
        self.name = name or "+".join(f"{w:g}*{n.split(':', 1)[-1]}" for w, n in zip(self.weights, self.names))

    def __repr__(self) -> str:
        return f"CompositeTextReward({self.name!r})"

    def score_texts(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
                    ) -> torch.Tensor:
        """Σ_i w_i · member i's scores (B,), float32 on CPU."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) differ in length.")
        total = torch.zeros(len(prompts), dtype=torch.float32)
        for w, m, n in zip(self.weights, self.members, self.names):
            kwargs = {} if batch_size is None else {"batch_size": batch_size}
            total = total + w * _finite(m.score_texts(prompts, responses, **kwargs).float().cpu(), n)
        return total

    def score_list(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
                   ) -> list[float]:
        return self.score_texts(prompts, responses, batch_size).tolist()


def weighted_sum(rewards: Sequence[Any], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None) -> CompositeReward | CompositeTextReward:
    """A :class:`CompositeReward` when every member is a RewardModel, else a :class:`CompositeTextReward`."""
    rewards = list(rewards)
    if rewards and all(isinstance(r, RewardModel) for r in rewards):
        return CompositeReward(rewards, weights, names)
    return CompositeTextReward(rewards, weights, names)


__all__ = ["CompositeReward", "CompositeTextReward", "GuidanceView", "same_vocabulary", "weighted_sum"]
