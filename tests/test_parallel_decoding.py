"""Parallel (threshold) decoding (``SamplerConfig.parallel_threshold``; entrgi.sampling.parallel).

- the pure rule on hand-built probabilities: strict comparison, at least the schedule's commits, EOS last;
- the probability is q = softmax(logits / τ) of the drawn token (a float64 reference);
- threshold 1.0 reproduces the schedule's samples exactly (every method, blocks, EOS-last, particles), and
  so do the defaults;
- with a threshold: every confident candidate is committed, never fewer than the schedule's count, fewer
  DLLM forwards are executed (and counted), finished rows skip the forward, blocks end early, samples do
  not depend on the batch; Dream, LLaDA and HF MLM adapters.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import table_model
from support.tiny_checkpoints import write_dream_checkpoint, write_llada_checkpoint
from test_sampler import PROMPTS, eos_heavy_table, record, small, tokens_by_prompt

from entrgi import GuidanceConfig, SamplerConfig, SearchConfig, generate
from entrgi.sampling import parallel
from entrgi.sampling.parallel import (
    drawn_token_probability,
    parallel_counts,
    planned_masked,
    rows_to_forward,
    threshold_commits,
)
from entrgi.sampling.schedule import commit_counts

NONE = GuidanceConfig(rule="none")


# ---- the rule on hand-built inputs -------------------------------------------------------------------
def test_threshold_adds_confident_candidates_to_the_schedule_strictly_above_it():
    p = torch.tensor([[0.95, 0.9, 0.2, 0.99, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=torch.float64)
    cand = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    sched = torch.tensor([[False, False, True, False, False], [False, False, False, False, False]])
    got = threshold_commits(p, cand, sched, 0.9)
    # row 0: 0.95 and 0.99 are above 0.9, 0.9 itself is not (strict), the scheduled 0.2 stays, slot 4 is no
    # candidate (1.0 ignored); row 1: nothing above 0.9 and nothing scheduled
    assert got.tolist() == [[True, False, True, True, False], [False] * 5]
    assert torch.equal(threshold_commits(p, cand, sched, 1.0), sched)  # 1.0: the schedule's commits exactly
    assert threshold_commits(p, cand, sched, 0.0).tolist() == cand.tolist()  # 0: every candidate (p > 0)


def test_eos_above_the_threshold_waits_until_nothing_else_is_left():
    p = torch.tensor([[0.99, 0.95, 0.3], [0.99, 0.95, 0.3]], dtype=torch.float64)
    cand = torch.ones(2, 3, dtype=torch.bool)
    eos = torch.tensor([[True, False, False], [True, False, False]])
    sched = torch.tensor([[False, False, False], [False, False, True]])  # row 1's schedule takes the last one
    got = threshold_commits(p, cand, sched, 0.9, is_eos=eos)
    # row 0: slot 2 (p = 0.3) stays masked, so the EOS waits; row 1: every other slot is committed now
    assert got.tolist() == [[False, True, False], [True, True, True]]
    assert threshold_commits(p, cand, sched, 0.9).tolist() == [[True, True, False], [True, True, True]]


def test_drawn_token_probability_is_the_tempered_softmax(monkeypatch):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=g) * 3
    logits[:, :5] = float("-inf")  # invalid ids
    tokens = torch.randint(5, 50, (7,), generator=g)
    for tau in (0.7, 1.0, 2.0):
        ref = torch.softmax(logits.double() / tau, -1).gather(-1, tokens[:, None]).squeeze(-1)
        torch.testing.assert_close(drawn_token_probability(logits, tokens, tau), ref, rtol=1e-5, atol=1e-7)
    ref1 = torch.softmax(logits.double(), -1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(drawn_token_probability(logits, tokens, 0.0), ref1, rtol=1e-5, atol=1e-7)  # greedy: τ = 1
    whole = drawn_token_probability(logits, tokens, 0.7)
    monkeypatch.setattr(parallel, "ROW_BLOCK_ELEMENTS", 100)  # two rows per block: the same values
    assert torch.equal(drawn_token_probability(logits, tokens, 0.7), whole)


def test_rows_ahead_of_the_plan_commit_at_least_one_per_step():
    # Dream's linear schedule with L = T = 8: 0 at the first step, then about one per step
    plan = [planned_masked(8, i, 8, "linear", 1e-3) for i in range(8)]
    assert plan == [8, 8, 7, 6, 5, 4, 3, 2]
    n = torch.tensor([8, 5, 0])  # on the plan, ahead by three, finished
    counts = commit_counts(n, 1, 8, "linear", 1e-3)
    assert counts.tolist() == [1, 0, 0]  # int(5 · 1/7) = 0: the ahead row would wait for the last step
    assert parallel_counts(counts, n, 8, 1, 8, "linear", 1e-3).tolist() == [1, 1, 0]
    assert parallel_counts(torch.tensor([0]), torch.tensor([8]), 8, 0, 8, "linear", 1e-3).tolist() == [0]  # on plan


def test_rows_to_forward_skips_only_finished_rows():
    masked = torch.tensor([[True, False], [False, False], [False, True]])
    assert rows_to_forward(masked).tolist() == [0, 2]
    assert rows_to_forward(torch.ones(3, 2, dtype=torch.bool)) is None  # all live: one plain forward


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf"), True, "0.9"])
def test_threshold_is_validated(value):
    with pytest.raises(ValueError, match="`parallel_threshold` must be"):
        SamplerConfig(parallel_threshold=value)
    assert SamplerConfig(parallel_threshold=0.0).parallel_threshold == 0.0
    assert SamplerConfig().parallel_threshold is None


# ---- threshold 1.0 = the schedule, exactly ------------------------------------------------------------
def outcome(out):
    return ([[s.token_ids for s in g] for g in out.samples], [[s.reward for s in g] for g in out.samples],
            [[[(t.step, t.committed, t.rewards) for t in s.trace] for s in g] for g in out.samples],
            dataclasses.replace(out.stats, wall_time_s=0.0))


CASES = {
    "entrgi": (small(), GuidanceConfig(rule="entrgi", lr=1.0)),
    "aps-anchored": (small(remasking="maskgit_plus", confidence_from="guided"), GuidanceConfig(rule="aps", lr=2.0)),
    "expectation-linear5": (small(steps=5, remasking="maskgit_plus"), GuidanceConfig(rule="expectation")),
    "none-blocks": (small(max_new_tokens=12, block_length=4, steps=6, schedule="uniform"), NONE),
    "entrgi-blocks-gumbel": (small(max_new_tokens=12, block_length=4, steps=6, schedule="uniform", sampling="gumbel",
                                   remasking="low_confidence"), GuidanceConfig(lr=1.0)),
    "best_of_n-topp": (small(top_p=0.8, temperature=0.7, min_new_tokens=2), GuidanceConfig(rule="none"), "best_of_n"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_threshold_one_reproduces_the_schedule_exactly(mlm, pref_reward, case):
    sampler, guidance, *search = CASES[case]
    search = search[0] if search else None
    ref = generate(mlm, PROMPTS, pref_reward, sampler=sampler, guidance=guidance, search=search, progress=False)
    out = generate(mlm, PROMPTS, pref_reward, sampler=dataclasses.replace(sampler, parallel_threshold=1.0),
                   guidance=guidance, search=search, progress=False)
    assert outcome(out) == outcome(ref)
    assert all(t.num_committed == len(t.committed) for g in out.samples for s in g for t in s.trace)


def test_threshold_one_with_eos_last_and_particles(tok, qwen_reward):
    model = table_model(tok, eos_heavy_table(tok))
    cfg = small(num_samples=4, max_new_tokens=12, steps=6, remasking="maskgit_plus")
    ref = generate(model, ["the cat"], sampler=cfg, guidance=NONE, progress=False)
    out = generate(model, ["the cat"], sampler=dataclasses.replace(cfg, parallel_threshold=1.0), guidance=NONE,
                   progress=False)
    assert outcome(out) == outcome(ref)  # EOS (p = 0.6) would be confident at any threshold below 0.6
    pc = SearchConfig("particles", resample_every=2)
    ref = generate(model, ["the cat"], qwen_reward, sampler=cfg, search=pc, progress=False)
    out = generate(model, ["the cat"], qwen_reward, sampler=dataclasses.replace(cfg, parallel_threshold=1.0), search=pc,
                   progress=False)
    assert outcome(out) == outcome(ref)


# ---- with a threshold -----------------------------------------------------------------------------------
def mixed_table(tok, n_pos=40, seed=0):
    """Per position: flat logits, or one id far ahead (probability ≈ 1) every second position."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(n_pos, len(tok), generator=g)
    peak = torch.randint(5, len(tok), (n_pos,), generator=g)
    table[torch.arange(0, n_pos, 2), peak[::2]] = 12.0
    return table


