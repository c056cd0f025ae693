"""The draw and the commit of a denoising step as a reference sampler computes them (``DenoisingState.reproduction``).

The sampler calls :func:`reference_draw` and :func:`reference_choose` in place of its own rules when the state
has a :class:`~entrgi.reproduction.Reproduction`; each choice whose flag is off falls back to the project's rule,
so one flag can be measured at a time. The numerics are :mod:`entrgi.ops.released`'s; this module only lays
the candidate slots out as each reference does:

- ``released`` (atutej/entrgi ``main_expts/entrgi.py``): one trajectory at a time, over its masked slots;
  confidences ranked by ``torch.topk`` on that trajectory's compact vector, sampled EOS at −∞.
- ``dream`` (``diffusion_generate``): every masked slot of the batch at once; ``torch.topk`` on the full
  (B, P + L) rows with −∞ outside the masked slots, one count for all rows.
- ``llada`` (``generate``): per slot; ``torch.topk`` on each full row (P + L) with −∞ outside the block's
  masked slots.
"""

from __future__ import annotations

import torch

from ..ops.logit_ops import NEG_INF
from ..ops.released import (
    categorical_probs,
    drawn_confidence,
    entropy_confidence,
    filtered_probs,
    gumbel_argmax_llada,
    inverse_cdf_probs,
    margin_confidence,
    packed_groups,
    topk_indices,
)
from ..reproduction import Reproduction
from .remasking import get_remasking_rule
from .schedule import DEPRIORITISED, commit_counts, confidence, dream_commit_counts, released_commit_counts, select_top


def row_groups(mask: torch.Tensor, reference: str) -> list[tuple[int, int]]:
    """The (lo, hi) ranges of the packed ``mask`` (B, L) slots (row-major) that ``reference`` computes together:
    one per row with slots (``released``), or all of them (``dream``, ``llada``)."""
    counts = mask.sum(-1).tolist()
    if reference == "released":
        return packed_groups(counts)
    return [(0, sum(counts))] if sum(counts) else []


def group_probs(rep: Reproduction, logits: torch.Tensor, temperature: float, top_p: float,
                top_k: int | None) -> torch.Tensor:
    """The probabilities the reference draws from and (Dream) ranks by, for one group (n, V): softmax of its
    filtered logits (with ``float32_top_p`` off, the top-p set is the project's float64 rule)."""
    return filtered_probs(logits, temperature, top_p, top_k, float32_top_p=rep.float32_top_p)


def reference_draw(rep: Reproduction, logits: torch.Tensor, candidates: torch.Tensor, streams,
                   sampler) -> torch.Tensor:
    """One token per candidate slot (n,) from ``logits`` (n, V) (the candidates of ``candidates`` (B, L),
    row-major) with the rows' streams, as ``rep.reference`` draws: the inverse CDF of its float32 filtered
    probabilities (released; Dream normalises them as ``Categorical`` and takes the argmax if that refuses
    them), or LLaDA's Gumbel formula on uniforms for every id. Uses the same uniforms as the project's draw."""
    tau, top_p, top_k = sampler.temperature, sampler.top_p, sampler.top_k
    if rep.reference == "llada":
        if tau == 0:
            return gumbel_argmax_llada(logits, None, 0.0)
        return gumbel_argmax_llada(logits, streams.uniform_matrix_at(candidates, logits.shape[-1]), tau)
    u = streams.uniform_at(candidates)[candidates]  # (n,)
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    for lo, hi in row_groups(candidates, rep.reference):
        probs = group_probs(rep, logits[lo:hi], tau, top_p, top_k)
        if tau == 0:
            out[lo:hi] = probs.argmax(-1)
            continue
        if rep.reference == "dream":
            normalised = categorical_probs(probs)
            if normalised is None:  # Categorical refused them: sample_tokens falls back to the argmax
                out[lo:hi] = probs.argmax(-1)
                continue
            probs = normalised
        out[lo:hi] = inverse_cdf_probs(probs, u[lo:hi])
    return out


def confidence_from_guided(rep: Reproduction | None, remasking: str) -> bool:
    """True when the reference ranks by the guided logits: the released code's ``maskgit_plus`` and
    ``topk_margin`` use its guided filtered probabilities (``entropy`` the prior ones)."""
    return rep is not None and rep.reference == "released" and remasking != "entropy"


