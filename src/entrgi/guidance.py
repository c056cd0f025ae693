"""The guidance maths of EntRGi, APS and Expectation: pure functions of logits and an embedding table.

Notation (code name -> paper symbol), following ``shared/reference/algorithm.md``:
    logits            -> φ      DLLM logits at masked response positions, (..., V)
    embedding_table   -> E_R    reward model's input-embedding rows, aligned to the DLLM's ids, (V, d)
    probs             -> q      softmax(φ / τ)
    soft              -> ē      q · E_R                  (expected embedding, differentiable)
    hard              -> ẽ      E_R[x], x ~ top_p(q)     (sampled embedding, a real token)
    weight            -> w      0 (Expectation), 1 (APS), H(softmax(φ / τ_H)) / log V (EntRGi)
    embeds            -> ê      ē + stopgrad(w · (ẽ − ē))

The forward value of ê is (1 − w)·ē + w·ẽ; its gradient w.r.t. φ is always that of ē alone.
Nothing here calls a model: the sampler feeds ê to the reward model and owns the loop.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .logit_ops import sample_from_logits, sampling_logits, scale

MixingMethod = Literal["expectation", "aps", "entrgi"]
MIXING_METHODS: tuple[str, ...] = ("expectation", "aps", "entrgi")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32/float64 unchanged (softmax over 150k ids needs the bits)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits / T) over the last dim; −inf logits count as p = 0."""
    logp = scale(upcast(logits), temperature).log_softmax(-1)  # (..., V)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)  # (...,)


@torch.no_grad()
def entropy_weight(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """EntRGi's w = H(softmax(logits / T)) / log V, in [0, 1], shape ``logits.shape[:-1]``, detached.

    V is the logit width ``logits.shape[-1]`` (the released code's choice: Dream's padded 152,064).
    The released code uses T = 1; the paper's formula H(q) implies T = τ. T = 0 gives w = 0.
    """
    vocab = logits.shape[-1]
    if vocab < 2:
        return torch.zeros(logits.shape[:-1], dtype=upcast(logits).dtype, device=logits.device)
    return (entropy(logits, temperature) / math.log(vocab)).clamp(0.0, 1.0)


def soft_embeddings(probs: torch.Tensor, embedding_table: torch.Tensor) -> torch.Tensor:
    """ē = q · E_R: (..., V) @ (V, d) -> (..., d), in the table's dtype."""
    return probs.to(embedding_table.dtype) @ embedding_table


def mixing_weight(logits: torch.Tensor, method: str, entropy_temperature: float = 1.0) -> torch.Tensor:
    """w per position for ``method``: 0 (expectation), 1 (aps) or the entropy weight (entrgi)."""
    dtype = upcast(logits).dtype
    if method == "expectation":
        return torch.zeros(logits.shape[:-1], dtype=dtype, device=logits.device)
    if method == "aps":
        return torch.ones(logits.shape[:-1], dtype=dtype, device=logits.device)
    if method == "entrgi":
        return entropy_weight(logits, entropy_temperature)
    raise ValueError(f"`method` must be one of {MIXING_METHODS}, got {method!r}.")


def reward_input_embeddings(
    logits: torch.Tensor,
    embedding_table: torch.Tensor,
    method: str,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    entropy_temperature: float = 1.0,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward model's input at masked positions: ``(embeds (..., d), weight (...,))``.

    1. q = softmax(logits / temperature); soft = q @ embedding_table.
    2. x ~ top-p/top-k-filtered q (inverse CDF with ``uniforms`` (...,) if given, else uniforms drawn
       with ``generator``); hard = embedding_table[x]. Skipped for ``expectation`` (w = 0).
    3. embeds = soft + stopgrad(w · (hard − soft)), w from :func:`mixing_weight`.

    Ids whose logit is −inf (invalid or unmapped ids) get q = 0 and are never sampled.
    """
    if method not in MIXING_METHODS:
        raise ValueError(f"`method` must be one of {MIXING_METHODS}, got {method!r}.")
    if logits.shape[-1] != embedding_table.shape[0]:
        raise ValueError(
            f"`embedding_table` must have one row per logit ({logits.shape[-1]}), got {embedding_table.shape[0]}."
        )
    probs = scale(upcast(logits), temperature).softmax(-1)  # (..., V)
    soft = soft_embeddings(probs, embedding_table)  # (..., d)
    weight = mixing_weight(logits, method, entropy_temperature)  # (...,)
    if method == "expectation":
        return soft, weight
    with torch.no_grad():
        if uniforms is None:
            uniforms = torch.rand(logits.shape[:-1], generator=generator, device=logits.device)
        tokens = sample_from_logits(sampling_logits(logits.detach(), temperature, top_p, top_k), uniforms)
        hard = embedding_table[tokens]  # (..., d)
    embeds = soft + (weight.unsqueeze(-1).to(soft.dtype) * (hard - soft)).detach()
    return embeds, weight
