"""A transformers decoder stack run as a bidirectional encoder, and the adapter that reads it.

:class:`BidirectionalLM` holds a ``Qwen2Model`` / ``LlamaModel`` (its embedding, decoder layers, rotary
embedding and final norm) plus an output layer, and runs the layers with a bidirectional mask: padding
keys masked, every attention module's ``is_causal`` off. The output layer runs only on response slots.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from ..hub import load_tokenizer, read_config, resolve_checkpoint
from .base import DiffusionLM
from .cache import KV_CACHE_MODES, BlockKVCache
from .checkpoint import build_empty, load_safetensors


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
        params = inspect.signature(decoder.layers[0].forward).parameters if len(decoder.layers) else {}
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.x / older 5.x

    @property
    def config(self):
        return self.model.config

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, *, cache: BlockKVCache | None = None,
                      window: tuple[int, int] | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, N, h); ``attention_mask`` (B, N) 1 = real token, 0 = padding.

        With ``cache`` (:class:`~entrgi.models.cache.BlockKVCache`) every layer's keys/values go through it:
        recorded during a full forward, or, with ``window`` = (a, b), only positions a … b − 1 run (their
        own ids and position ids) against the cached keys/values of all N positions; returns (B, b − a, h)."""
        B, N = input_ids.shape
        a, b = window if window is not None else (0, N)
        hidden = self.model.embed_tokens(input_ids[:, a:b])  # (B, q, h)
        if position_ids is None:
            position_ids = torch.arange(N, device=hidden.device).expand(B, -1)
        position_ids = position_ids[:, a:b]
        # (B, 1, q, N) with padding keys off, or None when nothing is padded (full attention)
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        rope = self.model.rotary_emb(hidden, position_ids)  # (cos, sin), each (B, q, head_dim)
        extra = {self._cache_kwarg: cache} if cache is not None else {}
        for layer in self.model.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=position_ids, **extra)
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

    # ---- KV cache (block decoding) -----------------------------------------------------------------
    KV_CACHE_MODES = KV_CACHE_MODES

    def _window_head(self, hidden: torch.Tensor, offset: int, start: int, n: int) -> tuple[slice, torch.Tensor]:
        """Logits of the response slots ``start … n − 1`` whose source hidden state (slot j: j − 1 with the
        right shift, slot 0 its own) lies in ``hidden`` (B, q, h) = positions offset … offset + q − 1: (those
        slots as a slice relative to ``start``, their logits)."""
        q, shift = hidden.shape[1], int(self.shift_logits)
        lo = 0 if (shift and offset == 0 and start == 0) else max(start, offset + shift)
        hi = min(n, offset + q + shift)
        src = (torch.arange(lo, hi, device=hidden.device) - shift).clamp_min(0) - offset
        return slice(lo - start, hi - start), self.module.lm_head(hidden[:, src])

    def response_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                        start: int) -> torch.Tensor:
        """Logits (B, N − start, V) of the slots ``start …``; with the right shift these come from the
        hidden states at ``start − 1 … N − 2`` (slot 0 keeps its own). V = 152k makes the full (B, N, V)
        tensor the largest activation, so it is never formed.

        With a block begun on this canvas (:meth:`begin_block`) the DLLM KV cache is used: see
        :mod:`entrgi.models.cache`."""
        kv = self._kv
        if kv is not None and kv.owns(input_ids):
            return self._cached_response_logits(kv, input_ids, attention_mask, position_ids, start)
        return self._logits_of(self.module.hidden_states(input_ids, attention_mask, position_ids), start,
                               input_ids.device)

    def _logits_of(self, hidden: torch.Tensor, start: int, device) -> torch.Tensor:
        """Logits (B, N − start, V) of the slots ``start …`` from all hidden states (B, N, h)."""
        n = hidden.shape[1]
        if self.shift_logits:
            src = torch.arange(start - 1, n - 1, device=hidden.device).clamp_min(0)
            hidden = hidden[:, src]  # (B, N − start, h)
        else:
            hidden = hidden[:, start:]
        return self.module.lm_head(hidden).to(device)  # (B, N − start, V)

    def _cached_response_logits(self, kv: BlockKVCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                position_ids: torch.Tensor, start: int) -> torch.Tensor:
        n = input_ids.shape[1]
        if not kv.usable(input_ids, attention_mask, position_ids):  # first step of the block, or a changed canvas
            kv.begin_recording()
            hidden = self.module.hidden_states(input_ids, attention_mask, position_ids, cache=kv)
            kv.query_tokens = n
            logits = self._logits_of(hidden, start, input_ids.device)
            kv.logit_slots = logits.shape[1]
            kv.finish_recording(input_ids, attention_mask, position_ids, logits)
            return logits
        a, b = kv.window
        hidden = self.module.hidden_states(input_ids, attention_mask, position_ids, cache=kv, window=(a, b))
        kv.query_tokens = b - a
        kv.cached_forwards += 1
        slots, fresh = self._window_head(hidden, a, start, n)
        kv.logit_slots = fresh.shape[1]
        out = kv.logits.clone()  # the block's first step at the slots whose source is outside the window
        out[:, slots] = fresh.to(out.device, out.dtype)
        return out
