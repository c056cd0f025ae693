"""The inner loop of reward guidance: M optimiser steps on a copy of the masked positions' logits.

One denoising step, step 3 of docs/method.md: φ = the masked slots' logits, a fresh leaf and a fresh
optimiser (Adam, or plain ascent φ += lr·∇R); M times the RM reads ê (the guidance rule, docs/method.md
(6)) at masked slots and E_R[token] at committed ones, up to the first EOS; loss = −Σ rewards, plus
λ·Σ_slots KL(softmax(φ/τ) ‖ softmax(φ₀/τ)) when ``kl_weight`` λ > 0 (its gradient added in closed form,
:func:`~entrgi.guidance.mixing.add_kl_gradient_`). A non-finite reward or gradient raises
:class:`~entrgi.errors.NonFiniteError`. Cost: docs/performance.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from ..config import ResolvedGuidance
from ..errors import NonFiniteError, check_rewards
from ..ops.logit_ops import upcast
from ..ops.rng import RowStreams
from .mixing import add_kl_gradient_, entropy_weight, reward_input_embeddings
from .rules import get_guidance_rule
from .schedules import inner_stop

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam(lr) or plain gradient ascent on the reward (SGD on −R, no momentum: φ ← φ + lr·∇R).

    Adam runs fused (one kernel over the (n, V) state) on CPU and CUDA: ~6× fewer passes than the
    per-op implementation, same update to float rounding."""
    if name == "adam":
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
        return torch.optim.Adam(params, lr=lr, fused=fused or None)
    if name == "ascent":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"`optimizer` must be 'adam' or 'ascent', got {name!r}.")


