"""The deterministic cost count (``ComputeStats`` tokens / MACs / FLOPs; docs/performance.md, "Cost count")
against a hand count on tiny models, and against the matrix-multiply FLOPs torch's own counter
(``torch.utils.flop_counter.FlopCounterMode``) sees the same runs execute."""

import dataclasses
import time

import pytest
from support.naive_reference import generate_naive
from support.tiny_checkpoints import dream_config

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.models.dream import DreamModule, qwen2_config
from entrgi.sampling.outputs import (
    ComputeStats,
    CostParameters,
    cost_parameters,
    non_embedding_parameters,
    output_layer_parameters,
)

PROMPT = "the cat sat"
L, T, K = 4, 2, 2
#: masked slots per row at the 2 steps: all L, then L − int(L · (1 − ts[1]/ts[0])) = 4 − 1 (Dream's schedule)
MASKED = (4, 3)


def bert_non_embedding(cfg) -> int:
    """BertForMaskedLM without embedding matrices: embedding LayerNorm, the layers, the MLM transform."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return 2 * h + cfg.num_hidden_layers * layer + (h * h + h) + 2 * h


def qwen3_rm_non_embedding(cfg) -> int:
    """Qwen3ForSequenceClassification without the token embedding: the layers, the final norm, the score head."""
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    layer = h * q + 2 * h * kv + q * h + 2 * hd + 3 * h * i + 2 * h
    return cfg.num_hidden_layers * layer + h + h * cfg.num_labels


def run(mlm, reward, method="entrgi", **kw):
    g = {"trace": kw.pop("trace", False), "callback": kw.pop("callback", None)}
    sampler = SamplerConfig(max_new_tokens=L, steps=T, num_samples=K, temperature=1.0)
    rule, search = ("none", "best_of_n") if method == "best_of_n" else (method, "sample")
    guidance = GuidanceConfig(rule=rule, inner_steps=1, lr=1.0, **kw)
    return generate(mlm, PROMPT, reward, sampler=sampler, guidance=guidance, search=search, progress=False, **g)


def bert_head(cfg) -> int:
    """The MLM's logit layer: the decoder matrix (tied to the word embeddings) and its bias."""
    return cfg.vocab_size * cfg.hidden_size + cfg.vocab_size


def test_parameter_counts(mlm, qwen_reward):
    n_dllm, n_rm, n_head = cost_parameters(mlm, qwen_reward)
    assert n_dllm == bert_non_embedding(mlm.module.config)
    assert n_rm == qwen3_rm_non_embedding(qwen_reward.model.config)
    assert n_head == bert_head(mlm.module.config) == output_layer_parameters(mlm.module)
    assert cost_parameters(mlm) == CostParameters(n_dllm, 0, n_head)
    # Dream's layout: the token embedding and lm_head (tied or not) are both excluded
    for tied in (False, True):
        cfg = qwen2_config({**dream_config(vocab_size=64), "tie_word_embeddings": tied})
        module = DreamModule(cfg)
        total = sum(p.numel() for p in module.parameters())
        assert non_embedding_parameters(module) == total - 64 * 32 * (1 if tied else 2)


def hand_count(mlm, reward, texts, *, prefix_cache=True, trace=False, guided=True):
    """Tokens, MACs and FLOPs of a 1-prompt, K = 2, L = 4, T = 2, M = 1 run, written out."""
    P = len(mlm.encode_prompt(PROMPT))
    ctx = reward.context(PROMPT)
    Pp, S = len(ctx.prefix_ids), len(ctx.suffix_ids)
    V, d = mlm.logit_width, reward.embedding_table().shape[1]
    dllm = T * K * (P + L)
    # the final re-score runs the tokenised template text of each sample, left-padded to the longest
    final = K * max(len(reward.tokenizer("".join(reward.render(PROMPT, t)))["input_ids"]) for t in texts)
    call = K * (L + S) if prefix_cache else K * (Pp + L + S)  # one RM call: [slots ; suffix] or the whole row
    calls = T * (1 + trace) if guided else 0  # M = 1 inner step (+ the trace's evaluation) per step
    fwd = (K * Pp if prefix_cache and guided else 0) + calls * call + final
    bwd = T * call if guided else 0
    macs = sum(K * n * V * d for n in MASKED) * (2 + trace) if guided else 0  # forward + backward (+ trace's)
    logit = T * K * L  # the output layer runs on the response slots only
    n_dllm, n_rm = bert_non_embedding(mlm.module.config), qwen3_rm_non_embedding(reward.model.config)
    flops = 2 * n_dllm * dllm + 2 * bert_head(mlm.module.config) * logit + 2 * n_rm * (fwd + bwd) + 2 * macs
    return {"dllm_tokens": dllm, "dllm_logit_tokens": logit, "rm_forward_tokens": fwd, "rm_backward_tokens": bwd,
            "soft_embedding_macs": macs, "flops": flops}


