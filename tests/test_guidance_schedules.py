"""Guidance schedules (``GuidanceConfig.guide_every / guide_until / guide_min_weight / inner_tol``;
entrgi.guidance.schedules): which rows are guided at which step, the inner loop's early stop, and the cost
counts of what ran.

- the rule on hand-built masks and weights;
- in the sampler: the trace's ``guided`` flags follow each rule exactly, unguided steps draw from the prior
  logits, the RM forward / backward counts drop accordingly; the explicit neutral values are the defaults
  (full guidance); every guided method, blocks, particles; samples do not depend on the batch;
- the early stop: a row whose inner step gained less than the tolerance keeps the logits it had (those of
  a run with fewer inner steps), the others run on; the trace and the counts show what ran.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_sampler import PROMPTS, record, small, tokens_by_prompt

from entrgi import DiffusionSampler, GuidanceConfig, SamplerConfig, SearchConfig, generate
from entrgi.guidance.inner_loop import guide_logits, inner_stop
from entrgi.guidance.schedules import carry_shift, guide_rows, is_full_guidance, needs_entropy_weight, ran_values
from entrgi.ops.rng import RowStreams

M = 2


def guided(**kw) -> GuidanceConfig:
    return GuidanceConfig(rule=kw.pop("method", "entrgi"), inner_steps=M, lr=1.0, **kw)


def flags(out):
    return [[t.guided for t in s.trace] for g in out.samples for s in g]


def guided_steps(out) -> int:
    return sum(t.guided for g in out.samples for s in g for t in s.trace)


# ---- the rule ----------------------------------------------------------------------------------------------
def test_guide_rows_rules():
    masked = torch.tensor([[True] * 4, [True, False, False, False], [False] * 4, [True, True, False, False]])
    cand = masked.clone()
    cand[3] = False  # row 3: masked slots, none in the current block
    full = GuidanceConfig()
    assert is_full_guidance(full) and not needs_entropy_weight(full)
    assert guide_rows(full, 0, masked, cand).tolist() == [True, True, False, False]  # rows with candidates
    every = GuidanceConfig(guide_every=3)
    assert guide_rows(every, 3, masked, cand).tolist() == [True, True, False, False]
    assert not guide_rows(every, 4, masked, cand).any()
    until = GuidanceConfig(guide_until=0.5)  # committed fractions 0, 0.75, 1, 0.5
    assert guide_rows(until, 0, masked, cand).tolist() == [True, False, False, False]
    w = torch.tensor([0.5, 0.49, float("nan"), 0.9])
    minw = GuidanceConfig(guide_min_weight=0.5)
    assert needs_entropy_weight(minw) and not is_full_guidance(minw)
    assert guide_rows(minw, 0, masked, cand, w).tolist() == [True, False, False, False]  # >= 0.5, NaN never
    with pytest.raises(ValueError, match="mean entropy weight"):
        guide_rows(minw, 0, masked, cand)
    assert not guide_rows(GuidanceConfig(rule="none"), 0, masked, cand).any()
    assert inner_stop(torch.tensor([1.0, 1.0]), torch.tensor([1.5, 1.05]), 0.1).tolist() == [False, True]
    assert ran_values(torch.tensor([1.0, 2.0, float("nan")])) == [1.0, 2.0]


@pytest.mark.parametrize("field,value,message", [
    ("guide_every", 0, "`guide_every` must be an integer >= 1"),
    ("guide_every", 1.5, "`guide_every` must be an integer >= 1"),
    ("guide_until", 0.0, r"`guide_until` must be in \(0.0, 1.0\]"),
    ("guide_until", 1.2, r"`guide_until` must be in \(0.0, 1.0\]"),
    ("guide_min_weight", -0.1, r"`guide_min_weight` must be in \[0.0, 1.0\]"),
    ("guide_min_weight", math.nan, "`guide_min_weight` must be a number"),
    ("inner_tol", -1.0, "`inner_tol` must be >= 0.0"),
    ("inner_tol", math.inf, "`inner_tol` must be a finite number"),
    ("guide_carry", 1, "`guide_carry` must be True or False"),
])
def test_schedule_fields_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        GuidanceConfig(**{field: value})


# ---- in the sampler ------------------------------------------------------------------------------------------
def test_neutral_values_are_full_guidance(mlm, pref_reward):
    ref = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=guided(), progress=False)
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(), progress=False,
                   guidance=guided(guide_every=1, guide_until=1.0, guide_min_weight=0.0, inner_tol=None))
    assert tokens_by_prompt(out) == tokens_by_prompt(ref)
    assert [[t.rewards for t in s.trace] for g in out.samples for s in g] == \
        [[t.rewards for t in s.trace] for g in ref.samples for s in g]
    assert dataclasses.replace(out.stats, wall_time_s=0) == dataclasses.replace(ref.stats, wall_time_s=0)
    assert all(all(f) for f in flags(out))
    assert all(len(t.rewards) == M + 1 and len(t.grad_norms) == M for g in out.samples for s in g for t in s.trace)


@pytest.mark.parametrize("method", ["entrgi", "aps", "expectation"])
def test_guide_every_k_steps(mlm, pref_reward, method):
    full = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=guided(method=method), progress=False)
    states = []
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=guided(method=method, guide_every=3),
                   progress=False, callback=record(states))
    assert all(f == [i % 3 == 0 for i in range(8)] for f in flags(out))
    for st in states:  # unguided steps draw from the prior logits
        assert torch.equal(st["guided_logits"], st["logits"]) == (st["step"] % 3 != 0)
    rows = len(PROMPTS) * 3
    assert out.stats.rm_backwards == rows * 3 * M and full.stats.rm_backwards == rows * 8 * M
    assert out.stats.rm_forwards == rows * 3 * M + rows  # + the final re-score
    assert out.observer_stats.rm_forwards == rows * 3  # the trace's evaluation, counted apart from the method's cost
    assert out.stats.soft_embedding_macs < full.stats.soft_embedding_macs
    assert out.stats.flops < full.stats.flops
    for g in out.samples:
        for s in g:
            assert all((len(t.rewards), len(t.grad_norms)) == ((M + 1, M) if t.guided else (0, 0)) for t in s.trace)


def test_carry_shift_on_hand_built_logits():
    inf = float("inf")
    prior = torch.tensor([[[0.0, 1.0, -inf], [2.0, 0.0, -inf]], [[1.0, 1.0, -inf], [0.0, 3.0, -inf]]])  # (2, 2, 3)
    masked = torch.tensor([[True, False], [True, True]])
    guided = prior + torch.tensor([0.5, -0.5, 0.0])
    out, shift = carry_shift(None, prior, guided, masked, torch.tensor([True, False]))
    assert torch.equal(out[0], guided[0]) and torch.equal(out[1], prior[1])  # row 1 never guided: its prior
    assert shift[0, 0].tolist() == [0.5, -0.5, 0.0] and not shift[0, 1].any() and not shift[1].any()
    assert torch.isfinite(shift).all()  # 0 where the prior is −inf
    later = prior - 1.0  # the next step: row 0 not guided, reuses its shift at its masked slot only
    out2, shift2 = carry_shift(shift, later, later, torch.tensor([[True, False], [False, True]]),
                               torch.tensor([False, False]))
    assert torch.equal(out2[0, 0], later[0, 0] + shift[0, 0]) and torch.equal(out2[0, 1], later[0, 1])
    assert torch.equal(out2[1], later[1]) and torch.equal(shift2, shift)


def test_guide_carry_reuses_the_last_shift_between_guided_steps(mlm, pref_reward):
    states = []
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(), progress=False, callback=record(states),
                   guidance=guided(guide_every=3, guide_carry=True))
    plain = generate(mlm, PROMPTS, pref_reward, sampler=small(), progress=False,
                     guidance=guided(guide_every=3))
    assert out.stats.rm_backwards == plain.stats.rm_backwards  # no RM pass on the carried steps
    last = None
    for st in states:
        masked = st["masked"].unsqueeze(-1)
        if st["step"] % 3 == 0:  # guided: the shift of this step
            last = torch.where(torch.isfinite(st["logits"]) & masked, st["guided_logits"] - st["logits"], 0.0)
        else:  # carried: prior + the last guided step's shift at the masked slots
            expected = torch.where(masked, st["logits"] + last, st["logits"])
            assert torch.equal(st["guided_logits"], expected)
            assert not torch.equal(st["guided_logits"], st["logits"])
    assert tokens_by_prompt(out) != tokens_by_prompt(plain)
    full = generate(mlm, PROMPTS, pref_reward, sampler=small(), progress=False, guidance=guided(guide_carry=True))
    ref = generate(mlm, PROMPTS, pref_reward, sampler=small(), progress=False, guidance=guided())
    assert tokens_by_prompt(full) == tokens_by_prompt(ref)  # every step guided: nothing to carry


def test_guide_every_counts_the_steps_of_each_block(mlm, pref_reward):
    cfg = small(max_new_tokens=12, block_length=4, steps=12, schedule="uniform")
    out = generate(mlm, PROMPTS, pref_reward, sampler=cfg, guidance=guided(guide_every=2), progress=False)
    assert all(f == [i % 4 % 2 == 0 for i in range(12)] for f in flags(out))  # steps 0 and 2 of every block


def test_guide_until_a_fraction_is_committed(mlm, pref_reward):
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=guided(guide_until=0.5), progress=False)
    for g in out.samples:
        for s in g:
            assert [t.guided for t in s.trace] == [(8 - t.masked) / 8 < 0.5 for t in s.trace]
            assert any(t.guided for t in s.trace) and not all(t.guided for t in s.trace)


def test_guide_min_weight(mlm, pref_reward):
    ref = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=guided(), progress=False)
    weights = sorted(t.entropy_weight for g in ref.samples for s in g for t in s.trace)
    w = weights[len(weights) // 2]  # the median: some steps above, some below
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=guided(guide_min_weight=w), progress=False)
    seen = [(t.guided, t.entropy_weight >= w) for g in out.samples for s in g for t in s.trace]
    assert all(a == b for a, b in seen)
    assert 0 < sum(a for a, _ in seen) < len(seen)


def test_schedules_do_not_depend_on_the_batch(mlm, pref_reward):
    g = guided(guide_min_weight=0.6, inner_tol=0.05, guide_until=0.75)
    cfg = small(num_samples=2)
    ref = generate(mlm, PROMPTS, pref_reward, sampler=cfg, guidance=g, progress=False)
    assert 0 < guided_steps(ref) < len(PROMPTS) * 2 * 8  # rows are guided at different steps
    out = generate(mlm, PROMPTS[::-1], pref_reward, sampler=dataclasses.replace(cfg, batch_size=1), guidance=g,
                   progress=False)
    assert tokens_by_prompt(out) == tokens_by_prompt(ref)


def test_particles_with_a_schedule(mlm, qwen_reward):
    pc = SearchConfig("particles", resample_every=2)
    full = generate(mlm, PROMPTS, qwen_reward, sampler=small(num_samples=4), guidance=guided(), search=pc,
                    progress=False)
    out = generate(mlm, PROMPTS, qwen_reward, sampler=small(num_samples=4), guidance=guided(guide_every=2), search=pc,
                   progress=False)
    assert out.stats.rm_backwards * 2 == full.stats.rm_backwards
    assert all(mlm.mask_token_id not in s.token_ids for g in out.samples for s in g)


# ---- the early stop of the inner steps -----------------------------------------------------------------------
def inner_setup(inner_steps, tol, scale):
    """Two rows of three masked slots over 10 ids; reward_b = scale_b · Σ_slots E[id][0] (expectation)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 10, generator=g)
    table = torch.randn(10, 4, generator=g)
    masked = torch.ones(2, 3, dtype=torch.bool)
    scale = torch.tensor(scale)

    def score(embeds, attn):
        return scale * (embeds[..., 0] * attn).sum(-1)

    cfg = GuidanceConfig(rule="expectation", inner_steps=inner_steps, lr=0.5, inner_tol=tol)
    rg = cfg.resolve(SamplerConfig(temperature=1.0))
    return guide_logits(logits, masked, torch.full((2, 3), 9), score, table, torch.ones(10, dtype=torch.bool), rg,
                        torch.tensor([-1]), RowStreams([1, 2]))


