"""Tiny models and tokenizers built in memory: for tests and examples, no download.

- :func:`word_tokenizer`: a whitespace word-level tokenizer with BERT-style specials, optionally
  with a chat template (so it can act as a reward model's tokenizer).
- :func:`tiny_mlm`: a random 2-layer BERT masked LM wrapped as a diffusion LM.
- :func:`tiny_qwen3_reward`: a random ``Qwen3ForSequenceClassification`` (the Skywork-Reward-V2
  architecture) wrapped as a reward model.
- :class:`TokenPreferenceReward`: a reward whose optimum is known: the number of response tokens in
  a chosen set, read linearly from one embedding coordinate (so the soft path is exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
)

from entrgi.models.hf_mlm import HFMaskedLM
from entrgi.reward.base import RewardModel
from entrgi.reward.hf import HFRewardModel

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = tuple(
    "the a cat dog bird sat ran flew on under over mat tree roof happy sad good bad very and then it was "
    "is red blue green big small quickly slowly sun rain day night user assistant <|im_start|> <|im_end|>".split())
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def word_tokenizer(words: Sequence[str] = WORDS, *, chat_template: str | None = None,
                   order_seed: int | None = None) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: specials first, then ``words`` (shuffled when ``order_seed``)."""
    words = list(dict.fromkeys(words))
    if order_seed is not None:
        g = torch.Generator().manual_seed(order_seed)
        words = [words[i] for i in torch.randperm(len(words), generator=g).tolist()]
    vocab = {t: i for i, t in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_mlm(tokenizer=None, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> HFMaskedLM:
    """A random BERT masked LM (bidirectional, no shift) as a :class:`~entrgi.models.HFMaskedLM`."""
    tokenizer = tokenizer or word_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
                     pad_token_id=tokenizer.pad_token_id)
    return HFMaskedLM.from_module(BertForMaskedLM(cfg), tokenizer)


def tiny_qwen3_reward(tokenizer=None, *, hidden: int = 32, layers: int = 2, seed: int = 0,
                      template: str = "auto") -> HFRewardModel:
    """A random ``Qwen3ForSequenceClassification`` with one label, wrapped as a reward model."""
    tokenizer = tokenizer or word_tokenizer(chat_template=CHAT_TEMPLATE)
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                      intermediate_size=2 * hidden, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                      max_position_embeddings=256)
    model = Qwen3ForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a reward with some spread
    return HFRewardModel(model, tokenizer, template=template)


class TokenPreferenceReward(RewardModel):
    """Reward = Σ over attended positions of embedding coordinate 0, which is 1 for ``preferred`` ids.

    On hard tokens this counts preferred tokens in the response; on soft embeddings it is the
    expected count, so its gradient is exact and its optimum (all preferred) is known.
    """

    def __init__(self, tokenizer, preferred: Sequence[str], *, dim: int = 8, seed: int = 0,
                 template: str = "response"):
        super().__init__(tokenizer, template)
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(len(tokenizer), dim, generator=g) * 0.1
        ids = tokenizer.convert_tokens_to_ids(list(preferred))
        table[:, 0] = 0.0
        table[ids, 0] = 1.0
        self.preferred_ids = sorted(ids)
        self.register_buffer("table", table)

    def embedding_table(self) -> torch.Tensor:
        return self.table

    def forward_embeds(self, inputs_embeds, attention_mask, position_ids):
        return (inputs_embeds[..., 0] * attention_mask.to(inputs_embeds.dtype)).sum(-1)


def write_tiny_qwen3_lm(tok, folder, seed: int = 0) -> Qwen3ForCausalLM:
    """A tiny random ``Qwen3ForCausalLM`` (1 layer, hidden 16) over ``tok``'s vocabulary, saved with ``tok`` into
    ``folder`` (a ``likelihood:FOLDER`` reward); returns the model."""
    torch.manual_seed(seed)
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, head_dim=8, intermediate_size=32,
                                      pad_token_id=tok.pad_token_id, max_position_embeddings=64))
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return lm