def counts(out):
    d = dataclasses.asdict(out.stats)
    return {k: d[k] for k in ("dllm_tokens", "dllm_logit_tokens", "rm_forward_tokens", "rm_backward_tokens",
                              "soft_embedding_macs", "flops")}


def texts(out):
    return [s.text for s in out.samples[0]]


@pytest.mark.parametrize("prefix_cache,trace", [(True, False), (True, True), (False, False)])
def test_two_step_run_matches_a_hand_count(mlm, qwen_reward, prefix_cache, trace):
    out = run(mlm, qwen_reward, prefix_cache=prefix_cache, trace=trace)
    method = hand_count(mlm, qwen_reward, texts(out), prefix_cache=prefix_cache)
    assert counts(out) == method  # the method's cost: tracing adds nothing to it
    watched = hand_count(mlm, qwen_reward, texts(out), prefix_cache=prefix_cache, trace=trace)
    extra = {k: watched[k] - method[k] for k in ("rm_forward_tokens", "soft_embedding_macs", "flops")}
    assert {k: getattr(out.observer_stats, k) for k in extra} == extra  # the trace's evaluation, counted apart
    assert (extra["rm_forward_tokens"] > 0) == trace
    assert out.stats.dllm_forwards == T * K and out.stats.rm_backwards == T * K
    if trace:
        assert [t.masked for t in out.samples[0][0].trace] == list(MASKED)


def test_the_naive_sampler_runs_whole_rows(mlm, qwen_reward):
    """No prefix cache in the naive reference: every call runs [prefix ; slots ; suffix]."""
    out = generate_naive(mlm, PROMPT, qwen_reward, sampler=SamplerConfig(max_new_tokens=L, steps=T, num_samples=K,
                                                                         temperature=1.0),
                         guidance=GuidanceConfig(inner_steps=1, lr=1.0), progress=False, trace=False)
    assert counts(out) == hand_count(mlm, qwen_reward, texts(out), prefix_cache=False)


def test_unguided_costs_less_and_counts_only_what_runs(mlm, qwen_reward):
    guided, plain = run(mlm, qwen_reward), run(mlm, qwen_reward, method="best_of_n")
    assert counts(plain) == hand_count(mlm, qwen_reward, texts(plain), guided=False)
    assert plain.stats.dllm_tokens == guided.stats.dllm_tokens
    assert plain.stats.rm_backward_tokens == plain.stats.soft_embedding_macs == 0
    assert guided.stats.flops > plain.stats.flops > 0
    none = run(mlm, None, method="none")
    cfg = mlm.module.config
    assert none.stats.flops == 2 * bert_non_embedding(cfg) * none.stats.dllm_tokens + 2 * bert_head(cfg) * T * K * L


def test_costs_do_not_depend_on_wall_time(mlm, qwen_reward):
    fast = run(mlm, qwen_reward)
    slow = run(mlm, qwen_reward, callback=lambda step, state: time.sleep(0.1))
    assert slow.stats.wall_time_s >= T * 0.1  # T sleeps inside the timed region
    assert counts(slow) == counts(fast)
    assert [s.token_ids for s in slow.samples[0]] == [s.token_ids for s in fast.samples[0]]


