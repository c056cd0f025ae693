"""Any Hugging Face masked LM (BERT, RoBERTa, ModernBERT, ...) as a masked diffusion LM.

An encoder MLM is bidirectional, predicts each position from its own hidden state (no shift), and
uses its tokenizer's mask token. ``[SEP]``/``</s>`` and padding end a response; ``[CLS]``/``<s>``,
``[UNK]`` and the mask token are never sampled.
"""

from __future__ import annotations

from transformers import AutoModelForMaskedLM

from .base import DiffusionLM
from .checkpoint import check_hf_folder, config_vocab_size, load_auto_tokenizer, local_folder, read_config


class HFMaskedLM(DiffusionLM):
    family = "hf_mlm"

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