def check_step(out, cfg, threshold, eos_ids):
    """The invariants of one step (a StepOutput)."""
    cand, commit = out["candidates"], out["committed"]
    assert not (commit & ~cand).any()
    S, size = cfg.steps // cfg.num_blocks, cfg.block_length or cfg.max_new_tokens
    scheduled = commit_counts(cand.sum(-1), out["step"] % S, S, cfg.schedule, cfg.eps)
    counts = parallel_counts(scheduled, cand.sum(-1), size, out["step"] % S, S, cfg.schedule, cfg.eps)
    assert (counts >= scheduled).all() and (counts <= scheduled.clamp_min(1)).all()
    ahead = cand.sum(-1) < planned_masked(size, out["step"] % S, S, cfg.schedule, cfg.eps)
    assert (commit.sum(-1) >= torch.where(ahead & cand.any(-1), 1, scheduled)).all()  # the schedule, >= 1 ahead
    conf = out["guided_logits"] if cfg.confidence_from == "guided" else out["logits"]
    p = torch.zeros(cand.shape, dtype=torch.float64)
    p[cand] = drawn_token_probability(conf[cand], out["proposal"][cand], cfg.temperature)
    is_eos = torch.isin(out["proposal"], eos_ids) & cand
    confident = cand & (p > threshold) & ~is_eos
    assert (commit | ~confident).all()  # every confident non-EOS candidate is committed
    assert ((commit & (p <= threshold)).sum(-1) <= counts).all()  # the others are the schedule's picks
    left_plain = (cand & ~commit & ~is_eos).any(-1)
    assert not ((commit & is_eos).any(-1) & left_plain).any()  # EOS last


