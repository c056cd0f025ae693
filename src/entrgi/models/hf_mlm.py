"""Any Hugging Face masked LM (BERT, RoBERTa, ModernBERT, ...) as a masked diffusion LM.

An encoder MLM is bidirectional, predicts each position from its own hidden state (no shift), and
uses its tokenizer's mask token. ``[SEP]``/``</s>`` and padding end a response; ``[CLS]``/``<s>``,
``[UNK]`` and the mask token are never sampled.

For the layouts in :data:`SPLIT_LAYOUTS` (``BertForMaskedLM``, ``RobertaForMaskedLM``) the encoder and the
MLM head run separately: the head (with its V-wide logit layer) only on the response slots, and the block-wise
DLLM KV cache (``SamplerConfig.kv_cache`` = ``prefix`` / ``dual``, :mod:`entrgi.models.cache`; no logit shift)
is available. Other architectures run the whole ``module(...)`` and have no KV cache.
"""

from __future__ import annotations

import inspect

import torch
from transformers import AutoModelForMaskedLM, BertForMaskedLM, RobertaForMaskedLM

from ..hub import check_hf_folder, config_vocab_size, load_auto_tokenizer, local_folder, read_config
from .base import DiffusionLM
from .cache import KV_CACHE_MODES, BlockKVCache

#: ``*ForMaskedLM`` classes (exact types) whose forward is ``head(encoder(...).last_hidden_state)``, with the
#: encoder's and the head's attribute names; their self-attention passes its keys/values through
#: ``cache.update(key, value, layer_idx)`` and their mask is built from the (B, N) padding mask alone.
SPLIT_LAYOUTS: dict[type, tuple[str, str]] = {
    BertForMaskedLM: ("bert", "cls"),
    RobertaForMaskedLM: ("roberta", "lm_head"),
}


