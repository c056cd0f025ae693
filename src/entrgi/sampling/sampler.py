"""The denoising loop: masked diffusion sampling with optional reward-gradient guidance.

Per step (``shared/reference/algorithm.md``):
  1. one DLLM forward on [left-padded prompt ; response slots] -> logits at the response slots;
     ids that can never be response tokens (mask id, padded rows) get −inf, and so do the EOS ids in
     the first ``min_new_tokens`` slots;
  2. guided methods optimise a copy of the masked slots' logits (:func:`entrgi.guidance.inner_loop.guide_logits`);
  3. candidate tokens are drawn from the (guided) logits with τ / top-k / top-p;
  4. the positions to commit are ranked by the remasking rule on the prior logits (or the guided
     ones: ``confidence_from="guided"`` or APS's ``remasking="anchored"``), EOS candidates last; the count follows Dream's linear or LLaDA's uniform schedule,
     inside the current block when blocks are used. Prompt and committed tokens never change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..config import GuidanceConfig, ResolvedGuidance, SamplerConfig
from ..errors import NonFiniteError, check_rewards
from ..guidance.inner_loop import guide_logits, mean_entropy_weight, response_attention
from ..guidance.mixing import upcast
from ..models.base import DiffusionLM
from ..ops.logit_ops import draw, sample_gumbel_max, sampling_logits
from ..ops.rng import RowStreams, row_seed
from ..reward.base import RewardBatch, RewardModel, left_pad, position_ids_from
from ..reward.vocab import VocabBridge
from .outputs import ComputeStats, GenerationOutput, Sample, StepTrace, cost_parameters, rescore_tokens, rm_call_tokens
from .schedule import DEPRIORITISED, commit_counts, confidence, gumbel_keys, origin_reveal, select_top, steps_per_block

#: Keys of the state dict passed to ``callback(step, state)`` after every step: ``x`` (B, P + L) the
#: canvas after the commit; ``prompt_length`` P; ``logits`` / ``guided_logits`` (B, L, V) before / after
#: guidance (invalid ids at −inf); ``masked`` (B, L) before the commit; ``candidates`` (B, L) masked slots
#: of the current block; ``proposal`` (B, L) drawn tokens at candidates; ``committed`` (B, L) slots
#: committed at this step; ``rows`` the (prompt, sample) of each row; ``estimate`` (B,) the RM reward of
#: the predicted completion when ``track_reward`` (else None).
CALLBACK_KEYS = ("x", "prompt_length", "logits", "guided_logits", "masked", "candidates", "proposal", "committed",
                 "rows", "estimate")


@dataclass
class _Row:
    prompt_index: int
    sample_index: int
    prompt: str
    prompt_ids: list[int]
    seed: int
    trace_seed: int


@dataclass
class _Batch:
    """The state of one batch of rows in flight (see :meth:`MaskedDiffusionSampler._start`)."""

    rows: list[_Row]
    cfg: SamplerConfig
    guidance: ResolvedGuidance
    x: torch.Tensor  # (B, P + L) canvas: left-padded prompt, then the response slots
    attn: torch.Tensor  # (B, P + L) 1 = real token
    pos: torch.Tensor  # (B, P + L) position ids that skip padding
    P: int  # prompt length after padding
    streams: RowStreams
    eos: torch.Tensor
    invalid_bias: torch.Tensor  # (V,) or (L, V) 0 / −inf: see :func:`response_bias`
    trace: bool
    track_reward: bool
    traces: list[list[StepTrace]] = field(default_factory=list)
    trace_streams: RowStreams | None = None
    reward_batch: RewardBatch | None = None
    table: torch.Tensor | None = None  # (V, d) RM embeddings aligned to DLLM ids
    rm_mapped: torch.Tensor | None = None  # (V,)
    extra: dict[str, Any] = field(default_factory=dict)  # state of subclasses (e.g. particle weights)


def bridge_for(model: DiffusionLM, reward: RewardModel) -> VocabBridge:
    """The default DLLM -> RM vocabulary bridge: by token string, excluding the DLLM's invalid ids."""
    return VocabBridge.from_tokenizers(model.tokenizer, reward.tokenizer, model.logit_width,
                                       exclude=model.invalid_token_ids)


