"""The likelihood reward: a tiny random Qwen3ForCausalLM with the real Qwen3 tokenizer, checked against the
model's own forward (log-softmax of its logits at the actual next tokens, or the q-expectation of them)."""

import warnings

import pytest
import torch
from support.tiny_models import WORDS, word_tokenizer
from torch import nn
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.reward.base import RewardBatch
from entrgi.reward.likelihood import LikelihoodReward
from entrgi.reward.vocab import VocabBridge

PROMPTS = ["What is 2+2?", "Name a colour.", "Write one word about the sea, please, and keep it short."]
RESPONSES = ["It is 4.", "Blue", ""]


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(qwen3_dir)


def tiny_lm(tok, seed=0, tied=False):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32, max_position_embeddings=256,
                      tie_word_embeddings=tied, pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # spread the predictions so that log-probs differ clearly between tokens
        model.lm_head.weight.normal_(0, 0.5) if not tied else model.model.embed_tokens.weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def lm(qwen3):
    return LikelihoodReward(tiny_lm(qwen3), qwen3)


def reference(model, prefix, slots, suffix):
    """Mean log-prob by the model's normal forward on ``inputs_embeds`` = [E prefix ; slots ; E suffix]; a slot
    is an id (its log-prob) or a distribution q (V,) (input q·E, score Σ_v q_v log p(v))."""
    E = model.get_input_embeddings().weight
    rows = [E[prefix]]
    for s in slots:
        rows.append(E[[s]] if isinstance(s, int) else (s @ E)[None])
    rows.append(E[suffix] if suffix else E[:0])
    logp = torch.log_softmax(model(inputs_embeds=torch.cat(rows)[None]).logits[0].float(), -1)
    terms, pos = [], len(prefix) - 1
    for s in [*slots, *suffix]:
        terms.append(logp[pos, s] if isinstance(s, int) else (s * logp[pos]).sum())
        pos += 1
    return torch.stack(terms).mean() if terms else torch.tensor(0.0)


def hard_slots(rm, tok, bridge_table, responses, L, ids_of=None):
    ids = torch.zeros(len(responses), L, dtype=torch.long)
    attn = torch.zeros(len(responses), L, dtype=torch.bool)
    for b, r in enumerate(responses):
        t = (ids_of or (lambda s: tok(s, add_special_tokens=False)["input_ids"]))(r)
        ids[b, :len(t)] = torch.tensor(t, dtype=torch.long)
        attn[b, :len(t)] = True
    return bridge_table[ids], attn, ids


def test_layout_is_the_chat_template_around_the_response(lm, qwen3):
    ids = lm.text_ids(PROMPTS[0], RESPONSES[0])
    whole = qwen3(qwen3.apply_chat_template([{"role": "user", "content": PROMPTS[0]},
                                             {"role": "assistant", "content": RESPONSES[0]}], tokenize=False))
    assert ids == whole["input_ids"]
    assert qwen3.decode(list(lm.context(PROMPTS[0]).suffix_ids)) == "<|im_end|>\n"  # the end of turn is scored
    assert lm.embedding_table().shape == (len(qwen3), 16 + 16)  # [E | W]: untied head


