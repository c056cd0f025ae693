"""The guidance maths of EntRGi, APS and Expectation: pure functions of logits and an embedding table.

ē = softmax(φ / τ) · E_R (soft), ẽ = E_R[x̃] with x̃ ~ top-p(q) (hard), ê = ē + stopgrad(w · (ẽ − ē)),
w from the guidance rule (:mod:`entrgi.guidance.rules`): docs/method.md (4)–(7). Nothing here calls a
model. :func:`expected_embeddings` can compute ē and its gradient over vocabulary chunks, without (n, V)
intermediates for backward (docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..ops.logit_ops import draw, exp_flushed_, scale, upcast
from ..registry import GUIDANCE_RULES


class WeightRule(Protocol):
    """What the mixing needs of a guidance rule (:class:`entrgi.guidance.rules.GuidanceRule` is one)."""

    name: str
    needs_hard_sample: bool
    params: Mapping[str, Any]  # the declared parameters and their defaults

    def weight(self, logits: torch.Tensor, entropy_temperature: float, **params: Any) -> torch.Tensor: ...


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits / T) over the last dim; −inf logits count as p = 0."""
    logp = scale(upcast(logits), temperature).log_softmax(-1)  # (..., V)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)  # (...,)


@torch.no_grad()
def entropy_weight(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """EntRGi's w = H(softmax(logits / T)) / log V, in [0, 1], shape ``logits.shape[:-1]``, detached.

    V is the logit width ``logits.shape[-1]`` (the released code's choice: Dream's padded 152,064).
    The released code uses T = 1; the paper's formula H(q) implies T = τ. Limits, for finite T >= 0
    (inf, NaN or T < 0 raise ``ValueError``):

    - T = 0 gives w = 0 (the one-hot limit; with k tied top logits the exact limit would be log k / log V).
      As T -> 0, H = lse − E[z] with z = logits / T loses absolute precision ~ eps · max|z| and the rows
      whose z overflow count as w = 0.
    - Large T: w -> log(n) / log V with n the ids of finite logit (1 when every id is finite); T beyond
      the dtype's largest value is taken as that value (so −inf logits stay −inf, no NaN).
    Computed in one pass over vocabulary chunks (:func:`entropy_chunked`); equals :func:`entropy` / log V.
    """
    if not 0 <= float(temperature) < math.inf:
        raise ValueError(f"`temperature` of the entropy weight must be a finite number >= 0, got {temperature!r}.")
    vocab = logits.shape[-1]
    if vocab < 2 or temperature == 0:
        return torch.zeros(logits.shape[:-1], dtype=upcast(logits).dtype, device=logits.device)
    temperature = min(float(temperature), torch.finfo(upcast(logits).dtype).max)
    h = entropy_chunked(upcast(logits).reshape(-1, vocab), temperature)
    return (h.view(logits.shape[:-1]) / math.log(vocab)).clamp(0.0, 1.0)


def entropy_chunked(logits: torch.Tensor, temperature: float = 1.0, chunk: int = 8192) -> torch.Tensor:
    """:func:`entropy` of (n, V) rows as H = lse − E_p[z] (z = logits / T), one pass over vocabulary chunks
    with a running max (no (n, V) temporary). −inf logits count as p = 0. T > 0."""
    n, V = logits.shape
    low = torch.finfo(logits.dtype).min  # −inf -> a finite floor in e·z: e is exactly 0 there, and 0 · floor = 0
    m = torch.full((n,), float("-inf"), dtype=logits.dtype, device=logits.device)
    s, t = torch.zeros_like(m), torch.zeros_like(m)  # Σ e^(z − m), Σ e^(z − m) z
    for lo in range(0, V, chunk):
        z = logits[:, lo:lo + chunk] / temperature  # (n, c)
        m_new = torch.maximum(m, z.amax(-1))
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows still all −inf
        alpha = (m - shift).exp()  # rescales earlier sums (0 while nothing finite was seen)
        e = exp_flushed_(z - shift.unsqueeze(-1))
        s = s * alpha + e.sum(-1)
        t = t * alpha + e.mul_(z.clamp_min_(low)).sum(-1)
        m = m_new
    return (m + s.log() - t / s).nan_to_num_(0.0).clamp_min(0.0)  # a row with no finite logit: 0


def kl_divergence(logits: torch.Tensor, prior_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(logits / τ) ‖ softmax(prior_logits / τ)) over the last dim (...,), differentiable w.r.t.
    ``logits`` (dense; the reference for :func:`add_kl_gradient_`). Ids with q = 0 add nothing; an id with
    q > 0 where the prior is −inf gives +inf."""
    lq = scale(upcast(logits), temperature).log_softmax(-1)
    lq0 = scale(upcast(prior_logits), temperature).log_softmax(-1)
    q = lq.exp()
    inside = q > 0
    diff = torch.where(inside, lq, torch.zeros_like(lq)) - torch.where(inside, lq0, torch.zeros_like(lq0))
    return (q * diff).sum(-1)


@torch.no_grad()
def add_kl_gradient_(grad: torch.Tensor, logits: torch.Tensor, prior_logits: Callable[[int, int], torch.Tensor],
                     temperature: float, weight: float, chunk_rows: int = 256) -> torch.Tensor:
    """Add ``weight`` · ∇_φ KL(softmax(φ/τ) ‖ softmax(φ₀/τ)) to ``grad`` (n, V) in place; returns the KL (n,).

    Closed form, row chunk by row chunk (no autograd graph): with q = softmax(φ/τ), q₀ = softmax(φ₀/τ) and
    a = log q − log q₀ (0 where q = 0), ∂KL/∂φ = q ⊙ (a − KL) / τ. ``logits`` is φ (n, V); ``prior_logits(lo, hi)``
    returns φ₀ of rows lo..hi (so the caller need not hold an (n, V) copy)."""
    n = logits.shape[0]
    kl = torch.zeros(n, dtype=upcast(logits).dtype, device=logits.device)
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        lq = scale(upcast(logits[lo:hi].detach()), temperature).log_softmax(-1)
        lq0 = scale(upcast(prior_logits(lo, hi)), temperature).log_softmax(-1)
        q = lq.exp()
        a = torch.where(q > 0, lq - lq0, torch.zeros_like(lq))  # (c, V)
        k = (q * a).sum(-1)  # (c,)
        kl[lo:hi] = k
        grad[lo:hi] += (q * (a - k.unsqueeze(-1))).mul_(weight / temperature).to(grad.dtype)
    return kl


def soft_embeddings(probs: torch.Tensor, embedding_table: torch.Tensor) -> torch.Tensor:
    """ē = q · E_R: (..., V) @ (V, d) -> (..., d), in the table's dtype."""
    return probs.to(embedding_table.dtype) @ embedding_table


class ChunkedExpectedEmbedding(torch.autograd.Function):
    """ē = softmax((φ + b) / τ) · E over vocabulary chunks; the backward recomputes q chunk by chunk.

    Forward, one pass over the chunks with a running max (an online softmax): p_c = exp(z_c − m),
    s = Σ p_c, ē = Σ p_c · E_c / s, rescaled whenever the running max m grows; lse = m + log s.
    Backward: ∂⟨g, ē⟩/∂φ = q ⊙ (g·E^T − ⟨g, ē⟩) / τ with q_c = exp(z_c − lse), chunk by chunk.
    Saved: φ (the caller's leaf, no copy), lse (n,) and ē (n, d); the only (n, V) tensor made is the
    gradient. z = (φ + b) / τ.
    """

    @staticmethod
    def forward(ctx, logits, table, bias, temperature: float, chunk: int):
        n, V = logits.shape
        acc = torch.float32 if table.dtype in (torch.float16, torch.bfloat16) else table.dtype
        m = torch.full((n,), float("-inf"), dtype=logits.dtype, device=logits.device)  # running max of z
        s = torch.zeros(n, dtype=torch.float64, device=logits.device)  # running Σ exp(z − m), in double
        soft = torch.zeros((n, table.shape[1]), dtype=acc, device=logits.device)  # running Σ exp(z − m) E
        for lo in range(0, V, chunk):
            p = _scaled_chunk(logits, bias, lo, chunk, temperature)  # z_c (n, c)
            m_new = torch.maximum(m, p.amax(-1))
            shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows still all −inf
            exp_flushed_(p.sub_(shift.unsqueeze(-1)))
            alpha = (m - shift).exp()  # rescales the sums of earlier chunks (0 on the first finite chunk)
            s.mul_(alpha.double()).add_(p.sum(-1).double())
            soft.mul_(alpha.unsqueeze(-1).to(acc)).add_((p.to(table.dtype) @ table[lo:lo + chunk]).to(acc))
            m = m_new
        lse = m.double() + s.log()  # (n,) float64: logsumexp((φ + b) / τ)
        soft.div_(s.unsqueeze(-1).to(acc))
        ctx.save_for_backward(logits, table, bias, lse, soft)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(lse)
        return soft.to(table.dtype), lse

    @staticmethod
    def backward(ctx, grad, _grad_lse=None):
        logits, table, bias, lse, soft = ctx.saved_tensors
        tau, chunk = ctx.temperature, ctx.chunk
        g = (grad / tau).to(table.dtype)  # (n, d)
        g_dot = ((grad.to(soft.dtype) * soft).sum(-1, keepdim=True) / tau).to(logits.dtype)  # ⟨g, ē⟩ / τ (n, 1)
        out = torch.empty_like(logits)
        for lo in range(0, logits.shape[1], chunk):
            q = exp_flushed_(_scaled_chunk(logits, bias, lo, chunk, tau).sub_(lse.unsqueeze(-1).to(logits.dtype)))
            g_e = (g @ table[lo:lo + chunk].T).to(logits.dtype).sub_(g_dot)  # (n, c)
            torch.mul(q, g_e, out=out[:, lo:lo + chunk])
        return out, None, None, None, None


def _scaled_chunk(logits: torch.Tensor, bias: torch.Tensor | None, lo: int, size: int, tau: float) -> torch.Tensor:
    """A fresh (n, c) tensor (φ[:, lo:lo+c] + b[lo:lo+c]) / τ."""
    x = logits[:, lo:lo + size] / tau
    return x if bias is None else x.add_(bias[lo:lo + size])


def expected_embeddings(logits: torch.Tensor, embedding_table: torch.Tensor, temperature: float = 1.0, *,
                        bias: torch.Tensor | None = None, chunk_size: int | None = None,
                        top_k: int | None = None) -> torch.Tensor:
    """ē = softmax((logits + bias) / τ) · E_R: (..., V) -> (..., d), differentiable w.r.t. ``logits``.

    Args:
        bias: (V,) added to the logits (0 / −inf: ids the table has no row for get q = 0).
        chunk_size: ids per vocabulary chunk (:class:`ChunkedExpectedEmbedding`): the same values to float
            rounding, without (n, V) intermediates; None = one dense softmax and matmul.
        top_k: APPROXIMATION (changes results): ē over the k most likely ids only, their probabilities
            renormalised; the gradient reaches only those k logits. None = exact.
    """
    return _expected_embeddings(logits, embedding_table, temperature, bias, chunk_size, top_k)[0]


def _expected_embeddings(logits, embedding_table, temperature, bias, chunk_size, top_k):
    """(ē (..., d), logsumexp((logits + bias) / τ) (n,) float64 when the chunked path made it, else None)."""
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat = upcast(logits).reshape(-1, V)
    lse = None
    if top_k is not None and top_k < V:
        x = flat if bias is None else flat + bias
        vals, ids = torch.topk(x, top_k, -1)  # (n, k)
        q = scale(vals, temperature).softmax(-1)
        soft = F.embedding_bag(ids, embedding_table, per_sample_weights=q.to(embedding_table.dtype), mode="sum")
    elif chunk_size is not None and chunk_size < V and temperature > 0:
        soft, lse = ChunkedExpectedEmbedding.apply(flat, embedding_table, bias, float(temperature), int(chunk_size))
    else:
        x = flat if bias is None else flat + bias
        soft = soft_embeddings(scale(x, temperature).softmax(-1), embedding_table)
    return soft.view(*lead, embedding_table.shape[1]), lse


def mixing_weight(logits: torch.Tensor, rule: str | WeightRule, entropy_temperature: float = 1.0,
                  params: Mapping[str, Any] | None = None) -> torch.Tensor:
    """w per position (``logits.shape[:-1]``) of the guidance rule ``rule`` (a registered name or a rule object)
    with its ``params``: 0 (expectation), 1 (aps), the entropy weight (entrgi) or a registered rule's. A registered
    rule's w must have that shape and lie in [0, 1] (``ValueError`` otherwise)."""
    rule = GUIDANCE_RULES.get(rule) if isinstance(rule, str) else rule
    w = rule.weight(logits, entropy_temperature, **{**getattr(rule, "params", {}), **(params or {})})
    if GUIDANCE_RULES.is_builtin(rule.name) and GUIDANCE_RULES.get(rule.name) is rule:
        return w
    return _checked_weight(rule.name, w, logits)


def _checked_weight(name: str, w: object, logits: torch.Tensor) -> torch.Tensor:
    """A registered rule's w as a detached tensor of ``logits``' float dtype, after checking its shape and range."""
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(logits.shape[:-1]):
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"guidance rule {name!r}: `weight` must return a tensor of shape {tuple(logits.shape[:-1])} "
                         f"(one w per slot), got {got}.")
    w = w.detach().to(upcast(logits).dtype)
    if not bool(((w >= 0) & (w <= 1)).all()):  # also False for NaN
        bad = w[~((w >= 0) & (w <= 1))][:3].tolist()
        raise ValueError(f"guidance rule {name!r}: `weight` must lie in [0, 1], got values such as {bad}.")
    return w