def test_a_row_that_stops_gaining_keeps_its_logits():
    one, three = inner_setup(1, None, [1.0, 1e-6]), inner_setup(3, None, [1.0, 1e-6])
    out = inner_setup(3, 1e-3, [1.0, 1e-6])  # row 1's gains are ~1e-6: it stops after its first step
    assert torch.equal(out.logits[0], three.logits[0]) and torch.equal(out.logits[1], one.logits[1])
    assert not torch.equal(one.logits[1], three.logits[1])  # not vacuous: more steps would have moved it
    assert (out.forwards, out.backwards) == (3, 3)  # row 0 ran all three
    assert ran_values(out.rewards[1]) == out.rewards[1, :2].tolist() and math.isnan(out.rewards[1, 2])
    assert len(ran_values(out.grad_norms[1])) == 1 and len(ran_values(out.grad_norms[0])) == 3
    both = inner_setup(3, 1e-3, [1e-6, 1e-6])
    assert (both.forwards, both.backwards) == (2, 1)  # both stop: the second forward shows it, no backward
    assert torch.equal(both.logits, inner_setup(1, None, [1e-6, 1e-6]).logits)
    never = inner_setup(3, 0.0, [1.0, 1.0])  # gains stay positive: the full loop exactly
    assert torch.equal(never.logits, inner_setup(3, None, [1.0, 1.0]).logits) and (never.forwards, never.backwards) == (3, 3)


