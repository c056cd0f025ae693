"""The denoising loop: schedule, EOS order, invariants, determinism, guidance effect, validation."""

import dataclasses
import statistics

import pytest
import torch
from conftest import PREFERRED, table_model
from test_schedule import dream_counts, llada_counts

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.guidance.inner_loop import GuideResult
from entrgi.sampling.sampler import DiffusionSampler
from entrgi.sampling.state import DenoisingState, Row, StepOutput

PROMPTS = ["the cat sat", "a dog", "it was a very big day and the sun"]
NONE = GuidanceConfig(rule="none")


def small(**kw):
    base = dict(max_new_tokens=8, steps=8, num_samples=3, temperature=1.0, top_p=1.0)
    base.update(kw)
    return SamplerConfig(**base)


def record(store):
    def cb(step, out):
        store.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in out.items()})
    return cb


@pytest.mark.parametrize("remasking", ["entropy", "maskgit_plus", "topk_margin", "low_confidence", "random"])
@pytest.mark.parametrize("schedule,steps", [("linear", 8), ("linear", 5), ("uniform", 3)])
def test_tokens_committed_per_step_follow_the_schedule(mlm, remasking, schedule, steps):
    out = generate(mlm, PROMPTS, sampler=small(steps=steps, remasking=remasking, schedule=schedule),
                   guidance=NONE, progress=False)
    expected = dream_counts(8, steps) if schedule == "linear" else llada_counts(8, steps)
    for group in out.samples:
        for s in group:
            assert [len(t.committed) for t in s.trace] == expected
            assert sorted(p for t in s.trace for p in t.committed) == list(range(8))  # each slot once


def test_origin_commits_everything_by_the_end(mlm):
    out = generate(mlm, PROMPTS, sampler=small(remasking="origin", steps=4), guidance=NONE, progress=False)
    for group in out.samples:
        for s in group:
            assert sorted(p for t in s.trace for p in t.committed) == list(range(8))
            assert mlm.mask_token_id not in s.token_ids


def eos_heavy_table(tok, n_pos=40):
    """Every position: EOS ([SEP]) with probability 0.6, 'cat' 0.25, 'dog' 0.15."""
    table = torch.full((n_pos, len(tok)), -1e4)
    for word, p in (("[SEP]", 0.6), ("cat", 0.25), ("dog", 0.15)):
        table[:, tok.convert_tokens_to_ids(word)] = torch.tensor(p).log()
    return table


@pytest.mark.parametrize("deprioritize", [True, False])
def test_eos_candidates_are_committed_last(tok, deprioritize):
    model = table_model(tok, eos_heavy_table(tok))
    states = []
    generate(model, ["the cat"], sampler=small(num_samples=8, max_new_tokens=12, steps=6,
                                               deprioritize_eos=deprioritize, remasking="maskgit_plus"),
             guidance=NONE, progress=False, callback=record(states))
    sep = tok.sep_token_id
    violations = 0
    for st in states:
        eos_prop = (st["proposal"] == sep) & st["candidates"]
        committed_eos = st["committed"] & eos_prop
        left_non_eos = st["candidates"] & ~eos_prop & ~st["committed"]
        violations += int((committed_eos.any(-1) & left_non_eos.any(-1)).sum())
    if deprioritize:
        assert violations == 0
    else:
        assert violations > 0  # the property is not vacuous: without it EOS goes first (prob. 0.6 > 0.25)


def test_prompt_and_committed_tokens_never_change(mlm, pref_reward):
    states = []
    generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=GuidanceConfig(rule="entrgi", lr=2.0),
             progress=False, callback=record(states))
    P = states[0]["prompt_length"]
    first = states[0]["x"]
    for prev, cur in zip(states, states[1:]):
        assert torch.equal(cur["x"][:, :P], first[:, :P])
        done = prev["x"][:, P:] != mlm.mask_token_id
        assert torch.equal(cur["x"][:, P:][done], prev["x"][:, P:][done])
    assert (states[-1]["x"][:, P:] != mlm.mask_token_id).all()


