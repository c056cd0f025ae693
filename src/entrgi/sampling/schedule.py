"""How many masked positions to commit at a step, and which ones: pure functions on tensors.

- Counts: Dream's linear schedule (``ts = linspace(1, eps, T + 1)``; commit ``int(n · (1 − s/t))``,
  everything left at the last step) and LLaDA's uniform schedule (``n // T`` per step, the remainder
  one each on the first steps); both depend only on the row's current mask count and the step.
- Confidence: Dream's ``maskgit_plus`` (probability of the drawn token), ``topk_margin`` (p1 − p2),
  ``entropy`` (Σ q log q), LLaDA's ``low_confidence`` (τ-free maskgit_plus) and ``random``, APS's
  ``anchored`` (maskgit_plus on the guided logits: the caller passes them); ``origin`` is
  Dream's random order where each masked position is revealed with probability 1 − s/t.
- Selection: the top-n candidates by confidence (earliest position first on ties), or n drawn
  without replacement from softmax(confidence / T) via Gumbel-top-k with the row's own uniforms.
"""

from __future__ import annotations

import torch

from ..ops.logit_ops import scale

#: Elements per row block of the float64 confidence computation (2 M doubles = 16 MiB).
ROW_BLOCK_ELEMENTS = 1 << 21
# Key given to EOS candidates when they are deprioritised: below every real confidence, above
# non-candidates (which get −inf), so an EOS is committed only once nothing else is left.
DEPRIORITISED = torch.finfo(torch.float64).min


def linear_fraction(step: int, steps: int, eps: float) -> float:
    """Dream's 1 − s/t at ``step`` of ``steps`` (1.0 at the last step)."""
    if step >= steps - 1:
        return 1.0
    t = 1 - step * (1 - eps) / steps
    s = 1 - (step + 1) * (1 - eps) / steps
    return 1 - s / t


def commit_counts(n_masked: torch.Tensor, step: int, steps: int, schedule: str = "linear",
                  eps: float = 1e-3) -> torch.Tensor:
    """Positions to commit per row (B,) given the rows' current masked counts (B,).

    ``linear``: Dream, ``int(n · (1 − s/t))``. ``uniform``: LLaDA, ``ceil(n / steps_left)``, which
    reproduces ``n0 // T`` per step plus one on the first ``n0 % T`` steps.
    """
    if step >= steps - 1:
        return n_masked.clone()
    if schedule == "linear":
        frac = linear_fraction(step, steps, eps)
        return torch.floor(n_masked.double() * frac).long()
    if schedule == "uniform":
        left = steps - step
        return torch.div(n_masked + left - 1, left, rounding_mode="floor")
    raise ValueError(f"`schedule` must be 'linear' or 'uniform', got {schedule!r}.")


def confidence(rule: str, logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
               uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Confidence (float64, higher = commit first) of each row of ``logits`` (n, V) given its drawn
    ``tokens`` (n,). Computed on q = softmax(logits / τ), unfiltered (τ = 0 uses τ = 1, as Dream);
    LLaDA's ``low_confidence`` always uses softmax(logits), as its ``generate`` does."""
    if rule == "random":
        assert uniforms is not None, "rule 'random' needs uniforms"
        return uniforms.double()
    if rule == "low_confidence" or temperature <= 0:
        temperature = 1.0
    step = max(1, ROW_BLOCK_ELEMENTS // max(logits.shape[-1], 1))
    if logits.shape[0] > step:  # row blocks: the same values, float64 (rows, V) temporaries stay small
        return torch.cat([_confidence(rule, logits[i:i + step], tokens[i:i + step], temperature)
                          for i in range(0, logits.shape[0], step)])
    return _confidence(rule, logits, tokens, temperature)


def _confidence(rule: str, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    q = scale(logits.double(), temperature).softmax(-1)  # (n, V)
    if rule in ("maskgit_plus", "low_confidence", "anchored"):
        return q.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if rule == "topk_margin":
        top2 = q.topk(2, dim=-1).values if q.shape[-1] > 1 else torch.cat([q, torch.zeros_like(q)], -1)
        return top2[..., 0] - top2[..., 1]
    if rule == "entropy":
        return torch.where(q > 0, q * q.clamp_min(1e-300).log(), torch.zeros_like(q)).sum(-1)
    raise ValueError(f"unknown confidence rule {rule!r}")


def select_top(keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): for each row the ``counts[b]`` largest ``keys`` (ties: earliest position).

    Non-candidates must carry key −inf; rows never select more positions than they have candidates
    as long as ``counts`` does not exceed the number of finite keys.
    """
    order = torch.sort(keys, dim=-1, descending=True, stable=True).indices  # (B, L)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(keys.shape[-1], device=keys.device)
                                            .expand_as(order).contiguous())
    return rank < counts.unsqueeze(-1)


def gumbel_keys(conf: torch.Tensor, temperature: float, uniforms: torch.Tensor) -> torch.Tensor:
    """conf / T + Gumbel noise: top-n of these = n draws without replacement from softmax(conf / T)."""
    g = -torch.log(-torch.log(uniforms.double().clamp(1e-300, 1 - 1e-16)))
    finite = torch.isfinite(conf) & (conf > DEPRIORITISED)
    return torch.where(finite, conf / temperature + g, conf)


def origin_reveal(uniforms: torch.Tensor, candidates: torch.Tensor, step: int, steps: int,
                  eps: float) -> torch.Tensor:
    """Dream's ``origin``: reveal each candidate independently with probability 1 − s/t."""
    p = linear_fraction(step, steps, eps)
    return candidates & (uniforms < p) if p < 1 else candidates.clone()


def steps_per_block(total_steps: int, num_blocks: int) -> int:
    """LLaDA splits T evenly over blocks; T must be a multiple of the block count."""
    if total_steps % num_blocks:
        raise ValueError(f"`steps` ({total_steps}) must be a multiple of the number of blocks ({num_blocks}).")
    return total_steps // num_blocks


__all__ = [
    "DEPRIORITISED", "commit_counts", "confidence", "gumbel_keys", "linear_fraction", "origin_reveal",
    "select_top", "steps_per_block",
]
