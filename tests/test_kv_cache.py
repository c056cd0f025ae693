"""The DLLM KV cache for block decoding (``SamplerConfig.kv_cache``: prefix / dual; entrgi.models.cache) on
tiny Dream and LLaDA checkpoints with their real layouts and tiny random BERT / RoBERTa masked LMs (HFMaskedLM,
no shift), left-padded batches.

- mechanics: a cache rebuilt from the current canvas gives, through the window-only forward, the uncached
  logits of every response slot (Dream's right shift included); the window is the block (+ Dream's previous
  position), or the block and everything after it (prefix);
- the approximation: the keys/values outside the window are those of the canvas the cache was built from,
  whatever was queried in between; a change outside the window (e.g. a resampled row) rebuilds the cache;
  another tensor runs uncached;
- generation: with the per-block cache every slot is committed with the same per-step counts as without,
  the greedy token agreement with the uncached sampler is computed (reported, sanity-checked only); with a
  cache rebuilt before every step the samples are the uncached ones exactly;
- the masked LMs' split forward: the MLM head on the response slots only gives the whole module's logits.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.tiny_checkpoints import write_dream_checkpoint, write_llada_checkpoint
from support.tiny_models import tiny_mlm, word_tokenizer
from transformers import DistilBertConfig, DistilBertForMaskedLM, RobertaConfig, RobertaForMaskedLM

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.models import Dream, LLaDA
from entrgi.models.base import DiffusionLM
from entrgi.models.cache import BlockKVCache
from entrgi.models.hf_mlm import HFMaskedLM
from entrgi.reward.base import left_pad, position_ids_from
from entrgi.sampling.agreement import kv_cache_agreement, token_agreement

PROMPTS = ["the cat sat on the mat under the tree", "a dog"]  # different lengths: left padding
L, BLOCK = 12, 4  # mechanics: three blocks (a middle one has blocks before and after it)
GEN_L = 8  # generation: two blocks, T = GEN_L
NAMES = ["dream", "llada", "bert", "roberta"]  # bert / roberta: HFMaskedLM (no shift)


def tiny_roberta(tokenizer=None, *, hidden: int = 32, layers: int = 2, seed: int = 0,
                 attn_implementation: str | None = None) -> HFMaskedLM:
    """A random RoBERTa masked LM over the word tokenizer (its own position ids are the canvas's)."""
    tokenizer = tokenizer or word_tokenizer()
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id, attn_implementation=attn_implementation)
    return HFMaskedLM.from_module(RobertaForMaskedLM(cfg), tokenizer)


def tiny_distilbert(tokenizer) -> HFMaskedLM:
    """A random DistilBERT masked LM: a layout the adapter does not split (no KV cache)."""
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    return HFMaskedLM.from_module(DistilBertForMaskedLM(cfg), tokenizer)


def build_mlm(name, attn_implementation=None):
    """Tiny BERT / RoBERTa with weights of std 0.3 (BERT's 0.02 init makes attention nearly uniform, so
    stale keys would barely move the logits)."""
    mlm = tiny_roberta() if name == "roberta" else tiny_mlm(word_tokenizer())
    if attn_implementation is not None:
        mlm.module.set_attn_implementation(attn_implementation)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in mlm.module.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
    return mlm


def build(folders, name, dtype=None, attn_implementation=None):
    if name in ("bert", "roberta"):
        mlm = build_mlm(name, attn_implementation)
        if dtype is not None:
            mlm.module.to(dtype)
        return mlm
    cls = Dream if name == "dream" else LLaDA
    return cls.from_pretrained(folders[name], dtype=dtype, attn_implementation=attn_implementation)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv_ckpts")
    return {"dream": write_dream_checkpoint(root / "dream", shards=1),
            "llada": write_llada_checkpoint(root / "llada", shards=1)}


@pytest.fixture(scope="module")
def models(folders):
    return {name: build(folders, name) for name in NAMES}


@pytest.fixture(scope="module")
def models64(folders):
    return {name: build(folders, name, dtype=torch.float64) for name in NAMES}


