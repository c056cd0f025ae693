"""The denoising loop: masked diffusion sampling with optional reward-gradient guidance (docs/method.md §1–3).

:meth:`MaskedDiffusionSampler.start` lays a batch out as a :class:`~entrgi.sampling.state.DenoisingState`;
each :meth:`~MaskedDiffusionSampler.step` runs one denoising step through the overridable hooks
(``model_logits`` (1), ``guide`` (4)–(9), ``draw`` (2), ``choose`` (3), ``after_step``) and returns a
:class:`~entrgi.sampling.state.StepOutput`; :meth:`~MaskedDiffusionSampler.generate` is the loop over them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..config import GuidanceConfig, ResolvedGuidance, SamplerConfig, check_masked_steps, check_vocab_chunk
from ..errors import NonFiniteError
from ..guidance.inner_loop import guide_logits, mean_entropy_weight, response_attention
from ..guidance.mixing import upcast
from ..guidance.schedules import carry_shift, guide_rows, needs_entropy_weight, ran_values
from ..models.base import DiffusionLM
from ..ops.logit_ops import draw, sample_gumbel_max, sampling_logits
from ..ops.rng import RowStreams, row_seed
from ..reward.base import RewardBatch, RewardModel, left_pad, position_ids_from
from ..reward.vocab import VocabBridge
from .outputs import ComputeStats, GenerationOutput, StepTrace, collect_output, rm_call_tokens, rm_recomputes_forward
from .parallel import logits_of_rows, parallel_commits, parallel_counts, rows_to_forward
from .remasking import get_remasking_rule
from .schedule import DEPRIORITISED, commit_counts, confidence, gumbel_keys, origin_reveal, select_top
from .state import DenoisingState, Row, StepOutput


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

    # ---- rows -----------------------------------------------------------------------------------
    def rows_for(self, prompts: str | Sequence[str], sampler: SamplerConfig) -> list[Row]:
        """The validated rows of ``prompts``: ``sampler.num_samples`` per prompt, prompt-major, with their seeds."""
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
                rows.append(Row(i, k, p, ids, row_seed(sampler.seed, ids, k),
                                row_seed(sampler.seed, ids, k, stream="trace")))
        return rows

    def resolve(self, sampler: SamplerConfig, guidance: GuidanceConfig | ResolvedGuidance | None,
                track_reward: bool = False) -> ResolvedGuidance:
        """``guidance`` resolved against ``sampler`` (default :class:`GuidanceConfig`); checks the reward model
        is there when the method or ``track_reward`` needs one."""
        rg = guidance if isinstance(guidance, ResolvedGuidance) else (guidance or GuidanceConfig()).resolve(sampler)
        if (rg.config.needs_reward or track_reward) and self.reward is None:
            what = f"method {rg.config.method!r}" if rg.config.needs_reward else "`track_reward`"
            raise ValueError(f"`reward` is required for {what} (only method 'none' runs without one).")
        return rg

    # ---- public API -----------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], sampler: SamplerConfig | None = None,
                 guidance: GuidanceConfig | None = None, *, progress: bool = True, trace: bool = True,
                 track_reward: bool = False,
                 callback: Callable[[int, StepOutput], None] | None = None) -> GenerationOutput:
        """Sample ``sampler.num_samples`` responses per prompt; see :func:`entrgi.generate`.

        The loop: for each batch of ``sampler.batch_size`` rows, :meth:`start`, then :meth:`step` until
        the state is done, ``callback(step, output)`` after every step that ran."""
        sampler = sampler or SamplerConfig()
        guidance = guidance or GuidanceConfig()
        resolved = self.resolve(sampler, guidance, track_reward)
        rows = self.rows_for(prompts, sampler)
        chunk = sampler.batch_size or len(rows)
        stats = ComputeStats()
        start = time.perf_counter()
        tokens: list[list[int]] = []
        traces: list[list[StepTrace] | None] = []
        bar = tqdm(total=-(-len(rows) // chunk) * sampler.steps, disable=not progress,
                   desc=f"{guidance.method}", unit="step", leave=False)
        for lo in range(0, len(rows), chunk):
            state = self.start(rows[lo:lo + chunk], sampler, resolved, trace=trace, track_reward=track_reward,
                               stats=stats)
            while not state.done:
                before = state.step
                output = self.step(state)
                if output is not None and callback is not None:
                    callback(output.step, output)
                bar.update(state.step - before)  # an idle step skips the rest of its block
            tokens += state.response.tolist()
            traces += [t if trace else None for t in state.traces]
        bar.close()
        texts = [self.model.decode_response(t, sampler.match_released) for t in tokens]
        return collect_output(self.model, self.reward, rows, tokens, texts, traces, stats, sampler, guidance, start)

    def start(self, prompts: str | Sequence[str] | Sequence[Row], sampler: SamplerConfig | None = None,
              guidance: GuidanceConfig | ResolvedGuidance | None = None, *, trace: bool = True,
              track_reward: bool = False, stats: ComputeStats | None = None) -> DenoisingState:
        """A fresh state for ``prompts`` (or rows from :meth:`rows_for`, as :meth:`generate` passes its
        batches): the left-padded prompts followed by L mask slots, one random stream per row, and the
        reward model's layout when guided or ``track_reward``. Its work is counted in ``stats`` (a new
        :class:`ComputeStats` by default)."""
        sampler = sampler or SamplerConfig()
        check_masked_steps(sampler)  # T <= L (docs/performance.md, "Limits")
        rg = self.resolve(sampler, guidance, track_reward)
        if rg.config.guided:
            check_vocab_chunk(rg.config, int(self.bridge.mapped.shape[0]))
        rows = list(prompts) if not isinstance(prompts, str) and prompts and all(
            isinstance(p, Row) for p in prompts) else self.rows_for(prompts, sampler)
        model = self.model
        device = model.device
        B, L = len(rows), sampler.max_new_tokens
        prompt_ids, prompt_attn = left_pad([r.prompt_ids for r in rows], model.pad_token_id, device)
        x = torch.cat([prompt_ids, torch.full((B, L), model.mask_token_id, device=device)], 1)  # (B, P + L)
        attn = torch.cat([prompt_attn, torch.ones((B, L), dtype=torch.long, device=device)], 1)
        state = DenoisingState(
            rows=rows, sampler=sampler, guidance=rg, x=x, attention_mask=attn, position_ids=position_ids_from(attn),
            prompt_length=prompt_ids.shape[1], streams=RowStreams([r.seed for r in rows], device),
            eos_ids=torch.tensor(model.eos_ids(sampler.match_released) or [-1], device=device),
            invalid_bias=response_bias(model, sampler, device), trace=trace, track_reward=track_reward,
            stats=stats if stats is not None else ComputeStats(), traces=[[] for _ in rows])
        if rg.config.guided or track_reward:
            self.attach_reward(state)
            if trace and rg.config.guided:
                state.trace_streams = RowStreams([r.trace_seed for r in rows], device)
        return state

    def attach_reward(self, state: DenoisingState) -> None:
        """The RM layout of the batch (on the RM's device; the prompt prefix encoded once when
        ``prefix_cache``, counted in ``state.stats``) and the aligned table / mapped mask on the DLLM's
        device, where φ lives."""
        device = state.x.device
        if state.guidance.config.compile:
            if not hasattr(self.reward, "enable_compile"):
                raise ValueError(f"`compile`: {type(self.reward).__name__} has no compiled path (HFRewardModel has).")
            self.reward.enable_compile()
        state.reward_batch = RewardBatch(self.reward, [self.reward.context(r.prompt) for r in state.rows],
                                         state.sampler.max_new_tokens, prefix_cache=state.guidance.config.prefix_cache)
        if state.reward_batch.prefix_cached:  # the prefix is encoded once per batch
            state.stats.rm_forward_tokens += state.reward_batch.prefix_attention.numel()
        state.table = self.bridge.rm_table(self.reward.embedding_table(), device)
        state.rm_mapped = self.bridge.mapped.to(device)

    # ---- one step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, state: DenoisingState) -> StepOutput | None:
        """Run denoising step ``state.step`` (then :meth:`after_step`) and advance the counter. When the current
        block has no masked slot left the step is idle: it returns None and the counter skips to the next block."""
        if state.done:
            raise ValueError(f"the state has run all its {state.sampler.steps} steps: start a new one.")
        cfg, rg, model, stats = state.sampler, state.guidance, self.model, state.stats
        index, block = state.step, state.block
        B = state.x.shape[0]
        resp = state.response
        masked = resp == model.mask_token_id  # (B, L)
        candidates = masked & state.block_slots()
        if not candidates.any():  # the block is finished (early, with `parallel_threshold`): skip its idle steps
            state.step = (block + 1) * state.steps_per_block
            return None
        # 1. DLLM forward (no grad): logits of the response slots, invalid ids excluded (docs/method.md (1)).
        if cfg.kv_cache != "none":  # DLLM KV cache (models/cache.py): built at a block's first forward, kept in it
            lo = state.prompt_length + block * (cfg.block_length or cfg.max_new_tokens)
            model.begin_block(cfg.kv_cache, state.x, lo, lo + (cfg.block_length or cfg.max_new_tokens))
        with record_function("entrgi.dllm_forward"):  # finished rows (no masked slot) are skipped: parallel.py
            live = rows_to_forward(masked) if cfg.kv_cache == "none" else None
            logits = self.model_logits(state) if live is None else logits_of_rows(self.model_logits, state, live)
        forwarded = B if live is None else len(live)
        stats.dllm_forwards += forwarded
        kv = getattr(model, "kv_cache", None) if cfg.kv_cache != "none" else None
        # rows × the positions the forward ran: the sequence, or the cached step's query window
        stats.dllm_tokens += forwarded * (kv.query_tokens if kv is not None and kv.query_tokens else state.x.shape[1])
        stats.dllm_logit_tokens += forwarded * (kv.logit_slots if kv is not None and kv.query_tokens
                                                else cfg.max_new_tokens)
        # 2. Guidance: optimise a copy of the masked slots' logits ((4)–(9)).
        guided, result, w = logits, None, None
        if needs_entropy_weight(rg.config) and rg.config.guided:
            w = mean_entropy_weight(logits, masked, rg.entropy_temperature).cpu()
        # the rows the guidance schedule guides now (entrgi.guidance.schedules; the defaults: all with candidates)
        to_guide = guide_rows(rg.config, state.block_step, masked, candidates, w)
        if to_guide.any():
            guide_at = masked if bool(to_guide[masked.any(-1)].all()) else masked & to_guide.unsqueeze(-1)
            with torch.enable_grad(), record_function("entrgi.guide"):
                try:
                    result = self.guide(state, logits, guide_at)
                except NonFiniteError as e:  # name the denoising step and the (prompt, sample) of the rows
                    raise e.located(index, cfg.steps, state.row_ids) from None
            guided = result.logits
            self._count_guidance(state, int(guide_at.sum()), stats, result)
        if rg.config.guide_carry and rg.config.guided:  # unguided rows reuse their last guided shift (schedules.py)
            guided, state.guide_shift = carry_shift(state.guide_shift, logits, guided, masked, to_guide)
        # 3. Candidate tokens from the (guided) logits ((2)).
        with record_function("entrgi.draw"):
            x0 = self.draw(state, guided[candidates], candidates)  # (n,)
        # 4. Which candidates to commit ((3)).
        anchored = cfg.confidence_from == "guided"  # APS anchored remasking (the alias sets this)
        with record_function("entrgi.choose"):
            commit = self.choose(state, guided if anchored else logits, candidates, x0)
            if cfg.parallel_threshold is not None:  # parallel decoding: also every confident candidate
                commit = parallel_commits(commit, guided if anchored else logits, candidates, x0, cfg,
                                          state.eos_ids if cfg.deprioritize_eos else None)
        proposal = resp.clone()
        proposal[candidates] = x0
        state.x[:, state.prompt_length:] = torch.where(commit, proposal, resp)
        estimate = self.estimate(state, guided) if state.track_reward else None
        if state.trace:
            w = mean_entropy_weight(logits, masked, rg.entropy_temperature).cpu() if w is None else w
            was_guided = to_guide.tolist()
            for b in range(B):
                state.traces[b].append(StepTrace(
                    step=index, block=block, masked=int(masked[b].sum()),
                    committed=commit[b].nonzero().flatten().tolist(),
                    entropy_weight=None if torch.isnan(w[b]) else float(w[b]),
                    rewards=ran_values(result.rewards[b]) if was_guided[b] else [],
                    grad_norms=ran_values(result.grad_norms[b]) if was_guided[b] else [],
                    estimate=None if estimate is None else float(estimate[b]),
                    num_committed=int(commit[b].sum()), guided=was_guided[b]))
        output = StepOutput(step=index, block=block, x=state.x, prompt_length=state.prompt_length, logits=logits,
                            guided_logits=guided, masked=masked, candidates=candidates, proposal=proposal,
                            committed=commit, rows=state.rows, estimate=estimate, guide=result)
        self.after_step(state, output)
        state.step += 1
        return output

    # ---- the hooks a subclass overrides ---------------------------------------------------------
    def model_logits(self, state: DenoisingState) -> torch.Tensor:
        """Float logits (B, L, V) of the response slots, invalid ids at −inf (one DLLM forward)."""
        logits = upcast(self.model.response_logits(state.x, state.attention_mask, state.position_ids,
                                                   state.prompt_length))
        return logits.add_(state.invalid_bias)  # in place: the forward's output is ours (float32, or float64 models')

    def guide(self, state: DenoisingState, logits: torch.Tensor, masked: torch.Tensor):
        """Step 2: the inner loop (:func:`entrgi.guidance.inner_loop.guide_logits`) on the masked slots of
        ``logits`` (B, L, V); returns its :class:`~entrgi.guidance.inner_loop.GuideResult`."""
        return guide_logits(logits, masked, state.response, state.reward_batch.score, state.table, state.rm_mapped,
                            state.guidance, state.eos_ids, state.streams, state.trace_streams)

    def draw(self, state: DenoisingState, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Step 3: one token per candidate slot (``candidates`` (B, L), in row-major order) from τ / top-k /
        top-p filtered ``logits`` (n, V), with the rows' own uniforms."""
        cfg, streams = state.sampler, state.streams
        if cfg.sampling == "gumbel" and cfg.temperature > 0:
            filtered = sampling_logits(logits, cfg.temperature, cfg.top_p, cfg.top_k)
            return sample_gumbel_max(filtered, streams.uniform_matrix_at(candidates, logits.shape[-1]))
        return draw(logits, streams.uniform_at(candidates)[candidates], cfg.temperature, cfg.top_p, cfg.top_k)

    def after_step(self, state: DenoisingState, output: StepOutput) -> None:
        """Run after every step that ran, before the counter advances (the particle sampler resamples here)."""

    def estimate(self, state: DenoisingState, logits: torch.Tensor) -> torch.Tensor:
        """RM reward (B,) of the predicted completion x̂0: committed tokens, and the argmax of ``logits``
        (B, L, V) at the slots still masked, on hard tokens (no gradient; counted in ``state.stats``)."""
        resp = state.response
        masked = resp == self.model.mask_token_id
        x_hat = torch.where(masked, logits.argmax(-1), resp)
        no_mask = torch.zeros_like(masked)
        attn = response_attention(x_hat, no_mask, state.eos_ids, state.rm_mapped)
        state.stats.rm_forwards += x_hat.shape[0]
        state.stats.rm_forward_tokens += rm_call_tokens(state.reward_batch)
        return state.reward_batch.score(state.table[x_hat], attn).float()

    def _count_guidance(self, state: DenoisingState, n_masked: int, stats: ComputeStats, result=None) -> None:
        """The cost of one step's inner loop (docs/performance.md, "Cost count"): the RM forward and backward
        passes that ran (M each, fewer after an ``inner_tol`` stop: ``result.forwards`` / ``backwards``) over
        what each call runs, the soft embeddings (one product per forward and per backward) over the n guided
        slots, and the trace's extra no-grad evaluation when traced."""
        cfg = state.guidance.config
        F = cfg.inner_steps if result is None or result.forwards is None else result.forwards
        M = cfg.inner_steps if result is None or result.backwards is None else result.backwards
        V, d = state.table.shape
        width = min(cfg.soft_top_k, V) if cfg.soft_top_k is not None else V
        stats.count_inner_loop(state.x.shape[0], rm_call_tokens(state.reward_batch), n_masked, width, d, F, M,
                               extra=int(state.trace_streams is not None),
                               recompute=rm_recomputes_forward(self.reward))

    def choose(self, state: DenoisingState, conf_logits: torch.Tensor, candidates: torch.Tensor,
               x0: torch.Tensor) -> torch.Tensor:
        """Step 4: boolean (B, L) of the ``candidates`` to commit, ranked by the remasking rule on
        ``conf_logits`` (B, L, V) given the drawn tokens ``x0`` (n,), EOS last, counts by the schedule."""
        cfg, eos, streams = state.sampler, state.eos_ids, state.streams
        step, steps = state.block_step, state.steps_per_block
        if cfg.remasking == "origin":
            return origin_reveal(streams.uniform_at(candidates), candidates, step, steps, cfg.eps)
        conf = torch.full(candidates.shape, float("-inf"), dtype=torch.float64, device=candidates.device)
        rule = get_remasking_rule(cfg.remasking)
        rand = streams.uniform_at(candidates)[candidates] if rule.needs_uniforms else None
        c = confidence(rule, conf_logits[candidates], x0, cfg.temperature, rand)
        if cfg.deprioritize_eos:
            c = torch.where(torch.isin(x0, eos), torch.full_like(c, DEPRIORITISED), c)
        conf[candidates] = c
        counts = commit_counts(candidates.sum(-1), step, steps, cfg.schedule, cfg.eps)
        if cfg.parallel_threshold is not None:  # rows ahead of the schedule (parallel decoding): at least one
            counts = parallel_counts(counts, candidates.sum(-1), cfg.block_length or cfg.max_new_tokens, step, steps,
                                     cfg.schedule, cfg.eps)
        if cfg.remasking_temperature > 0:
            conf = gumbel_keys(conf, cfg.remasking_temperature, streams.uniform_at(candidates))
        return select_top(conf, counts) & candidates


def generate(model: DiffusionLM, prompts: str | Sequence[str], reward: RewardModel | None = None, *,
             sampler: SamplerConfig | None = None, guidance: GuidanceConfig | None = None,
             bridge: VocabBridge | None = None, progress: bool = True, trace: bool = True,
             track_reward: bool = False,
             callback: Callable[[int, StepOutput], None] | None = None) -> GenerationOutput:
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
        callback: ``callback(step, output)`` after each step that ran, ``output`` a
            :class:`~entrgi.sampling.state.StepOutput`.
    """
    if getattr(model, "sampling_loop", None) == "canvas" or not isinstance(sampler, (SamplerConfig, type(None))):
        from .canvas import generate_canvas  # DiffusionGemma: the canvas loop (a CanvasConfig or a SamplerConfig)
        return generate_canvas(model, prompts, reward, sampler=sampler, guidance=guidance, bridge=bridge,
                               progress=progress, trace=trace, track_reward=track_reward, callback=callback)
    return MaskedDiffusionSampler(model, reward, bridge).generate(
        prompts, sampler, guidance, progress=progress, trace=trace, track_reward=track_reward, callback=callback)
