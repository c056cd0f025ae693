"""The reward wrapper: template prefix/suffix, embeds path == discrete path, padding and pooling."""

import pytest
import torch

from entrgi.reward.base import RewardBatch
from entrgi.testing import CHAT_TEMPLATE, TokenPreferenceReward, tiny_qwen3_reward, word_tokenizer

PROMPTS = ["the cat sat on the mat", "a dog", "it was a very happy day and then it was night"]
RESPONSES = ["the sun was red", "good dog ran quickly under the big tree", "sad"]


@pytest.fixture(scope="module")
def rm():
    return tiny_qwen3_reward(word_tokenizer(chat_template=CHAT_TEMPLATE), seed=1)


def test_context_splits_the_chat_template_at_the_response(rm):
    ctx = rm.context("the cat")
    text = rm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "good dog"}], tokenize=False)
    ids = rm.tokenizer(text)["input_ids"]  # the standard recipe: the whole rendered text, specials added
    resp = rm.tokenizer("good dog", add_special_tokens=False)["input_ids"]
    assert ids == [*ctx.prefix_ids, *resp, *ctx.suffix_ids]
    assert rm.context("the cat") is ctx  # cached per prompt


def hard_slots(rm, responses, L):
    """RM embeddings of the tokenised responses in L slots; slots past the response are masked out."""
    table = rm.embedding_table()
    ids = torch.zeros(len(responses), L, dtype=torch.long)
    attn = torch.zeros(len(responses), L, dtype=torch.bool)
    for b, r in enumerate(responses):
        t = rm.tokenizer(r, add_special_tokens=False)["input_ids"]
        ids[b, :len(t)] = torch.tensor(t)
        attn[b, :len(t)] = True
    return table[ids], attn


def test_embeds_path_equals_discrete_text_path_on_a_padded_batch(rm):
    L = 10
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn = hard_slots(rm, RESPONSES, L)
    with torch.no_grad():
        from_embeds = batch.score(embeds, attn)
    from_text = rm.score_texts(PROMPTS, RESPONSES)
    torch.testing.assert_close(from_embeds, from_text, atol=1e-5, rtol=1e-5)
    # and each row alone (no padding) gives the same value
    single = torch.cat([rm.score_texts([p], [r]) for p, r in zip(PROMPTS, RESPONSES)])
    torch.testing.assert_close(from_text, single, atol=1e-5, rtol=1e-5)
    assert from_text.std() > 0  # a reward with spread: the comparison is not vacuous


def test_masked_out_slots_neither_count_nor_shift_positions(rm):
    """Garbage in masked-out slots (after EOS) must not change the score."""
    L = 12
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn = hard_slots(rm, RESPONSES, L)
    noisy = torch.where(attn.unsqueeze(-1), embeds, torch.randn_like(embeds) * 5)
    with torch.no_grad():
        torch.testing.assert_close(batch.score(embeds, attn), batch.score(noisy, attn))


def test_inputs_layout_left_pads_and_ends_every_row_with_its_suffix(rm):
    L = 4
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn, pos = batch.inputs(torch.zeros(3, L, rm.embedding_table().shape[1]), torch.ones(3, L, dtype=torch.bool))
    suffix = rm.context(PROMPTS[0]).suffix_ids
    table = rm.embedding_table()
    for b in range(3):
        torch.testing.assert_close(embeds[b, -len(suffix):], table[list(suffix)])
        n = int(attn[b].sum())
        assert attn[b, -n:].all() and not attn[b, :-n].any()  # left padding
        assert pos[b, -1] == n - 1


def test_gradient_reaches_the_response_embeddings_only(rm):
    L = 9
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn = hard_slots(rm, RESPONSES, L)
    embeds = embeds.clone().requires_grad_(True)
    batch.score(embeds, attn).sum().backward()
    assert embeds.grad[attn].abs().sum() > 0
    assert embeds.grad[~attn].abs().sum() == 0
    assert not any(p.requires_grad for p in rm.parameters())


def test_plain_and_response_templates():
    tok = word_tokenizer()
    pref = TokenPreferenceReward(tok, ["happy", "sun"], template="plain")
    assert pref.template == "plain"
    ids = pref.text_ids("the cat", "happy sun")
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "happy", "sun", "[SEP]"]
    resp = TokenPreferenceReward(tok, ["happy"], template="response")
    assert tok.convert_ids_to_tokens(resp.text_ids("the cat", "happy")) == ["[CLS]", "happy", "[SEP]"]
    assert pref.score_texts(["the cat", "a"], ["happy sun sun", "sad"]).tolist() == [3.0, 0.0]


def test_score_texts_validates_lengths(rm):
    with pytest.raises(ValueError, match="prompts"):
        rm.score_texts(["a"], ["b", "c"])


def test_unknown_template_is_named():
    with pytest.raises(ValueError, match="template"):
        TokenPreferenceReward(word_tokenizer(), ["sun"], template="fancy")