def canvas(model, committed: int, seed: int = 0):
    """Left-padded prompts + L slots, the first ``committed`` slots holding random ordinary tokens."""
    prompt, pattn = left_pad([model.encode_prompt(p) for p in PROMPTS], model.pad_token_id, "cpu")
    B, P = prompt.shape
    assert (pattn == 0).any(), "the test needs a padded row"
    x = torch.cat([prompt, torch.full((B, L), model.mask_token_id)], 1)
    attn = torch.cat([pattn, torch.ones(B, L, dtype=torch.long)], 1)
    g = torch.Generator().manual_seed(seed)
    x[:, P:P + committed] = torch.randint(5, 25, (B, committed), generator=g)
    return x, attn, position_ids_from(attn), P


def uncached(model, x, attn, pos, P):
    return model.response_logits(x.clone(), attn, pos, P)  # another tensor: never the cache's canvas


def fill_some(model, x, lo, hi, seed):
    """Commit a random half of the still-masked slots in [lo, hi) (what a step does)."""
    g = torch.Generator().manual_seed(seed)
    pick = (torch.rand(x[:, lo:hi].shape, generator=g) < 0.5) & (x[:, lo:hi] == model.mask_token_id)
    x[:, lo:hi][pick] = torch.randint(5, 25, (int(pick.sum()),), generator=g)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("name", NAMES)
