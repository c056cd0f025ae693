"""DiffusionGemma (``google/diffusiongemma-*``) through transformers' own classes (never remote code).

DiffusionGemma is a *block* (canvas) diffusion model: an encoder writes the prompt and the finished canvases
into a KV cache, and a decoder refines a canvas of ``canvas_length`` tokens that starts as uniform random
tokens (no mask token). It runs through the common denoising step with its own transition
(``transition = "canvas"``: :mod:`entrgi.sampling.canvas`), which drives the native loop through one seam,
:class:`NativeCanvasLoop`: the only place entrgi calls transformers' private generation methods
(:data:`CHECKED_TRANSFORMERS` names the versions it was checked on). docs/models.md, "DiffusionGemma".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from ..hub import check_hf_folder, config_vocab_size, load_auto_tokenizer, local_folder, read_config, read_json
from .base import DiffusionLM
from .checkpoint import as_ids

MODEL_TYPES = ("diffusion_gemma",)
#: The transformers versions :class:`NativeCanvasLoop` was checked on (its private calls; tests/test_diffusion_gemma.py).
CHECKED_TRANSFORMERS = (">=5.25", "<5.26")
#: The private ``DiffusionGemmaGenerationMixin`` methods the seam calls.
PRIVATE_METHODS = ("_prepare_generation_config", "_prepare_generated_length", "_prepare_cache_for_generation",
                   "_prepare_sampler", "_prepare_logits_processor", "_prepare_ar_stopping_criteria",
                   "_prepare_diffusion_stopping_criteria", "_prepare_encoder_inputs", "_prepare_denoiser_inputs",
                   "_finalize_canvas", "_prepare_kwargs_for_next_canvas")
#: ``mask_token_id`` of an adapter whose tokenizer has no mask token: canvases are noised with random tokens.
NO_MASK = -1


def generation_eos_ids(module: nn.Module) -> list[int]:
    """The EOS ids the native ``generate`` stops on: the generation config's, else the text config's."""
    gc = getattr(module, "generation_config", None)
    ids = as_ids(getattr(gc, "eos_token_id", None))
    return ids or as_ids(getattr(module.config.get_text_config(), "eos_token_id", None))


class DiffusionGemma(DiffusionLM):
    """A ``DiffusionGemmaForBlockDiffusion`` and its tokenizer as a :class:`~entrgi.models.base.DiffusionLM`.

    The logit width is the text config's ``vocab_size``; no id is barred from the canvas (the native sampler
    draws from the whole vocabulary), except that ids past the tokenizer have no text and no RM row."""

    family = "diffusion_gemma"
    #: The step's stages for this family (:mod:`entrgi.sampling.canvas`).
    transition = "canvas"
    #: ``steps`` per canvas and the response length of the native defaults (a checkpoint's generation config sets
    #: its own: :meth:`settings_defaults`); ``temperature`` 0.7 stands for the native t_max -> t_min schedule.
    SAMPLER_DEFAULTS = {"steps": 48, "max_new_tokens": 256, "num_samples": 1}

    @classmethod
    def checkpoint_defaults(cls, name_or_path: str) -> dict:
        """The native defaults, then a local checkpoint's ``generation_config.json`` (its ``max_denoising_steps``)."""
        folder = local_folder(name_or_path)
        gc = read_json(folder / "generation_config.json") if folder is not None else None
        return cls.defaults_with(gc or {})

    @classmethod
    def defaults_with(cls, generation: dict) -> dict:
        """The model's layer of the settings: the native defaults, then a generation config's denoising steps."""
        sampler = dict(cls.SAMPLER_DEFAULTS)
        steps = generation.get("max_denoising_steps")
        if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
            sampler["steps"] = steps
        return {"sampler": sampler}

    @classmethod
    def from_module(cls, module: nn.Module, tokenizer, **overrides) -> DiffusionGemma:
        """Wrap a built ``DiffusionGemmaForBlockDiffusion`` and its tokenizer (special ids from its configs)."""
        if getattr(module.config, "model_type", None) not in MODEL_TYPES:
            raise ValueError(f"not a DiffusionGemma module: model_type={getattr(module.config, 'model_type', None)!r} "
                             "(expected 'diffusion_gemma').")
        text = module.config.get_text_config()
        eos = generation_eos_ids(module)
        if not eos and tokenizer.eos_token_id is not None:
            eos = [tokenizer.eos_token_id]
        gc = getattr(module, "generation_config", None)
        pad = next((p for p in (getattr(gc, "pad_token_id", None), text.pad_token_id, tokenizer.pad_token_id)
                    if p is not None), eos[0] if eos else 0)
        mask = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else NO_MASK
        kwargs = dict(mask_token_id=mask, eos_token_ids=eos, pad_token_id=pad, shift_logits=False,
                      logit_width=int(text.vocab_size), max_length=getattr(text, "max_position_embeddings", None))
        kwargs.update(overrides)
        model = cls(module.eval().requires_grad_(False), tokenizer, **kwargs)
        model.settings_defaults = cls.defaults_with(gc.to_dict() if gc is not None else {})
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype=None, device=None, device_map=None, revision=None,
                        attn_implementation=None, **overrides) -> DiffusionGemma:
        """Load with ``DiffusionGemmaForBlockDiffusion.from_pretrained`` (a hub id or a local folder; its
        ``generation_config.json`` sets the sampler defaults) and ``AutoTokenizer``, no remote code."""
        folder = local_folder(name_or_path)
        config = check_hf_folder(folder) if folder is not None else read_config(name_or_path, revision)
        if str(config.get("model_type", "")).lower() not in MODEL_TYPES:
            raise ValueError(f"{name_or_path!r} is not a DiffusionGemma checkpoint (model_type="
                             f"{config.get('model_type')!r}); pass the right `family`.")
        tokenizer = load_auto_tokenizer(name_or_path, config_vocab_size(config), revision=revision)
        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        module = DiffusionGemmaForBlockDiffusion.from_pretrained(
            name_or_path, dtype=dtype, device_map=device_map, revision=revision, trust_remote_code=False, **extra)
        if device is not None and device_map is None:
            module = module.to(device)
        return cls.from_module(module, tokenizer, **overrides)

    # ---- what the canvas sampler reads ----------------------------------------------------------------
    @property
    def canvas_length(self) -> int:
        """Tokens per canvas (block)."""
        return int(self.module.config.canvas_length)

    @property
    def generation_config(self):
        """The module's ``DiffusionGemmaGenerationConfig`` (from the checkpoint's generation_config.json)."""
        return self.module.generation_config

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding shared by the encoder and the decoder (``embed_scale`` applied in its forward)."""
        return self.module.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, V) of the canvas ``input_ids[:, -C:]`` (C = :attr:`canvas_length`) given the prefix
        ``input_ids[:, :-C]`` (left-padded per ``attention_mask``): one encoder and one decoder forward, no
        self-conditioning (the first denoising step's view)."""
        C = self.canvas_length
        if input_ids.shape[1] <= C:
            raise ValueError(f"`input_ids` must hold a prefix and a canvas of {C} tokens, got {input_ids.shape[1]}.")
        module = self.module
        cache = DynamicCache(config=module.config.get_text_config(decoder=True))
        out = module(input_ids=input_ids[:, :-C], attention_mask=attention_mask[:, :-C].bool(), cache=cache,
                     position_ids=position_ids[:, :-C], decoder_input_ids=input_ids[:, -C:],
                     decoder_attention_mask=attention_mask.bool(), decoder_position_ids=position_ids[:, -C:])
        return out.logits

    def response_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor, start: int) -> torch.Tensor:
        raise ValueError("DiffusionGemma is a block (canvas) diffusion model without a mask token: its steps run "
                         "through its canvas transition (entrgi.sampling.canvas), not the masked one.")

    def native_loop(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor, **generation: Any
                    ) -> NativeCanvasLoop:
        """The native generation loop of one batch (left-padded ``prompt_ids`` (B, P)), step by step."""
        return NativeCanvasLoop(self.module, prompt_ids, attention_mask, generation)


