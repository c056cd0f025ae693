"""Guidance schedules: at which denoising steps, and for how many inner steps, a row is guided.

Reward guidance multiplies the cost of a step (M RM forward + backward passes); these rules guide only
where it pays (``GuidanceConfig`` fields; the defaults guide every row at every step, as the paper):

- ``guide_every`` k: only at the steps 0, k, 2k, ... of each block;
- ``guide_until`` f: only while less than a fraction f of the response is committed;
- ``guide_min_weight`` w: only while the mean EntRGi weight of the row's masked slots (the normalised
  entropy of the prior logits at the entropy temperature) is at least w;
- ``guide_carry``: the steps not guided reuse each row's last guided logit shift (guided − prior) on its
  still-masked slots (:func:`carry_shift`), so guidance keeps steering between guided steps at no RM cost;
- ``inner_tol`` ε: a row leaves the M inner steps once one of its inner steps raised its reward by
  less than ε (:class:`entrgi.guidance.inner_loop.EarlyStop`).

Every decision is per row and depends only on the row's own state, so a sample stays independent of
what it is batched with. A row without a candidate slot at a step is never guided (its guided logits
would not be used). Pure functions on tensors.
"""

from __future__ import annotations

import math

import torch

from ..config import GuidanceConfig


def needs_entropy_weight(cfg: GuidanceConfig) -> bool:
    """True when :func:`guide_rows` reads the rows' mean entropy weight (``guide_min_weight`` > 0)."""
    return cfg.guide_min_weight > 0


def is_full_guidance(cfg: GuidanceConfig) -> bool:
    """True when the schedule guides every row with candidates at every step (the defaults)."""
    return cfg.guide_every == 1 and cfg.guide_until >= 1.0 and cfg.guide_min_weight <= 0


def guide_rows(cfg: GuidanceConfig, block_step: int, masked: torch.Tensor, candidates: torch.Tensor,
               mean_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (B,): the rows to guide at this step.

    Args:
        cfg: the guidance config (its schedule fields).
        block_step: the index of the step within its block (0-based).
        masked: (B, L) the masked response slots before the step.
        candidates: (B, L) the masked slots of the current block.
        mean_weight: (B,) the mean entropy weight of each row's masked slots; required when
            :func:`needs_entropy_weight` (NaN for a row without masked slots).
    """
    rows = candidates.any(-1)
    if not cfg.guided:
        return torch.zeros_like(rows)
    if block_step % cfg.guide_every:
        return torch.zeros_like(rows)
    if cfg.guide_until < 1.0:
        committed = 1.0 - masked.sum(-1).double() / masked.shape[-1]  # fraction of the response committed
        rows = rows & (committed < cfg.guide_until)
    if needs_entropy_weight(cfg):
        if mean_weight is None:
            raise ValueError("`guide_min_weight` > 0 needs the rows' mean entropy weight.")
        rows = rows & (mean_weight.to(rows.device) >= cfg.guide_min_weight)  # NaN compares False
    return rows


def carry_shift(shift: torch.Tensor | None, prior: torch.Tensor, guided: torch.Tensor, masked: torch.Tensor,
                guided_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``guide_carry``: the step's logits and the updated shift (both (B, L, V)).

    Rows guided now store their shift ``guided − prior`` at their masked slots (0 elsewhere and at the ids
    where the prior is −inf) and keep their guided logits; the other rows get ``prior + shift`` at their
    masked slots, the shift of their last guided step (zero for a row never guided: its prior logits)."""
    if shift is None:
        shift = torch.zeros_like(prior)
    now = guided_rows.to(prior.device).view(-1, 1, 1)
    if bool(guided_rows.any()):  # the shift changes only at a guided step
        fresh = torch.where(torch.isfinite(prior) & masked.unsqueeze(-1), guided - prior,
                            torch.zeros((), dtype=prior.dtype))
        shift = torch.where(now, fresh, shift)
    carried = torch.where(masked.unsqueeze(-1), prior + shift, prior)
    return torch.where(now, guided, carried), shift


def ran_values(values: torch.Tensor) -> list[float]:
    """A row's per-inner-step records (rewards or gradient norms, (k,)) without the NaN that mark the inner
    steps it did not run (after its ``inner_tol`` stop)."""
    return [v for v in values.tolist() if not math.isnan(v)]


__all__ = ["carry_shift", "guide_rows", "is_full_guidance", "needs_entropy_weight", "ran_values"]