def test_estimate_flops_formula():
    s = ComputeStats(dllm_tokens=3, dllm_logit_tokens=2, rm_forward_tokens=5, rm_backward_tokens=7,
                     soft_embedding_macs=11)
    assert s.estimate_flops(100, 10, 1000) == 2 * 100 * 3 + 2 * 1000 * 2 + 2 * 10 * (5 + 7) + 2 * 11
    assert s.estimate_flops(100, 10) == 2 * 100 * 3 + 2 * 10 * (5 + 7) + 2 * 11
    assert not hasattr(ComputeStats, "add")


def test_count_inner_loop_adds_the_recomputed_forward():
    """With RM gradient checkpointing every backward reruns the forward: one more forward per backward."""
    plain, ckpt = ComputeStats(), ComputeStats()
    plain.count_inner_loop(2, 10, 3, 50, 4, forwards=3, backwards=3)
    ckpt.count_inner_loop(2, 10, 3, 50, 4, forwards=3, backwards=3, recompute=True)
    assert (plain.rm_forwards, plain.rm_backwards, plain.rm_forward_tokens, plain.rm_backward_tokens) == (6, 6, 30, 30)
    assert ckpt.rm_forward_tokens == 60 and ckpt.rm_backward_tokens == 30 and ckpt.rm_forwards == 6
    assert plain.soft_embedding_macs == ckpt.soft_embedding_macs == 3 * 50 * 4 * 6


def test_track_reward_estimates_are_counted(mlm, qwen_reward):
    """One RM forward per step on [slots ; suffix] against the cached prefix (no backward)."""
    base = run(mlm, qwen_reward, method="best_of_n")
    tracked = generate(mlm, PROMPT, qwen_reward, sampler=SamplerConfig(max_new_tokens=L, steps=T, num_samples=K,
                                                                       temperature=1.0),
                       guidance=GuidanceConfig(rule="none"), search="best_of_n", progress=False, trace=False, track_reward=True)
    S, Pp = len(qwen_reward.context(PROMPT).suffix_ids), len(qwen_reward.context(PROMPT).prefix_ids)
    extra = K * Pp + T * K * (L + S)  # the tracker's: the prefix once, then one call per step
    final = lambda o: hand_count(mlm, qwen_reward, texts(o), guided=False)["rm_forward_tokens"]  # noqa: E731
    assert tracked.observer_stats.rm_forward_tokens == extra and tracked.observer_stats.rm_forwards == T * K
    assert tracked.stats.rm_forward_tokens == final(tracked)  # the method's cost: the final re-score only
    assert base.stats.rm_forward_tokens == final(base)
    assert tracked.stats.rm_backward_tokens == tracked.observer_stats.rm_backward_tokens == 0


def torch_matmul_flops(fn) -> tuple[int, object]:
    """(FLOPs of the matrix products ``fn()`` runs, forward and backward, attention scores left out, as
    ``FlopCounterMode`` counts them; ``fn``'s result)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        out = fn()
    ops = counter.get_flop_counts().get("Global", {})
    return sum(n for op, n in ops.items() if "attention" not in str(op)), out


@pytest.mark.parametrize("method", ["none", "entrgi"])
def test_the_count_is_what_torch_counts(method):
    """On the embedded default pair (MiniLM BERT DLLM, MiniLM reward; d = 384, V = 30,522) the count is within
    3% of the matrix-multiply FLOPs torch counts for the same generation: the logit layer is priced, the frozen
    RM's backward costs one forward (input gradients only), the soft embedding's backward one product. The
    remainder is biases and norms, which the count prices as weights and torch does not."""
    from entrgi.pair import load_pair
    model, reward = load_pair(methods=("entrgi",))
    sampler = SamplerConfig(max_new_tokens=8, steps=4, num_samples=2, temperature=0.7, seed=1)
    guidance = GuidanceConfig(rule=method, inner_steps=2, lr=1.0)
    measured, out = torch_matmul_flops(lambda: generate(model, ["the movie was", "i think that"], reward,
                                                        sampler=sampler, guidance=guidance, progress=False,
                                                        trace=False))
    assert abs(out.stats.flops - measured) <= 0.03 * measured, (out.stats.flops, measured)
