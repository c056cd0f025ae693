"""The particle sampler: resampling keeps the count, follows the weights, and reduces to Best-of-N."""

import pytest
import torch
from test_sampler import PROMPTS, small, tokens_by_prompt

from entrgi import DiffusionSampler, GuidanceConfig, SearchConfig, generate
from entrgi.sampling.particles import ParticleResampler, effective_sample_size, systematic_resample

NONE = GuidanceConfig(rule="none")


def particles(**kw) -> SearchConfig:
    return SearchConfig("particles", **kw)


def test_systematic_resampling_keeps_the_count_and_is_identity_for_uniform_weights():
    for k in (1, 3, 8):
        for u in (0.0, 0.37, 0.999):
            assert systematic_resample(torch.full((k,), 1 / k), u).tolist() == list(range(k))
    anc = systematic_resample(torch.tensor([0.1, 0.6, 0.3]), 0.5)
    assert anc.shape == (3,) and anc.tolist() == [1, 1, 2]


def test_systematic_resampling_respects_the_weights():
    """Offspring counts: E[count_i] = K w_i, and systematic resampling keeps each within 1 of K w_i."""
    w = torch.tensor([0.05, 0.15, 0.5, 0.3], dtype=torch.float64)
    k = 4
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, dtype=torch.float64)
    trials = 4000
    for _ in range(trials):
        anc = systematic_resample(w, float(torch.rand(1, generator=g)))
        c = torch.bincount(anc, minlength=4).double()
        assert ((c - k * w).abs() < 1 + 1e-9).all()
        counts += c
    mean = counts / trials
    se = (k * w * (1 - w) / trials).sqrt()  # a conservative bound on the standard error
    assert ((mean - k * w).abs() < 4 * se + 1e-3).all(), (mean, k * w)


def test_ess():
    assert effective_sample_size(torch.full((4,), 0.25)) == pytest.approx(4)
    assert effective_sample_size(torch.tensor([1.0, 0, 0, 0])) == pytest.approx(1)


def test_zero_lambda_without_guidance_equals_best_of_n_exactly(mlm, qwen_reward):
    sampler = small(num_samples=4)
    bon = generate(mlm, PROMPTS, qwen_reward, sampler=sampler, guidance=GuidanceConfig(rule="none"), search="best_of_n",
                   progress=False)
    ps = DiffusionSampler(mlm, qwen_reward)
    out = ps.generate(PROMPTS, sampler, NONE, particles(lam=0.0, resample_every=2), progress=False)
    assert tokens_by_prompt(out) == tokens_by_prompt(bon)
    assert out.top1() == bon.top1() and out.avg() == bon.avg()
    assert ps.search_log and not any(e["resampled"] for e in ps.search_log)


def test_resampling_keeps_particle_count_and_copies_ancestors(mlm, qwen_reward):
    ps = DiffusionSampler(mlm, qwen_reward)
    states = []
    out = ps.generate(PROMPTS, small(num_samples=4), NONE, particles(lam=20.0, resample_every=2), progress=False,
                      callback=lambda step, st: states.append(st["x"].clone()))
    assert [len(g) for g in out.samples] == [4, 4, 4]
    resampled = [e for e in ps.search_log if e["resampled"]]
    assert resampled, "a large λ must trigger resampling"
    for e in resampled:
        assert len(e["ancestors"]) == 4 and e["ancestors"] == sorted(e["ancestors"])
    # traces record where each particle came from at the resampling steps
    marks = [t.resampled_from for g in out.samples for s in g for t in s.trace if t.resampled_from is not None]
    assert marks and all(0 <= m < 4 for m in marks)


def test_particles_raise_the_reward_over_best_of_n(mlm, qwen_reward):
    """Selection pressure alone (no gradients) must lift the mean final reward of the particles."""
    bon, part = [], []
    for seed in range(3):
        sampler = small(num_samples=4, seed=seed)
        bon.append(sum(generate(mlm, PROMPTS, qwen_reward, sampler=sampler, progress=False,
                                guidance=GuidanceConfig(rule="none"), search="best_of_n").avg()))
        part.append(sum(generate(mlm, PROMPTS, qwen_reward, sampler=sampler, progress=False, guidance=NONE,
                                 search=particles(lam=5.0, resample_every=2)).avg()))
    assert sum(part) > sum(bon), (bon, part)


def test_guided_particles_run_and_validate(mlm, qwen_reward):
    out = generate(mlm, PROMPTS[:1], qwen_reward, sampler=small(num_samples=2), guidance=GuidanceConfig(rule="entrgi"),
                   search=particles(lam=1.0), progress=False)
    assert out.guidance.rule == "entrgi" and out.search.strategy == "particles" and out.stats.rm_backwards > 0
    with pytest.raises(ValueError, match="multiple of `num_samples`"):
        generate(mlm, PROMPTS, qwen_reward, sampler=small(num_samples=2, batch_size=3), search=particles(),
                 progress=False)
    with pytest.raises(ValueError, match="`resample_every`"):
        particles(resample_every=0)
    with pytest.raises(ValueError, match="`lam`"):
        particles(lam=-1.0)


def test_particle_state_is_typed_and_the_public_step_resamples(mlm, qwen_reward):
    """start() attaches the typed resampler; driving step() by hand resamples as generate() does."""
    cfg, pc = small(num_samples=4), particles(lam=20.0, resample_every=2)
    ps = DiffusionSampler(mlm, qwen_reward)
    state = ps.start(PROMPTS[:2], cfg, NONE, pc)
    resampler = state.observers[-1]
    assert isinstance(resampler, ParticleResampler) and resampler.k == 4
    assert state.reward_view is not None  # unguided: the RM's view weighs the particles
    assert resampler.log_w.tolist() == [0.0] * 8 and len(resampler.group_streams) == 2
    while not state.done:
        ps.step(state)
    assert any(e["resampled"] for e in resampler.log) and resampler.log_w.shape == (8,)
    ref = DiffusionSampler(mlm, qwen_reward).generate(PROMPTS[:2], cfg, NONE, pc, progress=False)
    assert state.response.tolist() == [s.token_ids for g in ref.samples for s in g]
    with pytest.raises(ValueError, match="whole groups of `num_samples` \\(4\\) rows"):
        ps.start(ps.rows_for(PROMPTS[:1], cfg)[:3], cfg, NONE, pc)
