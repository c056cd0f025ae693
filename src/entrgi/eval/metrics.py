"""Metrics: Top@1 / Avg@K, mean ± SEM over seeds, distinct-n, and DLLM pseudo-perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..models.base import DiffusionLM


def top1(rewards: Sequence[float]) -> float:
    """Max reward over a prompt's K samples."""
    return max(rewards)


def avg(rewards: Sequence[float]) -> float:
    """Mean reward over a prompt's K samples."""
    return math.fsum(rewards) / len(rewards)


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std, ddof = 1, / √n), as the paper's ± over seeds.
    SEM is NaN for a single value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = math.fsum(values) / n
    if n == 1:
        return m, math.nan
    var = math.fsum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over the given texts (whitespace tokens, lower-cased); 1 = no repeats.
    Computed over the K samples of one prompt it measures how different the samples are."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = t.lower().split()
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def pseudo_perplexity(model: DiffusionLM, prompt: str, token_ids: Sequence[Sequence[int]],
                      batch_size: int = 64) -> list[float]:
    """DLLM pseudo-perplexity of each response: exp(−mean_j log p(x_j | everything else, x_j masked)),
    over the response tokens before the first EOS, in the layout the sampler used (prompt ; L slots).

    High values flag text the DLLM itself finds unlikely (a sign of reward hacking). NaN for an empty
    response."""
    prompt_ids = model.encode_prompt(prompt)
    P = len(prompt_ids)
    device = model.device
    rows, targets, owner = [], [], []
    for s, ids in enumerate(token_ids):
        n = len(model.response_ids(ids))
        for j in range(n):
            x = [*prompt_ids, *ids]
            targets.append(x[P + j])
            x[P + j] = model.mask_token_id
            rows.append(x)
            owner.append((s, j))
    logp = torch.zeros(len(rows))
    invalid = model.invalid_mask(device)
    for lo in range(0, len(rows), batch_size):
        x = torch.tensor(rows[lo:lo + batch_size], device=device)
        attn = torch.ones_like(x)
        pos = torch.arange(x.shape[1], device=device).expand_as(x)
        logits = model.response_logits(x, attn, pos, P).float().masked_fill(invalid, float("-inf"))  # (b, L, V)
        for k in range(x.shape[0]):
            _, j = owner[lo + k]
            logp[lo + k] = logits[k, j].log_softmax(-1)[targets[lo + k]].cpu()
    out = []
    for s in range(len(token_ids)):
        vals = [float(logp[i]) for i, (o, _) in enumerate(owner) if o == s]
        out.append(math.exp(-math.fsum(vals) / len(vals)) if vals else math.nan)
    return out