@pytest.mark.parametrize("guidance", [NONE, GuidanceConfig(rule="entrgi", lr=1.0)])
@pytest.mark.parametrize("sampler_kw", [{}, {"confidence_from": "guided"},
                                        {"max_new_tokens": 12, "block_length": 4, "steps": 12, "schedule": "uniform"}])
def test_confident_slots_commit_together_and_forwards_drop(tok, pref_reward, guidance, sampler_kw):
    model = table_model(tok, mixed_table(tok))
    cfg = small(num_samples=3, temperature=0.7, **sampler_kw)
    ref = generate(model, PROMPTS, pref_reward, sampler=cfg, guidance=guidance, progress=False)
    fast_cfg = dataclasses.replace(cfg, parallel_threshold=0.9)
    states = []
    calls_before = model.module.calls
    out = generate(model, PROMPTS, pref_reward, sampler=fast_cfg, guidance=guidance, progress=False,
                   callback=record(states))
    eos = torch.tensor(model.eos_ids(False))
    for st in states:
        check_step(st, fast_cfg, 0.9, eos)
    for g in out.samples:
        for s in g:
            assert sorted(p for t in s.trace for p in t.committed) == list(range(cfg.max_new_tokens))
    # executed forwards drop, and the count is the rows actually forwarded (the ones with a masked slot)
    assert model.module.calls - calls_before == len(states) < cfg.steps
    assert out.stats.dllm_forwards == sum(t.masked > 0 for g in out.samples for s in g for t in s.trace)
    assert out.stats.dllm_forwards < ref.stats.dllm_forwards
    if guidance.guided:
        assert out.stats.rm_backwards < ref.stats.rm_backwards


def test_a_block_ends_early_and_the_next_starts_on_its_own_step(mlm):
    cfg = small(max_new_tokens=12, block_length=4, steps=12, schedule="uniform", parallel_threshold=0.0)
    out = generate(mlm, PROMPTS, sampler=cfg, guidance=NONE, progress=False)
    for g in out.samples:
        for s in g:
            # threshold 0: every candidate is confident, each block is one step, at its first step index
            assert [(t.step, t.block, t.num_committed) for t in s.trace] == [(0, 0, 4), (4, 1, 4), (8, 2, 4)]
    assert out.stats.dllm_forwards == 3 * len(PROMPTS) * cfg.num_samples


