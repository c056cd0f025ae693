"""LLaDA (``GSAI-ML/LLaDA-8B-Instruct``) on transformers 5, without its remote code.

LLaMA decoder layers run bidirectionally by :class:`~entrgi.models.bidirectional.BidirectionalLM`, no
logit shift. The checkpoint's OLMo-style names are mapped by :data:`BLOCK_NAMES`, and only the
architecture options LLaDA-8B uses are accepted. ``<|mdm_mask|>`` 126336 is the mask, ``<|endoftext|>``
126081 eos = pad, ``<|eot_id|>`` 126348 ends the turn. Position ids skip left padding (docs/models.md).
"""

from __future__ import annotations

import re

from torch import nn
from transformers import LlamaConfig, LlamaModel

from .bidirectional import BidirectionalDLLM, BidirectionalLM
from .checkpoint import as_ids, check_token_id, first_id, require_keys, rope_parameters

MASK_ID = 126336
MASK = "<|mdm_mask|>"
EOS_ID = 126081  # <|endoftext|>: eos = pad
EOT = "<|eot_id|>"  # 126348, ends the assistant turn
MODEL_TYPES = ("llada",)
#: LLaDA-MoE (``inclusionAI/LLaDA-MoE-7B-A1B-*``): its hub config.json says ``model_type`` "llada" too (the dllm
#: trainer rewrites it to "lladamoe"), so it is told apart by these model types, architectures or MoE keys.
MOE_MODEL_TYPES = ("lladamoe", "llada_moe")
MOE_ARCHITECTURES = ("LLaDAMoEModel", "LLaDAMoEModelLM")
MOE_KEYS = ("num_experts", "num_experts_per_tok", "expert_intermediate_size", "moe_layer_freq")
REQUIRED_KEYS = ("d_model", "n_heads", "n_layers", "vocab_size")

#: Defaults of the released ``ModelConfig`` for keys a config.json may omit.
CONFIG_DEFAULTS = dict(mlp_ratio=4, mlp_hidden_size=None, n_kv_heads=None, multi_query_attention=None,
                       activation_type="swiglu", block_type="sequential", block_group_size=1, alibi=False, rope=False,
                       attention_layer_norm=False, input_emb_norm=False, layer_norm_type="default",
                       layer_norm_with_affine=True, rms_norm_eps=1e-5, max_sequence_length=1024,
                       include_qkv_bias=False, include_bias=False, bias_for_layer_norm=None, scale_logits=False,
                       embedding_size=50304, weight_tying=True)
#: The released code applies plain RoPE (θ from ``rope_theta``, default 10000) and no scaling.
ROPE_TYPES = ("default",)
DEFAULT_ROPE_THETA = 10000.0
#: The architecture options this module implements (LLaDA-8B's).
SUPPORTED = dict(block_type="llama", activation_type="silu", layer_norm_type="rms", layer_norm_with_affine=True,
                 rope=True, alibi=False, attention_layer_norm=False, input_emb_norm=False, scale_logits=False,
                 include_bias=False, block_group_size=1)

#: Checkpoint name -> module name. Per block ``model.transformer.blocks.N.<name>.weight``:
BLOCK_NAMES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
               "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
               "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm"}
TOP_NAMES = {"model.transformer.wte.weight": "model.embed_tokens.weight",
             "model.transformer.ln_f.weight": "model.norm.weight",
             "model.transformer.ff_out.weight": "lm_head.weight"}
_BLOCK = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.weight")


def module_name(checkpoint_name: str) -> str | None:
    """LLaDA checkpoint weight name -> :class:`LLaDAModule` name (None if it is not one of its weights)."""
    if checkpoint_name in TOP_NAMES:
        return TOP_NAMES[checkpoint_name]
    m = _BLOCK.fullmatch(checkpoint_name)
    if m and m.group(2) in BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}.weight"
    return None


