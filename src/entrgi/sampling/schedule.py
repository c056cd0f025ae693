"""How many masked positions to commit at a step, and which ones: pure functions on tensors.

- Counts: Dream's linear schedule (``ts = linspace(1, eps, T + 1)``; commit ``int(n · (1 − s/t))``,
  everything left at the last step) and LLaDA's uniform schedule (``n // T`` per step, the remainder
  one each on the first steps); both depend only on the row's current mask count and the step.
- Confidence: the remasking rule (:mod:`entrgi.sampling.remasking`, by name); ``origin`` is Dream's
  random order where each masked position is revealed with probability 1 − s/t.
- Selection: the top-n candidates by confidence (earliest position first on ties), or n drawn
  without replacement from softmax(confidence / T) via Gumbel-top-k with the row's own uniforms.
"""

from __future__ import annotations

import torch

from ..ops.logit_ops import gumbel
from ..ops.released import linspace_times
from ..registry import REMASKING_RULES
from .remasking import RemaskingRule

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


def released_commit_counts(n_masked: torch.Tensor, step: int, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """The released code's count per row (B,): ``int(n · (1 − s/t))`` with t, s the float32 values of
    ``torch.linspace(1, eps, T + 1)`` divided as Python floats; everything left at the last step."""
    if step >= steps - 1:
        return n_masked.clone()
    t, s = linspace_times(step, steps, eps, n_masked.device)
    frac = 1 - s.item() / t.item()
    return torch.tensor([int(n * frac) for n in n_masked.tolist()], dtype=torch.long, device=n_masked.device)


def dream_commit_counts(n_masked: torch.Tensor, step: int, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """Dream's ``diffusion_generate`` count (B,): one number for every row, from the batch's mean masked count
    in float32 tensor arithmetic, ``int(mean · (1 − s/t))`` (``int(mean)`` at the last step)."""
    mean = n_masked.sum() / n_masked.shape[0]  # float32, as mask_index.sum() / batch size
    if step >= steps - 1:
        return torch.full_like(n_masked, int(mean))
    t, s = linspace_times(step, steps, eps, n_masked.device)
    return torch.full_like(n_masked, int(mean * (1 - s / t)))


def confidence(rule: str | RemaskingRule, logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
               uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Confidence (float64 (n,), higher = commit first) of each row of ``logits`` (n, V) given its drawn
    ``tokens`` (n,), by the remasking rule ``rule`` (a registered name or a
    :class:`~entrgi.sampling.remasking.RemaskingRule`). The built-ins score q = softmax(logits / τ), unfiltered
    (τ = 0 uses τ = 1, as Dream); ``uniforms`` (n,) are required by the rules that ask for them (``random``).
    Rows are scored in blocks so that float64 (rows, V) temporaries stay small."""
    r = REMASKING_RULES.get(rule) if isinstance(rule, str) else rule
    if r.needs_uniforms and uniforms is None:
        raise ValueError(f"remasking rule {r.name!r} needs `uniforms` (one per row).")
    if temperature <= 0:
        temperature = 1.0
    step = max(1, ROW_BLOCK_ELEMENTS // max(logits.shape[-1], 1))
    if logits.shape[0] > step:  # row blocks: the same values
        return torch.cat([_confidence(r, logits[i:i + step], tokens[i:i + step], temperature,
                                      None if uniforms is None else uniforms[i:i + step])
                          for i in range(0, logits.shape[0], step)])
    return _confidence(r, logits, tokens, temperature, uniforms)


def _confidence(rule: RemaskingRule, logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                uniforms: torch.Tensor | None) -> torch.Tensor:
    c = rule.confidence(logits, tokens, temperature, uniforms if rule.needs_uniforms else None)
    if REMASKING_RULES.is_builtin(rule.name) and REMASKING_RULES.get(rule.name) is rule:
        return c
    if not isinstance(c, torch.Tensor) or tuple(c.shape) != (logits.shape[0],):
        got = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
        raise ValueError(f"remasking rule {rule.name!r}: `confidence` must return a tensor of shape "
                         f"({logits.shape[0]},) (one value per slot), got {got}.")
    c = c.detach().double()
    if not bool(torch.isfinite(c).all()):
        raise ValueError(f"remasking rule {rule.name!r}: `confidence` must be finite, got values such as "
                         f"{c[~torch.isfinite(c)][:3].tolist()}.")
    return c


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
    finite = torch.isfinite(conf) & (conf > DEPRIORITISED)
    return torch.where(finite, conf / temperature + gumbel(uniforms), conf)


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
    "DEPRIORITISED", "commit_counts", "confidence", "dream_commit_counts", "gumbel_keys", "linear_fraction",
    "origin_reveal", "released_commit_counts", "select_top", "steps_per_block",
]
