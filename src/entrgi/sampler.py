"""The denoising loop: masked diffusion sampling with optional reward-gradient guidance.

Per step (``shared/reference/algorithm.md``):
  1. one DLLM forward on [left-padded prompt ; response slots] -> logits at the response slots;
     ids that can never be response tokens (mask id, padded rows) get −inf;
  2. guided methods optimise a copy of the masked slots' logits (:func:`entrgi.guide.guide_logits`);
  3. candidate tokens are drawn from the (guided) logits with τ / top-k / top-p;
  4. the positions to commit are ranked by the remasking rule on the prior logits (or the guided
     ones), EOS candidates last; the count follows Dream's linear or LLaDA's uniform schedule,
     inside the current block when blocks are used. Prompt and committed tokens never change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import GuidanceConfig, SamplerConfig
from .guide import guide_logits, mean_entropy_weight
from .logit_ops import sample_from_logits, sample_gumbel_max, sampling_logits
from .models.base import DiffusionLM
from .outputs import ComputeStats, GenerationOutput, Sample, StepTrace
from .reward.base import RewardBatch, RewardModel, left_pad, position_ids_from
from .reward.vocab import VocabBridge
from .rng import RowStreams, row_seed
from .schedule import (DEPRIORITISED, commit_counts, confidence, gumbel_keys, origin_reveal, select_top,
                       steps_per_block)

#: Keys of the state dict passed to ``callback(step, state)`` after every step: ``x`` (B, P + L) the
#: canvas after the commit; ``prompt_length`` P; ``logits`` / ``guided_logits`` (B, L, V) before / after
#: guidance (invalid ids at −inf); ``masked`` (B, L) before the commit; ``candidates`` (B, L) masked slots
#: of the current block; ``proposal`` (B, L) drawn tokens at candidates; ``committed`` (B, L) slots
#: committed at this step; ``rows`` the (prompt, sample) of each row.
CALLBACK_KEYS = ("x", "prompt_length", "logits", "guided_logits", "masked", "candidates", "proposal", "committed",
                 "rows")


@dataclass
class _Row:
    prompt_index: int
    sample_index: int
    prompt: str
    prompt_ids: list[int]
    seed: int
    trace_seed: int


def bridge_for(model: DiffusionLM, reward: RewardModel) -> VocabBridge:
    """The default DLLM -> RM vocabulary bridge: by token string, excluding the DLLM's invalid ids."""
    return VocabBridge.from_tokenizers(model.tokenizer, reward.tokenizer, model.logit_width,
                                       exclude=model.invalid_token_ids)


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
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"`prompts[{i}]` must be a non-empty string, got {p!r}.")
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
                 callback: Callable[[int, dict[str, Any]], None] | None = None) -> GenerationOutput:
        """Sample ``sampler.num_samples`` responses per prompt; see :func:`entrgi.generate`."""
        sampler = sampler or SamplerConfig()
        guidance = guidance or GuidanceConfig()
        resolved = guidance.resolve(sampler)
        if guidance.needs_reward and self.reward is None:
            raise ValueError(f"`reward` is required for method {guidance.method!r} (only 'none' runs without one).")
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
            out_tokens, out_traces = self._run(rows[lo:lo + chunk], sampler, resolved, trace, stats, bar, callback)
            tokens += out_tokens
            traces += out_traces
        bar.close()
        texts = [self.model.decode_response(t) for t in tokens]
        rewards: list[float | None] = [None] * len(rows)
        if self.reward is not None:
            scores = self.reward.score_texts([r.prompt for r in rows], texts)
            rewards = scores.tolist()
            stats.rm_forwards += len(rows)
        stats.wall_time_s = time.perf_counter() - start
        samples: list[list[Sample]] = [[] for _ in range(n_prompts)]
        for r, t, txt, rew, tr in zip(rows, tokens, texts, rewards, traces):
            samples[r.prompt_index].append(Sample(r.prompt_index, r.sample_index, r.prompt, txt, t, rew, tr))
        return GenerationOutput(samples, sampler, guidance, stats)

    # ---- the loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, rows: list[_Row], cfg: SamplerConfig, rg, trace: bool, stats: ComputeStats, bar,
             callback) -> tuple[list[list[int]], list[list[StepTrace] | None]]:
        model = self.model
        device = model.device
        B, L = len(rows), cfg.max_new_tokens
        prompt_ids, prompt_attn = left_pad([r.prompt_ids for r in rows], model.pad_token_id, device)
        P = prompt_ids.shape[1]
        x = torch.cat([prompt_ids, torch.full((B, L), model.mask_token_id, device=device)], 1)  # (B, P + L)
        attn = torch.cat([prompt_attn, torch.ones((B, L), dtype=torch.long, device=device)], 1)
        pos = position_ids_from(attn)
        streams = RowStreams([r.seed for r in rows], device)
        eos = torch.tensor(model.eos_token_ids or [-1], device=device)
        invalid_bias = torch.zeros(model.logit_width, device=device).masked_fill(
            model.invalid_mask(device), float("-inf"))
        guided_run = rg.config.guided
        if guided_run:
            bridge = self.bridge
            batch = RewardBatch(self.reward, [self.reward.context(r.prompt) for r in rows], L)
            table = bridge.rm_table(self.reward.embedding_table())
            rm_mapped = bridge.mapped.to(device)
            trace_streams = RowStreams([r.trace_seed for r in rows], device) if trace else None
        traces: list[list[StepTrace]] = [[] for _ in rows]
        S = steps_per_block(cfg.steps, cfg.num_blocks)
        block_len = cfg.block_length or L
        global_step = 0
        for blk in range(cfg.num_blocks):
            in_block = torch.zeros(L, dtype=torch.bool, device=device)
            in_block[blk * block_len:(blk + 1) * block_len] = True
            for i in range(S):
                resp = x[:, P:]
                masked = resp == model.mask_token_id  # (B, L)
                candidates = masked & in_block
                if not candidates.any():
                    bar.update(1)
                    global_step += 1
                    continue
                # 1. DLLM forward (no grad): logits of the response slots, invalid ids excluded.
                logits = model.response_logits(x, attn, pos, P).float() + invalid_bias  # (B, L, V)
                stats.dllm_forwards += B
                # 2. Guidance: optimise a copy of the masked slots' logits.
                guided, result = logits, None
                if guided_run:
                    with torch.enable_grad():
                        result = guide_logits(logits, masked, resp, batch.score, table, rm_mapped, rg, eos,
                                              streams, trace_streams)
                    guided = result.logits
                    stats.rm_forwards += B * rg.config.inner_steps
                    stats.rm_backwards += B * rg.config.inner_steps
                # 3. Candidate tokens from the (guided) logits.
                x0 = self._draw(cfg, guided[candidates], candidates, streams)  # (n,)
                # 4. Which candidates to commit.
                commit = self._choose(cfg, logits if cfg.confidence_from == "prior" else guided, candidates, x0,
                                      eos, streams, i, S)
                proposal = resp.clone()
                proposal[candidates] = x0
                x[:, P:] = torch.where(commit, proposal, resp)
                if trace:
                    w = mean_entropy_weight(logits, masked, rg.entropy_temperature).cpu()
                    for b in range(B):
                        traces[b].append(StepTrace(
                            step=global_step, block=blk, masked=int(masked[b].sum()),
                            committed=commit[b].nonzero().flatten().tolist(),
                            entropy_weight=None if torch.isnan(w[b]) else float(w[b]),
                            rewards=result.rewards[b].tolist() if result is not None else [],
                            grad_norms=result.grad_norms[b].tolist() if result is not None else []))
                if callback is not None:
                    callback(global_step, {"x": x, "prompt_length": P, "logits": logits, "guided_logits": guided,
                                           "masked": masked, "candidates": candidates, "proposal": proposal,
                                           "committed": commit, "rows": rows})
                bar.update(1)
                global_step += 1
        out = x[:, P:].tolist()
        return out, [t if trace else None for t in traces]

    @staticmethod
    def _draw(cfg: SamplerConfig, logits: torch.Tensor, candidates: torch.Tensor, streams: RowStreams) -> torch.Tensor:
        """One token per candidate slot from τ / top-k / top-p filtered ``logits`` (n, V)."""
        filtered = sampling_logits(logits, cfg.temperature, cfg.top_p, cfg.top_k)
        if cfg.sampling == "gumbel" and cfg.temperature > 0:
            return sample_gumbel_max(filtered, streams.uniform_matrix_at(candidates, logits.shape[-1]))
        return sample_from_logits(filtered, streams.uniform_at(candidates)[candidates])

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
        trace: record a :class:`~entrgi.outputs.StepTrace` per step and sample.
        callback: ``callback(step, state)`` after each step, ``state`` keyed by :data:`CALLBACK_KEYS`.
    """
    return MaskedDiffusionSampler(model, reward, bridge).generate(
        prompts, sampler, guidance, progress=progress, trace=trace, callback=callback)