class HFMaskedLM(DiffusionLM):
    family = "hf_mlm"

    def __init__(self, module, tokenizer, **kwargs):
        super().__init__(module, tokenizer, **kwargs)
        split = SPLIT_LAYOUTS.get(type(module))
        self._split = split
        #: ``prefix`` / ``dual`` for the layouts of :data:`SPLIT_LAYOUTS`, else only ``none``
        self.KV_CACHE_MODES = KV_CACHE_MODES if split is not None else ("none",)
        if split is not None:
            params = inspect.signature(getattr(module, split[0]).forward).parameters
            self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # transformers 5.x spellings

    @classmethod
    def from_module(cls, module, tokenizer, **overrides) -> HFMaskedLM:
        """Wrap an already-built ``*ForMaskedLM`` module and its tokenizer."""
        if tokenizer.mask_token_id is None:
            raise ValueError("`tokenizer` has no mask token: a masked LM needs one to be a diffusion LM.")
        eos = {i for i in (tokenizer.sep_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
        invalid = {i for i in (tokenizer.cls_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id)
                   if i is not None} - eos
        out_emb = module.get_output_embeddings()
        width = out_emb.weight.shape[0] if out_emb is not None else len(tokenizer)
        max_len = getattr(module.config, "max_position_embeddings", None)
        kwargs = dict(mask_token_id=tokenizer.mask_token_id, eos_token_ids=eos,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos),
                      shift_logits=False, logit_width=width, invalid_token_ids=invalid,
                      use_chat_template=False, max_length=max_len)
        kwargs.update(overrides)
        return cls(module.eval().requires_grad_(False), tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype=None, device=None, device_map=None, revision=None,
                        attn_implementation=None, **overrides) -> HFMaskedLM:
        """Load with ``AutoModelForMaskedLM`` from a hub id or a local folder (no remote code); ``device_map``
        places it with accelerate (``"auto"`` or a dict), else ``device`` holds all of it. ``revision`` and
        ``attn_implementation`` go to transformers as for the other families; ``overrides`` to
        :meth:`from_module`. A broken local folder or tokenizer is a ``ValueError`` before loading."""
        folder = local_folder(name_or_path)
        config = check_hf_folder(folder) if folder is not None else read_config(name_or_path, revision)
        tokenizer = load_auto_tokenizer(name_or_path, config_vocab_size(config), revision=revision)
        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        module = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=dtype, device_map=device_map,
                                                      revision=revision, trust_remote_code=False, **extra)
        if device is not None and device_map is None:
            module = module.to(device)
        return cls.from_module(module, tokenizer, **overrides)

    # ---- encoder / head split ---------------------------------------------------------------------
    @property
    def splits_head(self) -> bool:
        """True when the encoder and the MLM head run separately (the layouts of :data:`SPLIT_LAYOUTS`)."""
        return self._split is not None

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None, cache: BlockKVCache | None = None) -> torch.Tensor:
        """The encoder's last hidden states (B, q, h) of ``input_ids`` (B, q); with ``cache`` every layer's
        keys/values go through it (``attention_mask`` stays the whole (B, N) canvas's)."""
        extra = {self._cache_kwarg: cache} if cache is not None else {}
        out = getattr(self.module, self._split[0])(input_ids=input_ids, attention_mask=attention_mask,
                                                   position_ids=position_ids, **extra)
        return out.last_hidden_state

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self._split[1])(hidden)

    def response_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                        start: int) -> torch.Tensor:
        """Logits (B, N − start, V) of the slots ``start …``: the encoder on all N positions, the MLM head only
        on those slots (the same values as the whole module's, sliced). With a block begun on this canvas
        (:meth:`begin_block`) the DLLM KV cache is used: see :mod:`entrgi.models.cache`. Architectures outside
        :data:`SPLIT_LAYOUTS` run the whole module."""
        if self._split is None:
            return super().response_logits(input_ids, attention_mask, position_ids, start)
        kv = self._kv
        if kv is not None and kv.owns(input_ids):
            return self._cached_response_logits(kv, input_ids, attention_mask, position_ids, start)
        return self._head(self._encode(input_ids, attention_mask, position_ids)[:, start:])

    # ---- KV cache (block decoding: DiffusionLM.begin_block / kv_cache; no logit shift) -------------
    def _default_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The position ids the encoder uses when given none (RoBERTa: counted from its padding id)."""
        emb = getattr(self.module, self._split[0]).embeddings
        if hasattr(emb, "create_position_ids_from_input_ids"):
            return emb.create_position_ids_from_input_ids(input_ids, emb.padding_idx)
        B, N = input_ids.shape
        return torch.arange(N, device=input_ids.device).expand(B, -1)

    def _cached_response_logits(self, kv: BlockKVCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                position_ids: torch.Tensor | None, start: int) -> torch.Tensor:
        n = input_ids.shape[1]
        if not kv.usable(input_ids, attention_mask, position_ids):  # first step of the block, or a changed canvas
            kv.begin_recording()
            hidden = self._encode(input_ids, attention_mask, position_ids, cache=kv)
            kv.query_tokens = n
            logits = self._head(hidden[:, start:])
            kv.logit_slots = logits.shape[1]
            kv.finish_recording(input_ids, attention_mask, position_ids, logits)
            return logits
        a, b = kv.window
        # the window's queries (own ids and positions) against all N keys; the mask is the canvas's (B, N) one
        pos = position_ids if position_ids is not None else self._default_positions(input_ids)
        hidden = self._encode(input_ids[:, a:b], attention_mask, pos[:, a:b], cache=kv)  # (B, b − a, h)
        kv.query_tokens = b - a
        kv.cached_forwards += 1
        lo, hi = max(start, a), min(n, b)  # response slots whose hidden state is in the window
        fresh = self._head(hidden[:, lo - a:hi - a])
        kv.logit_slots = fresh.shape[1]
        out = kv.logits.clone()  # the block's first step at the slots outside the window
        out[:, lo - start:hi - start] = fresh.to(out.device, out.dtype)
        return out