def checkpoint_name(name: str) -> str:
    """The inverse of :func:`module_name`."""
    inverse_top = {v: k for k, v in TOP_NAMES.items()}
    if name in inverse_top:
        return inverse_top[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    inverse = {v: k for k, v in BLOCK_NAMES.items()}
    if not m or m.group(2) not in inverse:
        raise KeyError(name)
    return f"model.transformer.blocks.{m.group(1)}.{inverse[m.group(2)]}.weight"


def refuse_moe(raw: dict) -> None:
    """``ValueError`` for a LLaDA-MoE config.json: its mixture-of-experts blocks are not implemented here."""
    model_type = str(raw.get("model_type", "")).lower()
    archs = [a for a in raw.get("architectures") or [] if a in MOE_ARCHITECTURES]
    keys = [k for k in MOE_KEYS if k in raw]
    if model_type in MOE_MODEL_TYPES or archs or keys:
        raise ValueError(
            f"LLaDA-MoE is not supported (model_type={raw.get('model_type')!r}, architectures="
            f"{raw.get('architectures')}, num_experts={raw.get('num_experts')!r}, num_experts_per_tok="
            f"{raw.get('num_experts_per_tok')!r}): the `llada` adapter implements the dense LLaDA-8B architecture, "
            "not LLaDA-MoE's routed-expert feed-forward blocks and QK-norm attention, and its remote code is never "
            "run. Use a dense LLaDA checkpoint (GSAI-ML/LLaDA-8B-Instruct, GSAI-ML/LLaDA-8B-Base, GSAI-ML/LLaDA-1.5) "
            "or register an adapter of your own (docs/extending.md).")


def llama_config(raw: dict, attn_implementation: str | None = None) -> LlamaConfig:
    """The ``LlamaConfig`` of a LLaDA ``config.json``, after checking it uses only LLaDA-8B's options
    (LLaDA-MoE is refused by :func:`refuse_moe`)."""
    refuse_moe(raw)
    require_keys(raw, REQUIRED_KEYS, "LLaDA")
    if str(raw.get("model_type", "llada")).lower() not in MODEL_TYPES:
        raise ValueError(f"not a LLaDA config: model_type={raw.get('model_type')!r}.")
    c = {**CONFIG_DEFAULTS, **raw}
    bad = {k: c[k] for k, v in SUPPORTED.items() if c[k] != v}
    if c["include_qkv_bias"] or c["bias_for_layer_norm"]:
        bad.update(include_qkv_bias=c["include_qkv_bias"], bias_for_layer_norm=c["bias_for_layer_norm"])
    if bad:
        raise ValueError(f"LLaDA config options not supported: {bad} (supported: the LLaDA-8B architecture, "
                         f"{SUPPORTED}, no biases).")
    d, heads = c["d_model"], c["n_heads"]
    if d % heads:
        raise ValueError(f"LLaDA `d_model` ({d}) must be a multiple of `n_heads` ({heads}).")
    kv = c["n_kv_heads"] if c["n_kv_heads"] is not None else (1 if c["multi_query_attention"] else heads)
    cfg = LlamaConfig(
        vocab_size=c["embedding_size"] or c["vocab_size"], hidden_size=d,
        intermediate_size=c["mlp_hidden_size"] or c["mlp_ratio"] * d, num_hidden_layers=c["n_layers"],
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=d // heads, hidden_act="silu",
        max_position_embeddings=c["max_sequence_length"], rms_norm_eps=c["rms_norm_eps"],
        rope_parameters=rope_parameters(raw, "LLaDA", DEFAULT_ROPE_THETA, ROPE_TYPES), attention_bias=False,
        mlp_bias=False, tie_word_embeddings=bool(c["weight_tying"]), attention_dropout=0.0, use_cache=False,
        pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if attn_implementation is not None:
        cfg._attn_implementation = attn_implementation
    return cfg


class LLaDAModule(BidirectionalLM):
    """LLaMA decoder (bidirectional) + ``lm_head``; ``forward`` returns logits (B, N, V)."""

    def __init__(self, config: LlamaConfig):
        super().__init__(LlamaModel(config))


class LLaDA(BidirectionalDLLM):
    """LLaDA as a :class:`~entrgi.models.base.DiffusionLM` (no shift)."""

    family = "llada"
    #: Model types detected as this family only to be refused with :func:`refuse_moe`'s message.
    MOE_MODEL_TYPES = MOE_MODEL_TYPES
    module_class = LLaDAModule
    config_from_json = staticmethod(llama_config)
    rename = staticmethod(module_name)  # OLMo-style checkpoint names -> LlamaModel names
    decoder_layer = "LlamaDecoderLayer"
    #: LLaDA's released sampler (``generate.py`` demo): semi-autoregressive blocks of 32, low-confidence
    #: remasking, float64 Gumbel-max sampling, uniform commit counts per block, greedy (τ = 0), no top-p.
    #: Guided methods need a positive relaxation temperature with τ = 0
    #: (``GuidanceConfig(relaxation_temperature=1.0)``) or a positive ``temperature``.
    SAMPLER_DEFAULTS = dict(max_new_tokens=128, steps=128, block_length=32, temperature=0.0, top_p=1.0,
                            remasking="low_confidence", schedule="uniform", sampling="gumbel")

    @classmethod
    def from_module(cls, module: nn.Module, tokenizer, config: dict | None = None, **overrides) -> LLaDA:
        """Wrap a :class:`LLaDAModule` and a LLaDA tokenizer; special ids from ``config`` (config.json) when
        given, else LLaDA-8B's."""
        config = config or {}
        vocab = tokenizer.get_vocab()
        eos = set(as_ids(config.get("eos_token_id"))) or {EOS_ID}
        if EOT in vocab:
            eos.add(vocab[EOT])
        out = getattr(module, "lm_head", None)
        kwargs = dict(
            mask_token_id=first_id(config.get("mask_token_id"), MASK_ID), eos_token_ids=eos,
            pad_token_id=first_id(config.get("pad_token_id"), config.get("eos_token_id"), EOS_ID), shift_logits=False,
            logit_width=out.weight.shape[0] if out is not None else len(tokenizer),
            max_length=config.get("max_sequence_length"))
        kwargs.update(overrides)
        check_token_id(tokenizer, MASK, kwargs["mask_token_id"], "LLaDA")
        return cls(module.eval().requires_grad_(False), tokenizer, **kwargs)