def response_bias(model: DiffusionLM, cfg: SamplerConfig, device) -> torch.Tensor:
    """The 0 / −inf bias added to the response logits: (V,) at ids that are never response tokens; (L, V)
    when ``cfg.min_new_tokens`` > 0, which also bars the EOS ids from the first ``min_new_tokens`` slots."""
    bias = torch.zeros(model.logit_width, device=device).masked_fill(model.invalid_mask(device), float("-inf"))
    eos = model.eos_ids(cfg.match_released)
    if cfg.min_new_tokens == 0 or not eos:
        return bias
    bias = bias.repeat(cfg.max_new_tokens, 1)  # (L, V)
    bias[:cfg.min_new_tokens, torch.tensor(eos, device=device)] = float("-inf")
    return bias


class MaskedDiffusionSampler:
    """Holds a DLLM adapter, an optional reward model and the vocabulary bridge between them."""

    def __init__(self, model: DiffusionLM, reward: RewardModel | None = None, bridge: VocabBridge | None = None):
        self.model = model
        self.reward = reward
        self._bridge = bridge

    @property
    def bridge(self) -> VocabBridge:
        if self._bridge is None:
            if self.reward is None:
                raise ValueError("no reward model: a vocabulary bridge needs one.")
            self._bridge = bridge_for(self.model, self.reward)
        return self._bridge

    # ---- validation -----------------------------------------------------------------------------
    def _rows(self, prompts: str | Sequence[str], sampler: SamplerConfig) -> list[_Row]:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("`prompts` must contain at least one prompt, got an empty list.")
        rows = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not (p.strip() or sampler.match_released):  # released code: raw prompts
                what = "a string" if sampler.match_released else "a non-empty string"
                raise ValueError(f"`prompts[{i}]` must be {what}, got {p!r}.")
            ids = self.model.encode_prompt(p)
            limit = self.model.max_length
            if limit is not None and len(ids) + sampler.max_new_tokens > limit:
                raise ValueError(
                    f"`prompts[{i}]` is {len(ids)} tokens; with `max_new_tokens` = {sampler.max_new_tokens} that "
                    f"exceeds the model's context of {limit} tokens.")
            for k in range(sampler.num_samples):
                rows.append(_Row(i, k, p, ids, row_seed(sampler.seed, ids, k),
                                 row_seed(sampler.seed, ids, k, stream="trace")))
        return rows

    # ---- public API -----------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], sampler: SamplerConfig | None = None,
                 guidance: GuidanceConfig | None = None, *, progress: bool = True, trace: bool = True,
                 track_reward: bool = False,
                 callback: Callable[[int, dict[str, Any]], None] | None = None) -> GenerationOutput:
        """Sample ``sampler.num_samples`` responses per prompt; see :func:`entrgi.generate`."""
        sampler = sampler or SamplerConfig()
        guidance = guidance or GuidanceConfig()
        resolved = guidance.resolve(sampler)
        if (guidance.needs_reward or track_reward) and self.reward is None:
            what = f"method {guidance.method!r}" if guidance.needs_reward else "`track_reward`"
            raise ValueError(f"`reward` is required for {what} (only method 'none' runs without one).")
        rows = self._rows(prompts, sampler)
        n_prompts = max(r.prompt_index for r in rows) + 1
        chunk = sampler.batch_size or len(rows)
        stats = ComputeStats()
        start = time.perf_counter()
        tokens: list[list[int]] = []
        traces: list[list[StepTrace] | None] = []
        bar = tqdm(total=-(-len(rows) // chunk) * sampler.steps, disable=not progress,
                   desc=f"{guidance.method}", unit="step", leave=False)
        for lo in range(0, len(rows), chunk):
            batch = self._start(rows[lo:lo + chunk], sampler, resolved, trace, track_reward)
            if batch.reward_batch is not None and batch.reward_batch.prefix_cached:  # encoded once per batch
                stats.rm_forward_tokens += batch.reward_batch.prefix_attention.numel()
            self._run(batch, stats, bar, callback)
            tokens += batch.x[:, batch.P:].tolist()
            traces += [t if trace else None for t in batch.traces]
        bar.close()
        texts = [self.model.decode_response(t, sampler.match_released) for t in tokens]
        rewards: list[float | None] = [None] * len(rows)
        if self.reward is not None:
            scores = self.reward.score_texts([r.prompt for r in rows], texts)
            check_rewards(scores, "the re-score of the decoded samples", guidance.method,
                          [(r.prompt_index, r.sample_index) for r in rows])
            rewards = scores.tolist()
            stats.rm_forwards += len(rows)
            stats.rm_forward_tokens += rescore_tokens(self.reward, [r.prompt for r in rows], texts)
        stats.flops = stats.estimate_flops(*cost_parameters(self.model, self.reward))
        stats.wall_time_s = time.perf_counter() - start
        samples: list[list[Sample]] = [[] for _ in range(n_prompts)]
        for r, t, txt, rew, tr in zip(rows, tokens, texts, rewards, traces):
            samples[r.prompt_index].append(Sample(r.prompt_index, r.sample_index, r.prompt, txt, t, rew, tr))
        return GenerationOutput(samples, sampler, guidance, stats)

    # ---- the loop -------------------------------------------------------------------------------
    def _start(self, rows: list[_Row], cfg: SamplerConfig, rg: ResolvedGuidance, trace: bool,
               track_reward: bool) -> _Batch:
        """Left-pad the prompts, append L mask slots, set up the streams and the reward layout."""
        model = self.model
        device = model.device
        B, L = len(rows), cfg.max_new_tokens
        prompt_ids, prompt_attn = left_pad([r.prompt_ids for r in rows], model.pad_token_id, device)
        x = torch.cat([prompt_ids, torch.full((B, L), model.mask_token_id, device=device)], 1)  # (B, P + L)
        attn = torch.cat([prompt_attn, torch.ones((B, L), dtype=torch.long, device=device)], 1)
        batch = _Batch(rows=rows, cfg=cfg, guidance=rg, x=x, attn=attn, pos=position_ids_from(attn),
                       P=prompt_ids.shape[1], streams=RowStreams([r.seed for r in rows], device),
                       eos=torch.tensor(model.eos_ids(cfg.match_released) or [-1], device=device),
                       invalid_bias=response_bias(model, cfg, device),
                       trace=trace, track_reward=track_reward, traces=[[] for _ in rows])
        if rg.config.guided or track_reward:
            self._attach_reward(batch)
            if trace and rg.config.guided:
                batch.trace_streams = RowStreams([r.trace_seed for r in rows], device)
        return batch

    def _attach_reward(self, batch: _Batch) -> None:
        """The RM layout of the batch (on the RM's device; the prompt prefix encoded once when
        ``prefix_cache``) and the aligned table / mapped mask on the DLLM's device, where φ lives."""
        device = batch.x.device
        if batch.guidance.config.compile:
            if not hasattr(self.reward, "enable_compile"):
                raise ValueError(f"`compile`: {type(self.reward).__name__} has no compiled path (HFRewardModel has).")
            self.reward.enable_compile()
        batch.reward_batch = RewardBatch(self.reward, [self.reward.context(r.prompt) for r in batch.rows],
                                         batch.cfg.max_new_tokens, prefix_cache=batch.guidance.config.prefix_cache)
        batch.table = self.bridge.rm_table(self.reward.embedding_table(), device)
        batch.rm_mapped = self.bridge.mapped.to(device)

    @torch.no_grad()
    def _run(self, batch: _Batch, stats: ComputeStats, bar, callback) -> None:
        """All blocks and steps for one batch (updates ``batch.x`` and ``batch.traces`` in place)."""
        cfg = batch.cfg
        S = steps_per_block(cfg.steps, cfg.num_blocks)
        block_len = cfg.block_length or cfg.max_new_tokens
        global_step = 0
        for blk in range(cfg.num_blocks):
            in_block = torch.zeros(cfg.max_new_tokens, dtype=torch.bool, device=batch.x.device)
            in_block[blk * block_len:(blk + 1) * block_len] = True
            for i in range(S):
                state = self._step(batch, in_block, blk, i, S, global_step, stats)
                if state is not None:
                    self._after_step(batch, state, global_step, stats)
                    if callback is not None:
                        callback(global_step, state)
                bar.update(1)
                global_step += 1

    def _step(self, batch: _Batch, in_block: torch.Tensor, blk: int, i: int, S: int, global_step: int,
              stats: ComputeStats) -> dict[str, Any] | None:
        """One denoising step; returns the state advertised in :data:`CALLBACK_KEYS` (None if idle)."""
        cfg, rg, model = batch.cfg, batch.guidance, self.model
        B, P = batch.x.shape[0], batch.P
        resp = batch.x[:, P:]
        masked = resp == model.mask_token_id  # (B, L)
        candidates = masked & in_block
        if not candidates.any():
            return None
        # 1. DLLM forward (no grad): logits of the response slots, invalid ids excluded.
        with record_function("entrgi.dllm_forward"):
            logits = self._logits(batch)  # (B, L, V)
        stats.dllm_forwards += B
        stats.dllm_tokens += batch.x.numel()  # rows × sequence length
        # 2. Guidance: optimise a copy of the masked slots' logits.
        guided, result = logits, None
        if rg.config.guided:
            with torch.enable_grad(), record_function("entrgi.guide"):
                try:
                    result = self._guide(batch, logits, masked, resp)
                except NonFiniteError as e:  # name the denoising step and the (prompt, sample) of the rows
                    raise e.located(global_step, cfg.steps,
                                    [(r.prompt_index, r.sample_index) for r in batch.rows]) from None
            guided = result.logits
            self._count_guidance(batch, int(masked.sum()), stats)
        # 3. Candidate tokens from the (guided) logits.
        with record_function("entrgi.draw"):
            x0 = self._draw(cfg, guided[candidates], candidates, batch.streams)  # (n,)
        # 4. Which candidates to commit.
        anchored = cfg.confidence_from == "guided" or cfg.remasking == "anchored"
        with record_function("entrgi.choose"):
            commit = self._choose(cfg, guided if anchored else logits, candidates, x0, batch.eos, batch.streams, i,
                                  S)
        proposal = resp.clone()
        proposal[candidates] = x0
        batch.x[:, P:] = torch.where(commit, proposal, resp)
        estimate = self._estimate(batch, guided, stats) if batch.track_reward else None
        if batch.trace:
            w = mean_entropy_weight(logits, masked, rg.entropy_temperature).cpu()
            for b in range(B):
                batch.traces[b].append(StepTrace(
                    step=global_step, block=blk, masked=int(masked[b].sum()),
                    committed=commit[b].nonzero().flatten().tolist(),
                    entropy_weight=None if torch.isnan(w[b]) else float(w[b]),
                    rewards=result.rewards[b].tolist() if result is not None else [],
                    grad_norms=result.grad_norms[b].tolist() if result is not None else [],
                    estimate=None if estimate is None else float(estimate[b])))
        return {"x": batch.x, "prompt_length": P, "logits": logits, "guided_logits": guided, "masked": masked,
                "candidates": candidates, "proposal": proposal, "committed": commit, "rows": batch.rows,
                "estimate": estimate}

    def _logits(self, batch: _Batch) -> torch.Tensor:
        """Float logits (B, L, V) of the response slots, invalid ids at −inf (one DLLM forward)."""
        logits = upcast(self.model.response_logits(batch.x, batch.attn, batch.pos, batch.P))
        return logits.add_(batch.invalid_bias)  # in place: the forward's output is ours (float32, or float64 models')

    def _guide(self, batch: _Batch, logits: torch.Tensor, masked: torch.Tensor, resp: torch.Tensor):
        """Step 2: the inner loop (:func:`entrgi.guidance.inner_loop.guide_logits`)."""
        return guide_logits(logits, masked, resp, batch.reward_batch.score, batch.table, batch.rm_mapped,
                            batch.guidance, batch.eos, batch.streams, batch.trace_streams)

    def _after_step(self, batch: _Batch, state: dict[str, Any], step: int, stats: ComputeStats) -> None:
        """Hook run after every step (the particle sampler resamples rows here)."""

    def _estimate(self, batch: _Batch, guided: torch.Tensor, stats: ComputeStats) -> torch.Tensor:
        """RM reward (B,) of the predicted completion x̂0: committed tokens, and the argmax of the
        (guided) logits at the slots still masked, on hard tokens (no gradient)."""
        resp = batch.x[:, batch.P:]
        masked = resp == self.model.mask_token_id
        x_hat = torch.where(masked, guided.argmax(-1), resp)
        no_mask = torch.zeros_like(masked)
        attn = response_attention(x_hat, no_mask, batch.eos, batch.rm_mapped)
        stats.rm_forwards += x_hat.shape[0]
        stats.rm_forward_tokens += rm_call_tokens(batch.reward_batch)
        return batch.reward_batch.score(batch.table[x_hat], attn).float()

    @staticmethod
    def _count_guidance(batch: _Batch, n_masked: int, stats: ComputeStats) -> None:
        """The cost of one step's inner loop (docs/performance.md, "Cost count"): M RM forward+backward
        passes over what each call runs, M soft embeddings (forward + backward) over the n masked slots,
        and the trace's extra no-grad evaluation when traced."""
        cfg, B = batch.guidance.config, batch.x.shape[0]
        M, extra = cfg.inner_steps, int(batch.trace_streams is not None)
        V, d = batch.table.shape
        width = min(cfg.soft_top_k, V) if cfg.soft_top_k is not None else V
        call = rm_call_tokens(batch.reward_batch)
        stats.rm_forwards += B * (M + extra)
        stats.rm_backwards += B * M
        stats.rm_forward_tokens += call * (M + extra)
        stats.rm_backward_tokens += call * M
        stats.soft_embedding_macs += n_masked * width * d * (3 * M + extra)  # forward once, backward twice

    @staticmethod
    def _draw(cfg: SamplerConfig, logits: torch.Tensor, candidates: torch.Tensor, streams: RowStreams) -> torch.Tensor:
        """One token per candidate slot from τ / top-k / top-p filtered ``logits`` (n, V)."""
        if cfg.sampling == "gumbel" and cfg.temperature > 0:
            filtered = sampling_logits(logits, cfg.temperature, cfg.top_p, cfg.top_k)
            return sample_gumbel_max(filtered, streams.uniform_matrix_at(candidates, logits.shape[-1]))
        return draw(logits, streams.uniform_at(candidates)[candidates], cfg.temperature, cfg.top_p, cfg.top_k)

    @staticmethod
    def _choose(cfg: SamplerConfig, conf_logits: torch.Tensor, candidates: torch.Tensor, x0: torch.Tensor,
                eos: torch.Tensor, streams: RowStreams, step: int, steps: int) -> torch.Tensor:
        """Boolean (B, L) of candidate slots to commit at this step."""
        if cfg.remasking == "origin":
            return origin_reveal(streams.uniform_at(candidates), candidates, step, steps, cfg.eps)
        conf = torch.full(candidates.shape, float("-inf"), dtype=torch.float64, device=candidates.device)
        rand = streams.uniform_at(candidates)[candidates] if cfg.remasking == "random" else None
        c = confidence(cfg.remasking, conf_logits[candidates], x0, cfg.temperature, rand)
        if cfg.deprioritize_eos:
            c = torch.where(torch.isin(x0, eos), torch.full_like(c, DEPRIORITISED), c)
        conf[candidates] = c
        counts = commit_counts(candidates.sum(-1), step, steps, cfg.schedule, cfg.eps)
        if cfg.remasking_temperature > 0:
            conf = gumbel_keys(conf, cfg.remasking_temperature, streams.uniform_at(candidates))
        return select_top(conf, counts) & candidates


def generate(model: DiffusionLM, prompts: str | Sequence[str], reward: RewardModel | None = None, *,
             sampler: SamplerConfig | None = None, guidance: GuidanceConfig | None = None,
             bridge: VocabBridge | None = None, progress: bool = True, trace: bool = True,
             track_reward: bool = False,
             callback: Callable[[int, dict[str, Any]], None] | None = None) -> GenerationOutput:
    """Generate ``sampler.num_samples`` responses per prompt, guided by ``reward`` per ``guidance``.

    Args:
        model: a :class:`~entrgi.models.base.DiffusionLM` adapter.
        prompts: one prompt or a list (user messages for chat models, text prefixes otherwise).
        reward: the reward model (required unless ``guidance.method == 'none'``); also re-scores
            every decoded sample on discrete text.
        sampler, guidance: the configs (defaults: the paper's Dream settings, EntRGi M=3, Adam 0.5).
        bridge: DLLM -> RM vocabulary bridge (default: by token string).
        progress: show a progress bar over denoising steps.
        trace: record a :class:`~entrgi.sampling.outputs.StepTrace` per step and sample.
        track_reward: after each step, score the predicted completion (committed tokens + argmax at the
            masked slots) with the RM (one extra forward per step); stored as ``StepTrace.estimate``.
        callback: ``callback(step, state)`` after each step, ``state`` keyed by :data:`CALLBACK_KEYS`.
    """
    return MaskedDiffusionSampler(model, reward, bridge).generate(
        prompts, sampler, guidance, progress=progress, trace=trace, track_reward=track_reward, callback=callback)
