"""Composite rewards: Σ w_i R_i exactly, on soft embeddings (values and gradients), on texts, with members on
one tokenizer (a plain RewardModel for today's samplers) or on several (per-member views, text scores)."""

import pytest
import torch
from support.tiny_models import CHAT_TEMPLATE, TokenPreferenceReward, tiny_qwen3_reward, word_tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.guidance.inner_loop import guide_logits
from entrgi.ops.rng import RowStreams
from entrgi.reward.base import RewardBatch
from entrgi.reward.composite import CompositeReward, CompositeTextReward, weighted_sum
from entrgi.reward.likelihood import LikelihoodReward
from entrgi.reward.text import TextReward

PROMPTS = ["the cat sat on the mat", "a dog", "it was a very happy day"]
RESPONSES = ["the sun was red", "good dog ran quickly under the big tree", "sad"]
WEIGHTS = (0.5, -2.0, 1.25)


def tiny_causal_lm(tok, seed=0):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32, pad_token_id=tok.pad_token_id)
    return LikelihoodReward(Qwen3ForCausalLM(cfg), tok)


@pytest.fixture(scope="module")
def members(tok):
    """Same tokenizer, same chat layout, three kinds: a Qwen3 classifier (prefix cache), a linear reward (whole
    rows) and a causal LM's likelihood (prefix cache, [E | W] table)."""
    return [tiny_qwen3_reward(tok, seed=1), TokenPreferenceReward(tok, ("happy", "good", "sun"), template="chat"),
            tiny_causal_lm(tok, seed=2)]


def soft_inputs(tok, B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, L, len(tok), generator=g) * 2).requires_grad_(True)
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[1, 3:] = False
    return logits, attn


@pytest.mark.parametrize("prefix_cache, which", [(True, [0, 1, 2]), (False, [0, 1])])
def test_soft_embeddings_score_and_gradient_are_the_weighted_sum(tok, members, prefix_cache, which):
    rms, weights = [members[i] for i in which], [WEIGHTS[i] for i in which]
    comp = CompositeReward(rms, weights)
    assert comp.shared_vocabulary and comp.dims == tuple(m.embedding_table().shape[1] for m in rms)
    L = 5
    contexts = [comp.context(p) for p in PROMPTS]
    assert all(contexts == [m.context(p) for p in PROMPTS] for m in rms)
    logits, attn = soft_inputs(tok, len(PROMPTS), L)
    batch = RewardBatch(comp, contexts, L, prefix_cache=prefix_cache)
    assert batch.prefix_cached == prefix_cache
    r = batch.score(torch.softmax(logits, -1) @ comp.embedding_table(), attn)
    (grad,) = torch.autograd.grad(r.sum(), logits)
    ref, ref_grad = torch.zeros(len(PROMPTS)), torch.zeros_like(logits)
    for w, m in zip(weights, rms):
        rm = RewardBatch(m, contexts, L, prefix_cache=prefix_cache).score(
            torch.softmax(logits, -1) @ m.embedding_table(), attn)
        ref = ref + w * rm.detach()
        ref_grad += w * torch.autograd.grad(rm.sum(), logits)[0]
    torch.testing.assert_close(r.detach(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-4)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_score_texts_is_the_weighted_sum_of_member_scores(members):
    comp = CompositeReward(members, WEIGHTS)
    got = comp.score_texts(PROMPTS, RESPONSES, batch_size=2)
    ref = sum(w * m.score_texts(PROMPTS, RESPONSES) for w, m in zip(WEIGHTS, members))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert got.std() > 0


def test_a_shared_layout_composite_guides_in_todays_sampler(mlm, members):
    comp = CompositeReward(members[:2], WEIGHTS[:2])
    out = generate(mlm, PROMPTS[:2], comp, progress=False,
                   sampler=SamplerConfig(max_new_tokens=6, steps=3, num_samples=2, seed=0),
                   guidance=GuidanceConfig(rule="entrgi", inner_steps=2))
    rows = [s for g in out.samples for s in g]
    assert all(t.grad_norms and all(g > 0 for g in t.grad_norms) for s in rows for t in s.trace if t.masked)
    torch.testing.assert_close(torch.tensor([s.reward for s in rows]),
                               comp.score_texts([s.prompt for s in rows], [s.text for s in rows]))


def test_different_tokenizers_or_templates_cannot_share_a_layout(tok, members):
    other = tiny_qwen3_reward(word_tokenizer(chat_template=CHAT_TEMPLATE, order_seed=3), seed=4)
    comp = CompositeReward([members[0], other], [1.0, 0.5])
    assert not comp.shared_vocabulary
    with pytest.raises(ValueError, match="different tokenizers.*guidance_view"):
        comp.embedding_table()
    with pytest.raises(ValueError, match="different tokenizers"):
        comp.context(PROMPTS[0])
    torch.testing.assert_close(comp.score_texts(PROMPTS, RESPONSES),  # texts: any tokenizers
                               members[0].score_texts(PROMPTS, RESPONSES) + 0.5 * other.score_texts(PROMPTS, RESPONSES))
    mixed = CompositeReward([members[0], TokenPreferenceReward(tok, ("sun",), template="response")])
    with pytest.raises(ValueError, match="lays out prompt 'a dog' differently"):
        mixed.context("a dog")


def test_guidance_view_one_layout_per_member(mlm, tok, members):
    """Members on another tokenizer (other ids) and another template: the view's table is aligned to the DLLM's
    ids member by member; its score on hard tokens is the weighted sum of the members' text scores, and the
    inner loop runs on it unchanged with finite, non-zero gradients."""
    other_tok = word_tokenizer(chat_template=CHAT_TEMPLATE, order_seed=3)
    other = tiny_qwen3_reward(other_tok, seed=4)
    pref = TokenPreferenceReward(tok, ("happy", "good", "sun"), template="response")
    comp = CompositeReward([other, pref], [0.75, 2.0])
    L = 6
    view = comp.guidance_view(mlm, PROMPTS, L)
    assert view.table.shape == (mlm.logit_width, 32 + 8)
    assert not view.mapped[list(mlm.invalid_token_ids)].any() and view.mapped[tok.convert_tokens_to_ids("sun")]
    words = [r.split()[:L] for r in RESPONSES]
    ids = torch.zeros(len(PROMPTS), L, dtype=torch.long)
    attn = torch.zeros(len(PROMPTS), L, dtype=torch.bool)
    for b, w in enumerate(words):
        ids[b, :len(w)] = torch.tensor(tok.convert_tokens_to_ids(w))
        attn[b, :len(w)] = True
    texts = [" ".join(w) for w in words]
    with torch.no_grad():
        got = view.score(view.table[ids], attn)
    ref = 0.75 * other.score_texts(PROMPTS, texts) + 2.0 * pref.score_texts(PROMPTS, texts)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

    masked = torch.ones(len(PROMPTS), L, dtype=torch.bool)
    masked[0, :2] = False  # two committed tokens
    response_ids = torch.where(masked, torch.full_like(ids, tok.mask_token_id), ids)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(PROMPTS), L, mlm.logit_width, generator=g)
    logits[..., list(mlm.invalid_token_ids)] = float("-inf")
    resolved = GuidanceConfig(rule="entrgi", inner_steps=3).resolve(SamplerConfig())
    eos = torch.tensor(mlm.eos_token_ids)
    res = guide_logits(logits, masked, response_ids, view.score, view.table, view.mapped, resolved, eos,
                       RowStreams([1, 2, 3]))
    assert torch.isfinite(res.grad_norms).all() and (res.grad_norms > 0).all()
    assert torch.isfinite(res.rewards).all() and res.rewards.shape == (3, 3)