def test_step_output_binds_every_field(mlm, pref_reward):
    """Every field of StepOutput is set (diffusers checks its outputs the same way), with the documented shapes."""
    outputs = []
    generate(mlm, PROMPTS[:2], pref_reward, sampler=small(num_samples=2), guidance=GuidanceConfig(lr=1.0),
             progress=False, track_reward=True, callback=lambda step, out: outputs.append((step, out)))
    assert [step for step, _ in outputs] == [out.step for _, out in outputs] == list(range(8))
    step, out = outputs[0]
    assert all(getattr(out, f.name) is not None for f in dataclasses.fields(StepOutput))
    B, P, L, V = 4, out.prompt_length, 8, mlm.logit_width
    assert out.x.shape == (B, P + L) and out.logits.shape == out.guided_logits.shape == (B, L, V)
    for name in ("masked", "candidates", "proposal", "committed"):
        assert getattr(out, name).shape == (B, L), name
    assert out.estimate.shape == (B,) and [(r.prompt_index, r.sample_index) for r in out.rows] == \
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert isinstance(out.guide, GuideResult) and out.guide.logits is out.guided_logits
    assert out.guide.rewards.shape == (B, 4)  # M = 3 inner steps + the trace's evaluation
    assert not torch.equal(out.guided_logits, out.logits) and out.block == 0
    assert set(out) == set(out.keys()) == {f.name for f in dataclasses.fields(StepOutput)}  # dict-style access
    assert out["committed"] is out.committed and dict(out.items())["x"] is out.x
    with pytest.raises(KeyError):
        out["nope"]
    plain = []
    generate(mlm, PROMPTS[:1], sampler=small(num_samples=1), guidance=NONE, progress=False,
             callback=lambda step, out: plain.append(out))
    assert plain[0].guide is None and plain[0].estimate is None and plain[0].guided_logits is plain[0].logits


def test_start_and_step_are_the_loop_of_generate(mlm, pref_reward):
    """Driving the public step by hand gives generate's tokens; the counters walk the blocks."""
    cfg = small(max_new_tokens=8, block_length=4, steps=4, schedule="uniform")
    guidance = GuidanceConfig(lr=1.0)
    ref = generate(mlm, PROMPTS, pref_reward, sampler=cfg, guidance=guidance, progress=False)
    s = DiffusionSampler(mlm, pref_reward)
    state = s.start(PROMPTS, cfg, guidance)
    assert isinstance(state, DenoisingState) and isinstance(state.rows[0], Row) and state.steps_per_block == 2
    seen = []
    while not state.done:
        seen.append((state.step, state.block, state.block_step))
        out = s.step(state)
        assert (out.step, out.block) == seen[-1][:2]
    assert seen == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    assert state.response.tolist() == [t.token_ids for g in ref.samples for t in g]
    assert state.stats.dllm_forwards == len(state.rows) * 4
    with pytest.raises(ValueError, match="has run all its 4 steps"):
        s.step(state)


def test_a_hook_override_changes_the_step_and_idle_steps_return_none(mlm):
    """A subclass that commits every candidate at once: one step runs per block, the next is idle (None, no
    callback) and skips the rest of its block."""

    class AllAtOnce(DiffusionSampler):
        def choose(self, state, logits, guided, candidates, tokens):
            return candidates.clone()

    s = AllAtOnce(mlm)
    state = s.start(PROMPTS[:1], small(num_samples=1, block_length=4), NONE)
    outputs = []
    while not state.done:
        outputs.append((state.step, s.step(state)))
    assert [i for i, _ in outputs] == [0, 1, 4, 5] and [o is None for _, o in outputs] == [False, True, False, True]
    assert outputs[0][1].committed[0].tolist() == [True] * 4 + [False] * 4 and outputs[2][1].block == 1
    calls = []
    out = s.generate(PROMPTS[:1], small(num_samples=1, block_length=4), NONE, progress=False,
                     callback=lambda i, o: calls.append(i))
    assert calls == [0, 4] and len(out.samples[0][0].trace) == 2
    assert out.samples[0][0].token_ids == state.response[0].tolist()