class NativeCanvasLoop:
    """``DiffusionGemmaGenerationMixin.generate`` (uncompiled path) of one batch, cut into the calls a step makes: the
    same encoder / decoder calls, the native ``EntropyBoundSampler``, temperature schedule and stopping criteria, in
    the native order. The only place entrgi calls transformers' private generation methods (:data:`PRIVATE_METHODS`,
    checked on :data:`CHECKED_TRANSFORMERS`). Random numbers come from the global generator, as natively.

    Args:
        module: the ``DiffusionGemmaForBlockDiffusion``.
        prompt_ids, attention_mask: (B, P) the left-padded prompts.
        generation: ``DiffusionGemmaGenerationConfig`` fields (``max_new_tokens``, ``max_denoising_steps``,
            ``t_min``, ``t_max``, ``stability_threshold``, ``confidence_threshold``, ``entropy_bound``).
    """

    def __init__(self, module: nn.Module, prompt_ids: torch.Tensor, attention_mask: torch.Tensor,
                 generation: dict[str, Any]):
        generation = dict(generation)
        bound = generation.pop("entropy_bound", None)
        if bound is not None:
            generation["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(bound))
        m = self.module = module
        self.gc, _ = m._prepare_generation_config(None, **generation)
        device = prompt_ids.device
        self.input_ids, self.attention_mask = prompt_ids, attention_mask.bool()
        B, self.cur_len = prompt_ids.shape
        self.prompt_length = self.cur_len
        max_length, max_new_tokens = m._prepare_generated_length(self.gc, self.cur_len)
        self.canvas_length = C = m.config.canvas_length
        self.n_canvases = math.ceil(max_new_tokens / C)
        self.max_denoising_steps = self.gc.max_denoising_steps
        self.finished_sequences = torch.zeros(B, dtype=torch.bool, device=device)
        self.cache = m._prepare_cache_for_generation(generation_config=self.gc, batch_size=B, max_length=max_length)
        self.eos = torch.tensor(self.gc.eos_token_id, device=device) if self.gc.eos_token_id is not None else None
        self.encoder_position_ids = torch.arange(0, self.cur_len, dtype=torch.int32, device=device).unsqueeze(0)
        self.decoder_position_ids = torch.arange(self.cur_len, self.cur_len + C, dtype=torch.int32,
                                                 device=device).unsqueeze(0)
        self.decoder_attention_mask = torch.nn.functional.pad(self.attention_mask, (0, C), value=True)
        self.sampler = m._prepare_sampler(self.gc)
        self.logits_processor = m._prepare_logits_processor(self.gc, None)
        self.stopping_criteria = m._prepare_ar_stopping_criteria(self.gc, None)
        self.diffusion_stop = m._prepare_diffusion_stopping_criteria(self.gc)
        self.embeddings_dtype = m.model.decoder.embed_tokens.weight.dtype
        self.is_prefill = True
        self.mask_mapping: Any = None

    @property
    def adaptive_stop(self) -> bool:
        """True when the native loop stops a canvas's denoising early (its diffusion stopping criteria)."""
        return self.diffusion_stop is not None

    def start_canvas(self) -> tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Encode what the cache lacks (the prompt, then the last canvas) and draw the canvas's random start:
        (tokens encoded per row, current canvas (B, C), self-conditioning logits (None), finished (B,) bool)."""
        m, B = self.module, self.input_ids.shape[0]
        unprocessed, encoder_mask = m._prepare_encoder_inputs(
            input_ids=self.input_ids, attention_mask=self.attention_mask,
            encoder_position_ids=self.encoder_position_ids, cache=self.cache, is_prefill=self.is_prefill,
            canvas_length=self.canvas_length, batch_size=B)
        self.cache = m.model.encoder(input_ids=unprocessed, attention_mask=encoder_mask, cache=self.cache,
                                     position_ids=self.encoder_position_ids).cache
        self.is_prefill = False
        canvas, sc_logits, self.mask_mapping, finished = m._prepare_denoiser_inputs(
            decoder_attention_mask=self.decoder_attention_mask, cache=self.cache, sampler=self.sampler,
            diffusion_stopping_criteria=self.diffusion_stop, batch_size=B, device=self.input_ids.device,
            model_kwargs={})
        return unprocessed.shape[1], canvas, sc_logits, finished

    def logits(self, canvas: torch.Tensor, sc_logits: torch.Tensor | None, step: torch.Tensor) -> torch.Tensor:
        """The decoder's logits of ``canvas`` (B, C) at denoising ``step`` (counting down), tempered by the native
        schedule: (B, C, V)."""
        raw = self.module(decoder_input_ids=canvas, self_conditioning_logits=sc_logits,
                          decoder_attention_mask=self.mask_mapping, cache=self.cache,
                          decoder_position_ids=self.decoder_position_ids).logits
        return self.logits_processor(self.input_ids, raw, cur_step=step)

    def accept(self, canvas: torch.Tensor, drawn: torch.Tensor, logits: torch.Tensor,
               step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The entropy bound's acceptance: (accepted canvas (B, C), accepted slots (B, C) bool)."""
        accepted = self.sampler.accept_canvas(canvas, drawn, logits, step).clone()
        return accepted, self.sampler.accepted_token_mask.clone()

    def renoise(self, accepted: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The next step's canvas: the slots not accepted get fresh random tokens."""
        return self.sampler.renoise_canvas(accepted, step).clone()

    def stopped(self, argmax_canvas: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(B,) the rows the adaptive stop ends now (only with :attr:`adaptive_stop`)."""
        return self.diffusion_stop(argmax_canvas, logits)

    def finish_canvas(self, argmax_canvas: torch.Tensor) -> bool:
        """Append the canvas (its argmax) to the sequences, pad after EOS, and prepare the next canvas; True when
        every sequence has finished."""
        m, C = self.module, self.canvas_length
        self.input_ids = torch.cat([self.input_ids, argmax_canvas], dim=-1)
        self.input_ids, self.finished_sequences = m._finalize_canvas(
            input_ids=self.input_ids, finished_sequences=self.finished_sequences, generation_config=self.gc,
            stopping_criteria=self.stopping_criteria, canvas_length=C, eos_tensor=self.eos)
        if bool(torch.all(self.finished_sequences)):
            return True
        (self.cur_len, self.decoder_attention_mask, self.attention_mask, self.encoder_position_ids,
         self.decoder_position_ids) = m._prepare_kwargs_for_next_canvas(
            attention_mask=self.attention_mask, decoder_attention_mask=self.decoder_attention_mask,
            decoder_position_ids=self.decoder_position_ids, canvas_length=C, cur_len=self.cur_len)
        return False

    def response_ids(self) -> torch.Tensor:
        """(B, k·C) the canvases finished so far."""
        return self.input_ids[:, self.prompt_length:]