def test_a_refreshed_cache_gives_the_uncached_logits(models, name, mode):
    model = models[name]
    shift = int(name == "dream")
    for blk in range(L // BLOCK):
        x, attn, pos, P = canvas(model, committed=blk * BLOCK, seed=blk)
        N, s, e = x.shape[1], P + blk * BLOCK, P + (blk + 1) * BLOCK
        model.begin_block(mode, x, s, e)
        kv = model.kv_cache
        assert kv.window == (s - shift, e if mode == "dual" else N)
        first = model.response_logits(x, attn, pos, P)  # the block's first step: full forward, recorded
        assert kv.full_forwards == 1 and kv.cached_forwards == 0 and kv.query_tokens == N
        torch.testing.assert_close(first, uncached(model, x, attn, pos, P), rtol=0, atol=0)
        for step in range(3):
            if step:
                fill_some(model, x, s, e, seed=10 * blk + step)
                model.invalidate_kv_cache()
                model.response_logits(x, attn, pos, P)  # rebuild from the current canvas
            got = model.response_logits(x, attn, pos, P)  # the window-only forward
            assert kv.cached_forwards == step + 1 and kv.full_forwards == step + 1
            assert kv.query_tokens == (BLOCK + shift if mode == "dual" else N - s + shift)
            torch.testing.assert_close(got, uncached(model, x, attn, pos, P), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_eager_attention_gets_the_same_window_mask(folders, name):
    """The window's (B, 1, q, N) padding mask also in the eager kernel's additive form."""
    model = build(folders, name, attn_implementation="eager")
    assert model.module.config._attn_implementation == "eager"
    x, attn, pos, P = canvas(model, committed=BLOCK)
    model.begin_block("dual", x, P + BLOCK, P + 2 * BLOCK)
    model.response_logits(x, attn, pos, P)
    fill_some(model, x, P + BLOCK, P + 2 * BLOCK, seed=4)
    model.invalidate_kv_cache()
    model.response_logits(x, attn, pos, P)
    got = model.response_logits(x, attn, pos, P)
    assert model.kv_cache.cached_forwards == 1
    torch.testing.assert_close(got, uncached(model, x, attn, pos, P), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("name", NAMES)
def test_stale_keys_come_from_the_build_canvas_only(models, name, mode):
    """The cached steps see the keys/values outside the window as of the block's first step (an
    approximation: the logits differ from the uncached ones), whatever was queried in between; the slots
    whose source hidden state lies outside the window keep the first step's logits."""
    model = models[name]
    x0, attn, pos, P = canvas(model, committed=BLOCK)
    s, e = P + BLOCK, P + 2 * BLOCK
    x_b = x0.clone()
    fill_some(model, x_b, s, e, seed=1)
    x_c = x0.clone()
    fill_some(model, x_c, s, e, seed=2)
    results = []
    for path in ([x_b], [x_c, x_b]):  # query x_b directly, or after x_c
        x = x0.clone()
        model.begin_block(mode, x, s, e)
        first = model.response_logits(x, attn, pos, P)
        for state in path:
            x.copy_(state)
            got = model.response_logits(x, attn, pos, P)
        assert model.kv_cache.full_forwards == 1
        results.append((first, got))
    (first, got), (_, got_after_c) = results
    torch.testing.assert_close(got, got_after_c, rtol=1e-6, atol=1e-6)
    assert (got - uncached(model, x_b, attn, pos, P)).abs().max() > 1e-3  # stale keys/values change the result
    shift = int(name == "dream")
    fresh_hi = (e - P + shift) if mode == "dual" else L
    fresh_lo = s - P
    torch.testing.assert_close(got[:, :fresh_lo], first[:, :fresh_lo], rtol=0, atol=0)  # committed slots
    torch.testing.assert_close(got[:, fresh_hi:], first[:, fresh_hi:], rtol=0, atol=0)  # dual: later blocks


@pytest.mark.parametrize("name", NAMES)
def test_a_change_outside_the_window_rebuilds_the_cache(models, name):
    model = models[name]
    x, attn, pos, P = canvas(model, committed=BLOCK)
    s, e = P + BLOCK, P + 2 * BLOCK
    model.begin_block("dual", x, s, e)
    model.response_logits(x, attn, pos, P)
    fill_some(model, x, s, e, seed=3)
    x[1, P] = 7 if int(x[1, P]) != 7 else 8  # a committed slot of row 1 changes (e.g. particle resampling)
    got = model.response_logits(x, attn, pos, P)
    kv = model.kv_cache
    assert kv.full_forwards == 2 and kv.cached_forwards == 0
    torch.testing.assert_close(got, uncached(model, x, attn, pos, P), rtol=0, atol=0)
    x[:, e:] = 9  # a later block changes: outside the dual window
    model.response_logits(x, attn, pos, P)
    assert kv.full_forwards == 3


def test_other_tensors_and_mode_none_run_uncached(models):
    model = models["dream"]
    x, attn, pos, P = canvas(model, committed=0)
    model.begin_block("dual", x, P, P + BLOCK)
    other = x.clone()
    ref = model.response_logits(other, attn, pos, P)
    assert model.kv_cache.full_forwards == 0  # `other` is not the cache's canvas
    model.begin_block("none", x, P, P + BLOCK)
    assert model.kv_cache is None
    torch.testing.assert_close(model.response_logits(x, attn, pos, P), ref, rtol=0, atol=0)


def test_the_cache_is_freed_with_its_canvas(models):
    model = models["llada"]
    x, attn, pos, P = canvas(model, committed=0)
    model.begin_block("prefix", x, P, P + BLOCK)
    model.response_logits(x, attn, pos, P)
    kv = model.kv_cache
    assert kv.built and len(kv.layers) == model.module.config.num_hidden_layers and kv.logits is not None
    del x
    assert not kv.built and kv.layers == [] and kv.logits is None and kv.canvas() is None


def test_user_mistakes(models, tok):
    model = models["dream"]
    x, _, _, P = canvas(model, committed=0)
    with pytest.raises(ValueError, match="kv_cache"):
        SamplerConfig(kv_cache="full")
    with pytest.raises(ValueError, match="kv_cache"):
        model.begin_block("both", x, P, P + BLOCK)
    with pytest.raises(ValueError, match="block"):
        BlockKVCache("dual", x, P + BLOCK, P, shift=1)
    mlm = tiny_distilbert(tok)  # a masked LM whose layout has no KV cache
    assert mlm.KV_CACHE_MODES == ("none",) and not mlm.splits_head
    with pytest.raises(ValueError, match=r"`kv_cache` = 'dual' is not available for the HFMaskedLM adapter"):
        generate(mlm, ["the cat"], sampler=SamplerConfig(max_new_tokens=4, steps=4, block_length=2, num_samples=1,
                                                         kv_cache="dual"), guidance=GuidanceConfig(rule="none"),
                 progress=False)
    with pytest.raises(ValueError, match="same rows"):
        token_agreement([[1, 2]], [[1, 2, 3]])


def test_token_agreement_counts_equal_slots():
    assert token_agreement([[1, 2, 3, 4], [5, 6, 7, 8]], torch.tensor([[1, 2, 0, 4], [0, 0, 7, 8]])) == 5 / 8


# ---- generation --------------------------------------------------------------------------------------
def sampler_cfg(name, **kw):
    base = dict(max_new_tokens=GEN_L, steps=GEN_L, block_length=BLOCK, num_samples=1, seed=3, temperature=0.0)
    if name == "dream":
        base.update(remasking="entropy", schedule="linear", top_p=0.95)
    else:
        base.update(remasking="low_confidence", schedule="uniform", top_p=1.0)
    return SamplerConfig(**{**base, **kw})


def run(model, cfg, trace=True):
    return generate(model, PROMPTS, sampler=cfg, guidance=GuidanceConfig(rule="none"), progress=False, trace=trace)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("name", NAMES)
def test_generation_with_the_block_cache(models, name, mode):
    model = models[name]
    ref = run(model, sampler_cfg(name))
    out = run(model, sampler_cfg(name, kv_cache=mode))
    S = BLOCK  # steps per block: T = GEN_L steps over GEN_L / BLOCK blocks
    assert model.kv_cache.full_forwards == 1 and model.kv_cache.cached_forwards == S - 1  # the last block
    for g_ref, g in zip(ref.samples, out.samples):
        for a, b in zip(g_ref, g):
            assert model.mask_token_id not in b.token_ids and len(b.token_ids) == GEN_L
            assert [len(t.committed) for t in b.trace] == [len(t.committed) for t in a.trace]
            assert sum(len(t.committed) for t in b.trace) == GEN_L
    agreement = token_agreement(ref, out)
    print(f"\n{name} {mode}: greedy token agreement with the uncached sampler {agreement:.2f}")
    assert 0.0 <= agreement <= 1.0


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("name", NAMES)
def test_the_cost_count_counts_the_window_of_cached_steps(models, name, mode):
    """dllm_tokens: rows × the whole canvas at a block's first step, rows × the query window at its others."""
    model = models[name]
    ref = run(model, sampler_cfg(name), trace=False)
    out = run(model, sampler_cfg(name, kv_cache=mode), trace=False)
    B, N = len(PROMPTS), ref.stats.dllm_tokens // (len(PROMPTS) * GEN_L)  # canvas length (prompt + L)
    assert ref.stats.dllm_tokens == B * N * GEN_L
    P = N - GEN_L
    shift = 1 if name == "dream" else 0
    expected = 0
    for block in range(GEN_L // BLOCK):
        a = max(P + block * BLOCK - shift, 0)
        b = P + (block + 1) * BLOCK if mode == "dual" else N
        expected += B * N + (BLOCK - 1) * B * (b - a)  # first step full, then the window
    assert out.stats.dllm_tokens == expected < ref.stats.dllm_tokens
    assert out.stats.dllm_forwards == ref.stats.dllm_forwards


@pytest.mark.parametrize("name", NAMES)
def test_kv_cache_agreement_reports_every_mode(models, name):
    model = models[name]
    got = kv_cache_agreement(model, PROMPTS, sampler_cfg(name))
    assert set(got) == {"prefix", "dual"} and all(0.0 <= v <= 1.0 for v in got.values())
    assert kv_cache_agreement(model, PROMPTS, sampler_cfg(name), modes=("none",)) == {"none": 1.0}


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("name", NAMES)
def test_a_cache_rebuilt_before_every_step_reproduces_the_uncached_samples(models64, name, mode, monkeypatch):
    """Every step: rebuild the cache from the current canvas, then take the logits from the window-only
    forward. Float64 weights; Dream greedy, LLaDA sampled (τ 0.7, Gumbel-max): the samples are the uncached
    sampler's, token for token."""
    model = models64[name]
    cfg = sampler_cfg(name, temperature=0.0 if name == "dream" else 0.7, num_samples=1 if name == "dream" else 2)
    ref = run(model, cfg, trace=False)  # (the trace's entropy weight is float32-only)
    forward = model.response_logits
    windows = []

    def rebuilt_then_cached(x, attn, pos, start):
        kv = model.kv_cache
        if kv is not None and kv.owns(x):
            model.invalidate_kv_cache()
            forward(x, attn, pos, start)
            out = forward(x, attn, pos, start)
            windows.append(kv.query_tokens)
            return out
        return forward(x, attn, pos, start)

    monkeypatch.setattr(model, "response_logits", rebuilt_then_cached)
    out = run(model, dataclasses.replace(cfg, kv_cache=mode), trace=False)
    shift = int(name == "dream")
    per_block = [BLOCK + shift if mode == "dual" else GEN_L - blk * BLOCK + shift for blk in range(GEN_L // BLOCK)]
    assert windows == [w for w in per_block for _ in range(BLOCK)]  # every step ran the window only
    assert [[s.token_ids for s in g] for g in out.samples] == [[s.token_ids for s in g] for g in ref.samples]


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_threshold_decoding_with_the_cache_commits_every_slot(models, mode):
    """Blocks that finish early (parallel decoding) start the next block's cache at its first forward."""
    model = models["llada"]
    cfg = sampler_cfg("llada", temperature=0.7, num_samples=2, parallel_threshold=0.05, kv_cache=mode)
    out = run(model, cfg)
    for g in out.samples:
        for s in g:
            assert model.mask_token_id not in s.token_ids and sum(len(t.committed) for t in s.trace) == GEN_L
    kv = model.kv_cache  # the last block's
    assert kv.end - kv.start == BLOCK and kv.full_forwards == 1
    assert {t.block for t in out.samples[0][0].trace} == set(range(GEN_L // BLOCK))


# ---- masked LMs: the split forward ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_mlm_response_logits_are_the_whole_modules_slice(models64, name):
    """Encoder on all N positions, MLM head on the response slots only: exactly the whole module's logits."""
    model = models64[name]
    assert model.splits_head and model.KV_CACHE_MODES == ("none", "prefix", "dual")
    x, attn, pos, P = canvas(model, committed=BLOCK)
    got = model.response_logits(x, attn, pos, P)
    ref = DiffusionLM.response_logits(model, x, attn, pos, P)  # the base path: module(...)[:, P:]
    assert got.shape == (x.shape[0], L, model.logit_width) and got.dtype == torch.float64
    assert torch.equal(got, ref)
    full = model.module(input_ids=x, attention_mask=attn, position_ids=pos).logits
    assert torch.equal(got, full[:, P:])


def test_unsplit_mlm_runs_the_whole_module(tok):
    mlm = tiny_distilbert(tok)
    x, attn, pos, P = canvas(mlm, committed=0)
    full = mlm.module(input_ids=x, attention_mask=attn, position_ids=pos).logits
    assert torch.equal(mlm.response_logits(x, attn, pos, P), full[:, P:])
    with pytest.raises(ValueError, match=r"`kv_cache` = 'prefix' is not available"):
        mlm.begin_block("prefix", x, P, P + BLOCK)
    mlm.begin_block("none", x, P, P + BLOCK)  # mode none: nothing to do
    assert mlm.kv_cache is None


@pytest.fixture(scope="module")
def default_dllm():
    from entrgi.default_pair import load_default_pair
    return load_default_pair()[0]


def test_the_default_pair_splits_its_head_and_caches(default_dllm):
    """The embedded MiniLM BERT (30,522-id head): the split forward matches the whole module's logits, and a
    refreshed dual cache the uncached ones."""
    model = default_dllm
    assert type(model.module).__name__ == "BertForMaskedLM" and model.splits_head
    x, attn, pos, P = canvas(model, committed=BLOCK)
    ref = DiffusionLM.response_logits(model, x, attn, pos, P)
    got = model.response_logits(x, attn, pos, P)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)  # float32 GEMMs of other row counts
    s, e = P + BLOCK, P + 2 * BLOCK
    model.begin_block("dual", x, s, e)
    try:
        torch.testing.assert_close(model.response_logits(x, attn, pos, P), got, rtol=0, atol=0)
        fill_some(model, x, s, e, seed=5)
        model.invalidate_kv_cache()
        model.response_logits(x, attn, pos, P)
        cached = model.response_logits(x, attn, pos, P)
        kv = model.kv_cache
        assert kv.cached_forwards == 1 and kv.query_tokens == BLOCK and kv.logit_slots == BLOCK
        torch.testing.assert_close(cached, uncached(model, x, attn, pos, P), rtol=1e-4, atol=1e-4)
    finally:
        model.begin_block("none", x, s, e)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_mlm_cache_counts_logit_slots(models, mode):
    """``logit_slots``: N − start on the building forward, the window's response slots on a cached one."""
    model = models["bert"]
    x, attn, pos, P = canvas(model, committed=BLOCK)
    N, s, e = x.shape[1], P + BLOCK, P + 2 * BLOCK
    model.begin_block(mode, x, s, e)
    model.response_logits(x, attn, pos, P)
    kv = model.kv_cache
    assert kv.query_tokens == N and kv.logit_slots == L
    model.response_logits(x, attn, pos, P)
    assert kv.query_tokens == kv.logit_slots == (BLOCK if mode == "dual" else N - s)