def tokens_by_prompt(out):
    return {g[0].prompt: [s.token_ids for s in g] for g in out.samples}


@pytest.mark.parametrize("method", ["none", "entrgi"])
def test_samples_do_not_depend_on_batch_size_or_prompt_order(mlm, qwen_reward, method):
    guidance = GuidanceConfig(rule=method, lr=1.0)
    ref = tokens_by_prompt(generate(mlm, PROMPTS, qwen_reward, sampler=small(), guidance=guidance, progress=False))
    for batch_size, prompts in ((1, PROMPTS), (2, PROMPTS[::-1]), (4, [PROMPTS[1], PROMPTS[2], PROMPTS[0]])):
        out = generate(mlm, prompts, qwen_reward, sampler=small(batch_size=batch_size), guidance=guidance,
                       progress=False)
        assert tokens_by_prompt(out) == ref
    # a single prompt on its own gives the same samples too
    alone = generate(mlm, PROMPTS[2], qwen_reward, sampler=small(), guidance=guidance, progress=False)
    assert tokens_by_prompt(alone)[PROMPTS[2]] == ref[PROMPTS[2]]


def test_gumbel_sampling_is_deterministic_per_row(mlm):
    cfg = small(sampling="gumbel", remasking="low_confidence", schedule="uniform", block_length=4, steps=4)
    ref = tokens_by_prompt(generate(mlm, PROMPTS, sampler=cfg, guidance=NONE, progress=False))
    out = generate(mlm, PROMPTS[::-1], sampler=SamplerConfig(**{**cfg.to_dict(), "batch_size": 2}), guidance=NONE,
                   progress=False)
    assert tokens_by_prompt(out) == ref
    plain = tokens_by_prompt(generate(mlm, PROMPTS, sampler=small(), guidance=NONE, progress=False))
    assert plain != ref


def test_seed_changes_samples_and_repeats_exactly(mlm):
    a = generate(mlm, PROMPTS, sampler=small(seed=1), guidance=NONE, progress=False)
    b = generate(mlm, PROMPTS, sampler=small(seed=1), guidance=NONE, progress=False)
    c = generate(mlm, PROMPTS, sampler=small(seed=2), guidance=NONE, progress=False)
    assert tokens_by_prompt(a) == tokens_by_prompt(b) != tokens_by_prompt(c)
    ks = [s.token_ids for s in a.samples[0]]
    assert len({tuple(k) for k in ks}) > 1  # the K samples of a prompt differ


@pytest.mark.parametrize("method", ["expectation", "aps", "entrgi"])
def test_zero_inner_steps_equals_unguided_sampling(mlm, pref_reward, method):
    ref = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=NONE, progress=False)
    with pytest.warns(UserWarning, match="inner_steps"):
        out = generate(mlm, PROMPTS, pref_reward, sampler=small(),
                       guidance=GuidanceConfig(rule=method, inner_steps=0), progress=False)
    assert tokens_by_prompt(out) == tokens_by_prompt(ref)
    assert [s.reward for g in out.samples for s in g] == [s.reward for g in ref.samples for s in g]


def mean_reward(out):
    return statistics.fmean(s.reward for g in out.samples for s in g)


@pytest.mark.parametrize("method", ["expectation", "aps", "entrgi"])
def test_guidance_raises_a_reward_with_a_known_optimum(mlm, pref_reward, method):
    """Reward = number of preferred tokens among 8: unguided ≈ 8·3/|V| ≈ 0.6; guided near the optimum 8."""
    sampler = small(num_samples=4)
    base = mean_reward(generate(mlm, PROMPTS, pref_reward, sampler=sampler, guidance=NONE, progress=False))
    guided = generate(mlm, PROMPTS, pref_reward, sampler=sampler,
                      guidance=GuidanceConfig(rule=method, inner_steps=3, lr=1.0), progress=False)
    assert mean_reward(guided) > base + 4.0
    words = " ".join(s.text for g in guided.samples for s in g).split()
    assert sum(w in PREFERRED for w in words) / len(words) > 0.7


