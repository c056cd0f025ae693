"""The inner loop of reward guidance: M optimiser steps on a copy of the open slots' logits (docs/method.md §3).

At one denoising step: φ = the open slots' logits, a fresh leaf and a fresh optimiser (a registered one:
:mod:`entrgi.guidance.optimizers`). M times: the RM reads ê(φ) at the open slots (the guidance rule's mix,
docs/method.md (6)) and E_R[token] at committed ones, up to the first EOS; loss = −Σ rewards; backward; the terms
add their gradients (:class:`KLPenalty`: λ·Σ KL(softmax(φ/τ) ‖ softmax(φ₀/τ)) in closed form); optimiser step. An
:class:`EarlyStop` (``inner_tol``) lets a row leave once an inner step gained less than ε. A non-finite reward or
gradient raises :class:`~entrgi.errors.NonFiniteError`. Cost: docs/performance.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.profiler import record_function

from ..config import ResolvedGuidance
from ..errors import NonFiniteError, check_rewards
from ..ops.logit_ops import upcast
from ..ops.released import packed_groups
from ..ops.rng import RowStreams
from .mixing import add_kl_gradient_, entropy_weight, reward_input_embeddings, reward_input_embeddings_released
from .optimizers import make_optimizer
from .rules import get_guidance_rule

#: ``score(response embeddings (B, W, d), response attention (B, W)) -> rewards (B,)``.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GuideResult:
    """Guided logits (B, W, V) and per-row diagnostics (CPU tensors)."""

    logits: torch.Tensor
    rewards: torch.Tensor  # (B, M + 1 or M): before each inner step, then after the last when traced
    grad_norms: torch.Tensor  # (B, M): ‖∇_φ R_b‖ over the row's open slots
    # RM scoring calls with a gradient graph, and backward passes, that ran (None = M each); with `inner_tol`
    # fewer, and a row's values after its early stop are NaN in ``rewards`` / ``grad_norms``.
    forwards: int | None = None
    backwards: int | None = None
    # with `kl_weight` > 0: (B, M) Σ over the row's guided slots of KL(softmax(φ/τ) ‖ softmax(φ₀/τ)) before each
    # inner step's update (NaN after an `inner_tol` stop); None when the penalty is off
    kl: torch.Tensor | None = None
    traced: bool = False  # rewards end with the extra no-grad evaluation after the last step


class PenaltyTerm(Protocol):
    """A term of the inner loss besides −Σ R: adds its gradient to ``phi.grad`` in place and returns its value per
    row (B,) before the update."""

    def add_gradient_(self, phi: torch.Tensor) -> torch.Tensor: ...


class KLPenalty:
    """λ · Σ_slots KL(softmax(φ/τ) ‖ softmax(φ₀/τ)), φ₀ the prior logits of the guided slots, read back from
    ``logits`` (B, W, V) at ``masked`` per row chunk (no (n, V) copy); gradient in closed form
    (:func:`~entrgi.guidance.mixing.add_kl_gradient_`)."""

    def __init__(self, logits: torch.Tensor, masked: torch.Tensor, rows: torch.Tensor, temperature: float,
                 weight: float):
        self.flat = logits.reshape(-1, logits.shape[-1])
        self.slots = masked.reshape(-1).nonzero().squeeze(-1)  # (n,)
        self.rows, self.temperature, self.weight, self.B = rows, temperature, weight, logits.shape[0]

    def prior(self, lo: int, hi: int) -> torch.Tensor:
        return self.flat[self.slots[lo:hi]]

    def add_gradient_(self, phi: torch.Tensor) -> torch.Tensor:
        kl_slots = add_kl_gradient_(phi.grad, phi, self.prior, self.temperature, self.weight)
        return torch.zeros(self.B, device=phi.device, dtype=kl_slots.dtype).index_add_(0, self.rows, kl_slots).cpu()


class EarlyStop:
    """``inner_tol`` ε: a row whose last inner step raised its reward by less than ε leaves; it keeps its φ, draws no
    more uniforms and adds nothing to the loss. ``live`` (B,) CPU: the rows still optimising."""

    def __init__(self, tol: float, rows: int):
        self.tol, self.live, self.previous = tol, torch.ones(rows, dtype=torch.bool), None

    def update(self, rewards: torch.Tensor) -> bool:
        """Take this inner step's rewards (B,); False once no row is live."""
        if self.previous is not None:
            self.live = self.live & ~inner_stop(self.previous, rewards, self.tol)
        self.previous = rewards
        return bool(self.live.any())

    def mark(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (B,) with NaN at the rows that stopped."""
        return torch.where(self.live, values, torch.full_like(values, math.nan))

    def loss_weights(self, rewards: torch.Tensor) -> torch.Tensor:
        return rewards if bool(self.live.all()) else rewards * self.live.to(device=rewards.device, dtype=rewards.dtype)

    def step(self, optimizer: torch.optim.Optimizer, phi: torch.Tensor, rows: torch.Tensor) -> None:
        """The optimiser step, the stopped rows' slots (``rows`` (n,) the row of each slot) keeping their φ."""
        stopped = (~self.live).to(phi.device)[rows]
        kept = phi.detach()[stopped]
        optimizer.step()
        with torch.no_grad():
            phi[stopped] = kept


def inner_stop(previous: torch.Tensor, current: torch.Tensor, tol: float) -> torch.Tensor:
    """Boolean (B,): the rows whose last inner step raised the reward by less than ``tol``,
    ``current − previous < tol`` (the rewards (B,) before and after that step)."""
    return (current - previous) < tol


def before_first_eos(ids: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): True strictly before the first EOS of each row."""
    return torch.isin(ids, eos_ids).long().cumsum(-1) == 0


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
    reproduction=None,
) -> GuideResult:
    """Optimise the logits of the open slots for ``guidance.config.inner_steps`` steps.

    Args:
        logits: (B, W, V) DLLM logits of the window's slots, invalid ids at −inf (not modified).
        masked: (B, W) True at the open (still-masked) slots: the ones guided.
        response_ids: (B, W) current tokens of the window (anything at open slots).
        score: rewards (B,) of (window embeddings (B, W, d), window attention (B, W)).
        table: (V, d) RM input embeddings aligned to DLLM ids (zeros where unmapped).
        rm_mapped: (V,) True where the RM has a row for the id; unmapped ids get q = 0 in the RM view.
        guidance: resolved guidance settings (rule and its params, optimiser, M, lr, temperatures, terms).
        eos_ids: ids that end a response.
        streams: per-row random streams (hard samples).
        trace_streams: if given, one extra no-grad evaluation records the reward after the last step.
        reproduction: a :class:`~entrgi.reproduction.Reproduction` with ``dense_guidance``: the released code's
            inner loop (:func:`~entrgi.guidance.mixing.reward_input_embeddings_released` per trajectory, torch's
            unfused Adam); None = the project's.
    """
    cfg, B, device = guidance.config, logits.shape[0], logits.device
    released = reproduction is not None and reproduction.dense_guidance
    view = RMView(logits, masked, response_ids, table.to(device), rm_mapped.to(device), guidance, eos_ids,
                  released=released, float32_top_p=released and reproduction.float32_top_p)
    rows = masked.nonzero()[:, 0]  # (n,) row of each packed slot
    phi = upcast(logits[masked]).requires_grad_(True)  # (n, V) float32 (or float64): the indexing copied
    optimizer = released_optimizer(cfg, phi) if released else None
    if optimizer is None:
        optimizer = make_optimizer(cfg.optimizer, [phi], cfg.lr, cfg.optimizer_params)
    terms: list[PenaltyTerm] = [KLPenalty(logits, masked, rows, guidance.relaxation_temperature, cfg.kl_weight)] \
        if cfg.kl_weight > 0 else []
    stop = EarlyStop(cfg.inner_tol, B) if cfg.inner_tol is not None else None
    rewards, grad_norms, kls = [], [], []
    forwards = backwards = 0
    for k in range(cfg.inner_steps):
        where = f"inner step {k + 1} of {cfg.inner_steps}"
        with record_function("entrgi.rm_forward"):
            r = score(*view(phi, streams, None if stop is None else stop.live))  # 1. R(ê(φ)), (B,)
        forwards += 1
        r_now = r.detach().float().cpu()
        if stop is not None:  # early stop: the rows whose last inner step gained less than `inner_tol` leave
            check_rewards(r_now, where, cfg.rule)
            rewards.append(stop.mark(r_now))
            if not stop.update(r_now):
                break
        optimizer.zero_grad(set_to_none=True)
        with record_function("entrgi.backward"):  # 2. ∇φ of the loss −Σ R
            (-(r if stop is None else stop.loss_weights(r)).sum()).backward()
        backwards += 1
        norms = row_norms(phi.grad, rows, B)
        check_inner_step(r_now, norms, phi.grad, rows, cfg.rule, k, cfg.inner_steps)
        for term in terms:  # 3. + the terms' gradients (grad_norms stay ‖∇R‖)
            value = term.add_gradient_(phi)
            kls.append(value if stop is None else stop.mark(value))
        if stop is None:
            rewards.append(r_now)
        grad_norms.append(norms if stop is None else stop.mark(norms))
        with record_function("entrgi.optimizer"):  # 4. the optimiser's step
            optimizer.step() if stop is None else stop.step(optimizer, phi, rows)
    if trace_streams is not None:
        with torch.no_grad():
            rewards.append(score(*view(phi, trace_streams)).float().cpu())
        check_rewards(rewards[-1], "the trace evaluation after the last inner step", cfg.rule)
    result = guide_result(logits, masked, phi, rewards, grad_norms, forwards=forwards, backwards=backwards)
    result.traced = trace_streams is not None
    if terms:
        result.kl = torch.stack(kls, -1) if kls else torch.zeros(B, 0)
    return result


def released_optimizer(cfg, phi: torch.Tensor) -> torch.optim.Optimizer | None:
    """The released code's optimiser for ``adam`` without parameters: torch's default (unfused) Adam, bit for bit
    (``SamplerConfig.match_released``); None for any other optimiser (the registered one is used)."""
    if cfg.optimizer == "adam" and not cfg.optimizer_params:
        return torch.optim.Adam([phi], lr=cfg.lr)
    return None


class RMView:
    """The reward model's input at one denoising step as a function of φ: ê (the rule's mix) at the open slots,
    E_R[token] at the committed ones, attention up to the first EOS (EOS judged by argmax φ at open slots).
    ``released``: ê as the released code computes it, one trajectory at a time
    (:func:`~entrgi.guidance.mixing.reward_input_embeddings_released`, its top-p set in float32 when
    ``float32_top_p``)."""

    def __init__(self, logits: torch.Tensor, masked: torch.Tensor, response_ids: torch.Tensor, table: torch.Tensor,
                 rm_mapped: torch.Tensor, guidance: ResolvedGuidance, eos_ids: torch.Tensor, *,
                 released: bool = False, float32_top_p: bool = False):
        self.masked, self.response_ids, self.table, self.guidance = masked, response_ids, table, guidance
        self.released, self.float32_top_p = released, float32_top_p
        self.groups = packed_groups(masked.sum(-1).tolist()) if released else None
        self.rm_mapped, self.eos_ids = rm_mapped, eos_ids
        self.rule = get_guidance_rule(guidance.config.rule)
        self.bias = torch.zeros(rm_mapped.shape, device=logits.device).masked_fill(~rm_mapped, float("-inf"))
        if not torch.isfinite(logits[..., (~rm_mapped).nonzero().squeeze(-1)]).any():
            self.bias = None  # unmapped ids are already −inf (invalid for the DLLM): nothing to add, no (n, V) copy
        self.committed = table[response_ids.clamp_max(table.shape[0] - 1)].detach()  # (B, W, d)

    def __call__(self, phi: torch.Tensor, uniform_source: RowStreams,
                 rows_live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        g, masked = self.guidance, self.masked
        draw_at = masked if rows_live is None else masked & rows_live.to(masked.device).unsqueeze(-1)
        with record_function("entrgi.rm_input"):
            uniforms = uniform_source.uniform_at(draw_at)[masked] if self.rule.needs_hard_sample else None
            if self.released:  # the released code's numerics, one trajectory at a time
                embeds, _ = reward_input_embeddings_released(
                    phi, self.table, self.rule, self.groups, temperature=g.relaxation_temperature, uniforms=uniforms,
                    top_p=g.hard_top_p, top_k=g.top_k, entropy_temperature=g.entropy_temperature, bias=self.bias,
                    float32_top_p=self.float32_top_p, rule_params=g.config.rule_params)
            else:
                embeds, _ = reward_input_embeddings(
                    phi, self.table, self.rule, rule_params=g.config.rule_params, bias=self.bias,
                    temperature=g.relaxation_temperature, top_p=g.hard_top_p, top_k=g.top_k,
                    entropy_temperature=g.entropy_temperature, uniforms=uniforms,
                    chunk_size=g.config.vocab_chunk, soft_top_k=g.config.soft_top_k)
            resp = self.committed.masked_scatter(masked.unsqueeze(-1), embeds.to(self.committed.dtype))  # (B, W, d)
            ids = self.response_ids.masked_scatter(masked, phi.detach().argmax(-1))
        return resp, response_attention(ids, masked, self.eos_ids, self.rm_mapped)


def row_norms(grad: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor:
    """‖grad‖ per row (B,) on the CPU: the slots' squared norms (``rows`` (n,) the row of each slot) summed."""
    sq = torch.zeros(B, device=grad.device, dtype=grad.dtype).index_add_(
        0, rows, torch.linalg.vector_norm(grad, dim=-1).square())
    return sq.sqrt().detach().cpu()


