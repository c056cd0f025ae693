"""How close two samplers' tokens are: the share of response slots with the same token, and the DLLM KV cache's
greedy agreement with the exact sampler (docs/performance.md, "DLLM KV cache")."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..config import GuidanceConfig
from .sampler import generate


def _token_rows(x) -> list[list[int]]:
    if hasattr(x, "samples"):  # a GenerationOutput
        return [list(s.token_ids) for group in x.samples for s in group]
    if isinstance(x, torch.Tensor):
        return [list(map(int, r)) for r in x.reshape(-1, x.shape[-1]).tolist()]
    return [list(map(int, r)) for r in x]


def token_agreement(a, b) -> float:
    """Share of response slots holding the same token in ``a`` and ``b`` (two ``GenerationOutput`` of the same
    prompts and samples, (B, L) tensors, or lists of token lists), in [0, 1]."""
    ra, rb = _token_rows(a), _token_rows(b)
    if len(ra) != len(rb) or any(len(x) != len(y) for x, y in zip(ra, rb)):
        raise ValueError(f"token_agreement needs the same rows and lengths, got {len(ra)} and {len(rb)} rows of "
                         f"lengths {sorted({len(x) for x in ra})} / {sorted({len(y) for y in rb})}.")
    total = sum(len(x) for x in ra)
    if total == 0:
        raise ValueError("token_agreement of empty generations.")
    return sum(int(u == v) for x, y in zip(ra, rb) for u, v in zip(x, y)) / total


def kv_cache_agreement(model, prompts: str | Sequence[str], sampler=None,
                       modes: Sequence[str] = ("prefix", "dual")) -> dict[str, float]:
    """Greedy token agreement of the cached samplers with the uncached one: ``{mode: agreement}``.

    Runs ``sampler`` (a :class:`~entrgi.config.SamplerConfig`; default: the model's recommended one) with
    ``temperature`` 0 (greedy draws), no guidance, once with ``kv_cache='none'`` and once per mode."""
    sampler = sampler or model.recommended_sampler()
    sampler = dataclasses.replace(sampler, temperature=0.0, kv_cache="none")
    g = GuidanceConfig(rule="none")
    run = lambda cfg: generate(model, prompts, sampler=cfg, guidance=g, progress=False, trace=False)  # noqa: E731
    ref = run(sampler)
    return {m: token_agreement(ref, run(dataclasses.replace(sampler, kv_cache=m))) for m in modes}


__all__ = ["kv_cache_agreement", "token_agreement"]
