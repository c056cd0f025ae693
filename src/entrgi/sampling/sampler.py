"""The denoising loop: one step for every model family, reward guidance inside it (docs/method.md §1–3).

:meth:`DiffusionSampler.start` lays a batch out as a :class:`~entrgi.sampling.state.DenoisingState`; each
:meth:`~DiffusionSampler.step` runs one denoising step and returns a :class:`~entrgi.sampling.state.StepOutput`;
:meth:`~DiffusionSampler.generate` is the loop over them. A step is five stages, each a method a subclass may
override: :meth:`~DiffusionSampler.forward` (1), :meth:`~DiffusionSampler.guide` (2),
:meth:`~DiffusionSampler.draw` (3), :meth:`~DiffusionSampler.choose` (4), :meth:`~DiffusionSampler.commit` (5).
What a family does at each stage is its *transition* (:mod:`.masked`; DiffusionGemma's :mod:`.canvas`); the
guidance schedule, the inner loop and its cost are the guide stage's (:mod:`.guide`); the trace, the reward estimate
and particle resampling are observers run after the step (:mod:`.observers`, :mod:`.search`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..config import GuidanceConfig, ResolvedGuidance, SamplerConfig, SearchConfig, check_vocab_chunk
from ..conversation import Conversation, Prompt
from ..models.base import DiffusionLM, transition_name
from ..ops.rng import RowStreams, row_seed
from ..reproduction import reproduction_for
from ..reward.base import RewardModel, left_pad, position_ids_from
from ..reward.registry import load_reward
from ..reward.vocab import VocabBridge
from .canvas import CanvasTransition
from .guide import Guide, GuideStep
from .masked import MaskedTransition
from .observers import RewardTracker, Tracer
from .outputs import ComputeStats, GenerationOutput, collect_output, rm_recomputes_forward
from .particles import is_differentiable
from .reward_view import RewardView
from .search import get_search
from .state import DenoisingState, Row, StepObserver, StepOutput

#: The transitions by name (``DiffusionLM.transition``).
TRANSITIONS = {"masked": MaskedTransition, "canvas": CanvasTransition}


def transition_for(model: DiffusionLM):
    """A fresh transition of the model's family (``model.transition``: ``masked`` unless the family says)."""
    return TRANSITIONS[transition_name(model)](model)


def bridge_for(model: DiffusionLM, reward: RewardModel) -> VocabBridge:
    """The default DLLM -> RM vocabulary bridge: by token string, excluding the DLLM's invalid ids."""
    return VocabBridge.from_tokenizers(model.tokenizer, reward.tokenizer, model.logit_width,
                                       exclude=model.invalid_token_ids)