def reward_input_embeddings(
    logits: torch.Tensor,
    embedding_table: torch.Tensor,
    rule: str | WeightRule,
    *,
    rule_params: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    entropy_temperature: float = 1.0,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    soft_top_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward model's input at masked positions: ``(embeds (..., d), weight (...,))``.

    1. q = softmax(logits / temperature); soft = q @ embedding_table.
    2. x ~ top-p/top-k-filtered q (inverse CDF with ``uniforms`` (...,) if given, else uniforms drawn
       with ``generator``); hard = embedding_table[x]. Skipped when the rule has no hard sample
       (``expectation``: w = 0).
    3. embeds = soft + stopgrad(w · (hard − soft)), w from the guidance rule ``rule`` (a registered name
       or a :class:`~entrgi.guidance.rules.GuidanceRule`) with its ``rule_params`` (:func:`mixing_weight`).

    Ids whose logit is −inf (invalid or unmapped ids) get q = 0 and are never sampled.

    Cost options of the guidance loop: ``bias`` (V,) is added to the logits without an autograd copy of the
    (n, V) logits (w and the hard sample use ``logits + bias``, without gradient); ``chunk_size`` and
    ``soft_top_k`` go to :func:`expected_embeddings` (``soft_top_k`` is an approximation).
    """
    rule = GUIDANCE_RULES.get(rule) if isinstance(rule, str) else rule
    if logits.shape[-1] != embedding_table.shape[0]:
        raise ValueError(
            f"`embedding_table` must have one row per logit ({logits.shape[-1]}), got {embedding_table.shape[0]}."
        )
    soft, lse = _expected_embeddings(logits, embedding_table, temperature, bias, chunk_size, soft_top_k)  # (..., d)
    if not rule.needs_hard_sample:  # w ≡ 0: ê = ē, no draw
        return soft, torch.zeros(logits.shape[:-1], dtype=upcast(logits).dtype, device=logits.device)
    with torch.no_grad():
        x = logits.detach() if bias is None else logits.detach() + bias  # (..., V)
        weight = mixing_weight(x, rule, entropy_temperature, rule_params)  # (...,)
        if uniforms is None:
            uniforms = torch.rand(logits.shape[:-1], generator=generator, device=logits.device)
        hard = embedding_table[draw(x, uniforms, temperature, top_p, top_k, lse=lse)]  # (..., d)
    embeds = soft + (weight.unsqueeze(-1).to(soft.dtype) * (hard - soft)).detach()
    return embeds, weight


def reward_input_embeddings_released(
    logits: torch.Tensor,
    embedding_table: torch.Tensor,
    rule: str | WeightRule,
    groups: list[tuple[int, int]],
    *,
    temperature: float,
    uniforms: torch.Tensor | None,
    top_p: float = 1.0,
    top_k: int | None = None,
    entropy_temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    float32_top_p: bool = True,
    rule_params: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`reward_input_embeddings` as the released code's inner loop computes it (``SamplerConfig.match_released``).

    For each group ``(lo, hi)`` of rows of ``logits`` (one trajectory's masked slots), in the logits' dtype:
    q = softmax(φ / τ), soft = q @ E (one dense matmul per group); for the rules with a hard sample, a token drawn
    from its float32 top-p (then top-k) filtered probabilities at ``uniforms`` (n,) (:func:`~entrgi.ops.released.
    inverse_cdf_probs`), w = −Σ p log(p + 1e-10) / log V with p = softmax(φ) for EntRGi (the rule's own weight
    otherwise, with ``rule_params``), and ê = soft + w · (hard − soft) with w and (hard − soft) detached.
    Differentiable w.r.t. ``logits`` through soft. ``bias`` (V,) is added first (0 / −inf: ids the RM cannot
    see); ``float32_top_p`` off takes the hard sample's top-p set from the project's float64 rule. Returns
    ``(embeds (n, d), w (n,))``."""
    from ..ops.released import entropy_weight_eps, filter_scaled, inverse_cdf_probs  # noqa: PLC0415

    rule = GUIDANCE_RULES.get(rule) if isinstance(rule, str) else rule
    builtin = GUIDANCE_RULES.is_builtin(rule.name) and GUIDANCE_RULES.get(rule.name) is rule
    x_all = logits if bias is None else logits + bias
    # one slice per group; split (not indexing) so the backward concatenates the groups' gradients (same values)
    covered = [lo for lo, _ in groups] == [0, *[hi for _, hi in groups[:-1]]] and (not groups or groups[-1][1] ==
                                                                                    x_all.shape[0])
    parts = x_all.split([hi - lo for lo, hi in groups]) if covered else [x_all[lo:hi] for lo, hi in groups]
    embeds, weights = [], []
    for (lo, hi), x in zip(groups, parts):  # x (n_b, V)
        scaled = x / temperature
        soft = torch.matmul(F.softmax(scaled, dim=-1).to(embedding_table.dtype), embedding_table)  # (n_b, d)
        if not rule.needs_hard_sample:  # expectation: w ≡ 0
            embeds.append(soft)
            weights.append(torch.zeros(hi - lo, dtype=x.dtype, device=x.device))
            continue
        with torch.no_grad():
            w = (entropy_weight_eps(x.detach(), entropy_temperature) if builtin and rule.name == "entrgi"
                 else mixing_weight(x.detach(), rule, entropy_temperature, rule_params)).to(soft.dtype)
            probs = F.softmax(filter_scaled(scaled.detach(), top_p, top_k, float32_top_p=float32_top_p), dim=-1)
            hard = embedding_table[inverse_cdf_probs(probs, uniforms[lo:hi])]  # (n_b, d)
        embeds.append(soft + w.unsqueeze(-1) * (hard - soft).detach())
        weights.append(w)
    if not embeds:
        return logits.new_zeros((0, embedding_table.shape[1])), logits.new_zeros(0)
    return torch.cat(embeds), torch.cat(weights)
