"""Every cost optimisation against the unoptimised path (tiny models, fast): same values to float rounding,
same tokens; whole runs against the straight reference (support/reference.py). The timings themselves live in
benchmarks/bench_guidance.py, never in tests."""

import dataclasses

import pytest
import torch
from reference_sampler import reference_generate
from support.naive_reference import generate_naive
from support.tiny_models import TokenPreferenceReward
from test_logit_ops import slow_top_p

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.guidance.mixing import (
    entropy,
    entropy_chunked,
    entropy_weight,
    expected_embeddings,
    reward_input_embeddings,
)
from entrgi.ops.logit_ops import (
    draw,
    logsumexp_chunked,
    nucleus_groups,
    sample_from_logits,
    sampling_logits,
    top_p_filter,
    top_p_filter_sorted,
    topk_blocked,
)
from entrgi.reward.base import RewardBatch

F64 = torch.float64
PROMPTS = ["the cat sat", "a dog", "it was a very big day and the sun"]


def mixed_rows(V=20000, seed=0, dtype=F64):
    """Rows the nucleus search treats differently: peaked (settled by a small head), medium, flat (full
    sort), with −inf ids, with ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, V, generator=g, dtype=dtype)
    x[0] *= 12  # peaked
    x[1] *= 5
    x[2] *= 0.2  # nearly flat: the top-4096 mass stays below top_p -> full sort
    x[3, ::3] = float("-inf")
    x[3] *= 4
    x[4, :50] = 9.0  # ties at the top
    x[5] = float("-inf")
    x[5, [7, 11, V - 1]] = torch.tensor([1.0, 2.0, 3.0], dtype=dtype)  # three finite ids
    x[6] *= 3
    x[7] *= 8
    return x


# ---- top-p, the draw --------------------------------------------------------------------------------
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.95])
def test_fast_top_p_matches_the_slow_reference_on_a_large_vocabulary(top_p):
    x = mixed_rows()
    got = top_p_filter(x, top_p)
    for r in range(x.shape[0]):
        kept, ref = torch.isfinite(got[r]), torch.isfinite(slow_top_p(x[r], top_p))
        if r == 4:  # which of 50 tied ids stay is arbitrary (sort order); how many is not
            assert kept.sum() == ref.sum() and torch.equal(kept[50:], ref[50:])
        else:
            assert torch.equal(kept, ref), r
    old = top_p_filter_sorted(x, top_p)  # and the old full-sort implementation
    assert torch.equal(torch.isfinite(got).sum(-1), torch.isfinite(old).sum(-1))


def test_nucleus_groups_cover_every_row_once_and_use_heads():
    x = mixed_rows()
    seen, widths = [], []
    for rows, ids, keep in nucleus_groups(x, 0.9):
        seen += rows.tolist()
        widths.append(ids.shape[-1])
        assert keep[:, 0].all()  # the most likely id always stays
    assert sorted(seen) == list(range(x.shape[0]))
    assert min(widths) == 64 and max(widths) == x.shape[-1]  # peaked rows by a head, the flat one by a full sort


def test_blocked_topk_equals_topk():
    x = torch.randn(5, 30001, generator=torch.Generator().manual_seed(1))  # a ragged last block
    x[3, -1] = 50.0  # the maximum in the ragged block
    rows = torch.tensor([0, 3, 4])
    for k in (1, 64, 100):
        vals, ids = topk_blocked(x, k, rows)
        ref = torch.topk(x[rows], k)
        assert torch.equal(vals, ref.values)
        assert torch.equal(x[rows].gather(-1, ids), vals)


def test_chunked_logsumexp():
    x = mixed_rows(V=3000)
    for tau in (1.0, 0.7):
        torch.testing.assert_close(logsumexp_chunked(x, tau, chunk=512), torch.logsumexp(x / tau, -1))


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.7, 0.95, None), (1.0, 0.5, None), (0.7, 1.0, None),
                                                     (1.3, 0.9, 40), (0.0, 0.9, None)])
def test_draw_equals_filter_then_inverse_cdf(temperature, top_p, top_k):
    x = mixed_rows(V=6000)
    u = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2), dtype=F64)
    u[0], u[1] = 0.0, 1 - 1e-12
    ref = sample_from_logits(sampling_logits(x, temperature, top_p, top_k), u)
    assert torch.equal(draw(x, u, temperature, top_p, top_k), ref)
    x32 = x.float()  # float32 logits: the same ids away from float ties
    assert torch.equal(draw(x32, u, temperature, top_p, top_k), sample_from_logits(
        sampling_logits(x32.double(), temperature, top_p, top_k), u))


# ---- entropy weight, soft embedding -----------------------------------------------------------------
def test_chunked_entropy_equals_the_formula():
    x = mixed_rows(V=3000)
    for T in (1.0, 0.7):
        torch.testing.assert_close(entropy_chunked(x, T, chunk=256), entropy(x, T).clamp_min(0).nan_to_num(0))
    w = entropy_weight(x[:5].float())
    torch.testing.assert_close(w, (entropy(x[:5], 1.0) / torch.log(torch.tensor(3000.0, dtype=F64))).float())


@pytest.fixture
def soft_setup():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 500, generator=g, dtype=F64) * 3
    table = torch.randn(500, 6, generator=g, dtype=F64)
    bias = torch.zeros(500, dtype=F64)
    bias[::9] = float("-inf")
    return logits, table, bias


@pytest.mark.parametrize("chunk", [64, 100, 499])
def test_chunked_soft_embedding_equals_dense_with_gradient(soft_setup, chunk):
    logits, table, bias = soft_setup
    g = torch.randn(7, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    out = {}
    for c in (None, chunk):
        phi = logits.clone().requires_grad_(True)
        soft = expected_embeddings(phi, table, 0.7, bias=bias, chunk_size=c)
        (soft * g).sum().backward()
        out[c] = (soft.detach(), phi.grad)
    torch.testing.assert_close(out[chunk][0], out[None][0])
    torch.testing.assert_close(out[chunk][1], out[None][1])
    assert out[chunk][1][:, ::9].abs().max() == 0  # ids outside the RM's vocabulary get no gradient
    small_table, small_bias = table[:40], bias[:40]  # gradcheck evaluates once per logit: keep it small
    assert torch.autograd.gradcheck(
        lambda p: expected_embeddings(p, small_table, 0.7, bias=small_bias, chunk_size=chunk // 8),
        (logits[:2, :40].clone().requires_grad_(True),))


def test_chunked_soft_embedding_with_a_low_precision_table(soft_setup):
    logits, table, _ = soft_setup
    t16 = table.to(torch.bfloat16)
    dense = expected_embeddings(logits.float(), t16, 0.7)
    chunked = expected_embeddings(logits.float(), t16, 0.7, chunk_size=64)
    assert chunked.dtype == torch.bfloat16
    torch.testing.assert_close(chunked.float(), dense.float(), atol=2e-2, rtol=2e-2)


def test_soft_top_k_is_an_explicit_approximation(soft_setup):
    logits, table, bias = soft_setup
    exact = expected_embeddings(logits, table, 0.7, bias=bias)
    torch.testing.assert_close(expected_embeddings(logits, table, 0.7, bias=bias, top_k=500), exact)
    x = logits + bias
    vals, ids = x.topk(5)
    direct = torch.einsum("nk,nkd->nd", (vals / 0.7).softmax(-1), table[ids])
    torch.testing.assert_close(expected_embeddings(logits, table, 0.7, bias=bias, top_k=5), direct)
    phi = logits.clone().requires_grad_(True)
    expected_embeddings(phi, table, 0.7, bias=bias, top_k=5).sum().backward()
    assert int((phi.grad != 0).sum(-1).max()) <= 5  # only the k kept logits move


@pytest.mark.parametrize("method", ["expectation", "aps", "entrgi"])
def test_bias_and_chunks_equal_reward_input_embeddings_of_biased_logits(soft_setup, method):
    logits, table, bias = soft_setup
    u = torch.rand(7, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref, w_ref = reward_input_embeddings(logits + bias, table, method, temperature=0.7, top_p=0.9, uniforms=u)
    for chunk in (None, 64):
        got, w = reward_input_embeddings(logits, table, method, bias=bias, temperature=0.7, top_p=0.9, uniforms=u,
                                         chunk_size=chunk)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(w, w_ref)


# ---- the RM prefix cache ----------------------------------------------------------------------------
def layout_inputs(rm, L, seed=0):
    table = rm.embedding_table()
    g = torch.Generator().manual_seed(seed)
    embeds = table[torch.randint(5, table.shape[0], (3, L), generator=g)] + 0.1 * torch.randn(3, L, table.shape[1],
                                                                                               generator=g)
    attn = torch.ones(3, L, dtype=torch.bool)
    attn[0, 5:] = False  # after an EOS
    attn[2, 1:] = False
    attn[1, 2] = False  # an unmapped committed token in the middle
    return embeds, attn


PREFIX_PROMPTS = ["the cat sat on the mat", "a dog", "it was a very happy day and then it was night"]


def test_prefix_cache_gives_the_same_rewards_and_gradients(qwen_reward):
    rm, L = qwen_reward, 7
    ctx = [rm.context(p) for p in PREFIX_PROMPTS]  # different prefix lengths: left padding
    embeds, attn = layout_inputs(rm, L)
    out = {}
    for cached in (False, True):
        batch = RewardBatch(rm, ctx, L, prefix_cache=cached)
        assert batch.prefix_cached == cached
        e = embeds.clone().requires_grad_(True)
        r = batch.score(e, attn)
        (r * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
        out[cached] = (r.detach(), e.grad)
        with torch.no_grad():
            torch.testing.assert_close(batch.score(embeds, attn), r.detach())  # reusable, also without grad
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-5)
    assert out[False][0].std() > 0 and out[True][1][~attn].abs().max() == 0


def test_prefix_cache_matches_the_discrete_text_score(qwen_reward):
    rm = qwen_reward
    responses = ["the sun was red", "good dog ran quickly", "sad"]
    ids = [rm.tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    L = max(map(len, ids)) + 2
    table = rm.embedding_table()
    embeds = torch.zeros(3, L, table.shape[1])
    attn = torch.zeros(3, L, dtype=torch.bool)
    for b, t in enumerate(ids):
        embeds[b, :len(t)] = table[t]
        attn[b, :len(t)] = True
    batch = RewardBatch(rm, [rm.context(p) for p in PREFIX_PROMPTS], L, prefix_cache=True)
    with torch.no_grad():
        torch.testing.assert_close(batch.score(embeds, attn), rm.score_texts(PREFIX_PROMPTS, responses),
                                   atol=1e-5, rtol=1e-5)


def test_prefix_cache_under_gradient_checkpointing(tok):
    from support.tiny_models import tiny_qwen3_reward
    rm = tiny_qwen3_reward(tok, seed=1)
    plain = tiny_qwen3_reward(tok, seed=1)
    rm.model.activation_checkpointing_enable()
    L = 6
    ctx = [rm.context(p) for p in PREFIX_PROMPTS]
    embeds, attn = layout_inputs(rm, L, seed=1)
    grads = []
    for model in (plain, rm):
        e = embeds.clone().requires_grad_(True)
        RewardBatch(model, ctx, L, prefix_cache=True).score(e, attn).sum().backward()
        grads.append(e.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)
    assert not any("_can_checkpoint_with_cache" in m.__dict__ for m in rm.model.modules())  # restored


def test_rewards_without_a_decoder_run_the_whole_row(tok):
    pref = TokenPreferenceReward(tok, ["sun"], template="plain")
    assert not pref.supports_prefix_cache
    assert not RewardBatch(pref, [pref.context("the cat")], 3, prefix_cache=True).prefix_cached


# ---- whole runs: optimised == naive -----------------------------------------------------------------
def small(**kw):
    base = dict(max_new_tokens=8, steps=8, num_samples=2, temperature=1.0, top_p=0.9)
    base.update(kw)
    return SamplerConfig(**base)


def run_and_rewards(fn, *args, **kwargs):
    out = fn(*args, progress=False, **kwargs)
    tokens = [s.token_ids for g in out.samples for s in g]
    inner = torch.tensor([r for g in out.samples for s in g for t in s.trace for r in t.rewards])
    final = torch.tensor([s.reward for g in out.samples for s in g])
    return tokens, inner, final


def reference_results(*args, **kwargs):
    out = reference_generate(*args, **kwargs)
    return ([s.token_ids for g in out.samples for s in g],
            torch.tensor([r for g in out.samples for s in g for t in s.trace for r in t.rewards]),
            torch.tensor([s.reward for g in out.samples for s in g]))


def assert_equal_runs(got, ref):
    assert got[0] == ref[0]  # the same tokens
    torch.testing.assert_close(got[1], ref[1], atol=1e-4, rtol=1e-4)  # the inner steps' rewards
    torch.testing.assert_close(got[2], ref[2], atol=1e-4, rtol=1e-4)  # the final re-score


@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("method", ["none", "expectation", "aps", "entrgi"])
def test_generation_equals_the_straight_reference(mlm, qwen_reward, method, blocks):
    """The optimised sampler (chunked soft embedding, prefix cache, fused Adam, sort-free top-p) against
    examples/reference_sampler.py: same tokens, rewards to float rounding."""
    sampler = small(block_length=4, steps=4, schedule="uniform") if blocks else small()
    guidance = GuidanceConfig(rule=method, lr=1.0, vocab_chunk=16)  # chunks smaller than the tiny vocabulary
    got = run_and_rewards(generate, mlm, PROMPTS, qwen_reward, sampler=sampler, guidance=guidance)
    ref = reference_results(mlm, PROMPTS, qwen_reward, sampler, guidance)
    assert_equal_runs(got, ref)
    assert (len(got[1]) > 0) == (method != "none")
    assert len({tuple(t) for t in got[0]}) > 1


@pytest.mark.parametrize("sampler_kw,guidance_kw", [
    ({}, dict(rule="entrgi", optimizer="ascent", lr=20.0)),
    (dict(remasking="maskgit_plus", confidence_from="guided", top_k=6, batch_size=3), dict(rule="aps", lr=2.0)),
    (dict(remasking="topk_margin", min_new_tokens=3, deprioritize_eos=False), dict(rule="entrgi", lr=1.0)),
    (dict(remasking="random", temperature=0.7, top_p=1.0), dict(rule="expectation", lr=1.0)),
    (dict(remasking="low_confidence", temperature=0.0), dict(rule="none")),
])
def test_options_equal_the_straight_reference(mlm, qwen_reward, sampler_kw, guidance_kw):
    sampler, guidance = small(**sampler_kw), GuidanceConfig(**guidance_kw)
    got = run_and_rewards(generate, mlm, PROMPTS, qwen_reward, sampler=sampler, guidance=guidance)
    assert_equal_runs(got, reference_results(mlm, PROMPTS, qwen_reward, sampler, guidance))


def test_the_naive_sampler_equals_the_straight_reference(mlm, qwen_reward):
    """The benchmark's per-part naive path (public hooks overridden) stays the same algorithm."""
    guidance = GuidanceConfig(rule="entrgi", lr=1.0)
    got = run_and_rewards(generate_naive, mlm, PROMPTS, qwen_reward, sampler=small(), guidance=guidance)
    assert_equal_runs(got, reference_results(mlm, PROMPTS, qwen_reward, small(), guidance))


