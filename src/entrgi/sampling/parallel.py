"""Parallel (threshold) decoding: commit every confident candidate at once (Fast-dLLM's rule).

At a step, every candidate slot (masked, in the current block) whose drawn token has probability
strictly above ``threshold`` under the confidence logits is committed, together with the slots the
schedule picked (so a step never commits fewer than the schedule says). A row that got ahead of the
schedule's plan this way commits at least one slot per step (:func:`parallel_counts`), so T becomes a
maximum: a block ends as soon as it has no masked slot. The probability is the one Dream's ``maskgit_plus``
ranks by: q = softmax(logits / τ), unfiltered (τ = 0 uses τ = 1). The comparison is strict, so a
threshold of 1.0 adds nothing and the sampler is exactly the schedule's.

EOS last: with ``deprioritize_eos`` an EOS candidate above the threshold is committed only when no
other candidate of its row is left uncommitted after the step (the schedule's own order already puts
EOS last), so an EOS is never committed while a non-EOS slot of the block is still masked.

The sampler calls :func:`parallel_commits` where it chooses the commits, and skips the DLLM forward of
rows that have finished (:func:`rows_to_forward`), which is where the saving is when rows are batched.
"""

from __future__ import annotations

import dataclasses

import torch

from ..ops.logit_ops import scale
from .schedule import commit_counts

#: Elements per row block of the probability computation (the (rows, V) temporaries stay small).
ROW_BLOCK_ELEMENTS = 1 << 22


def drawn_token_probability(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """q(token) with q = softmax(logits / τ) per row of ``logits`` (n, V), for ``tokens`` (n,); τ = 0 uses τ = 1.

    Float64 (n,), computed as exp(l_tok / τ − logsumexp(l / τ)) in the logits' dtype (float32 or float64),
    in row blocks: no (n, V) float64 copy."""
    if temperature <= 0:
        temperature = 1.0
    n = logits.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=logits.device)
    step = max(1, ROW_BLOCK_ELEMENTS // max(logits.shape[-1], 1))
    for i in range(0, n, step):
        x = scale(logits[i:i + step], temperature)
        picked = x.gather(-1, tokens[i:i + step].unsqueeze(-1)).squeeze(-1)
        out[i:i + step] = (picked - torch.logsumexp(x, -1)).double().exp()
    return out


def threshold_commits(probabilities: torch.Tensor, candidates: torch.Tensor, scheduled: torch.Tensor,
                      threshold: float, is_eos: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (B, L): the ``scheduled`` commits plus every candidate whose probability is > ``threshold``.

    Args:
        probabilities: (B, L) probability of each slot's drawn token (read at candidates only).
        candidates: (B, L) the slots that may be committed at this step.
        scheduled: (B, L) the slots the schedule chose (a subset of ``candidates``).
        threshold: in [0, 1]; strictly above it commits (1.0: nothing beyond the schedule).
        is_eos: (B, L) True where the drawn token is an EOS, to keep EOS last (None: no such rule). An
            EOS above the threshold is added only when its row has no other candidate left uncommitted.
    """
    extra = candidates & (probabilities > threshold) & ~scheduled
    if is_eos is None:
        return scheduled | extra
    plain = scheduled | (extra & ~is_eos)
    others_left = (candidates & ~is_eos & ~plain).any(-1, keepdim=True)  # (B, 1)
    return plain | (extra & is_eos & ~others_left)


def parallel_commits(scheduled: torch.Tensor, conf_logits: torch.Tensor, candidates: torch.Tensor,
                     tokens: torch.Tensor, sampler, eos_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The sampler's call: ``scheduled`` (B, L) plus the candidates whose drawn ``tokens`` (n, in row-major
    candidate order) have probability > ``sampler.parallel_threshold`` under ``conf_logits`` (B, L, V).

    The probability is q = softmax(logits / τ) at the sampling τ (τ-free for ``low_confidence``, as LLaDA and
    Fast-dLLM); ``eos_ids`` (with ``deprioritize_eos``) keeps EOS last (:func:`threshold_commits`)."""
    temperature = 1.0 if sampler.remasking == "low_confidence" else sampler.temperature
    probs = torch.zeros(candidates.shape, dtype=torch.float64, device=candidates.device)
    probs[candidates] = drawn_token_probability(conf_logits[candidates], tokens, temperature)
    is_eos = None
    if eos_ids is not None:
        is_eos = torch.zeros_like(candidates)
        is_eos[candidates] = torch.isin(tokens, eos_ids)
    return threshold_commits(probs, candidates, scheduled, sampler.parallel_threshold, is_eos)


def planned_masked(block_size: int, step: int, steps: int, schedule: str, eps: float) -> int:
    """Masked slots of a block before its step ``step`` when every step so far committed exactly the schedule's
    count (the plan every row follows without a threshold)."""
    n = torch.tensor([block_size])
    for j in range(step):
        n = n - commit_counts(n, j, steps, schedule, eps)
    return int(n)


def parallel_counts(counts: torch.Tensor, n_masked: torch.Tensor, block_size: int, step: int, steps: int,
                    schedule: str, eps: float) -> torch.Tensor:
    """The schedule's counts (B,), at least one for the rows ahead of the plan (:func:`planned_masked`).

    A row that committed confident slots beyond the schedule is ahead; the linear schedule's
    ``int(n · (1 − s/t))`` would then give it 0 until the last step, so it would gain no step. With at least
    one per step (as Fast-dLLM) it finishes its block early. Rows on the plan (always, at threshold 1.0) keep
    the schedule's counts exactly."""
    ahead = (n_masked < planned_masked(block_size, step, steps, schedule, eps)) & (n_masked > 0)
    return torch.where(ahead, counts.clamp_min(1), counts)


def rows_to_forward(masked: torch.Tensor) -> torch.Tensor | None:
    """The rows (indices) that still have a masked slot, or None when every row has one (forward them all).

    A row without masked slots is finished: nothing reads its logits (the draw, the commit, the guidance, the
    reward estimate and the particle weights all look at masked slots only), so its DLLM forward is skipped.
    With parallel decoding rows finish at different steps; with the schedule alone they finish together."""
    live = masked.any(-1)
    return None if bool(live.all()) else live.nonzero().squeeze(-1)


def logits_of_rows(model_logits, state, rows: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits with only ``rows`` through the DLLM: ``model_logits(view)`` on a view of ``state``
    holding those rows; the other rows get the invalid-id bias alone (a uniform row over the valid ids)."""
    view = dataclasses.replace(state, x=state.x[rows], attention_mask=state.attention_mask[rows],
                               position_ids=state.position_ids[rows])
    part = model_logits(view)  # (R, L, V)
    out = part.new_zeros((state.x.shape[0], *part.shape[1:]))
    out += state.invalid_bias.to(out.dtype)
    out[rows] = part
    return out


__all__ = ["drawn_token_probability", "logits_of_rows", "parallel_commits", "parallel_counts", "planned_masked",
           "rows_to_forward", "threshold_commits"]