def before_first_eos(ids: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): True strictly before the first EOS of each row."""
    is_eos = torch.isin(ids, eos_ids)
    return is_eos.long().cumsum(-1) == 0


@dataclass
class GuideResult:
    """Guided logits (B, L, V) and per-row diagnostics (CPU tensors)."""

    logits: torch.Tensor
    rewards: torch.Tensor  # (B, M + 1 or M): before each inner step, then after the last when traced
    grad_norms: torch.Tensor  # (B, M): ‖∇_φ R_b‖ over the row's masked slots
    # RM scoring calls with a gradient graph, and backward passes, that ran (None = M each); with `inner_tol`
    # fewer, and a row's values after its early stop are NaN in ``rewards`` / ``grad_norms``.
    forwards: int | None = None
    backwards: int | None = None
    # with `kl_weight` > 0: (B, M) Σ over the row's guided slots of KL(softmax(φ/τ) ‖ softmax(φ₀/τ)) before each
    # inner step's update (NaN after an `inner_tol` stop); None when the penalty is off
    kl: torch.Tensor | None = None


def response_attention(ids: torch.Tensor, masked: torch.Tensor, eos_ids: torch.Tensor,
                       rm_mapped: torch.Tensor) -> torch.Tensor:
    """Slots the RM attends to: before the first EOS, and (for committed tokens) visible to the RM."""
    return before_first_eos(ids, eos_ids) & (masked | rm_mapped[ids])


def guide_logits(
    logits: torch.Tensor,
    masked: torch.Tensor,
    response_ids: torch.Tensor,
    score: ScoreFn,
    table: torch.Tensor,
    rm_mapped: torch.Tensor,
    guidance: ResolvedGuidance,
    eos_ids: torch.Tensor,
    streams: RowStreams,
    trace_streams: RowStreams | None = None,
) -> GuideResult:
    """Optimise the logits of the masked slots for ``guidance.config.inner_steps`` steps.

    Args:
        logits: (B, L, V) DLLM logits of the response slots, invalid ids at −inf (not modified).
        masked: (B, L) True at still-masked slots.
        response_ids: (B, L) current response tokens (mask id at masked slots).
        score: rewards (B,) of (response embeddings (B, L, d), response attention (B, L)).
        table: (V, d) RM input embeddings aligned to DLLM ids (zeros where unmapped), on ``logits``' device.
        rm_mapped: (V,) True where the RM has a row for the id; unmapped ids get q = 0 in the RM view.
        guidance: resolved guidance settings.
        eos_ids: ids that end a response.
        streams: per-row random streams (hard samples).
        trace_streams: if given, one extra no-grad evaluation records the reward after the last step.
    """
    cfg = guidance.config
    rule = get_guidance_rule(cfg.method)
    device = logits.device
    table, rm_mapped = table.to(device), rm_mapped.to(device)
    rm_bias = torch.zeros(rm_mapped.shape, device=device).masked_fill(~rm_mapped, float("-inf"))  # (V,)
    unmapped = (~rm_mapped).nonzero().squeeze(-1)
    if not torch.isfinite(logits[..., unmapped]).any():
        rm_bias = None  # unmapped ids are already −inf (invalid for the DLLM): nothing to add, no (n, V) copy
    committed = table[response_ids.clamp_max(table.shape[0] - 1)].detach()  # (B, L, d)
    rows = masked.nonzero()[:, 0]  # (n,) row of each packed slot
    phi = upcast(logits[masked]).requires_grad_(True)  # (n, V) float32 (or float64): the indexing copied
    optimizer = make_optimizer(cfg.optimizer, [phi], cfg.lr)
    B = logits.shape[0]
    rewards, grad_norms = [], []
    # `inner_tol`: the rows still optimising (CPU (B,)); a stopped row keeps its φ, draws no more uniforms and
    # adds nothing to the loss (docs: entrgi.guidance.schedules). None = every row runs all M steps.
    live = None if cfg.inner_tol is None else torch.ones(B, dtype=torch.bool)
    previous = None
    forwards = backwards = 0
    kls: list[torch.Tensor] = []
    if cfg.kl_weight > 0:  # φ₀: the prior logits of the guided slots, read back from `logits` per row chunk
        slot_index = masked.reshape(-1).nonzero().squeeze(-1)  # (n,)
        flat_logits = logits.reshape(-1, logits.shape[-1])

        def prior(lo: int, hi: int) -> torch.Tensor:
            return flat_logits[slot_index[lo:hi]]

    def rm_view(uniform_source: RowStreams, rows_live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        draw_at = masked if rows_live is None else masked & rows_live.to(device).unsqueeze(-1)
        embeds, _ = reward_input_embeddings(
            phi, table, rule, bias=rm_bias, temperature=guidance.relaxation_temperature,
            top_p=guidance.hard_top_p, top_k=guidance.top_k, entropy_temperature=guidance.entropy_temperature,
            uniforms=uniform_source.uniform_at(draw_at)[masked] if rule.needs_hard_sample else None,
            chunk_size=cfg.vocab_chunk, soft_top_k=cfg.soft_top_k)
        resp = committed.masked_scatter(masked.unsqueeze(-1), embeds.to(committed.dtype))  # (B, L, d)
        ids = response_ids.masked_scatter(masked, phi.detach().argmax(-1))
        return resp, response_attention(ids, masked, eos_ids, rm_mapped)

    for k in range(cfg.inner_steps):
        with record_function("entrgi.rm_input"):
            resp, attn = rm_view(streams, live)
        with record_function("entrgi.rm_forward"):
            r = score(resp, attn)  # (B,) on the RM's device
        forwards += 1
        r_now = r.detach().float().cpu()
        if live is not None:  # early stop: a row whose last inner step gained less than `inner_tol` leaves
            check_rewards(r_now, f"inner step {k + 1} of {cfg.inner_steps}", cfg.method)
            rewards.append(torch.where(live, r_now, torch.full_like(r_now, float("nan"))))
            if previous is not None:
                live = live & ~inner_stop(previous, r_now, cfg.inner_tol)
            previous = r_now
            if not live.any():
                break
        optimizer.zero_grad(set_to_none=True)
        with record_function("entrgi.backward"):
            loss = r if live is None or live.all() else r * live.to(device=r.device, dtype=r.dtype)
            (-loss.sum()).backward()
        backwards += 1
        with record_function("entrgi.optimizer"):
            sq = torch.zeros(B, device=device, dtype=phi.dtype).index_add_(
                0, rows, torch.linalg.vector_norm(phi.grad, dim=-1).square())
            norms = sq.sqrt().detach().cpu()
            check_inner_step(r_now, norms, phi.grad, rows, cfg.method, k, cfg.inner_steps)
            if cfg.kl_weight > 0:  # loss −R + λ·KL: add λ·∇KL to the gradient (grad_norms stay ‖∇R‖)
                kl_slots = add_kl_gradient_(phi.grad, phi, prior, guidance.relaxation_temperature, cfg.kl_weight)
                kl_rows = torch.zeros(B, device=device, dtype=kl_slots.dtype).index_add_(0, rows, kl_slots).cpu()
                kls.append(kl_rows if live is None else torch.where(live, kl_rows, torch.full_like(kl_rows, math.nan)))
            if live is None:
                rewards.append(r_now)
                grad_norms.append(norms)
                optimizer.step()
            else:
                grad_norms.append(torch.where(live, norms, torch.full_like(norms, float("nan"))))
                stopped = (~live).to(device)[rows]  # (n,) the slots of stopped rows keep their φ
                kept = phi.detach()[stopped]
                optimizer.step()
                with torch.no_grad():
                    phi[stopped] = kept
    if trace_streams is not None:
        with torch.no_grad():
            rewards.append(score(*rm_view(trace_streams)).float().cpu())
        check_rewards(rewards[-1], "the trace evaluation after the last inner step", cfg.method)
    result = guide_result(logits, masked, phi, rewards, grad_norms, forwards=forwards, backwards=backwards)
    if cfg.kl_weight > 0:
        result.kl = torch.stack(kls, -1) if kls else torch.zeros(B, 0)
    return result


def check_inner_step(rewards: torch.Tensor, grad_norms: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor,
                     method: str, step: int, steps: int) -> None:
    """Raise :class:`~entrgi.errors.NonFiniteError` if inner step ``step`` (0-based) of ``steps`` got a
    non-finite reward (CPU (B,)) or gradient ``grad`` (n, V) of φ (``rows`` (n,): the row of each slot).

    Cheap: the rewards and per-row gradient norms are already on the CPU; ``grad`` itself is scanned only
    when a norm is not finite (a finite gradient whose squared norm overflows passes)."""
    where = f"inner step {step + 1} of {steps}"
    check_rewards(rewards, where, method)
    if bool(torch.isfinite(grad_norms).all()):
        return
    bad_slots = ~torch.isfinite(grad).all(-1)  # (n,)
    if bad_slots.any():
        bad = rows[bad_slots].unique().tolist()
        raise NonFiniteError("gradient", where, method=method, rows=bad)


def guide_result(logits: torch.Tensor, masked: torch.Tensor, phi: torch.Tensor, rewards: list[torch.Tensor],
                 grad_norms: list[torch.Tensor], *, forwards: int | None = None,
                 backwards: int | None = None) -> GuideResult:
    """The guided logits (``logits`` with ``phi`` at the masked slots) and the per-step records, stacked."""
    guided = logits.clone()
    guided[masked] = phi.detach().to(guided.dtype)
    B = logits.shape[0]
    stack = lambda xs: torch.stack(xs, -1) if xs else torch.zeros(B, 0)  # noqa: E731
    return GuideResult(guided, stack(rewards), stack(grad_norms), forwards, backwards)


def mean_entropy_weight(logits: torch.Tensor, masked: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean EntRGi weight over each row's masked slots (B,), NaN for rows with none."""
    w = torch.zeros(masked.shape, device=logits.device, dtype=torch.promote_types(logits.dtype, torch.float32))
    if masked.any():
        w[masked] = entropy_weight(logits[masked], temperature)
    n = masked.sum(-1)
    return torch.where(n > 0, w.sum(-1) / n.clamp_min(1), torch.full_like(w[:, 0], float("nan")))
