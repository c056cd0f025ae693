"""The reference samplers' numerics as pure functions: the authors' released EntRGi code, Dream's
``diffusion_generate`` and LLaDA's ``generate`` (``SamplerConfig.match_released`` / ``match_reference``).

The project computes top-p boundaries, confidences and draws in float64 over the ids that can be tokens
(docs/differences.md). The reference samplers compute them in the logits' dtype (float32 for float32
models) over every logit row. Each function here reproduces one of those computations as the reference
writes it: the same operations, in the same order, on tensors of the same shape, so that on the same
device it gives the same bits. Callers pass the rows a reference computes together as one tensor (the
released code: one trajectory's masked slots; Dream: every masked slot of the batch), since a reduction
over a single row may be split across threads and round differently from one over several rows.

Random numbers are never drawn here: a draw is the inverse CDF of the reference's probabilities at the
caller's uniforms (:func:`inverse_cdf_probs`); the agreement script feeds the reference samplers the same
uniforms through the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .logit_ops import top_p_filter

#: The ε the reference samplers add inside the log of their entropy confidence and weight.
ENTROPY_EPS = 1e-10


def removed_value(logits: torch.Tensor) -> float:
    """The logit the reference filters write at removed ids: the dtype's most negative finite value."""
    return torch.finfo(logits.dtype).min


def top_p_keep_sorted(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean (n, V): the ids the reference top-p rule keeps, computed as the references write it (the
    straightforward, slow form): sort descending, softmax and cumsum in the logits' dtype, remove an id when
    the cumulative probability *through the id before it* exceeds ``top_p`` (the first id always stays)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cum > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    return ~torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, remove)


def top_p_keep(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """:func:`top_p_keep_sorted`, several times faster on a CPU: the same float32 (or float64) softmax and cumsum
    of the same sorted values, with the values sorted by numpy and the ids assigned by a threshold.

    The reference's probabilities depend only on the sorted *values* (equal values are interchangeable), so
    numpy's value sort gives the same cumsum bit for bit, and the cumsum of nonnegative terms is nondecreasing,
    so the first position over ``top_p`` ends the kept run. The kept ids are those at or above the last kept
    value; where the boundary splits a run of equal values, which of them ``torch.sort`` puts first decides, so
    those rows are re-done with :func:`top_p_keep_sorted`. Other devices and dtypes use
    :func:`top_p_keep_sorted` directly. ``top_p`` >= 1 keeps every id (the references skip the filter)."""
    n, V = logits.shape
    if top_p >= 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    if logits.device.type != "cpu" or logits.dtype not in (torch.float32, torch.float64) or n == 0:
        return top_p_keep_sorted(logits, top_p)
    import numpy as np  # noqa: PLC0415  (numpy comes with torch; only this path needs it)

    x = logits.detach().contiguous()
    ascending = torch.from_numpy(np.sort(x.numpy(), axis=-1))  # (n, V)
    cum = torch.cumsum(F.softmax(ascending.flip(-1), dim=-1), dim=-1)  # as the reference: descending values
    limit = torch.full((n, 1), top_p, dtype=cum.dtype)  # the comparison `cum > top_p` is in the cumsum's dtype
    kept = (torch.searchsorted(cum, limit, right=True).squeeze(-1) + 1).clamp(max=V)  # positions 0 … first over
    threshold = ascending.gather(-1, (V - kept).unsqueeze(-1))  # (n, 1) the last kept value
    above = V - torch.searchsorted(ascending, threshold, right=True).squeeze(-1)  # ids > threshold
    equal = V - above - torch.searchsorted(ascending, threshold).squeeze(-1)  # ids == threshold
    keep = x >= threshold
    for r in (kept - above != equal).nonzero().flatten().tolist():  # the boundary splits a run of equal values
        keep[r] = top_p_keep_sorted(logits[r:r + 1], top_p)[0]
    return keep


def top_k_keep(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Boolean (n, V): the reference top-k rule (ids below the k-th largest logit removed; ties kept)."""
    if top_k is None:
        return torch.ones_like(logits, dtype=torch.bool)
    k = min(top_k, logits.shape[-1])
    return ~(logits < torch.topk(logits, k)[0][..., -1, None])


def filtered_logits(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int | None = None, *,
                    float32_top_p: bool = True) -> torch.Tensor:
    """The references' sampling logits: ``logits / τ`` (unscaled when τ = 0, as Dream's ``sample_tokens``), then
    top-p, then top-k (:func:`filter_scaled`)."""
    return filter_scaled(logits / temperature if temperature > 0 else logits, top_p, top_k,
                         float32_top_p=float32_top_p)


def filter_scaled(scaled: torch.Tensor, top_p: float = 1.0, top_k: int | None = None, *,
                  float32_top_p: bool = True) -> torch.Tensor:
    """Top-p, then top-k, on logits already divided by τ; removed ids set to the dtype's most negative value (not
    −inf), as the references write it. ``float32_top_p=False``: the top-p set by the project's float64 rule
    (:func:`~entrgi.ops.logit_ops.top_p_filter`) instead."""
    x = scaled
    if top_p < 1.0:
        keep = top_p_keep(x, top_p) if float32_top_p else torch.isfinite(top_p_filter(x, top_p))
        x = torch.where(keep, x, removed_value(x))
    if top_k is not None:
        x = torch.where(top_k_keep(x, top_k), x, removed_value(x))
    return x


def filtered_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int | None = None, *,
                   float32_top_p: bool = True) -> torch.Tensor:
    """softmax(:func:`filtered_logits`) in the logits' dtype: what the references sample from."""
    return torch.softmax(filtered_logits(logits, temperature, top_p, top_k, float32_top_p=float32_top_p), dim=-1)


