"""Reward-guided canvas sampling for block diffusion models with uniform-noise canvases (DiffusionGemma).

The loop is the native ``DiffusionGemmaGenerationMixin.generate`` of transformers, step for step (the same
encoder / decoder calls, the native ``EntropyBoundSampler``, temperature schedule and stopping criteria, the
same random calls in the same order): canvases of ``canvas_length`` random tokens are refined one after
another; at each denoising step the decoder's logits are tempered, a canvas is drawn from them, the
lowest-entropy tokens are accepted (entropy bound) and the rest renoised. Guidance adds one thing, before the
acceptance rule: the tempered logits of the slots *not accepted at the previous step* are optimised with the
library's inner loop (:func:`entrgi.guidance.inner_loop.guide_logits`: the guidance rule's mix of soft and
hard RM embeddings, w from their entropy) on the RM's view of the response so far (finished canvases and the
current one, through the vocabulary bridge). Method ``none`` reproduces the native ``generate`` exactly.
docs/models.md, "DiffusionGemma".
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import (MAX_NUM_SAMPLES, MAX_STEPS, GuidanceConfig, ResolvedGuidance, SamplerConfig, check_float,
                      check_int, check_limit)
from ..typecheck import check_types
from ..errors import NonFiniteError
from ..guidance.inner_loop import guide_logits, mean_entropy_weight, response_attention
from ..guidance.schedules import ran_values
from ..models.base import DiffusionLM
from ..ops.rng import RowStreams, row_seed
from ..reward.base import RewardBatch, RewardModel, left_pad
from ..reward.vocab import VocabBridge
from .outputs import ComputeStats, GenerationOutput, StepTrace, collect_output, rm_call_tokens, rm_recomputes_forward
from .state import Row

#: SamplerConfig fields the canvas sampler reads (``steps`` and ``temperature`` only when changed, see
#: :meth:`CanvasConfig.from_sampler`); every other field must keep its default.
SAMPLER_FIELDS = ("max_new_tokens", "num_samples", "seed", "batch_size", "steps", "temperature")
#: GuidanceConfig fields (the guidance schedules) that the canvas sampler does not implement.
UNSUPPORTED_GUIDANCE = ("guide_every", "guide_until", "guide_min_weight", "guide_carry")


def _opt(help_text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class CanvasConfig:
    """Settings of the canvas sampler; the native ``DiffusionGemmaGenerationConfig`` names, ``None`` = the
    model's generation config (its ``generation_config.json``, else the native defaults)."""

    max_new_tokens: int = _opt("Response length: ceil(this / canvas_length) canvases (all their tokens are "
                               "returned, as natively).", 256)
    max_denoising_steps: int | None = _opt("Denoising steps per canvas at most (native default 48).")
    entropy_bound: float | None = _opt("EntropyBoundSampler bound: accept the lowest-entropy tokens while "
                                       "sum(H) - max(H) <= this (native default 0.1).")
    t_min: float | None = _opt("Temperature at the last denoising step (native default 0.4).")
    t_max: float | None = _opt("Temperature at the first denoising step (native default 0.8).")
    stability_threshold: int | None = _opt("Adaptive stop: steps the argmax canvas must stay unchanged "
                                           "(native default 1).")
    confidence_threshold: float | None = _opt("Adaptive stop: mean entropy of the tempered logits below this "
                                              "(native default 0.005).")
    greedy: bool = _opt("Draw each canvas as the argmax of the (guided) tempered logits instead of sampling "
                        "(the renoising stays random).", False)
    num_samples: int = _opt("Trajectories K per prompt.", 1)
    seed: int = _opt("Seed of the torch generator the canvas noise and draws use (as torch.manual_seed(seed) "
                     "before the native generate).", 0)
    batch_size: int | None = _opt("Rows per native batch (None = all at once); results depend on the batch.")

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.max_denoising_steps is not None:
            check_int("max_denoising_steps", self.max_denoising_steps, 1)
        if self.entropy_bound is not None:
            check_float("entropy_bound", self.entropy_bound, 0.0, low_open=True)
        for name in ("t_min", "t_max"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), 0.0)
        if self.t_min is not None and self.t_max is not None and self.t_max <= self.t_min:
            raise ValueError(f"`t_max` ({self.t_max}) must be > `t_min` ({self.t_min}).")
        if self.stability_threshold is not None:
            check_int("stability_threshold", self.stability_threshold, 0)
        if self.confidence_threshold is not None:
            check_float("confidence_threshold", self.confidence_threshold, 0.0, low_open=True)
        if not isinstance(self.greedy, bool):
            raise ValueError(f"`greedy` must be True or False, got {self.greedy!r}.")
        check_int("num_samples", self.num_samples, 1)
        check_int("seed", self.seed, 0)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        if self.max_denoising_steps is not None:
            check_limit("max_denoising_steps", self.max_denoising_steps, MAX_STEPS, "the documented limit")
        check_limit("num_samples", self.num_samples, MAX_NUM_SAMPLES, "the documented limit")
        check_types(self)

    @classmethod
    def from_sampler(cls, sampler: SamplerConfig, **canvas: Any) -> CanvasConfig:
        """The canvas settings of a :class:`~entrgi.config.SamplerConfig` (plus ``canvas`` fields): its
        ``max_new_tokens``, ``num_samples``, ``seed``, ``batch_size``; ``steps`` when changed from its default
        is ``max_denoising_steps``; ``temperature`` 0 is ``greedy`` (another changed value is an error: the
        temperature is the t_max -> t_min schedule). Any other changed field raises ``ValueError``."""
        default = SamplerConfig()
        changed = [(f.name, getattr(sampler, f.name), getattr(default, f.name)) for f in dataclasses.fields(sampler)
                   if f.name not in SAMPLER_FIELDS and getattr(sampler, f.name) != getattr(default, f.name)]
        if changed:
            what = "; ".join(f"`{name}` = {value!r} (default {base!r})" for name, value, base in changed)
            raise ValueError(f"{what}: does not apply to the canvas sampler of DiffusionGemma (entropy-bound "
                             "acceptance of random-token canvases: no masks, remasking, blocks or KV-cache modes); "
                             "leave it at its default (docs/models.md, DiffusionGemma).")
        kw: dict[str, Any] = dict(max_new_tokens=sampler.max_new_tokens, num_samples=sampler.num_samples,
                                  seed=sampler.seed, batch_size=sampler.batch_size)
        if sampler.steps != default.steps:
            given = canvas.get("max_denoising_steps")
            if given is not None and given != sampler.steps:
                raise ValueError(f"`steps` ({sampler.steps}) and `max_denoising_steps` ({given}) disagree: for "
                                 "DiffusionGemma they are the same setting, give one.")
            kw["max_denoising_steps"] = sampler.steps
        if sampler.temperature == 0:
            kw["greedy"] = True
        elif sampler.temperature != default.temperature:
            raise ValueError(f"`temperature` = {sampler.temperature}: DiffusionGemma's temperature follows the "
                             "schedule t_max -> t_min over the denoising steps; set `t_min` / `t_max` (CLI --t-min, "
                             "--t-max) instead, or `temperature` 0 for greedy draws.")
        kw.update(canvas)
        return cls(**kw)

    def generation_kwargs(self) -> dict[str, Any]:
        """The fields set here as ``DiffusionGemmaGenerationConfig`` keyword arguments."""
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        for name in ("max_denoising_steps", "t_min", "t_max", "stability_threshold", "confidence_threshold"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.entropy_bound is not None:
            kw["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(self.entropy_bound))
        return kw

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_canvas_model(model) -> bool:
    """True for adapters sampled by this module (``sampling_loop = "canvas"``, e.g. DiffusionGemma)."""
    return getattr(model, "sampling_loop", None) == "canvas"


def check_guidance(guidance: GuidanceConfig) -> None:
    """``ValueError`` for guidance options the canvas sampler does not implement (the guidance schedules)."""
    default = GuidanceConfig()
    for name in UNSUPPORTED_GUIDANCE:
        if getattr(guidance, name) != getattr(default, name):
            raise ValueError(f"`{name}` = {getattr(guidance, name)!r} does not apply to the canvas sampler of "
                             f"DiffusionGemma (it guides every denoising step): leave it at "
                             f"{getattr(default, name)!r}.")


def resolve_guidance(guidance: GuidanceConfig) -> ResolvedGuidance:
    """Temperatures and top-p of the inner loop: the logits guided are already tempered by the schedule and
    drawn from in full, so ``None`` means 1.0 for both temperatures and for the hard sample's top-p."""
    return ResolvedGuidance(
        guidance,
        relaxation_temperature=1.0 if guidance.relaxation_temperature is None else guidance.relaxation_temperature,
        entropy_temperature=1.0 if guidance.entropy_temperature is None else guidance.entropy_temperature,
        hard_top_p=1.0 if guidance.hard_top_p is None else guidance.hard_top_p, top_k=None)


class CanvasSampler:
    """The canvas loop of one :class:`~entrgi.models.diffusion_gemma.DiffusionGemma` adapter, with an optional
    reward model and the vocabulary bridge between them."""

    def __init__(self, model: DiffusionLM, reward: RewardModel | None = None, bridge: VocabBridge | None = None):
        if not is_canvas_model(model):
            raise ValueError(f"the canvas sampler needs a canvas (block diffusion) adapter such as DiffusionGemma, "
                             f"got {type(model).__name__}: pass a SamplerConfig, not a CanvasConfig, for it.")
        self.model = model
        self.reward = reward
        self._bridge = bridge

    @property
    def bridge(self) -> VocabBridge:
        if self._bridge is None:
            self._bridge = VocabBridge.from_tokenizers(self.model.tokenizer, self.reward.tokenizer,
                                                       self.model.logit_width, exclude=self.model.invalid_token_ids)
        return self._bridge

    def rows_for(self, prompts: str | Sequence[str], cfg: CanvasConfig) -> list[Row]:
        """``cfg.num_samples`` rows per prompt, prompt-major (seeds: the guidance's hard-sample streams)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("`prompts` must contain at least one prompt, got an empty list.")
        C = self.model.canvas_length
        length = math.ceil(cfg.max_new_tokens / C) * C
        rows = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"`prompts[{i}]` must be a non-empty string, got {p!r}.")
            ids = self.model.encode_prompt(p)
            limit = self.model.max_length
            if limit is not None and len(ids) + length > limit:
                raise ValueError(f"`prompts[{i}]` is {len(ids)} tokens; with {length} new tokens "
                                 f"(`max_new_tokens` = {cfg.max_new_tokens} in canvases of {C}) that exceeds the "
                                 f"model's context of {limit} tokens.")
            for k in range(cfg.num_samples):
                rows.append(Row(i, k, p, ids, row_seed(cfg.seed, ids, k), row_seed(cfg.seed, ids, k, stream="trace")))
        return rows

    def generate(self, prompts: str | Sequence[str], cfg: CanvasConfig | None = None,
                 guidance: GuidanceConfig | None = None, *, progress: bool = True,
                 trace: bool = True) -> GenerationOutput:
        """Sample ``cfg.num_samples`` responses per prompt (see the module docstring)."""
        cfg = cfg or CanvasConfig()
        guidance = guidance or GuidanceConfig()
        check_guidance(guidance)
        if guidance.needs_reward and self.reward is None:
            raise ValueError(f"`reward` is required for method {guidance.method!r} (only method 'none' runs "
                             "without one).")
        if guidance.guided and not isinstance(self.reward, RewardModel):
            raise ValueError(f"method {guidance.method!r} needs a differentiable reward model (a RewardModel), got "
                             f"{type(self.reward).__name__}.")
        rg = resolve_guidance(guidance)
        rows = self.rows_for(prompts, cfg)
        stats = ComputeStats()
        start = time.perf_counter()
        chunk = cfg.batch_size or len(rows)
        tokens: list[list[int]] = []
        traces: list[list[StepTrace] | None] = []
        device = self.model.device
        fork = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else []
        bar = tqdm(total=len(rows), disable=not progress, desc=f"{guidance.method}", unit="row", leave=False)
        with torch.random.fork_rng(devices=fork):  # the native loop's global random calls, seeded, then restored
            torch.manual_seed(cfg.seed)
            for lo in range(0, len(rows), chunk):
                batch = rows[lo:lo + chunk]
                ids, batch_traces = self.run_batch(batch, cfg, rg, stats, trace, device)
                tokens += ids
                traces += [t if trace else None for t in batch_traces]
                bar.update(len(batch))
        bar.close()
        texts = [self.model.decode_response(t) for t in tokens]
        return collect_output(self.model, self.reward, rows, tokens, texts, traces, stats, cfg, guidance, start)

    @torch.no_grad()
    def run_batch(self, rows: list[Row], cfg: CanvasConfig, rg: ResolvedGuidance, stats: ComputeStats,
                  trace: bool, device) -> tuple[list[list[int]], list[list[StepTrace]]]:
        """One native batch: the response ids of ``rows`` (every canvas, pad after the first EOS) and traces.

        Mirrors ``DiffusionGemmaGenerationMixin.generate`` (uncompiled path) with the guidance step added."""
        m = self.model.module
        gc, _ = m._prepare_generation_config(None, **cfg.generation_kwargs())
        input_ids, attention_mask = left_pad([r.prompt_ids for r in rows], self.model.pad_token_id, device)
        attention_mask = attention_mask.bool()
        B, cur_len = input_ids.shape
        P = cur_len
        max_length, max_new_tokens = m._prepare_generated_length(gc, cur_len)
        C = m.config.canvas_length
        n_canvases = math.ceil(max_new_tokens / C)
        finished_sequences = torch.zeros(B, dtype=torch.bool, device=device)
        cache = m._prepare_cache_for_generation(generation_config=gc, batch_size=B, max_length=max_length)
        eos_tensor = torch.tensor(gc.eos_token_id, device=device) if gc.eos_token_id is not None else None
        encoder_position_ids = torch.arange(0, cur_len, dtype=torch.int32, device=device).unsqueeze(0)
        decoder_position_ids = torch.arange(cur_len, cur_len + C, dtype=torch.int32, device=device).unsqueeze(0)
        decoder_attention_mask = torch.nn.functional.pad(attention_mask, (0, C), value=True)
        sampler = m._prepare_sampler(gc)
        logits_processor = m._prepare_logits_processor(gc, None)
        stopping_criteria = m._prepare_ar_stopping_criteria(gc, None)
        diffusion_stop = m._prepare_diffusion_stopping_criteria(gc)
        embeddings_dtype = m.model.decoder.embed_tokens.weight.dtype
        V = m.config.text_config.vocab_size

        guide = self._guidance_setup(rows, rg, n_canvases * C, trace, device, stats)
        if guide is not None:
            guide["steps"] = n_canvases * gc.max_denoising_steps  # at most (adaptive stopping)
        traces: list[list[StepTrace]] = [[] for _ in rows]
        global_step = 0
        is_prefill = True
        for canvas_index in range(n_canvases):
            unprocessed, encoder_mask = m._prepare_encoder_inputs(
                input_ids=input_ids, attention_mask=attention_mask, encoder_position_ids=encoder_position_ids,
                cache=cache, is_prefill=is_prefill, canvas_length=C, batch_size=B)
            cache = m.model.encoder(input_ids=unprocessed, attention_mask=encoder_mask, cache=cache,
                                    position_ids=encoder_position_ids).cache
            is_prefill = False
            stats.dllm_forwards += B
            stats.dllm_tokens += B * unprocessed.shape[1]
            current_canvas, sc_logits, mask_mapping, finished_denoising = m._prepare_denoiser_inputs(
                decoder_attention_mask=decoder_attention_mask, cache=cache, sampler=sampler,
                diffusion_stopping_criteria=diffusion_stop, batch_size=B, device=device, model_kwargs={})
            argmax_canvas = current_canvas
            accepted_before = torch.zeros((B, C), dtype=torch.bool, device=device)  # none before the first step
            for cur_step in reversed(range(1, gc.max_denoising_steps + 1)):
                step_t = torch.tensor(cur_step, device=device, dtype=torch.int32)
                raw = m(decoder_input_ids=current_canvas, self_conditioning_logits=sc_logits,
                        decoder_attention_mask=mask_mapping, cache=cache,
                        decoder_position_ids=decoder_position_ids).logits
                stats.dllm_forwards += B
                stats.dllm_tokens += B * C
                stats.dllm_logit_tokens += B * C
                processed = logits_processor(input_ids, raw, cur_step=step_t)
                active = ~(finished_denoising | finished_sequences)  # (B,)
                unaccepted = ~accepted_before & active[:, None]
                result, w = None, None
                if guide is not None and unaccepted.any():
                    prior = processed
                    processed, result = self._guide(guide, prior, unaccepted, current_canvas, input_ids[:, P:],
                                                    stats, global_step, cfg)
                    w = mean_entropy_weight(prior, unaccepted, rg.entropy_temperature).cpu()
                elif trace:
                    w = mean_entropy_weight(processed, unaccepted, rg.entropy_temperature).cpu()
                # the native draw, acceptance and renoising, on the (guided) tempered logits
                if cfg.greedy:
                    denoiser_canvas = processed.argmax(-1)
                else:
                    probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
                    denoiser_canvas = torch.multinomial(probs.view(-1, V), num_samples=1).squeeze(-1).view(B, C)
                new_argmax = torch.argmax(processed, dim=-1)
                accepted_canvas = sampler.accept_canvas(current_canvas, denoiser_canvas, processed, step_t).clone()
                accepted_now = sampler.accepted_token_mask.clone()
                new_current = sampler.renoise_canvas(accepted_canvas, step_t).clone()
                if diffusion_stop is not None:
                    if finished_denoising.any():
                        new_argmax = torch.where(finished_denoising[:, None], argmax_canvas, new_argmax)
                        new_current = torch.where(finished_denoising[:, None], current_canvas, new_current)
                        processed = torch.where(finished_denoising[:, None, None], sc_logits, processed)
                    finished_denoising |= diffusion_stop(new_argmax, processed)
                sc_logits = processed.to(embeddings_dtype)
                if trace:
                    self._trace(traces, active, unaccepted, accepted_now, w, result, global_step, canvas_index)
                current_canvas, argmax_canvas = new_current, new_argmax
                accepted_before = torch.where(active[:, None], accepted_now, accepted_before)
                global_step += 1
                if torch.all(finished_denoising):
                    break
            input_ids = torch.cat([input_ids, argmax_canvas], dim=-1)
            input_ids, finished_sequences = m._finalize_canvas(
                input_ids=input_ids, finished_sequences=finished_sequences, generation_config=gc,
                stopping_criteria=stopping_criteria, canvas_length=C, eos_tensor=eos_tensor)
            if torch.all(finished_sequences):
                break
            cur_len, decoder_attention_mask, attention_mask, encoder_position_ids, decoder_position_ids = (
                m._prepare_kwargs_for_next_canvas(attention_mask=attention_mask,
                                                  decoder_attention_mask=decoder_attention_mask,
                                                  decoder_position_ids=decoder_position_ids, canvas_length=C,
                                                  cur_len=cur_len))
        return input_ids[:, P:].tolist(), traces

    # ---- guidance ---------------------------------------------------------------------------------------
    def _guidance_setup(self, rows: list[Row], rg: ResolvedGuidance, length: int, trace: bool, device,
                        stats: ComputeStats) -> dict | None:
        """The RM layout of the batch (``length`` response slots: every canvas) and the aligned table, or None
        when the method does not guide."""
        if not rg.config.guided:
            return None
        if rg.config.compile:
            if not hasattr(self.reward, "enable_compile"):
                raise ValueError(f"`compile`: {type(self.reward).__name__} has no compiled path (HFRewardModel has).")
            self.reward.enable_compile()
        batch = RewardBatch(self.reward, [self.reward.context(r.prompt) for r in rows], length,
                            prefix_cache=rg.config.prefix_cache)
        if batch.prefix_cached:
            stats.rm_forward_tokens += batch.prefix_attention.numel()
        eos = self.model.eos_ids() or (-1,)
        return dict(batch=batch, rg=rg, table=self.bridge.rm_table(self.reward.embedding_table(), device),
                    mapped=self.bridge.mapped.to(device), eos=torch.tensor(eos, device=device),
                    streams=RowStreams([r.seed for r in rows], device),
                    samples=[(r.prompt_index, r.sample_index) for r in rows],
                    trace_streams=RowStreams([r.trace_seed for r in rows], device) if trace else None)

    def _guide(self, g: dict, logits: torch.Tensor, masked: torch.Tensor, canvas: torch.Tensor,
               previous: torch.Tensor, stats: ComputeStats, step: int, cfg: CanvasConfig):
        """Guided copy of ``logits`` (B, C, V) at ``masked`` and the inner loop's result; the RM reads the
        finished canvases ``previous`` (B, k·C), then the current canvas, the later slots unattended."""
        batch, table, mapped, eos = g["batch"], g["table"], g["mapped"], g["eos"]
        B, C = canvas.shape
        prev_embeds = table[previous]
        prev_attn = response_attention(previous, torch.zeros_like(previous, dtype=torch.bool), eos, mapped)
        tail = batch.response_length - previous.shape[1] - C

        def score(resp: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
            embeds = torch.cat([prev_embeds.to(resp.dtype), resp, resp.new_zeros((B, tail, resp.shape[-1]))], 1)
            full = torch.cat([prev_attn, attn, attn.new_zeros((B, tail))], 1)
            return batch.score(embeds, full)

        with torch.enable_grad():
            try:
                result = guide_logits(logits, masked, canvas, score, table, mapped, g["rg"], eos, g["streams"],
                                      g["trace_streams"])
            except NonFiniteError as e:
                raise e.located(step, g["steps"], g["samples"]) from None
        self._count(g, result, int(masked.sum()), B, stats)
        return result.logits, result

    def _count(self, g: dict, result, n_masked: int, B: int, stats: ComputeStats) -> None:
        """Cost of one inner loop (docs/performance.md, "Cost count"), as the masked sampler counts it."""
        config = g["rg"].config
        F = config.inner_steps if result.forwards is None else result.forwards
        M = config.inner_steps if result.backwards is None else result.backwards
        V, d = g["table"].shape
        width = min(config.soft_top_k, V) if config.soft_top_k is not None else V
        stats.count_inner_loop(B, rm_call_tokens(g["batch"]), n_masked, width, d, F, M,
                               extra=int(g["trace_streams"] is not None), recompute=rm_recomputes_forward(self.reward))

    @staticmethod
    def _trace(traces, active, unaccepted, accepted, w, result, step: int, canvas_index: int) -> None:
        guided = unaccepted.any(-1).tolist() if result is not None else [False] * len(traces)
        for b in range(len(traces)):
            if not bool(active[b]):
                continue
            committed = accepted[b].nonzero().flatten().tolist()
            traces[b].append(StepTrace(
                step=step, block=canvas_index, masked=int(unaccepted[b].sum()), committed=committed,
                entropy_weight=None if w is None or torch.isnan(w[b]) else float(w[b]),
                rewards=ran_values(result.rewards[b]) if guided[b] else [],
                grad_norms=ran_values(result.grad_norms[b]) if guided[b] else [],
                num_committed=len(committed), guided=guided[b]))


def generate_canvas(model: DiffusionLM, prompts: str | Sequence[str], reward: RewardModel | None = None, *,
                    sampler: CanvasConfig | SamplerConfig | None = None, guidance: GuidanceConfig | None = None,
                    bridge: VocabBridge | None = None, progress: bool = True, trace: bool = True,
                    track_reward: bool = False, callback=None) -> GenerationOutput:
    """:func:`entrgi.generate` for a canvas adapter (DiffusionGemma): ``sampler`` a :class:`CanvasConfig`, or
    a :class:`~entrgi.config.SamplerConfig` read by :meth:`CanvasConfig.from_sampler`. ``track_reward`` and
    ``callback`` (masked-sampler step outputs) do not apply and raise ``ValueError``."""
    if track_reward:
        raise ValueError("`track_reward` does not apply to the canvas sampler of DiffusionGemma: leave it False.")
    if callback is not None:
        raise ValueError("`callback` (masked-sampler StepOutput) does not apply to the canvas sampler of "
                         "DiffusionGemma: use `trace=True` and read `Sample.trace`.")
    canvas = CanvasSampler(model, reward, bridge)
    if sampler is None or isinstance(sampler, SamplerConfig):
        sampler = CanvasConfig.from_sampler(sampler or SamplerConfig())
    elif not isinstance(sampler, CanvasConfig):
        raise ValueError(f"`sampler` must be a CanvasConfig or a SamplerConfig, got {type(sampler).__name__}.")
    return canvas.generate(prompts, sampler, guidance, progress=progress, trace=trace)


__all__ = ["CanvasConfig", "CanvasSampler", "check_guidance", "generate_canvas", "is_canvas_model"]