def test_inner_tol_in_the_sampler_counts_what_ran(mlm, pref_reward):
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(), progress=False,
                   guidance=GuidanceConfig(rule="entrgi", inner_steps=3, lr=1.0, inner_tol=1e9))
    rows = len(PROMPTS) * 3
    # every row stops at the second inner step: 2 forwards and 1 backward per step (the trace's evaluation apart)
    assert out.stats.rm_backwards == rows * 8 and out.stats.rm_forwards == rows * 8 * 2 + rows
    assert out.observer_stats.rm_forwards == rows * 8
    for g in out.samples:
        for s in g:
            assert all((len(t.rewards), len(t.grad_norms)) == (3, 1) for t in s.trace)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_entropy_weight_keeps_the_logits_precision(dtype):
    from entrgi.guidance.inner_loop import mean_entropy_weight
    from entrgi.guidance.mixing import entropy_weight

    logits = torch.randn(2, 3, 7, dtype=dtype, generator=torch.Generator().manual_seed(0))
    masked = torch.tensor([[True, False, True], [False, False, False]])
    w = mean_entropy_weight(logits, masked, 1.0)
    assert w.dtype == dtype and math.isnan(w[1])
    expected = (entropy_weight(logits[0, 0:1], 1.0) + entropy_weight(logits[0, 2:3], 1.0)) / 2
    assert torch.allclose(w[0:1], expected.to(dtype), rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)


