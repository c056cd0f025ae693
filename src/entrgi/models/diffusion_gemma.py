"""DiffusionGemma (``google/diffusiongemma-*``) through transformers' own classes (never remote code).

DiffusionGemma is a *block* (canvas) diffusion model: an encoder writes the prompt and the finished canvases
into a KV cache, and a decoder refines a canvas of ``canvas_length`` tokens that starts as uniform random
tokens (no mask token). It is sampled by :mod:`entrgi.sampling.canvas` (``entrgi.generate`` dispatches there
for this adapter), not by the masked sampler. docs/models.md, "DiffusionGemma".
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiffusionLM
from .checkpoint import as_ids, check_hf_folder, config_vocab_size, load_auto_tokenizer, local_folder, read_config

MODEL_TYPES = ("diffusion_gemma",)
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
    #: ``entrgi.generate`` runs :func:`entrgi.sampling.canvas.generate_canvas` for adapters with this set.
    sampling_loop = "canvas"

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
        return cls(module.eval().requires_grad_(False), tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype=None, device=None, device_map=None, revision=None,
                        attn_implementation=None, **overrides) -> DiffusionGemma:
        """Load with ``DiffusionGemmaForBlockDiffusion.from_pretrained`` (a hub id or a local folder; its
        ``generation_config.json`` sets the sampler defaults) and ``AutoTokenizer``, no remote code."""
        from transformers import DiffusionGemmaForBlockDiffusion

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
        from transformers import DynamicCache

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
        raise ValueError("DiffusionGemma is a block (canvas) diffusion model without a mask token: sample it with "
                         "`entrgi.generate` (which runs entrgi.sampling.canvas), not the masked sampler.")
