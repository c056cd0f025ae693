"""A request's work before it runs: an upper bound of the cost count (docs/performance.md, "Cost count").

:func:`estimate_stats` fills a :class:`~entrgi.ComputeStats` with the tokens a request's batch would run
if every step ran every row and every response slot stayed masked until its step: T DLLM forwards of all
rows over prompt + L positions (a canvas model: ``steps`` per canvas, over every canvas's slots); on each guided step (every ``guide_every``-th step of a block) M RM
forwards and backwards of every row, with soft embeddings over all L slots; one RM forward per step with
canvas events (``track_reward``); the final re-score. The schedule's data-dependent savings (finished rows,
``guide_until``, ``guide_min_weight``, ``inner_tol``, parallel decoding, the KV cache) can only make the
run cheaper, so the estimate is an upper bound; it is exact for the DLLM token counts (no KV cache, no finished rows skipped).
:func:`request_gflops` prices it with :meth:`~entrgi.ComputeStats.estimate_flops`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..config import GuidanceConfig, SamplerConfig, SearchConfig
from ..models.base import transition_name
from ..sampling.outputs import ComputeStats
from ..sampling.sampler import transition_for


def is_canvas(model: Any) -> bool:
    """Whether ``model`` samples by canvases (DiffusionGemma) rather than by masked slots."""
    return transition_name(model) == "canvas"


def run_shape(model: Any, sampler: SamplerConfig) -> tuple[int, int]:
    """(the most denoising steps of a row, its response slots): T and L for masked models; for canvas models
    ``steps`` (the most denoising steps per canvas) x the canvases, and every canvas's slots."""
    length = transition_for(model).response_length(sampler)
    if is_canvas(model):
        return sampler.steps * (length // model.canvas_length), length
    return sampler.steps, length


def guided_steps(sampler: SamplerConfig, guidance: GuidanceConfig, model: Any = None) -> int:
    """Denoising steps the guidance schedule may guide: every ``guide_every``-th step of each block (every step
    of a canvas model)."""
    if not guidance.guided:
        return 0
    if model is not None and is_canvas(model):
        return run_shape(model, sampler)[0]
    per_block = sampler.steps // sampler.num_blocks
    return sampler.num_blocks * math.ceil(per_block / guidance.guide_every)


def rm_row_tokens(reward: Any, prompts: Sequence[Any], length: int) -> int:
    """The longest RM row of the prompts: the template's prefix + L slots + suffix (0 without a reward)."""
    if reward is None or not hasattr(reward, "context"):
        return 0
    return max(len(c.prefix_ids) + length + len(c.suffix_ids) for c in (reward.context(p) for p in prompts))


def estimate_stats(engine: Any, prompts: Sequence[Any], prompt_lengths: Sequence[int], sampler: SamplerConfig,
                   guidance: GuidanceConfig, track_reward: bool = False,
                   search: SearchConfig | None = None) -> ComputeStats:
    """The upper bound of the cost count of one request (its prompts x ``sampler.num_samples`` rows)."""
    T, L = run_shape(engine.model, sampler)
    B = len(prompts) * sampler.num_samples
    stats = ComputeStats(dllm_forwards=T * B, dllm_tokens=T * B * (max(prompt_lengths) + L),
                         dllm_logit_tokens=T * B * L)
    reward = engine.reward
    n_r = rm_row_tokens(reward, prompts, L)
    G, M = guided_steps(sampler, guidance, engine.model), guidance.inner_steps
    if G and n_r:
        d = reward.embedding_table().shape[1]
        V = engine.model.logit_width
        width = min(guidance.soft_top_k, V) if guidance.soft_top_k is not None else V
        for _ in range(G):
            stats.count_inner_loop(B, B * n_r, B * L, width, d, M, M)
    if search is not None and search.strategy == "particles" and n_r:  # a weighing every r steps (not the last)
        weighings = (T - 1) // search.resample_every
        stats.rm_forwards += weighings * B
        stats.rm_forward_tokens += weighings * B * n_r
    if track_reward and n_r:
        stats.rm_forwards += T * B
        stats.rm_forward_tokens += T * B * n_r
    if n_r:  # the final re-score of the decoded texts
        stats.rm_forwards += B
        stats.rm_forward_tokens += B * n_r
    stats.flops = stats.estimate_flops(*engine.cost_params)
    return stats


def request_gflops(engine: Any, prompts: Sequence[Any], prompt_lengths: Sequence[int], sampler: SamplerConfig,
                   guidance: GuidanceConfig, track_reward: bool = False, search: SearchConfig | None = None) -> float:
    """:func:`estimate_stats` in GFLOP."""
    return estimate_stats(engine, prompts, prompt_lengths, sampler, guidance, track_reward, search).flops / 1e9


def default_request_gflops(engine: Any) -> float:
    """The estimate of the server's default request: one short prompt, n = 1, the default settings."""
    prompt = "Hello"
    settings = engine.defaults()
    return request_gflops(engine, [prompt], [len(engine.model.encode_prompt(prompt))], settings.sampler,
                          settings.guidance, search=settings.search)