@pytest.mark.parametrize("change,name", [(dict(sampling="gumbel"), "sampling"), (dict(remasking="origin"), "remasking"),
                                         (dict(remasking_temperature=0.5), "remasking_temperature")])
def test_the_reference_refuses_what_it_does_not_implement(mlm, change, name):
    with pytest.raises(ValueError, match=f"does not implement \\['{name}'\\]"):
        reference_generate(mlm, PROMPTS, None, small(**change), GuidanceConfig(rule="none"))
    with pytest.raises(ValueError, match="does not implement \\['soft_top_k'\\]"):
        reference_generate(mlm, PROMPTS, None, small(), GuidanceConfig(rule="none", soft_top_k=3))


@pytest.mark.parametrize("switch", [dict(prefix_cache=False), dict(vocab_chunk=None), dict(vocab_chunk=7)])
def test_each_switch_keeps_the_samples(mlm, qwen_reward, switch):
    base = GuidanceConfig(rule="entrgi", lr=1.0)
    a = run_and_rewards(generate, mlm, PROMPTS, qwen_reward, sampler=small(), guidance=base)
    b = run_and_rewards(generate, mlm, PROMPTS, qwen_reward, sampler=small(),
                        guidance=dataclasses.replace(base, **switch))
    assert a[0] == b[0]
    torch.testing.assert_close(a[1], b[1], atol=1e-4, rtol=1e-4)