def inverse_cdf_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Ids (n,) drawn from the rows of ``probs`` (n, V) (not necessarily normalised) at ``uniforms`` (n,) in
    [0, 1): the first id whose cumulative probability (float64, id order) exceeds u · total. An id of
    probability 0 is never returned. The agreement script draws the reference samplers' tokens with this
    function too, in place of ``torch.multinomial``."""
    cdf = probs.detach().cumsum(-1, dtype=torch.float64)  # (n, V)
    total = cdf[:, -1:]
    target = uniforms.to(device=cdf.device, dtype=torch.float64).reshape(-1, 1) * total
    j = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (n,): the first id with cdf > target
    over = j >= probs.shape[-1]  # u · total rounded up to the total: the last id of positive probability
    if over.any():
        last = probs.shape[-1] - 1 - (probs[over] > 0).flip(-1).long().argmax(-1)
        j = j.masked_scatter(over, last)
    return j


def categorical_probs(probs: torch.Tensor) -> torch.Tensor | None:
    """What ``torch.distributions.Categorical(probs=probs)`` samples from (each row divided by its sum), or None
    when its argument check refuses ``probs`` (Dream's ``sample_tokens`` then takes the argmax)."""
    try:
        return torch.distributions.Categorical(probs=probs).probs
    except ValueError:
        return None


def entropy_confidence(probs: torch.Tensor) -> torch.Tensor:
    """The references' entropy confidence Σ p · log(p + ε) (n,), in the probabilities' dtype."""
    return torch.sum(probs * torch.log(probs + ENTROPY_EPS), dim=-1)


def margin_confidence(probs: torch.Tensor) -> torch.Tensor:
    """p₁ − p₂ (n,): the two largest probabilities (the references sort the row; topk gives the same values)."""
    top2 = torch.topk(probs, 2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def drawn_confidence(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The probability of each drawn token (n,): ``maskgit_plus``; LLaDA's ``low_confidence`` (on softmax(logits))."""
    return torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_weight_eps(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The released code's EntRGi weight: −Σ p · log(p + ε) / log V with p = softmax(logits / T) (T = 1 there),
    in the logits' dtype, log V of a tensor of that dtype, detached."""
    p = F.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    entropy = -torch.sum(p * torch.log(p + ENTROPY_EPS), dim=-1)
    max_entropy = torch.log(torch.tensor(p.shape[-1], device=p.device, dtype=p.dtype))
    return (entropy / max_entropy).detach()


def gumbel_argmax_llada(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """LLaDA's ``add_gumbel_noise`` then argmax: argmax(exp(logits) / (−log u)^τ) in float64, ``uniforms`` (n, V);
    τ = 0 is the argmax of the logits (no noise)."""
    if temperature == 0:
        return logits.argmax(-1)
    x = logits.to(torch.float64)
    return (x.exp() / (-torch.log(uniforms.to(torch.float64))) ** temperature).argmax(-1)


def topk_indices(confidence: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.topk(confidence, k).indices`` along the last dim: the references' selection, ties in its order."""
    return torch.topk(confidence, k).indices


def packed_groups(counts: list[int]) -> list[tuple[int, int]]:
    """(lo, hi) of each non-empty run of a packed tensor whose rows hold ``counts`` entries in order: the ranges
    of one trajectory's masked slots in ``logits[masked]`` (what the released code computes together)."""
    out, lo = [], 0
    for n in counts:
        if n:
            out.append((lo, lo + int(n)))
            lo += int(n)
    return out


def linspace_times(step: int, steps: int, eps: float, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, s) = ``torch.linspace(1, eps, steps + 1)[step]``, ``[step + 1]``: float32 scalars, as Dream and the
    released code compute their schedule (on ``device``: the references make it where the canvas is)."""
    ts = torch.linspace(1, eps, steps + 1, device=device)
    return ts[step], ts[step + 1]


__all__ = [
    "ENTROPY_EPS", "categorical_probs", "drawn_confidence", "entropy_confidence", "entropy_weight_eps",
    "filter_scaled", "filtered_logits", "filtered_probs", "gumbel_argmax_llada", "inverse_cdf_probs", "linspace_times",
    "margin_confidence", "packed_groups", "removed_value", "top_k_keep", "top_p_keep", "top_p_keep_sorted",
    "topk_indices",
]