def reference_confidence(rep: Reproduction, logits: torch.Tensor, tokens: torch.Tensor, candidates: torch.Tensor,
                         sampler) -> torch.Tensor:
    """The reference's confidence (n,) in the logits' dtype for the drawn ``tokens`` (n,) at the candidate slots:
    released ``entropy`` on the unfiltered softmax(logits / τ); released ``maskgit_plus`` / ``topk_margin`` and
    every Dream rule on the filtered probabilities it draws from; LLaDA's ``low_confidence`` on softmax(logits)."""
    tau, top_p, top_k, rule = sampler.temperature, sampler.top_p, sampler.top_k, sampler.remasking
    out = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
    for lo, hi in row_groups(candidates, rep.reference):
        x, t = logits[lo:hi], tokens[lo:hi]
        if rep.reference == "llada":
            out[lo:hi] = drawn_confidence(torch.softmax(x, dim=-1), t)
            continue
        if rep.reference == "released" and rule == "entropy":
            probs = torch.softmax(x / tau if tau > 0 else x, dim=-1)
        else:
            probs = group_probs(rep, x, tau, top_p, top_k)
        if rule == "entropy":
            out[lo:hi] = entropy_confidence(probs)
        elif rule == "topk_margin":
            out[lo:hi] = margin_confidence(probs)
        else:  # maskgit_plus: the probability of the draw (greedy: the largest)
            out[lo:hi] = drawn_confidence(probs, t)
    return out


def reference_counts(rep: Reproduction, n_masked: torch.Tensor, step: int, steps: int, sampler) -> torch.Tensor:
    """Commits per row (B,): the reference's float32-schedule count (``counts`` flag), else the project's."""
    if rep.counts and rep.reference == "released":
        return released_commit_counts(n_masked, step, steps, sampler.eps)
    if rep.counts and rep.reference == "dream":
        return dream_commit_counts(n_masked, step, steps, sampler.eps)
    return commit_counts(n_masked, step, steps, sampler.schedule, sampler.eps)  # LLaDA's count is the project's


def reference_select(reference: str, conf: torch.Tensor, eos_hit: torch.Tensor, candidates: torch.Tensor,
                     counts: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Boolean (B, L): the slots ``torch.topk`` commits on the reference's layout. ``conf`` (n,) per candidate
    (row-major), ``eos_hit`` (n,) the candidates the reference puts at −∞, ``counts`` (B,) per row."""
    B, L = candidates.shape
    commit = torch.zeros_like(candidates)
    conf = torch.where(eos_hit, torch.full_like(conf, NEG_INF), conf)
    if reference == "released":  # one trajectory's compact vector
        lo = 0
        for b, n in enumerate(candidates.sum(-1).tolist()):
            k = min(int(counts[b]), n)
            if k > 0:
                slots = candidates[b].nonzero().flatten()
                commit[b, slots[topk_indices(conf[lo:lo + n], k)]] = True
            lo += n
        return commit
    full = torch.full((B, prompt_length + L), NEG_INF, dtype=conf.dtype, device=conf.device)
    full[:, prompt_length:][candidates] = conf
    if reference == "dream":  # one count, every row at once
        k = int(counts[0]) if B else 0
        if k > 0:
            idx = topk_indices(full, k) - prompt_length  # (B, k)
            rows = torch.arange(B, device=idx.device).unsqueeze(-1).expand_as(idx)
            ok = idx >= 0
            commit[rows[ok], idx[ok]] = True
        return commit & candidates
    for b in range(B):  # llada: row by row
        k = int(counts[b])
        if k > 0:
            idx = topk_indices(full[b], k) - prompt_length
            commit[b, idx[idx >= 0]] = True
    return commit & candidates


def reference_choose(state, conf_logits: torch.Tensor, candidates: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): the candidates a step commits, as ``state.reproduction``'s reference chooses them
    (``conf_logits`` (B, L, V), drawn tokens ``x0`` (n,)); a choice whose flag is off is the project's."""
    rep, cfg = state.reproduction, state.sampler
    logits = conf_logits[candidates]  # (n, V)
    counts = reference_counts(rep, candidates.sum(-1), state.block_step, state.steps_per_block, cfg)
    if rep.float32_confidence:
        conf = reference_confidence(rep, logits, x0, candidates, cfg)
    else:
        conf = confidence(get_remasking_rule(cfg.remasking), logits, x0, cfg.temperature)
    eos_hit = torch.isin(x0, state.eos_ids) if cfg.deprioritize_eos else torch.zeros_like(x0, dtype=torch.bool)
    if rep.topk_order:
        return reference_select(rep.reference, conf, eos_hit, candidates, counts, state.prompt_length)
    keys = torch.full(candidates.shape, NEG_INF, dtype=torch.float64, device=candidates.device)
    keys[candidates] = torch.where(eos_hit, torch.full_like(conf, DEPRIORITISED, dtype=torch.float64), conf.double())
    return select_top(keys, counts) & candidates


__all__ = ["confidence_from_guided", "reference_choose", "reference_confidence", "reference_counts",
           "reference_draw", "reference_select", "row_groups"]