def test_text_composite_mixes_rewards_functions_and_spellings(members, tmp_path, monkeypatch):
    (tmp_path / "lenmod.py").write_text("def n_words(prompt, response):\n    return float(len(response.split()))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    has_sun = TextReward(lambda p, r: "sun" in r, name="has_sun")
    comp = CompositeTextReward([members[0], has_sun, "lenmod:n_words", lambda p, r: len(p)], [1.0, 3.0, -0.5, 0.25])
    got = comp.score_texts(PROMPTS, RESPONSES)
    ref = (members[0].score_texts(PROMPTS, RESPONSES) + 3.0 * torch.tensor([1.0, 0.0, 0.0])
           - 0.5 * torch.tensor([4.0, 8.0, 1.0]) + 0.25 * torch.tensor([float(len(p)) for p in PROMPTS]))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert comp.score(PROMPTS, RESPONSES) == got.tolist() and not comp.differentiable
    assert isinstance(weighted_sum(members[:2]), CompositeReward)
    assert isinstance(weighted_sum([members[0], has_sun]), CompositeTextReward)


def test_arguments_are_checked(members):
    with pytest.raises(ValueError, match="not a differentiable RewardModel.*CompositeTextReward"):
        CompositeReward([members[0], TextReward(lambda p, r: 1.0)])
    with pytest.raises(ValueError, match=r"`weights\[1\]` must be a finite number, got nan"):
        CompositeReward(members[:2], [1.0, float("nan")])
    with pytest.raises(ValueError, match="`weights` has 1 entries for 2 rewards"):
        CompositeReward(members[:2], [1.0])
    with pytest.raises(ValueError, match="at least one reward"):
        CompositeTextReward([])
    nan_rm = TokenPreferenceReward(members[0].tokenizer, ("sun",), template="response")
    nan_rm.table[:, 0] = float("nan")
    with pytest.raises(ValueError, match="reward '0:TokenPreferenceReward' gave non-finite scores"):
        CompositeTextReward([nan_rm, TextReward(lambda p, r: 1.0)]).score_texts(PROMPTS, RESPONSES)
