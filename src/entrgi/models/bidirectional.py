"""A transformers decoder stack run as a bidirectional encoder, and the adapter that reads it.

Dream (Qwen2 layers) and LLaDA (LLaMA layers) are decoder-only transformers trained without the
causal mask. :class:`BidirectionalLM` holds a transformers ``Qwen2Model``/``LlamaModel`` (used as a
container of its embedding, decoder layers, rotary embedding and final norm) plus an output layer,
and runs the layers itself with a *bidirectional* mask: every query sees every real key, padding
keys are masked (``transformers.masking_utils.create_bidirectional_mask``), and each attention
module's ``is_causal`` flag is off so that SDPA/flash kernels never add a causal mask of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from .base import DiffusionLM
from .checkpoint import build_empty, load_safetensors, load_tokenizer, read_config, resolve_checkpoint


class BidirectionalLM(nn.Module):
    """``decoder`` (a transformers ``*Model`` with ``embed_tokens``/``layers``/``rotary_emb``/``norm``) + ``lm_head``.

    Module names follow the HF causal-LM layout (``model.*``, ``lm_head``), which is Dream's
    checkpoint layout; other layouts are renamed at load time.
    """

    def __init__(self, decoder: nn.Module):
        super().__init__()
        cfg = decoder.config
        self.model = decoder
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = decoder.embed_tokens.weight
        for layer in decoder.layers:
            layer.self_attn.is_causal = False

    @property
    def config(self):
        return self.model.config

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, N, h); ``attention_mask`` (B, N) 1 = real token, 0 = padding."""
        hidden = self.model.embed_tokens(input_ids)  # (B, N, h)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=hidden.device).expand(input_ids.shape[0], -1)
        # (B, 1, N, N) with padding keys off, or None when nothing is padded (full attention)
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        rope = self.model.rotary_emb(hidden, position_ids)  # (cos, sin), each (B, N, head_dim)
        for layer in self.model.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=position_ids)
        return self.model.norm(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, N, V) of every position from its own hidden state (no shift)."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask, position_ids))


class BidirectionalDLLM(DiffusionLM):
    """Adapter around a :class:`BidirectionalLM`: the output layer runs only on the slots asked for.

    A family sets how its checkpoint is read: ``module_class`` (built from the transformers config
    that ``config_from_json`` derives from config.json), ``tokenizer_class``, ``rename`` (checkpoint
    weight name -> module name) and ``decoder_layer`` (never split by ``device_map``)."""

    module: BidirectionalLM
    module_class: type[BidirectionalLM]
    config_from_json: Callable
    tokenizer_class = None
    decoder_layer: str = ""

    @staticmethod
    def rename(checkpoint_name: str) -> str | None:
        return checkpoint_name

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype: torch.dtype | None = None, device=None,
                        device_map=None, attn_implementation: str | None = None, revision: str | None = None,
                        **overrides) -> BidirectionalDLLM:
        """Load a checkpoint (hub id or folder: config.json, (sharded) safetensors, tokenizer files).

        Args:
            dtype: weights dtype, e.g. ``torch.bfloat16`` (None = as stored).
            device: one device for everything.
            device_map: accelerate placement over several devices (``"auto"``, a dict, ...).
            attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2``.
            revision: hub revision.
        """
        folder = resolve_checkpoint(name_or_path, revision)
        raw = read_config(folder)
        try:
            config = cls.config_from_json(raw, attn_implementation)
        except ValueError as e:
            raise ValueError(f"{folder / 'config.json'}: {e}") from None
        tokenizer = load_tokenizer(folder, cls.tokenizer_class, embedding_rows=config.vocab_size)
        module = build_empty(lambda: cls.module_class(config))
        tied = {"lm_head.weight": "model.embed_tokens.weight"} if config.tie_word_embeddings else None
        module = load_safetensors(module, folder, cls.rename, tied=tied, dtype=dtype, device=device,
                                  device_map=device_map, no_split_module_classes=[cls.decoder_layer])
        return cls.from_module(module, tokenizer, raw, **overrides)

    def response_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                        start: int) -> torch.Tensor:
        """Logits (B, N − start, V) of the slots ``start …``; with the right shift these come from the
        hidden states at ``start − 1 … N − 2`` (slot 0 keeps its own). V = 152k makes the full (B, N, V)
        tensor the largest activation, so it is never formed."""
        hidden = self.module.hidden_states(input_ids, attention_mask, position_ids)  # (B, N, h)
        n = hidden.shape[1]
        if self.shift_logits:
            src = torch.arange(start - 1, n - 1, device=hidden.device).clamp_min(0)
            hidden = hidden[:, src]  # (B, N − start, h)
        else:
            hidden = hidden[:, start:]
        return self.module.lm_head(hidden).to(input_ids.device)  # (B, N − start, V)