def test_soft_top_k_runs_and_is_off_by_default(mlm, qwen_reward):
    assert GuidanceConfig().soft_top_k is None
    out = generate(mlm, PROMPTS[:1], qwen_reward, sampler=small(), progress=False,
                   guidance=GuidanceConfig(rule="expectation", lr=1.0, soft_top_k=4))
    assert all(len(s.token_ids) == 8 for s in out.samples[0])


def test_compile_needs_a_compilable_reward(mlm, pref_reward):
    with pytest.raises(ValueError, match="`compile`: TokenPreferenceReward"):
        generate(mlm, PROMPTS[:1], pref_reward, sampler=small(), guidance=GuidanceConfig(compile=True), progress=False)


@pytest.mark.slow
def test_compiled_reward_model_gives_the_same_samples(mlm, tok):
    from support.tiny_models import tiny_qwen3_reward
    guidance = GuidanceConfig(rule="entrgi", lr=1.0)
    ref = run_and_rewards(generate, mlm, PROMPTS, tiny_qwen3_reward(tok, seed=1), sampler=small(), guidance=guidance)
    got = run_and_rewards(generate, mlm, PROMPTS, tiny_qwen3_reward(tok, seed=1), sampler=small(),
                          guidance=dataclasses.replace(guidance, compile=True))
    assert got[0] == ref[0]
    torch.testing.assert_close(got[1], ref[1], atol=1e-4, rtol=1e-4)


# ---- devices ----------------------------------------------------------------------------------------
def test_aligned_table_is_cached_per_device():
    from entrgi.reward.vocab import VocabBridge
    bridge = VocabBridge.identity(6, 5)
    emb = torch.randn(5, 3)
    a = bridge.rm_table(emb)
    assert bridge.rm_table(emb, "cpu") is a
    meta = bridge.rm_table(emb, "meta")
    assert meta.device.type == "meta" and bridge.rm_table(emb) is a


def test_reward_batch_moves_inputs_to_the_reward_device(tok):
    seen = {}

    def fn(e, attn, pos):
        seen["device"] = (e.device, attn.device, pos.device)
        return e.sum((1, 2))

    from entrgi.reward.callable import CallableReward
    rm = CallableReward(fn, torch.randn(len(tok), 4), tok, template="response")
    batch = RewardBatch(rm, [rm.context("a")], 2)
    assert batch.device == rm.embedding_table().device
    batch.score(torch.randn(1, 2, 4, dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool))
    assert set(seen["device"]) == {batch.device}