def check_inner_step(rewards: torch.Tensor, grad_norms: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor,
                     rule: str, step: int, steps: int) -> None:
    """Raise :class:`~entrgi.errors.NonFiniteError` if inner step ``step`` (0-based) of ``steps`` got a
    non-finite reward (CPU (B,)) or gradient ``grad`` (n, V) of φ (``rows`` (n,): the row of each slot).

    Cheap: the rewards and per-row gradient norms are already on the CPU; ``grad`` itself is scanned only
    when a norm is not finite (a finite gradient whose squared norm overflows passes)."""
    where = f"inner step {step + 1} of {steps}"
    check_rewards(rewards, where, rule)
    if bool(torch.isfinite(grad_norms).all()):
        return
    bad_slots = ~torch.isfinite(grad).all(-1)  # (n,)
    if bad_slots.any():
        raise NonFiniteError("gradient", where, method=rule, rows=rows[bad_slots].unique().tolist())


def guide_result(logits: torch.Tensor, masked: torch.Tensor, phi: torch.Tensor, rewards: Sequence[torch.Tensor],
                 grad_norms: Sequence[torch.Tensor], *, forwards: int | None = None,
                 backwards: int | None = None) -> GuideResult:
    """The guided logits (``logits`` with ``phi`` at the masked slots) and the per-step records, stacked."""
    guided = logits.clone()
    guided[masked] = phi.detach().to(guided.dtype)
    B = logits.shape[0]
    stack = lambda xs: torch.stack(list(xs), -1) if xs else torch.zeros(B, 0)  # noqa: E731
    return GuideResult(guided, stack(rewards), stack(grad_norms), forwards, backwards)


def mean_entropy_weight(logits: torch.Tensor, masked: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean EntRGi weight over each row's masked slots (B,), NaN for rows with none."""
    w = torch.zeros(masked.shape, device=logits.device, dtype=torch.promote_types(logits.dtype, torch.float32))
    if masked.any():
        w[masked] = entropy_weight(logits[masked], temperature)
    n = masked.sum(-1)
    return torch.where(n > 0, w.sum(-1) / n.clamp_min(1), torch.full_like(w[:, 0], float("nan")))


__all__ = ["EarlyStop", "GuideResult", "KLPenalty", "PenaltyTerm", "RMView", "before_first_eos", "check_inner_step",
           "guide_logits", "guide_result", "inner_stop", "mean_entropy_weight", "response_attention", "row_norms"]
