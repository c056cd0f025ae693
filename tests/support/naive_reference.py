"""The optimised sampler with every part done the naive way: a :class:`~entrgi.DiffusionSampler` subclass.

For per-part timing (``benchmarks/bench_guidance.py``) and for tests that need the loop's stages (error
locations, cost counts); it overrides public stages only. The straight reference the tests compare
against is ``examples/reference_sampler.py``. What is naive here:
- DLLM logits are formed for the whole sequence (B, P + L, V), then sliced to the response slots;
- every inner step runs the RM over the whole ``[prefix ; L slots ; suffix]`` (no prefix cache);
- the soft embedding is one dense softmax (n, V) and matmul (n, V) @ (V, d), autograd keeps q;
- the entropy weight, the top-p filter (a full sort of the vocabulary) and the inverse-CDF draw
  (a float64 softmax and cumsum over the vocabulary) work on whole (n, V) tensors;
- Adam is the per-op implementation.
"""

from __future__ import annotations

import math

import torch
from reference_sampler import dense_draw

from entrgi import DiffusionSampler
from entrgi.config import ResolvedGuidance
from entrgi.errors import check_rewards
from entrgi.guidance.inner_loop import GuideResult, check_inner_step, guide_result, response_attention
from entrgi.guidance.mixing import upcast
from entrgi.ops.logit_ops import scale
from entrgi.ops.rng import RowStreams
from entrgi.sampling.reward_view import RewardView
from entrgi.sampling.state import DenoisingState

#: Scale, top-k, top-p by a full sort, then inverse CDF over the whole vocabulary (the reference's draw).
naive_draw = dense_draw


def naive_guide_logits(logits: torch.Tensor, masked: torch.Tensor, response_ids: torch.Tensor, score,
                       table: torch.Tensor, rm_mapped: torch.Tensor, guidance: ResolvedGuidance,
                       eos_ids: torch.Tensor, streams: RowStreams,
                       trace_streams: RowStreams | None = None) -> GuideResult:
    """The inner loop of :func:`entrgi.guidance.inner_loop.guide_logits`, one formula at a time."""
    cfg = guidance.config
    tau, V = guidance.relaxation_temperature, logits.shape[-1]
    rm_bias = torch.zeros(V, device=logits.device).masked_fill(~rm_mapped, float("-inf"))
    committed = table[response_ids.clamp_max(V - 1)].detach()  # (B, L, d)
    rows = masked.nonzero()[:, 0]
    phi = upcast(logits[masked].detach().clone()).requires_grad_(True)  # (n, V)
    optimizer = (torch.optim.Adam([phi], lr=cfg.lr, foreach=False) if cfg.optimizer == "adam"
                 else torch.optim.SGD([phi], lr=cfg.lr))
    B = logits.shape[0]
    rewards, grad_norms = [], []

    def rm_view(source: RowStreams):
        x = phi + rm_bias  # (n, V) the RM's view: unmapped ids excluded
        q = torch.softmax(x / tau, -1)  # (n, V)
        soft = q.to(table.dtype) @ table  # (n, d) ē
        if cfg.rule == "expectation":
            embeds = soft
        else:
            with torch.no_grad():
                if cfg.rule == "aps":
                    w = torch.ones(x.shape[0], device=x.device)
                else:  # entrgi: H(softmax(x / T_H)) / log V
                    logp = torch.log_softmax(scale(x.detach(), guidance.entropy_temperature), -1)
                    p = logp.exp()
                    w = (-torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1) / math.log(V)).clamp(0, 1)
                u = source.uniform_at(masked)[masked]
                hard = table[naive_draw(x.detach(), u, tau, guidance.hard_top_p, guidance.top_k)]  # (n, d) ẽ
            embeds = soft + (w.unsqueeze(-1).to(soft.dtype) * (hard - soft)).detach()
        resp = committed.masked_scatter(masked.unsqueeze(-1), embeds.to(committed.dtype))
        ids = response_ids.masked_scatter(masked, phi.detach().argmax(-1))
        return resp, response_attention(ids, masked, eos_ids, rm_mapped)

    for k in range(cfg.inner_steps):
        resp, attn = rm_view(streams)
        r = score(resp, attn)
        optimizer.zero_grad(set_to_none=True)
        (-r.sum()).backward()
        sq = torch.zeros(B, device=phi.device, dtype=phi.dtype).index_add_(0, rows, phi.grad.pow(2).sum(-1))
        grad_norms.append(sq.sqrt().detach().cpu())
        rewards.append(r.detach().float().cpu())
        check_inner_step(rewards[-1], grad_norms[-1], phi.grad, rows, cfg.rule, k, cfg.inner_steps)
        optimizer.step()
    if trace_streams is not None:
        with torch.no_grad():
            rewards.append(score(*rm_view(trace_streams)).float().cpu())
        check_rewards(rewards[-1], "the trace evaluation after the last inner step", cfg.rule)
    result = guide_result(logits, masked, phi, rewards, grad_norms)
    result.traced = trace_streams is not None
    return result


class NaiveSampler(DiffusionSampler):
    """:class:`~entrgi.DiffusionSampler` with every stage done the naive way (see the module docstring); the
    schedule, remasking and random streams are shared, so outputs are comparable."""

    def reward_view(self, state: DenoisingState, stats) -> RewardView:
        """The RM over the whole row at every inner step (no prefix cache)."""
        return RewardView.build(self.reward, self.bridge, [r.prompt for r in state.rows], state.response.shape[1],
                                state.eos_ids, state.x.device, prefix_cache=False,
                                compile=state.guidance.config.compile, stats=stats)

    def start(self, *args, **kwargs) -> DenoisingState:
        state = super().start(*args, **kwargs)
        if state.guide is not None:
            state.guide.inner_loop = naive_guide_logits
        return state

    def forward(self, state: DenoisingState, masked: torch.Tensor) -> torch.Tensor:
        logits = self.model(state.x, state.attention_mask, state.position_ids)  # (B, P + L, V): every position
        B, N = state.x.shape
        state.stats.count_dllm_forward(B, N, state.sampler.max_new_tokens)
        return upcast(logits[:, state.prompt_length:]) + state.invalid_bias

    def draw(self, state: DenoisingState, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        cfg = state.sampler
        if cfg.sampling == "gumbel" and cfg.temperature > 0:
            return super().draw(state, logits, candidates)
        return naive_draw(logits[candidates], state.streams.uniform_at(candidates)[candidates], cfg.temperature,
                          cfg.top_p, cfg.top_k)


def generate_naive(model, prompts, reward=None, **kwargs):
    """:func:`entrgi.generate` through :class:`NaiveSampler` (same arguments)."""
    bridge = kwargs.pop("bridge", None)
    return NaiveSampler(model, reward, bridge).generate(prompts, kwargs.pop("sampler", None),
                                                        kwargs.pop("guidance", None), kwargs.pop("search", None),
                                                        **kwargs)