@pytest.mark.parametrize("method,optimizer,lr", [("entrgi", "adam", 1.0), ("aps", "adam", 1.0),
                                                 ("expectation", "adam", 1.0), ("entrgi", "ascent", 30.0)])
def test_guidance_raises_a_transformer_reward_models_score(mlm, qwen_reward, method, optimizer, lr):
    """A random Qwen3 sequence classifier: guided samples score clearly higher over fixed seeds."""
    base, guided = [], []
    for seed in range(3):
        sampler = small(num_samples=4, seed=seed)
        base.append(mean_reward(generate(mlm, PROMPTS, qwen_reward, sampler=sampler, guidance=NONE, progress=False)))
        guided.append(mean_reward(generate(mlm, PROMPTS, qwen_reward, sampler=sampler, progress=False,
                                           guidance=GuidanceConfig(rule=method, optimizer=optimizer, lr=lr))))
    spread = statistics.pstdev(base) + 1e-3
    assert statistics.fmean(guided) > statistics.fmean(base) + 2 * spread, (base, guided)


def test_trace_records_rewards_gradients_and_weights(mlm, pref_reward):
    out = generate(mlm, PROMPTS[:1], pref_reward, sampler=small(num_samples=2),
                   guidance=GuidanceConfig(rule="entrgi", inner_steps=3, lr=1.0), progress=False)
    for s in out.samples[0]:
        assert len(s.trace) == 8
        for t in s.trace:
            assert len(t.rewards) == 4 and len(t.grad_norms) == 3
            assert 0.0 <= t.entropy_weight <= 1.0
        first = s.trace[0]
        assert first.rewards[-1] > first.rewards[0]  # the inner steps raise the reward
        assert s.trace[-1].masked == len(s.trace[-1].committed)
    untraced = generate(mlm, PROMPTS[:1], pref_reward, sampler=small(num_samples=2),
                        guidance=GuidanceConfig(rule="entrgi", inner_steps=3, lr=1.0), progress=False, trace=False)
    assert untraced.samples[0][0].trace is None
    assert [s.token_ids for s in untraced.samples[0]] == [s.token_ids for s in out.samples[0]]  # tracing is passive


def test_best_of_n_picks_the_highest_reward(mlm, pref_reward):
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(num_samples=4), guidance=GuidanceConfig(rule="none"), search="best_of_n",
                   progress=False)
    for i, g in enumerate(out.samples):
        assert out.best(i).reward == max(s.reward for s in g)
    assert out.top1() == [max(s.reward for s in g) for g in out.samples]
    assert all(t >= a for t, a in zip(out.top1(), out.avg()))
    assert out.stats.rm_backwards == 0 and out.stats.dllm_forwards == 3 * 4 * 8


def test_compute_counts_for_guided_runs(mlm, pref_reward):
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(num_samples=2), guidance=GuidanceConfig(inner_steps=2),
                   progress=False)
    rows = 3 * 2
    assert out.stats.dllm_forwards == rows * 8
    assert out.stats.rm_backwards == rows * 8 * 2
    # inner steps + the final discrete scoring; the trace's evaluation after the last inner step is the observer's
    assert out.stats.rm_forwards == rows * 8 * 2 + rows and out.observer_stats.rm_forwards == rows * 8
    untraced = generate(mlm, PROMPTS, pref_reward, sampler=small(num_samples=2), progress=False, trace=False,
                        guidance=GuidanceConfig(inner_steps=2))
    assert untraced.stats.rm_forwards == rows * 8 * 2 + rows and untraced.stats.rm_backwards == rows * 8 * 2
    assert untraced.stats == dataclasses.replace(out.stats, wall_time_s=untraced.stats.wall_time_s)  # the method's
    assert untraced.observer_stats.rm_forwards == 0