def test_eos_last_holds_with_a_threshold(tok):
    model = table_model(tok, eos_heavy_table(tok))
    sep = tok.sep_token_id
    for deprioritize in (True, False):
        states = []
        cfg = small(num_samples=8, max_new_tokens=12, steps=6, remasking="maskgit_plus", parallel_threshold=0.5,
                    deprioritize_eos=deprioritize, temperature=1.0)
        generate(model, ["the cat"], sampler=cfg, guidance=NONE, progress=False, callback=record(states))
        violations = sum(int((((st["proposal"] == sep) & st["committed"]).any(-1)
                              & (st["candidates"] & (st["proposal"] != sep) & ~st["committed"]).any(-1)).sum())
                         for st in states)
        assert (violations == 0) if deprioritize else (violations > 0)  # EOS (p = 0.6) is confident


@pytest.mark.parametrize("guidance", [NONE, GuidanceConfig(rule="entrgi", lr=1.0, guide_until=0.5)])
def test_samples_do_not_depend_on_the_batch_with_a_threshold(tok, pref_reward, guidance):
    model = table_model(tok, mixed_table(tok, seed=3))
    cfg = small(num_samples=3, temperature=0.7, parallel_threshold=0.6)
    ref = tokens_by_prompt(generate(model, PROMPTS, pref_reward, sampler=cfg, guidance=guidance, progress=False))
    for batch_size, prompts in ((1, PROMPTS), (2, PROMPTS[::-1])):
        out = generate(model, prompts, pref_reward, sampler=dataclasses.replace(cfg, batch_size=batch_size),
                       guidance=guidance, progress=False)
        assert tokens_by_prompt(out) == ref


def test_particles_with_a_threshold(tok, qwen_reward):
    model = table_model(tok, mixed_table(tok))
    cfg = small(num_samples=4, temperature=0.7, parallel_threshold=0.9)
    pc = SearchConfig("particles", resample_every=2)
    out = generate(model, PROMPTS, qwen_reward, sampler=cfg, guidance=GuidanceConfig(lr=1.0), search=pc,
                   progress=False)
    full = generate(model, PROMPTS, qwen_reward, sampler=dataclasses.replace(cfg, parallel_threshold=None),
                    guidance=GuidanceConfig(lr=1.0), search=pc, progress=False)
    for g in out.samples:
        for s in g:
            assert model.mask_token_id not in s.token_ids
    assert out.stats.dllm_forwards < full.stats.dllm_forwards


# ---- Dream, LLaDA, HF MLM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapters(tmp_path_factory, mlm):
    from entrgi.models import Dream, LLaDA
    root = tmp_path_factory.mktemp("parallel_ckpts")
    return {"dream": Dream.from_pretrained(write_dream_checkpoint(root / "dream", shards=1)),
            "llada": LLaDA.from_pretrained(write_llada_checkpoint(root / "llada", shards=1)), "mlm": mlm}


@pytest.mark.parametrize("name", ["dream", "llada", "mlm"])
def test_every_adapter_decodes_in_parallel(adapters, name):
    model = adapters[name]
    prompts = ["the cat sat on the mat", "a dog"]
    cfg = SamplerConfig(max_new_tokens=8, steps=8, block_length=4, num_samples=2, temperature=1.0, top_p=1.0,
                        schedule="uniform", parallel_threshold=0.0)
    out = generate(model, prompts, sampler=cfg, guidance=NONE, progress=False)
    assert out.stats.dllm_forwards == 2 * len(prompts) * 2  # one step per block and row
    for g in out.samples:
        for s in g:
            assert [t.num_committed for t in s.trace] == [4, 4]
            assert model.mask_token_id not in s.token_ids
    one = generate(model, prompts, sampler=dataclasses.replace(cfg, parallel_threshold=1.0), guidance=NONE,
                   progress=False)
    ref = generate(model, prompts, sampler=dataclasses.replace(cfg, parallel_threshold=None), guidance=NONE,
                   progress=False)
    assert tokens_by_prompt(one) == tokens_by_prompt(ref)