def test_hard_tokens_equal_the_discrete_log_probs(lm, qwen3):
    """score_texts (padded batch, ids) and the embeds path (prefix cache, hard rows) both equal the reference."""
    refs = []
    for p, r in zip(PROMPTS, RESPONSES):
        ctx = lm.context(p)
        resp = qwen3(r, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            refs.append(reference(lm.model, list(ctx.prefix_ids), resp, list(ctx.suffix_ids)))
    refs = torch.stack(refs)
    assert refs.std() > 0.05  # the rewards differ between the rows
    torch.testing.assert_close(lm.score_texts(PROMPTS, RESPONSES, batch_size=2), refs, atol=1e-5, rtol=1e-5)
    embeds, attn, _ = hard_slots(lm, qwen3, lm.embedding_table(), RESPONSES, L=7)
    batch = RewardBatch(lm, [lm.context(p) for p in PROMPTS], 7, prefix_cache=True)
    assert batch.prefix_cached
    with torch.no_grad():
        torch.testing.assert_close(batch.score(embeds, attn), refs, atol=1e-5, rtol=1e-5)


def test_soft_slots_score_the_expected_log_prob_and_pass_gradients(lm, qwen3):
    """Soft inputs: input q·E, target Σ_v q_v log p(v | ·); the gradient w.r.t. the logits is finite, non-zero."""
    torch.manual_seed(3)
    L, V = 3, len(qwen3)
    logits = (torch.randn(2, L, V) * 3).requires_grad_(True)
    q = torch.softmax(logits, -1)
    attn = torch.tensor([[True, True, True], [True, True, False]])
    batch = RewardBatch(lm, [lm.context(p) for p in PROMPTS[:2]], L, prefix_cache=True)
    r = batch.score(q @ lm.embedding_table(), attn)
    with torch.no_grad():
        for b, p in enumerate(PROMPTS[:2]):
            ctx = lm.context(p)
            slots = [q[b, j] for j in range(L) if attn[b, j]]
            torch.testing.assert_close(r[b], reference(lm.model, list(ctx.prefix_ids), slots, list(ctx.suffix_ids)),
                                       atol=1e-5, rtol=1e-5)
    r.sum().backward()
    g = logits.grad
    assert torch.isfinite(g).all()
    assert g[0].abs().sum() > 0 and g[1, :2].abs().sum() > 0
    assert g[1, 2].abs().sum() == 0  # the masked-out slot takes no part


def test_tied_head_and_head_bias(qwen3):
    """Tied: the table is the embedding itself (no copy); a head with a bias gets one more table column."""
    tied = LikelihoodReward(tiny_lm(qwen3, seed=1, tied=True), qwen3)
    assert tied.embedding_table() is tied.model.get_input_embeddings().weight
    model = tiny_lm(qwen3, seed=2)
    head = nn.Linear(16, len(qwen3), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_(0, 2.0)
    model.lm_head = head
    biased = LikelihoodReward(model, qwen3)
    assert biased.embedding_table().shape[1] == 16 + 16 + 1
    for rm in (tied, biased):
        ctx = rm.context(PROMPTS[1])
        embeds, attn, ids = hard_slots(rm, qwen3, rm.embedding_table(), ["Blue sky"], L=4)
        with torch.no_grad():
            ref = reference(rm.model, list(ctx.prefix_ids), ids[0, :int(attn.sum())].tolist(), list(ctx.suffix_ids))
            got = RewardBatch(rm, [ctx], 4, prefix_cache=True).score(embeds, attn)
        torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rm.score_texts([PROMPTS[1]], ["Blue sky"])[0], ref, atol=1e-5, rtol=1e-5)


def test_vocabulary_bridge_from_another_tokenizer(lm, qwen3):
    """A DLLM on a word-level tokenizer (other ids): its tokens reach the LM through the bridge by token string."""
    dllm = word_tokenizer(WORDS, order_seed=5)
    bridge = VocabBridge.from_tokenizers(dllm, qwen3, exclude=[dllm.mask_token_id])
    words = ["the", "cat", "sat", "on", "mat"]
    dllm_ids = torch.tensor([dllm.convert_tokens_to_ids(words)])
    assert bridge.mapped[dllm_ids].all()
    qwen_ids = bridge.dllm_to_rm[dllm_ids][0].tolist()
    assert qwen_ids == qwen3.convert_tokens_to_ids(words) and qwen_ids != dllm_ids[0].tolist()
    table = bridge.rm_table(lm.embedding_table())  # (V_dllm, d + h)
    ctx = lm.context(PROMPTS[0])
    with torch.no_grad():
        got = RewardBatch(lm, [ctx], 5, prefix_cache=True).score(table[dllm_ids], torch.ones(1, 5, dtype=torch.bool))
        ref = reference(lm.model, list(ctx.prefix_ids), qwen_ids, list(ctx.suffix_ids))
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)