def test_invalid_ids_are_never_sampled(tok):
    """A DLLM that puts almost all mass on the mask, [CLS] and [UNK], and on padded rows beyond the vocab."""
    width = len(tok) + 4
    table = torch.zeros(40, width)
    for t in ("[MASK]", "[CLS]", "[UNK]"):
        table[:, tok.convert_tokens_to_ids(t)] = 20.0
    table[:, len(tok):] = 20.0
    model = table_model(tok, table)
    model.logit_width = width
    model.invalid_token_ids = tuple(sorted({*model.invalid_token_ids, *range(len(tok), width)}))
    out = generate(model, PROMPTS, sampler=small(num_samples=4), guidance=NONE, progress=False)
    bad = {tok.mask_token_id, tok.cls_token_id, tok.unk_token_id, *range(len(tok), width)}
    assert all(not (set(s.token_ids) & bad) for g in out.samples for s in g)


def test_greedy_temperature_zero_is_the_argmax(tok):
    table = torch.randn(40, len(tok), generator=torch.Generator().manual_seed(0))
    model = table_model(tok, table)
    a = generate(model, ["the cat"], sampler=small(temperature=0.0, num_samples=2), guidance=NONE, progress=False)
    b = generate(model, ["the cat"], sampler=small(temperature=0.0, num_samples=2, seed=5), guidance=NONE,
                 progress=False)
    invalid = torch.zeros(len(tok), dtype=torch.bool)
    invalid[list(model.invalid_token_ids)] = True
    expected = table.masked_fill(invalid, float("-inf")).argmax(-1)[3:11].tolist()  # prompt = [CLS] the cat
    assert a.samples[0][0].token_ids == b.samples[0][1].token_ids == expected


def test_dream_shift_predicts_position_i_from_hidden_state_i_minus_1(tok):
    table = torch.randn(40, len(tok), generator=torch.Generator().manual_seed(1))
    shifted, plain = table_model(tok, table, shift=True), table_model(tok, table, shift=False)
    ids = torch.tensor([[2, 7, 8, 4, 4, 4]])
    attn = torch.ones_like(ids)
    pos = torch.arange(6).unsqueeze(0)
    torch.testing.assert_close(shifted(ids, attn, pos)[0, 1:], table[:5])
    torch.testing.assert_close(plain(ids, attn, pos)[0], table[:6])
    torch.testing.assert_close(shifted.response_logits(ids, attn, pos, 3)[0], table[2:5])
    # end to end, greedy: the response slot at absolute position p takes the argmax of row p - 1
    out = generate(shifted, ["the cat"], sampler=small(temperature=0.0, num_samples=1), guidance=NONE, progress=False)
    invalid = torch.zeros(len(tok), dtype=torch.bool)
    invalid[list(shifted.invalid_token_ids)] = True
    assert out.samples[0][0].token_ids == table.masked_fill(invalid, float("-inf")).argmax(-1)[2:10].tolist()


def test_blocks_commit_only_inside_the_current_block(mlm):
    states = []
    cfg = small(max_new_tokens=12, block_length=4, steps=6, schedule="uniform", num_samples=2)
    out = generate(mlm, PROMPTS, sampler=cfg, guidance=NONE, progress=False, callback=record(states))
    assert len(states) == 6
    for i, st in enumerate(states):
        block = i // 2
        pos = st["committed"].nonzero()[:, 1]
        assert ((pos >= 4 * block) & (pos < 4 * (block + 1))).all()
        assert st["committed"].sum(-1).tolist() == [2] * st["committed"].shape[0]  # 4 tokens over 2 steps
    for g in out.samples:
        for s in g:
            assert [t.block for t in s.trace] == [0, 0, 1, 1, 2, 2]