def test_particles_carry_their_ancestors_shift(mlm, qwen_reward):
    """A resampled particle continues with its ancestor's carried guidance shift, not its own."""
    checked, before = [], {}

    class Before:  # runs before the resampler: the shifts as they were
        def on_step(self, state, output):
            before["shift"] = None if state.guide.shift is None else state.guide.shift.clone()

    def after(step, output):  # the callback runs after the resampler
        state = sampler_state[0]
        k = state.sampler.num_samples
        for j in range(len(state.rows)):
            a = state.traces[j][-1].resampled_from
            if before["shift"] is not None and a is not None and a != j % k:
                assert torch.equal(state.guide.shift[j], before["shift"][(j // k) * k + a])
                checked.append(j)

    class Keep:  # remembers the state, for the callback
        def on_step(self, state, output):
            sampler_state[:] = [state]

    sampler_state = []
    pc = SearchConfig("particles", resample_every=2)
    out = DiffusionSampler(mlm, qwen_reward).generate(PROMPTS, small(num_samples=4),
                                                      guided(guide_every=4, guide_carry=True), pc, progress=False,
                                                      observers=[Before(), Keep()], callback=after)
    assert checked, "the test needs a particle that took another's canvas"
    assert all(mlm.mask_token_id not in s.token_ids for grp in out.samples for s in grp)