class DiffusionSampler:
    """Holds a DLLM adapter, an optional reward model and the vocabulary bridge between them.

    Args:
        model: the DLLM adapter (any family).
        reward: the reward that guides (a differentiable :class:`~entrgi.reward.base.RewardModel`), ranks and scores
            the samples; a text reward ranks and weighs but cannot guide.
        bridge: DLLM -> RM vocabulary bridge (default: by token string).
        potential_reward: a reward with ``score_texts`` that weighs particles on decoded text (default: the search's
            ``potential_reward`` spelling, else ``reward`` when it is a text reward); it also scores the samples
            when ``reward`` is None.
    """

    def __init__(self, model: DiffusionLM, reward=None, bridge: VocabBridge | None = None, potential_reward=None):
        if potential_reward is not None and not callable(getattr(potential_reward, "score_texts", None)):
            raise ValueError(f"`potential_reward` must be a reward with `score_texts` (a TextReward or a reward "
                             f"model), got {type(potential_reward).__name__}.")
        self.model, self.reward, self._bridge, self._potential = model, reward, bridge, potential_reward
        self._loaded: dict[str, object] = {}
        #: What the search strategy's observers logged in the last :meth:`generate` (the particles' resamplings).
        self.search_log: list[dict] = []

    @property
    def bridge(self) -> VocabBridge:
        if self._bridge is None:
            if self.reward is None:
                raise ValueError("no reward model: a vocabulary bridge needs one.")
            self._bridge = bridge_for(self.model, self.reward)
        return self._bridge

    @property
    def scorer(self):
        """The reward that scores the final samples: ``reward``, else the potential reward."""
        return self.reward if self.reward is not None else self._potential

    def potential_reward(self, search: SearchConfig):
        """The reward that weighs particles on decoded text, or None to weigh them by the reward model's estimate."""
        if self._potential is not None:
            return self._potential
        spec = search.potential_reward
        if spec is not None:
            if spec not in self._loaded:
                self._loaded[spec] = load_reward(spec, device=self.model.device)
            return self._loaded[spec]
        return None if self.reward is None or is_differentiable(self.reward) else self.reward

    def transition(self):
        """A fresh transition of the model's family (one per run: DiffusionGemma's keeps the run's random stream)."""
        return transition_for(self.model)

    # ---- rows and settings ----------------------------------------------------------------------------------
    def rows_for(self, prompts: Prompt | Sequence[Prompt], sampler: SamplerConfig,
                 response_length: int | None = None) -> list[Row]:
        """The validated rows of ``prompts``: ``sampler.num_samples`` per prompt, prompt-major, with their seeds."""
        if isinstance(prompts, (str, Conversation)):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("`prompts` must contain at least one prompt, got an empty list.")
        length = sampler.max_new_tokens if response_length is None else response_length
        rows = []
        for i, p in enumerate(prompts):
            if isinstance(p, Conversation):  # validated when made; the chat template renders it
                pass
            elif not isinstance(p, str) or not (p.strip() or sampler.match_released):  # released code: raw prompts
                what = "a string" if sampler.match_released else "a non-empty string"
                raise ValueError(f"`prompts[{i}]` must be {what}, got {p!r}.")
            ids = self.model.encode_prompt(p)
            limit = self.model.max_length
            if limit is not None and len(ids) + length > limit:
                raise ValueError(
                    f"`prompts[{i}]` is {len(ids)} tokens; with {length} response slots (`max_new_tokens` = "
                    f"{sampler.max_new_tokens}) that exceeds the model's context of {limit} tokens.")
            for k in range(sampler.num_samples):
                rows.append(Row(i, k, p, ids, row_seed(sampler.seed, ids, k),
                                row_seed(sampler.seed, ids, k, stream="trace")))
        return rows

    def resolve(self, sampler: SamplerConfig, guidance: GuidanceConfig | ResolvedGuidance | None,
                search: SearchConfig | None = None, track_reward: bool = False, transition=None) -> ResolvedGuidance:
        """``guidance`` resolved against ``sampler`` by the family's transition, after checking the rewards fit the
        run: a rule, a ranking search or ``track_reward`` need a reward; guidance and ``track_reward`` a
        differentiable one."""
        transition = transition or self.transition()
        guidance = guidance or GuidanceConfig()
        config = guidance.config if isinstance(guidance, ResolvedGuidance) else guidance
        search = search or SearchConfig()
        transition.check(sampler, config)
        needs = [f"rule {config.rule!r}"] if config.rule != "none" else []
        needs += [f"search {search.strategy!r}"] if get_search(search.strategy).needs_reward else []
        needs += ["`track_reward`"] if track_reward else []
        if needs and self.scorer is None:
            raise ValueError(f"`reward` is required for {needs[0]} (only rule 'none' with search 'sample' runs "
                             "without one).")
        gradient = ["guidance" if config.guided else None, "`track_reward`" if track_reward else None]
        gradient = [g for g in gradient if g]
        if gradient and not is_differentiable(self.reward):
            name = getattr(self.scorer, "name", type(self.scorer).__name__)
            raise ValueError(f"{gradient[0]}: the reward {name!r} ({type(self.scorer).__name__}) scores decoded text "
                             "only and has no gradient. Give a differentiable reward model as `reward` (a text reward "
                             "can weigh particles as `potential_reward`), or run unguided (rule 'none').")
        if config.guided:
            check_vocab_chunk(config, int(self.bridge.mapped.shape[0]))
        if track_reward and not transition.tracks_reward:
            raise ValueError(f"`track_reward` does not apply to {type(self.model).__name__}'s "
                             f"{transition.name} transition: leave it False.")
        if get_search(search.strategy).observers is not None and not transition.tracks_reward:
            raise ValueError(f"search {search.strategy!r} does not apply to {type(self.model).__name__}'s "
                             f"{transition.name} transition (it reads masked slots): use 'sample' or 'best_of_n'.")
        if isinstance(guidance, ResolvedGuidance):
            return guidance
        return transition.resolve_guidance(config, sampler)

    # ---- a batch in flight ------------------------------------------------------------------------------------
    def start(self, prompts: Prompt | Sequence[Prompt] | Sequence[Row], sampler: SamplerConfig | None = None,
              guidance: GuidanceConfig | ResolvedGuidance | None = None, search: SearchConfig | None = None, *,
              trace: bool = True, track_reward: bool = False, stats: ComputeStats | None = None,
              observer_stats: ComputeStats | None = None, transition=None,
              observers: Sequence[StepObserver] = ()) -> DenoisingState:
        """A fresh state for ``prompts`` (or rows from :meth:`rows_for`, as :meth:`generate` passes its batches):
        the left-padded prompts followed by the response slots, one random stream per row, the reward model's view
        when guided or ``track_reward`` (or RM-weighted particles), the guide stage and the observers (the reward
        tracker, the trace, then ``observers``, then the search strategy's). Its work is
        counted in ``stats`` and what the observers add in ``observer_stats`` (new :class:`ComputeStats` by
        default)."""
        sampler, search = sampler or SamplerConfig(), search or SearchConfig()
        transition = transition or self.transition()
        rg = self.resolve(sampler, guidance, search, track_reward, transition)
        length = transition.response_length(sampler)
        rows = list(prompts) if not isinstance(prompts, (str, Conversation)) and prompts and all(
            isinstance(p, Row) for p in prompts) else self.rows_for(prompts, sampler, length)
        model, device, B = self.model, self.model.device, len(rows)
        prompt_ids, prompt_attn = left_pad([r.prompt_ids for r in rows], model.pad_token_id, device)
        fill = model.mask_token_id if model.mask_token_id >= 0 else model.pad_token_id
        x = torch.cat([prompt_ids, torch.full((B, length), fill, device=device)], 1)  # (B, P + L)
        attn = torch.cat([prompt_attn, torch.ones((B, length), dtype=torch.long, device=device)], 1)
        state = DenoisingState(
            rows=rows, sampler=sampler, guidance=rg, search=search, x=x, attention_mask=attn,
            position_ids=position_ids_from(attn), prompt_length=prompt_ids.shape[1],
            streams=RowStreams([r.seed for r in rows], device),
            eos_ids=torch.tensor(model.eos_ids(sampler.match_released) or [-1], device=device),
            invalid_bias=transition.invalid_bias(sampler, device), transition=transition,
            stats=stats if stats is not None else ComputeStats(),
            observer_stats=observer_stats if observer_stats is not None else ComputeStats(), traces=[[] for _ in rows],
            reproduction=reproduction_for(sampler))
        strategy = get_search(search.strategy)
        weighs_by_rm = strategy.observers is not None and self.potential_reward(search) is None
        if rg.config.guided or track_reward or weighs_by_rm:  # the prefix's encoding: the method's, or the tracker's
            state.reward_view = self.reward_view(state, state.stats if rg.config.guided or weighs_by_rm
                                                 else state.observer_stats)
        if rg.config.guided:
            trace_streams = RowStreams([r.trace_seed for r in rows], device) if trace else None
            state.guide = Guide(state.reward_view, rg, state.streams, trace_streams, rm_recomputes_forward(self.reward),
                                reproduction=state.reproduction)
        state.observers = [RewardTracker(model.mask_token_id)] if track_reward else []
        state.observers += [Tracer()] if trace else []
        state.observers += list(observers)
        state.observers += strategy.observers(self, state) if strategy.observers is not None else []
        transition.begin(state)
        return state

    def reward_view(self, state: DenoisingState, stats: ComputeStats) -> RewardView:
        """The reward model's view of the batch (its layout, the prompt prefix encoded once when ``prefix_cache``,
        counted in ``stats``), on the DLLM's device. With ``match_released`` the released code's view: its token
        mapping (:meth:`~entrgi.reward.vocab.VocabBridge.released`), position ids 0 … N − 1, the whole row per
        call."""
        cfg, rep = state.guidance.config, state.reproduction
        released = rep is not None and rep.reference == "released"
        bridge = self.bridge if not (released and rep.unk_fallback) else VocabBridge.released(
            self.model.tokenizer, self.reward.tokenizer, self.model.logit_width)
        return RewardView.build(self.reward, bridge, [r.prompt for r in state.rows], state.response.shape[1],
                                state.eos_ids, state.x.device,
                                prefix_cache=cfg.prefix_cache and not (released and rep.dense_guidance),
                                compile=cfg.compile, stats=stats,
                                sequence_positions=released and rep.rm_positions)

    @torch.no_grad()
    def step(self, state: DenoisingState) -> StepOutput | None:
        """Run one denoising step and advance the state; an idle step (a block with nothing left to commit) returns
        None and skips to the next block."""
        if state.done:
            raise ValueError(f"the state has run all its {state.transition.max_steps(state)} steps: start a new one.")
        t = state.transition
        masked, candidates, window = t.open_slots(state)  # (B, W): the open slots, those the step may commit
        if t.idle(state, candidates):
            t.skip_block(state)
            return None
        logits = self.forward(state, masked)  # 1. φ0 = the DLLM's logits of the window (B, W, V)  (1)
        guided = self.guide(state, logits, masked, candidates)  # 2. reward guidance of a copy of φ  (4)–(9)
        tokens = self.draw(state, guided.logits, candidates)  # 3. candidate tokens from the guided logits  (2)
        commit = self.choose(state, logits, guided.logits, candidates, tokens)  # 4. which to commit  (3)
        proposal = self.commit(state, commit, candidates, tokens, guided.logits)  # 5. commit them
        output = StepOutput(step=state.step, block=t.block(state), x=state.x, prompt_length=state.prompt_length, window=window, logits=logits,
                            guided_logits=guided.logits, masked=masked, candidates=candidates, proposal=proposal,
                            committed=commit, rows=state.rows, active=t.active_rows(state),
                            guide=guided.result, guided_rows=guided.rows, entropy_weight=guided.entropy_weight)
        for observer in state.observers:  # the trace, the reward estimate, particle resampling
            observer.on_step(state, output)
        t.advance(state)
        return output

    # ---- the stages (override one to change it) ---------------------------------------------------------------
    def forward(self, state: DenoisingState, masked: torch.Tensor) -> torch.Tensor:
        """Stage 1: the DLLM's float logits (B, W, V) of the step's window, invalid ids at −inf."""
        return state.transition.forward(state, masked)

    def guide(self, state: DenoisingState, logits: torch.Tensor, masked: torch.Tensor,
              candidates: torch.Tensor) -> GuideStep:
        """Stage 2: the guided logits (the prior ``logits`` when the run is not guided)."""
        if state.guide is None:
            return GuideStep(logits, None, torch.zeros(logits.shape[0], dtype=torch.bool))
        return state.guide(state, logits, masked, candidates)

    def draw(self, state: DenoisingState, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Stage 3: candidate tokens from the (guided) ``logits``."""
        return state.transition.draw(state, logits, candidates)

    def choose(self, state: DenoisingState, logits: torch.Tensor, guided: torch.Tensor, candidates: torch.Tensor,
               tokens: torch.Tensor) -> torch.Tensor:
        """Stage 4: boolean (B, W) of the candidates to commit (ranked on the prior ``logits`` or the ``guided``)."""
        return state.transition.choose(state, logits, guided, candidates, tokens)

    def commit(self, state: DenoisingState, commit: torch.Tensor, candidates: torch.Tensor, tokens: torch.Tensor,
               guided: torch.Tensor) -> torch.Tensor:
        """Stage 5: write the commits into the canvas; returns the proposal (B, W)."""
        return state.transition.commit(state, commit, candidates, tokens, guided)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt], sampler: SamplerConfig | None = None,
                 guidance: GuidanceConfig | None = None, search: SearchConfig | None = None, *,
                 progress: bool = True, trace: bool = True, track_reward: bool = False,
                 callback: Callable[[int, StepOutput], None] | None = None,
                 observers: Sequence[StepObserver] = ()) -> GenerationOutput:
        """Sample ``sampler.num_samples`` responses per prompt; see :func:`entrgi.generate` (``observers``: run after
        every step, before the search strategy's: :meth:`start`).

        The loop: for each batch of ``sampler.batch_size`` rows, :meth:`start`, then :meth:`step` until the state is
        done, ``callback(step, output)`` after every step that ran."""
        sampler, guidance, search = sampler or SamplerConfig(), guidance or GuidanceConfig(), search or SearchConfig()
        transition = self.transition()
        resolved = self.resolve(sampler, guidance, search, track_reward, transition)
        rows = self.rows_for(prompts, sampler, transition.response_length(sampler))
        chunk = sampler.batch_size or len(rows)
        if get_search(search.strategy).whole_groups and chunk % sampler.num_samples:
            raise ValueError(f"`batch_size` ({sampler.batch_size}) must be a multiple of `num_samples` "
                             f"({sampler.num_samples}) for search {search.strategy!r}: a prompt's rows run together.")
        stats, observed = ComputeStats(), ComputeStats()
        self.search_log = []
        start = time.perf_counter()
        tokens: list[list[int]] = []
        traces: list = []
        bar = tqdm(total=len(rows), disable=not progress, desc=f"{guidance.rule}", unit="row", leave=False)
        for lo in range(0, len(rows), chunk):
            state = self.start(rows[lo:lo + chunk], sampler, resolved, search, trace=trace, track_reward=track_reward,
                               stats=stats, observer_stats=observed, transition=transition, observers=observers)
            while not state.done:
                output = self.step(state)
                if output is not None and callback is not None:
                    callback(output.step, output)
            tokens += transition.tokens(state)
            traces += [t if trace else None for t in state.traces]
            bar.update(len(state.rows))
        bar.close()
        texts = [self.model.decode_response(t, sampler.match_released) for t in tokens]
        return collect_output(self.model, self.scorer, rows, tokens, texts, traces, stats, sampler, guidance, start,
                              search=search, observer_stats=observed)


def generate(model: DiffusionLM, prompts: Prompt | Sequence[Prompt], reward=None, *,
             sampler: SamplerConfig | None = None, guidance: GuidanceConfig | None = None,
             search: SearchConfig | str | None = None, bridge: VocabBridge | None = None, potential_reward=None,
             progress: bool = True, trace: bool = True, track_reward: bool = False,
             callback: Callable[[int, StepOutput], None] | None = None) -> GenerationOutput:
    """Generate ``sampler.num_samples`` responses per prompt, guided by ``reward`` per ``guidance``.

    Args:
        model: a :class:`~entrgi.models.base.DiffusionLM` adapter (any family).
        prompts: one prompt or a list (user messages for chat models, text prefixes otherwise); a prompt may
            also be a :class:`~entrgi.conversation.Conversation` (system / user / assistant messages).
        reward: the reward model (required unless the rule is ``none`` and the search ``sample``); also re-scores
            every decoded sample on discrete text.
        sampler, guidance: the configs (defaults: the paper's Dream settings, EntRGi M=3, Adam 0.5).
        search: what is searched: a :class:`~entrgi.config.SearchConfig` or a strategy name (``sample``,
            ``best_of_n``, ``particles``; default ``sample``).
        bridge: DLLM -> RM vocabulary bridge (default: by token string).
        potential_reward: a reward on decoded text that weighs particles (see :class:`DiffusionSampler`).
        progress: show a progress bar over the rows.
        trace: record a :class:`~entrgi.sampling.outputs.StepTrace` per step and sample.
        track_reward: after each step, score the predicted completion (committed tokens + argmax at the
            masked slots) with the RM (one extra forward per step, counted apart from the method's cost);
            stored as ``StepTrace.estimate``.
        callback: ``callback(step, output)`` after each step that ran, ``output`` a
            :class:`~entrgi.sampling.state.StepOutput`.
    """
    search = SearchConfig(search) if isinstance(search, str) else search
    return DiffusionSampler(model, reward, bridge, potential_reward).generate(
        prompts, sampler, guidance, search, progress=progress, trace=trace, track_reward=track_reward,
        callback=callback)


__all__ = ["TRANSITIONS", "DiffusionSampler", "bridge_for", "generate", "transition_for"]