def test_guided_confidence_option_uses_the_guided_logits(mlm, pref_reward):
    a = generate(mlm, PROMPTS, pref_reward, sampler=small(confidence_from="prior"),
                 guidance=GuidanceConfig(lr=2.0), progress=False)
    b = generate(mlm, PROMPTS, pref_reward, sampler=small(confidence_from="guided"),
                 guidance=GuidanceConfig(lr=2.0), progress=False)
    orders = lambda out: [[t.committed for t in s.trace] for g in out.samples for s in g]  # noqa: E731
    assert orders(a) != orders(b)


class ExplodingModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *a, **k):
        raise AssertionError("the model must not run before the inputs are validated")


def test_bad_inputs_fail_before_any_model_work(tok, pref_reward):
    from entrgi.models.base import DiffusionLM
    model = DiffusionLM(ExplodingModule(), tok, mask_token_id=tok.mask_token_id, eos_token_ids=[tok.sep_token_id],
                        pad_token_id=tok.pad_token_id, max_length=16)
    with pytest.raises(ValueError, match=r"`prompts\[1\]` must be a non-empty string"):
        generate(model, ["the cat", "  "], pref_reward, sampler=small(), progress=False)
    with pytest.raises(ValueError, match="at least one prompt"):
        generate(model, [], pref_reward, sampler=small(), progress=False)
    with pytest.raises(ValueError, match="`reward` is required for rule 'entrgi'"):
        generate(model, ["the cat"], sampler=small(), progress=False)
    with pytest.raises(ValueError, match=r"`prompts\[0\]` is .* tokens; with 128 response slots "
                                         r"\(`max_new_tokens` = 128\) .* context of 16"):
        generate(model, ["the cat"], pref_reward, progress=False)


@pytest.mark.parametrize("method", ["none", "entrgi"])
def test_reward_estimate_tracks_the_predicted_completion(mlm, qwen_reward, method):
    out = generate(mlm, PROMPTS, qwen_reward, sampler=small(), guidance=GuidanceConfig(rule=method, lr=1.0),
                   progress=False, track_reward=True)
    for g in out.samples:
        for s in g:
            assert all(t.estimate is not None for t in s.trace)
            # at the end nothing is masked: the estimate is the RM on the final tokens = the discrete re-score
            assert s.trace[-1].estimate == pytest.approx(s.reward, abs=1e-4)
    plain = generate(mlm, PROMPTS, qwen_reward, sampler=small(), guidance=GuidanceConfig(rule=method, lr=1.0),
                     progress=False)
    assert tokens_by_prompt(plain) == tokens_by_prompt(out)  # tracking does not change the samples


def test_anchored_remasking_ranks_by_the_guided_logits(mlm, pref_reward):
    """Without guidance anchored = maskgit_plus; with guidance the commit order follows the guided logits."""
    anchored = {"remasking": "maskgit_plus", "confidence_from": "guided"}
    plain = generate(mlm, PROMPTS, pref_reward, sampler=small(remasking="maskgit_plus"), guidance=NONE, progress=False)
    anch = generate(mlm, PROMPTS, pref_reward, sampler=small(**anchored), guidance=NONE, progress=False)
    assert tokens_by_prompt(plain) == tokens_by_prompt(anch)
    states = []
    generate(mlm, PROMPTS, pref_reward, sampler=small(**anchored, deprioritize_eos=False),
             guidance=GuidanceConfig(rule="aps", lr=2.0), progress=False, callback=record(states))
    from entrgi.sampling.schedule import confidence
    for st in states:
        cand, commit = st["candidates"], st["committed"]
        conf = torch.full(cand.shape, float("-inf"), dtype=torch.float64)
        conf[cand] = confidence("maskgit_plus", st["guided_logits"][cand], st["proposal"][cand], 1.0)
        for b in range(cand.shape[0]):
            if commit[b].any() and (cand[b] & ~commit[b]).any():
                # every committed slot is at least as confident (under the guided logits) as every skipped one
                assert conf[b][commit[b]].min() >= conf[b][cand[b] & ~commit[b]].max() - 1e-12
