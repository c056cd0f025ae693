"""The masked diffusion transition (Dream, LLaDA, any HF masked LM): how one step reads, draws and commits slots.

Every response slot starts as the mask id; a step's candidates are the masked slots of the current block (all of
the response without blocks). The stages the sampler's step calls:

- :meth:`MaskedTransition.forward`: one DLLM forward (no grad) → logits of the response slots, invalid ids at −inf;
  the DLLM KV cache (``kv_cache``) and the rows already finished (parallel decoding) are handled here;
- :meth:`~MaskedTransition.draw`: one token per candidate from the τ / top-k / top-p filtered logits, with the
  rows' own uniforms (inverse CDF, or LLaDA's Gumbel-max);
- :meth:`~MaskedTransition.choose`: the candidates to commit, ranked by the remasking rule, EOS last, counts by
  the schedule (plus parallel decoding's confident slots);
- :meth:`~MaskedTransition.commit`: write them into the canvas.

A block without a masked slot ends early: its remaining steps are idle (skipped).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from ..config import GuidanceConfig, ResolvedGuidance, SamplerConfig, check_masked_steps
from ..models.base import DiffusionLM
from ..ops.logit_ops import draw, sample_gumbel_max, sampling_logits, upcast
from ..registry import ORIGIN
from ..reproduction import reproduction_for
from .parallel import logits_of_rows, parallel_commits, parallel_counts, rows_to_forward
from .remasking import get_remasking_rule
from .reproduce import confidence_from_guided, reference_choose, reference_draw
from .schedule import DEPRIORITISED, commit_counts, confidence, gumbel_keys, origin_reveal, select_top
from .state import DenoisingState

#: SamplerConfig fields only the canvas transition reads (DiffusionGemma): they must stay None here.
CANVAS_FIELDS = ("entropy_bound", "t_min", "t_max", "stability_threshold", "confidence_threshold")


def response_bias(model: DiffusionLM, cfg: SamplerConfig, device, keep_non_tokens: bool | None = None) -> torch.Tensor:
    """The 0 / −inf bias added to the response logits: (V,) at ids that are never response tokens; (L, V)
    when ``cfg.min_new_tokens`` > 0, which also bars the EOS ids from the first ``min_new_tokens`` slots.
    ``keep_non_tokens`` (default: a reproduction mode's ``non_token_ids``) leaves those ids finite."""
    rep = reproduction_for(cfg)
    keep = (rep is not None and rep.non_token_ids) if keep_non_tokens is None else keep_non_tokens
    bias = torch.zeros(model.logit_width, device=device)
    if not keep:
        bias = bias.masked_fill(model.invalid_mask(device), float("-inf"))
    eos = model.eos_ids(cfg.match_released)
    if cfg.min_new_tokens == 0 or not eos:
        return bias
    bias = bias.repeat(cfg.max_new_tokens, 1)  # (L, V)
    bias[:cfg.min_new_tokens, torch.tensor(eos, device=device)] = float("-inf")
    return bias


class MaskedTransition:
    """The stages of a masked diffusion step for one adapter (see the module docstring)."""

    name = "masked"
    tracks_reward = True

    def __init__(self, model: DiffusionLM):
        self.model = model

    # ---- checks and set-up ----------------------------------------------------------------------------------
    def check(self, sampler: SamplerConfig, guidance: GuidanceConfig | None = None) -> None:
        """``ValueError`` for sampler fields this transition does not read (the canvas family's) and for more steps
        than slots."""
        given = [name for name in CANVAS_FIELDS if getattr(sampler, name) is not None]
        if given:
            raise ValueError(f"`{given[0]}` applies to canvas (block diffusion) models such as DiffusionGemma only, not "
                             f"to {type(self.model).__name__}: leave it unset.")
        check_masked_steps(sampler)  # T <= L (docs/performance.md, "Limits")

    def resolve_guidance(self, guidance: GuidanceConfig, sampler: SamplerConfig) -> ResolvedGuidance:
        """``guidance`` with its ``None`` temperatures / top-p filled in from the sampler."""
        return guidance.resolve(sampler)

    def response_length(self, sampler: SamplerConfig) -> int:
        """L, the response slots of a row."""
        return sampler.max_new_tokens

    def invalid_bias(self, sampler: SamplerConfig, device) -> torch.Tensor:
        return response_bias(self.model, sampler, device)

    def begin(self, state: DenoisingState) -> None:
        """Nothing to set up: the canvas's response slots start as the mask id."""

    # ---- the counters ---------------------------------------------------------------------------------------
    def block(self, state: DenoisingState) -> int:
        """The block of the step to run next."""
        return state.block

    def max_steps(self, state: DenoisingState) -> int:
        return state.sampler.steps

    def schedule_step(self, state: DenoisingState) -> int:
        """The step's index within its block (what the guidance schedule counts)."""
        return state.block_step

    def open_slots(self, state: DenoisingState) -> tuple[torch.Tensor, torch.Tensor, slice]:
        """(masked (B, L), candidates (B, L): the masked slots of the current block, the window: every slot)."""
        masked = state.response == self.model.mask_token_id
        return masked, masked & state.block_slots(), slice(0, state.sampler.max_new_tokens)

    def active_rows(self, state: DenoisingState) -> torch.Tensor:
        """(B,) the rows a step runs for: all of them (a row without masked slots is idle, but counted)."""
        return torch.ones(state.x.shape[0], dtype=torch.bool)

    def window_ids(self, state: DenoisingState) -> torch.Tensor:
        return state.response

    def rm_score(self, state: DenoisingState):
        return state.reward_view.score

    def idle(self, state: DenoisingState, candidates: torch.Tensor) -> bool:
        """True when the current block has no masked slot left (it finished early)."""
        return not bool(candidates.any())

    def skip_block(self, state: DenoisingState) -> None:
        """The current block has no masked slot (it finished early): skip its idle steps."""
        state.step = (state.block + 1) * state.steps_per_block
        state.finished = state.step >= state.sampler.steps

    def advance(self, state: DenoisingState) -> None:
        state.step += 1
        state.finished = state.step >= state.sampler.steps

    # ---- the stages -----------------------------------------------------------------------------------------
    def forward(self, state: DenoisingState, masked: torch.Tensor) -> torch.Tensor:
        """Float logits (B, L, V) of the response slots, invalid ids at −inf; the rows without a masked slot are not
        run (:func:`~entrgi.sampling.parallel.rows_to_forward`); with ``kv_cache`` the block's keys and values are
        reused (:mod:`entrgi.models.cache`). Counted in ``state.stats``."""
        cfg, model = state.sampler, self.model
        if cfg.kv_cache != "none":  # built at a block's first forward, kept in it
            lo = state.prompt_length + state.block * (cfg.block_length or cfg.max_new_tokens)
            model.begin_block(cfg.kv_cache, state.x, lo, lo + (cfg.block_length or cfg.max_new_tokens))
        with record_function("entrgi.dllm_forward"):
            live = rows_to_forward(masked) if cfg.kv_cache == "none" else None
            logits = self.logits(state) if live is None else logits_of_rows(self.logits, state, live)
        rows = state.x.shape[0] if live is None else len(live)
        kv = model.kv_cache if cfg.kv_cache != "none" else None
        cached = kv is not None and kv.query_tokens
        state.stats.count_dllm_forward(rows, kv.query_tokens if cached else state.x.shape[1],
                                       kv.logit_slots if cached else cfg.max_new_tokens)
        return logits

    def logits(self, state: DenoisingState) -> torch.Tensor:
        """One DLLM forward of ``state``'s rows: float logits (B, L, V), invalid ids at −inf."""
        logits = upcast(self.model.response_logits(state.x, state.attention_mask, state.position_ids,
                                                   state.prompt_length))
        return logits.add_(state.invalid_bias)  # in place: the forward's output is ours

    def draw(self, state: DenoisingState, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """One token per candidate slot (n,), in row-major order, from the τ / top-k / top-p filtered
        ``logits[candidates]`` with the rows' own uniforms."""
        cfg, streams = state.sampler, state.streams
        picked = logits[candidates]  # (n, V)
        if state.reproduction is not None and state.reproduction.draw:  # a reference sampler's draw
            return reference_draw(state.reproduction, picked, candidates, streams, cfg)
        if cfg.sampling == "gumbel" and cfg.temperature > 0:
            filtered = sampling_logits(picked, cfg.temperature, cfg.top_p, cfg.top_k)
            return sample_gumbel_max(filtered, streams.uniform_matrix_at(candidates, picked.shape[-1]))
        return draw(picked, streams.uniform_at(candidates)[candidates], cfg.temperature, cfg.top_p, cfg.top_k)

    def choose(self, state: DenoisingState, logits: torch.Tensor, guided: torch.Tensor, candidates: torch.Tensor,
               tokens: torch.Tensor) -> torch.Tensor:
        """Boolean (B, L): the candidates to commit, ranked by the remasking rule on the prior ``logits`` (or the
        ``guided`` ones with ``confidence_from='guided'``: APS's anchored remasking), EOS last, counts by the
        schedule; with ``parallel_threshold`` also every candidate whose draw is that confident."""
        cfg = state.sampler
        # APS's anchored remasking (confidence_from='guided'); the released code's maskgit_plus / topk_margin
        anchored = cfg.confidence_from == "guided" or confidence_from_guided(state.reproduction, cfg.remasking)
        conf_logits = guided if anchored else logits
        if state.reproduction is not None:  # a reference sampler's confidences, counts and selection
            return reference_choose(state, conf_logits, candidates, tokens)
        commit = self.scheduled(state, conf_logits, candidates, tokens)
        if cfg.parallel_threshold is not None:
            commit = parallel_commits(commit, conf_logits, candidates, tokens, cfg,
                                      state.eos_ids if cfg.deprioritize_eos else None)
        return commit

    def scheduled(self, state: DenoisingState, conf_logits: torch.Tensor, candidates: torch.Tensor,
                  tokens: torch.Tensor) -> torch.Tensor:
        """The schedule's commits (B, L): the top-n candidates by confidence (``tokens`` (n,) the draws)."""
        cfg, eos, streams = state.sampler, state.eos_ids, state.streams
        step, steps = state.block_step, state.steps_per_block
        if cfg.remasking == ORIGIN:
            return origin_reveal(streams.uniform_at(candidates), candidates, step, steps, cfg.eps)
        conf = torch.full(candidates.shape, float("-inf"), dtype=torch.float64, device=candidates.device)
        rule = get_remasking_rule(cfg.remasking)
        rand = streams.uniform_at(candidates)[candidates] if rule.needs_uniforms else None
        c = confidence(rule, conf_logits[candidates], tokens, cfg.temperature, rand)
        if cfg.deprioritize_eos:
            c = torch.where(torch.isin(tokens, eos), torch.full_like(c, DEPRIORITISED), c)
        conf[candidates] = c
        counts = commit_counts(candidates.sum(-1), step, steps, cfg.schedule, cfg.eps)
        if cfg.parallel_threshold is not None:  # rows ahead of the schedule (parallel decoding): at least one
            counts = parallel_counts(counts, candidates.sum(-1), cfg.block_length or cfg.max_new_tokens, step, steps,
                                     cfg.schedule, cfg.eps)
        if cfg.remasking_temperature > 0:
            conf = gumbel_keys(conf, cfg.remasking_temperature, streams.uniform_at(candidates))
        return select_top(conf, counts) & candidates

    def commit(self, state: DenoisingState, commit: torch.Tensor, candidates: torch.Tensor,
               tokens: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        """Write the committed draws into the canvas; returns the proposal (B, L): the draws at the candidates,
        the canvas elsewhere."""
        resp = state.response
        proposal = resp.clone()
        proposal[candidates] = tokens
        state.x[:, state.prompt_length:] = torch.where(commit, proposal, resp)
        return proposal

    def tokens(self, state: DenoisingState) -> list[list[int]]:
        """The response ids of every row once the state is done."""
        return state.response.tolist()


__all__ = ["CANVAS_FIELDS", "MaskedTransition", "response_bias"]
