"""The canvas transition of block diffusion models with uniform-noise canvases (DiffusionGemma).

The same step as every family (forward → guide → draw → choose → commit), with DiffusionGemma's own stages, step
for step the native ``DiffusionGemmaGenerationMixin.generate`` (through the adapter's seam,
:class:`~entrgi.models.diffusion_gemma.NativeCanvasLoop`): canvases of ``canvas_length`` random tokens are refined
one after another; at a step the decoder's logits are tempered (the t_max -> t_min schedule), a canvas is drawn from
them, the lowest-entropy tokens are accepted (the entropy bound) and the rest renoised; the adaptive stop ends a
canvas early. Guidance adds one thing before the draw: the tempered logits of the slots not accepted at the previous
step are optimised by the common guidance stage, on the RM's view of the response so far (the finished canvases and
the current one). Rule ``none`` reproduces the native ``generate`` exactly. docs/models.md, "DiffusionGemma".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..config import GuidanceConfig, ResolvedGuidance, SamplerConfig
from ..models.base import DiffusionLM
from .state import DenoisingState

#: SamplerConfig fields the canvas transition reads (``temperature`` only as 0 = argmax canvases); every other
#: field must keep its default.
SAMPLER_FIELDS = ("max_new_tokens", "num_samples", "seed", "batch_size", "steps", "temperature", "entropy_bound",
                  "t_min", "t_max", "stability_threshold", "confidence_threshold")
#: GuidanceConfig fields (the guidance schedules) the canvas transition does not implement.
UNSUPPORTED_GUIDANCE = ("guide_every", "guide_until", "guide_min_weight", "guide_carry")
#: The native generation config's names of the canvas fields.
NATIVE_NAMES = {"steps": "max_denoising_steps", "max_new_tokens": "max_new_tokens", "entropy_bound": "entropy_bound",
                "t_min": "t_min", "t_max": "t_max", "stability_threshold": "stability_threshold",
                "confidence_threshold": "confidence_threshold"}


@dataclass
class CanvasState:
    """The canvas transition's part of a :class:`~entrgi.sampling.state.DenoisingState`.

    Attributes:
        loop: the native loop of the batch (the adapter's seam).
        canvas: the index of the current canvas; step: the step within it.
        current: (B, C) the canvas the decoder reads; argmax: (B, C) its argmax tokens so far.
        sc_logits: (B, C, V) the self-conditioning logits (None at a canvas's first step).
        accepted: (B, C) the slots accepted at the previous step (none at a canvas's first step).
        finished: (B,) the rows whose denoising of this canvas stopped (adaptive stop).
        active: (B,) the rows the current step runs for; proposal_canvas: the accepted canvas between choose
            and commit.
    """

    loop: Any
    current: torch.Tensor
    argmax: torch.Tensor
    sc_logits: torch.Tensor | None
    accepted: torch.Tensor
    finished: torch.Tensor
    canvas: int = 0
    step: int = 0
    active: torch.Tensor | None = None
    proposal_canvas: torch.Tensor | None = None


class CanvasTransition:
    """DiffusionGemma's stages of the denoising step (see the module docstring). One instance serves the batches
    of one run: the global random stream, seeded with ``sampler.seed`` at the first batch, carries over them as
    in one native ``generate`` call under ``torch.manual_seed(seed)``."""

    name = "canvas"
    tracks_reward = False

    def __init__(self, model: DiffusionLM):
        self.model = model
        self.rng_state: tuple | None = None
        self.seed: int | None = None

    # ---- checks and set-up ----------------------------------------------------------------------------------
    def check(self, sampler: SamplerConfig, guidance: GuidanceConfig | None = None) -> None:
        """``ValueError`` for settings that do not apply to canvases (masks, remasking, blocks, KV-cache modes,
        a temperature other than 0 or the schedule's, the guidance schedules)."""
        default = SamplerConfig()
        changed = [(f.name, getattr(sampler, f.name), getattr(default, f.name)) for f in dataclasses.fields(sampler)
                   if f.name not in SAMPLER_FIELDS and getattr(sampler, f.name) != getattr(default, f.name)]
        if changed:
            what = "; ".join(f"`{name}` = {value!r} (default {base!r})" for name, value, base in changed)
            raise ValueError(f"{what}: does not apply to the canvas sampler of DiffusionGemma (entropy-bound "
                             "acceptance of random-token canvases: no masks, remasking, blocks or KV-cache modes); "
                             "leave it at its default (docs/models.md, DiffusionGemma).")
        if sampler.temperature not in (0, default.temperature):
            raise ValueError(f"`temperature` = {sampler.temperature}: DiffusionGemma's temperature follows the "
                             "schedule t_max -> t_min over the denoising steps; set `t_min` / `t_max` (CLI --t-min, "
                             "--t-max) instead, or `temperature` 0 for greedy draws.")
        if guidance is not None:
            base = GuidanceConfig()
            for name in UNSUPPORTED_GUIDANCE:
                if getattr(guidance, name) != getattr(base, name):
                    raise ValueError(f"`{name}` = {getattr(guidance, name)!r} does not apply to the canvas sampler of "
                                     f"DiffusionGemma (it guides every denoising step): leave it at "
                                     f"{getattr(base, name)!r}.")

    def resolve_guidance(self, guidance: GuidanceConfig, sampler: SamplerConfig) -> ResolvedGuidance:
        """The logits guided are already tempered by the schedule and drawn from in full: ``None`` means 1.0 for
        both temperatures and for the hard sample's top-p."""
        one = lambda v: 1.0 if v is None else v  # noqa: E731
        return ResolvedGuidance(guidance, relaxation_temperature=one(guidance.relaxation_temperature),
                                entropy_temperature=one(guidance.entropy_temperature),
                                hard_top_p=one(guidance.hard_top_p), top_k=None)

    def response_length(self, sampler: SamplerConfig) -> int:
        """Every canvas's slots: ceil(max_new_tokens / C) · C (all returned, as natively)."""
        C = self.model.canvas_length
        return math.ceil(sampler.max_new_tokens / C) * C

    def invalid_bias(self, sampler: SamplerConfig, device) -> torch.Tensor:
        """No id is barred (the native sampler draws from the whole vocabulary)."""
        return torch.zeros(self.model.logit_width, device=device)

    def generation_kwargs(self, sampler: SamplerConfig) -> dict[str, Any]:
        """The native generation config's fields set by ``sampler`` (None = the checkpoint's own)."""
        return {native: getattr(sampler, name) for name, native in NATIVE_NAMES.items()
                if getattr(sampler, name) is not None}

    def begin(self, state: DenoisingState) -> None:
        """Start the batch's native loop and its first canvas."""
        if self.seed is None:
            self.seed = state.sampler.seed
        P = state.prompt_length
        loop = self.model.native_loop(state.x[:, :P], state.attention_mask[:, :P].bool(),
                                      **self.generation_kwargs(state.sampler))
        state.transition_state = self.start_canvas(state, loop, 0)

    def start_canvas(self, state: DenoisingState, loop: Any, index: int) -> CanvasState:
        with self.rng():
            tokens, canvas, sc_logits, finished = loop.start_canvas()
        state.stats.count_dllm_forward(canvas.shape[0], tokens, 0)
        accepted = torch.zeros(canvas.shape, dtype=torch.bool, device=canvas.device)  # none before the first step
        return CanvasState(loop, canvas, canvas, sc_logits, accepted, finished, canvas=index)

    @contextmanager
    def rng(self) -> Iterator[None]:
        """The run's own global random stream (the native loop draws from the global generator)."""
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and \
            torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            if self.rng_state is None:
                torch.manual_seed(self.seed)
            else:
                torch.set_rng_state(self.rng_state[0])
                for d, s in zip(devices, self.rng_state[1]):
                    torch.cuda.set_rng_state(s, d)
            try:
                yield
            finally:
                self.rng_state = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices])

    # ---- the counters ---------------------------------------------------------------------------------------
    def block(self, state: DenoisingState) -> int:
        """The current canvas."""
        return state.transition_state.canvas

    def max_steps(self, state: DenoisingState) -> int:
        loop = state.transition_state.loop
        return loop.n_canvases * loop.max_denoising_steps

    def schedule_step(self, state: DenoisingState) -> int:
        return state.transition_state.step

    def open_slots(self, state: DenoisingState) -> tuple[torch.Tensor, torch.Tensor, slice]:
        """(the slots not accepted at the previous step of the rows still denoising (B, C), the same as candidates,
        the current canvas's window)."""
        cs = state.transition_state
        cs.active = ~(cs.finished | cs.loop.finished_sequences)
        open_ = ~cs.accepted & cs.active[:, None]
        C = cs.loop.canvas_length
        return open_, open_, slice(cs.canvas * C, (cs.canvas + 1) * C)

    def idle(self, state: DenoisingState, candidates: torch.Tensor) -> bool:
        """Never: a canvas step runs for its active rows until the adaptive stop or the last step ends it."""
        return False

    def active_rows(self, state: DenoisingState) -> torch.Tensor:
        """(B,) the rows still denoising the current canvas."""
        return state.transition_state.active.cpu()

    def window_ids(self, state: DenoisingState) -> torch.Tensor:
        return state.transition_state.current

    def rm_score(self, state: DenoisingState):
        cs = state.transition_state
        return state.reward_view.window_score(cs.loop.response_ids(), cs.loop.canvas_length)

    def native_step(self, state: DenoisingState) -> torch.Tensor:
        """The native loop's step counter (it counts down from ``max_denoising_steps`` to 1)."""
        cs = state.transition_state
        return torch.tensor(cs.loop.max_denoising_steps - cs.step, device=cs.current.device, dtype=torch.int32)

    # ---- the stages -----------------------------------------------------------------------------------------
    def forward(self, state: DenoisingState, masked: torch.Tensor) -> torch.Tensor:
        """The decoder's tempered logits of the current canvas (B, C, V); counted in ``state.stats``."""
        cs = state.transition_state
        logits = cs.loop.logits(cs.current, cs.sc_logits, self.native_step(state))
        B, C = cs.current.shape
        state.stats.count_dllm_forward(B, C, C)
        return logits

    def draw(self, state: DenoisingState, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """A whole canvas (B, C) from the (guided) tempered logits: sampled, or their argmax at ``temperature`` 0."""
        if state.sampler.temperature == 0:
            return logits.argmax(-1)
        B, C, V = logits.shape
        with self.rng():
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            return torch.multinomial(probs.view(-1, V), num_samples=1).squeeze(-1).view(B, C)

    def choose(self, state: DenoisingState, logits: torch.Tensor, guided: torch.Tensor, candidates: torch.Tensor,
               drawn: torch.Tensor) -> torch.Tensor:
        """The slots the entropy bound accepts (B, C), on the (guided) tempered logits."""
        cs = state.transition_state
        cs.proposal_canvas, accepted = cs.loop.accept(cs.current, drawn, guided, self.native_step(state))
        return accepted

    def commit(self, state: DenoisingState, commit: torch.Tensor, candidates: torch.Tensor, drawn: torch.Tensor,
               guided: torch.Tensor) -> torch.Tensor:
        """Renoise the slots not accepted, update the adaptive stop and the self-conditioning logits; returns the
        drawn canvas (B, C)."""
        cs, loop = state.transition_state, state.transition_state.loop
        new_argmax = guided.argmax(-1)
        with self.rng():
            new_current = loop.renoise(cs.proposal_canvas, self.native_step(state))
        processed = guided
        if loop.adaptive_stop:
            if cs.finished.any():
                new_argmax = torch.where(cs.finished[:, None], cs.argmax, new_argmax)
                new_current = torch.where(cs.finished[:, None], cs.current, new_current)
                processed = torch.where(cs.finished[:, None, None], cs.sc_logits, processed)
            cs.finished |= loop.stopped(new_argmax, processed)
        cs.sc_logits = processed.to(loop.embeddings_dtype)
        cs.accepted = torch.where(cs.active[:, None], commit, cs.accepted)
        cs.current, cs.argmax = new_current, new_argmax
        C = loop.canvas_length
        state.response[:, cs.canvas * C:(cs.canvas + 1) * C] = new_argmax
        return drawn

    def advance(self, state: DenoisingState) -> None:
        """Next step; at a canvas's end (adaptive stop, or its last step) finish it and start the next."""
        cs, loop = state.transition_state, state.transition_state.loop
        state.step += 1
        cs.step += 1
        if not (bool(torch.all(cs.finished)) or cs.step >= loop.max_denoising_steps):
            return
        all_done = loop.finish_canvas(cs.argmax)
        C = loop.canvas_length
        state.response[:, cs.canvas * C:(cs.canvas + 1) * C] = loop.input_ids[:, -C:]
        if all_done or cs.canvas + 1 >= loop.n_canvases:
            state.finished = True
            return
        state.transition_state = self.start_canvas(state, loop, cs.canvas + 1)

    def skip_block(self, state: DenoisingState) -> None:
        raise AssertionError("a canvas step is never idle")

    def tokens(self, state: DenoisingState) -> list[list[int]]:
        """Every finished canvas of every row (pad after the first EOS), as the native ``generate`` returns them."""
        return state.transition_state.loop.response_ids().tolist()


__all__ = ["CanvasState", "CanvasTransition"]