def test_response_template_starts_from_eos_and_plain_scores_response_only(qwen3):
    rm = LikelihoodReward(tiny_lm(qwen3, seed=4), qwen3, template="response")
    assert rm.context("ignored").prefix_ids == (qwen3.eos_token_id,)  # Qwen has no BOS
    plain = LikelihoodReward(rm.model, qwen3, template="plain")
    ctx = plain.context("Once upon a time")
    assert ctx.suffix_ids == ()
    with torch.no_grad():
        resp = qwen3("there was a cat", add_special_tokens=False)["input_ids"]
        ref = reference(plain.model, list(ctx.prefix_ids), resp, [])
    torch.testing.assert_close(plain.score_texts(["Once upon a time"], ["there was a cat"])[0], ref,
                               atol=1e-5, rtol=1e-5)
    assert plain.score_texts(["Once upon a time"], [""]).tolist() == [0.0]  # nothing scored


def test_whole_row_layout_is_refused_with_the_fix(lm):
    batch = RewardBatch(lm, [lm.context(PROMPTS[0])], 2, prefix_cache=False)
    with pytest.raises(ValueError, match="prefix_cache"):
        batch.score(torch.zeros(1, 2, lm.embedding_table().shape[1]), torch.ones(1, 2, dtype=torch.bool))


def test_non_linear_head_and_missing_head_are_refused(qwen3):
    class ScaledHead(nn.Linear):
        def forward(self, x):
            return 30.0 * torch.tanh(super().forward(x) / 30.0) * 2.0

    model = tiny_lm(qwen3, seed=5)
    head = ScaledHead(16, len(qwen3), bias=False)
    head.weight = model.lm_head.weight
    model.lm_head = head
    with pytest.raises(ValueError, match="not a linear head"):
        LikelihoodReward(model, qwen3)
    with pytest.raises(ValueError, match="ForCausalLM"):
        LikelihoodReward(model.model, qwen3)


def test_guides_in_todays_sampler(mlm, tok):
    """As the RM of an EntRGi run (a DLLM on the same word tokenizer): gradients reach the logits, and the
    final rewards are the discrete log-probs of the decoded samples."""
    rm = LikelihoodReward(tiny_lm(tok, seed=6), tok)
    out = generate(mlm, ["the cat sat", "a dog"], rm, progress=False,
                   sampler=SamplerConfig(max_new_tokens=5, steps=3, num_samples=1, seed=0),
                   guidance=GuidanceConfig(rule="entrgi", inner_steps=2))
    rows = [s for g in out.samples for s in g]
    steps = [t for s in rows for t in s.trace if t.masked]
    assert steps and all(len(t.grad_norms) == 2 and all(0 < g < float("inf") for g in t.grad_norms) for t in steps)
    torch.testing.assert_close(torch.tensor([s.reward for s in rows]),
                               rm.score_texts([s.prompt for s in rows], [s.text for s in rows]))


def test_from_pretrained_folder_and_wrong_checkpoints(lm, qwen3, tmp_path):
    lm.model.save_pretrained(tmp_path / "lm")
    qwen3.save_pretrained(tmp_path / "lm")
    loaded = LikelihoodReward.from_pretrained(str(tmp_path / "lm"))
    assert loaded.template == "chat"
    torch.testing.assert_close(loaded.score_texts(PROMPTS, RESPONSES), lm.score_texts(PROMPTS, RESPONSES))
    from support.tiny_checkpoints import write_reward_checkpoint
    rm_dir = write_reward_checkpoint(tmp_path / "rm", word_tokenizer(chat_template="{{ messages }}"))
    with pytest.raises(ValueError, match="is not a causal LM"):
        LikelihoodReward.from_pretrained(str(rm_dir))
    with pytest.raises(ValueError):
        LikelihoodReward.from_pretrained(str(tmp_path / "missing"))
