"""Pure functions on logits: temperature, top-p / top-k filtering, inverse-CDF sampling.

Every function takes logits of shape (..., V) and returns a new tensor; nothing is modified in place.
Random draws are never made here: callers pass uniforms ``u`` drawn from their own per-row streams
(see :mod:`entrgi.rng`), so the same uniforms always give the same tokens.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / τ, with τ = 0 meaning *greedy*: the argmax gets 0 and every other id −inf."""
    if temperature == 0:
        return torch.where(one_hot_argmax(logits), 0.0, NEG_INF).to(logits.dtype)
    return logits / temperature


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Boolean (..., V) mask of the argmax (the first one on ties)."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of ids whose probability reaches ``top_p`` (the most likely id always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # Remove an id when the mass of the ids before it already exceeds top_p (Dream's rule: the id
    # that crosses top_p stays, and so does the most likely id).
    remove_sorted = (probs.cumsum(-1) - probs) > top_p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep the ``top_k`` largest logits (ties at the boundary are all kept)."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def sampling_logits(
    logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """The logits a token is drawn from: scaled by τ, then top-k, then top-p filtered."""
    return top_p_filter(top_k_filter(scale(logits, temperature), top_k), top_p)


def sample_from_logits(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one id per row of ``logits`` (..., V) by inverse CDF with the given uniforms (...,).

    ``uniforms`` in [0, 1). An id with probability 0 is never returned.
    """
    probs = logits.double().softmax(-1)
    cdf = probs.cumsum(-1)
    total = cdf[..., -1:]
    target = (uniforms.to(cdf.dtype).unsqueeze(-1) * total).clamp(max=total * (1 - 1e-7))
    ids = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    ids = ids.clamp(max=logits.shape[-1] - 1)
    # Guard against landing on a zero-probability id at the float boundary: fall back to argmax.
    bad = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1) <= 0
    return torch.where(bad, probs.argmax(-1), ids)


def sample_gumbel_max(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """argmax(logits + Gumbel noise) in float64, with noise −log(−log u) from ``uniforms`` (..., V).

    LLaDA's ``add_gumbel_noise`` writes this as argmax(exp(logits) / (−log u)^τ) on logits not yet
    divided by τ; both draw from softmax(logits / τ)."""
    g = -torch.log(-torch.log(uniforms.double().clamp(1e-300, 1 - 1e-16)))
    return (logits.double() + g).argmax(-1)
