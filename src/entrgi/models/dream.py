"""Dream (``Dream-org/Dream-v0-Instruct-7B``) on transformers 5, without its remote code.

Qwen2 decoder layers run bidirectionally by :class:`~entrgi.models.bidirectional.BidirectionalLM`, with
the logits shifted right (position i is predicted by hidden state i−1). Weight names are the module's own
and load strictly. ``<|endoftext|>`` 151643 is eos = pad, ``<|im_end|>`` 151645 ends the assistant turn,
``<|mask|>`` 151666 is the mask; logit rows from 151667 on are padding (docs/models.md).
"""

from __future__ import annotations

from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2Tokenizer

from .bidirectional import BidirectionalDLLM, BidirectionalLM
from .checkpoint import as_ids, check_token_id, first_id, require_keys, rope_parameters

MASK_ID = 151666
MASK = "<|mask|>"
EOS_ID = 151643  # <|endoftext|>: eos = pad
IM_END = "<|im_end|>"  # 151645, ends the assistant turn
BEGIN_OF_TEXT = "<|beginoftext|>"  # 151665, never a response token
#: DiffuCoder-7B-Instruct/-cpGRPO: fixed-length SFT filled the response tail with this token, so it ends one.
DLM_PAD = "<|dlm_pad|>"
MODEL_TYPES = ("dream",)
#: RoPE types implemented exactly (transformers' rotary embedding, as Dream's released code uses it).
ROPE_TYPES = ("default", "linear")
DEFAULT_ROPE_THETA = 10000.0  # DreamConfig's default when config.json gives none
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def qwen2_config(raw: dict, attn_implementation: str | None = None) -> Qwen2Config:
    """The ``Qwen2Config`` of a Dream ``config.json`` (its keys are Qwen2's; checked here)."""
    require_keys(raw, REQUIRED_KEYS, "Dream")
    if str(raw.get("model_type", "dream")).lower() not in MODEL_TYPES:
        raise ValueError(f"not a Dream config: model_type={raw.get('model_type')!r}.")
    if raw.get("use_mrope"):
        raise ValueError("Dream with `use_mrope` = true (multimodal rotary positions) is not supported; text "
                         "checkpoints (Dream-v0, DiffuCoder, Dream-Coder) have `use_mrope` false or absent.")
    if raw.get("use_sliding_window"):
        raise ValueError("Dream with `use_sliding_window` = true is not supported (bidirectional layers use full "
                         "attention).")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"Dream `hidden_act` must be 'silu', got {act!r}.")
    rope = rope_parameters(raw, "Dream", DEFAULT_ROPE_THETA, ROPE_TYPES)
    heads = raw["num_attention_heads"]
    if raw["hidden_size"] % heads:
        raise ValueError(f"Dream `hidden_size` ({raw['hidden_size']}) must be a multiple of `num_attention_heads` "
                         f"({heads}).")
    cfg = Qwen2Config(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads, hidden_act=act,
        max_position_embeddings=raw.get("max_position_embeddings", 32768), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_parameters=rope, tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        use_sliding_window=False, attention_dropout=0.0, use_cache=False, pad_token_id=None)
    if attn_implementation is not None:
        cfg._attn_implementation = attn_implementation
    return cfg


class DreamModule(BidirectionalLM):
    """Qwen2 decoder (bidirectional) + ``lm_head``; ``forward`` returns *unshifted* logits (B, N, V)."""

    def __init__(self, config: Qwen2Config):
        super().__init__(Qwen2Model(config))


class Dream(BidirectionalDLLM):
    """Dream as a :class:`~entrgi.models.base.DiffusionLM` (right-shifted logits)."""

    family = "dream"
    module_class = DreamModule
    config_from_json = staticmethod(qwen2_config)
    tokenizer_class = Qwen2Tokenizer  # Dream's DreamTokenizer is Qwen2's byte-level BPE
    decoder_layer = "Qwen2DecoderLayer"
    #: The paper's Dream settings: T = L = 128, τ = 0.7, top-p 0.95, entropy ranking, Dream's linear schedule.
    SAMPLER_DEFAULTS = dict(max_new_tokens=128, steps=128, temperature=0.7, top_p=0.95, remasking="entropy",
                            schedule="linear", sampling="inverse_cdf", block_length=None)

    @classmethod
    def from_module(cls, module: nn.Module, tokenizer, config: dict | None = None, **overrides) -> Dream:
        """Wrap a :class:`DreamModule` (or any module with Dream's ``forward``) and a Dream tokenizer.

        Special ids come from ``config`` (the checkpoint's config.json) when given, else Dream's."""
        config = config or {}
        vocab = tokenizer.get_vocab()
        eos = set(as_ids(config.get("eos_token_id"))) or {EOS_ID}
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        eos.update(vocab[t] for t in (IM_END, DLM_PAD) if t in vocab)
        invalid = {vocab[BEGIN_OF_TEXT]} if BEGIN_OF_TEXT in vocab else set()
        out = getattr(module, "lm_head", None)
        kwargs = dict(
            mask_token_id=first_id(config.get("mask_token_id"), tokenizer.mask_token_id, MASK_ID),
            eos_token_ids=eos, pad_token_id=first_id(config.get("pad_token_id"), EOS_ID), shift_logits=True,
            logit_width=out.weight.shape[0] if out is not None else int(config.get("vocab_size", len(tokenizer))),
            invalid_token_ids=invalid, max_length=config.get("max_position_embeddings"))
        kwargs.update(overrides)
        check_token_id(tokenizer, MASK, kwargs["mask_token_id"], "Dream")
        return cls(module.eval().requires_grad_(False), tokenizer, **kwargs)
