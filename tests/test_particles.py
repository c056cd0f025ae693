"""The particle sampler: resampling keeps the count, follows the weights, and reduces to Best-of-N."""

import pytest
import torch
from test_sampler import PROMPTS, small, tokens_by_prompt

from entrgi import GuidanceConfig, generate
from entrgi.sampling.particles import (
    ParticleConfig,
    ParticleSampler,
    ParticleState,
    effective_sample_size,
    generate_particles,
    systematic_resample,
)


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
    bon = generate(mlm, PROMPTS, qwen_reward, sampler=sampler, guidance=GuidanceConfig(method="best_of_n"),
                   progress=False)
    ps = ParticleSampler(mlm, qwen_reward, ParticleConfig(lam=0.0, resample_every=2))
    out = ps.generate(PROMPTS, sampler, progress=False)
    assert tokens_by_prompt(out) == tokens_by_prompt(bon)
    assert out.top1() == bon.top1() and out.avg() == bon.avg()
    assert ps.resample_log and not any(e["resampled"] for e in ps.resample_log)


def test_resampling_keeps_particle_count_and_copies_ancestors(mlm, qwen_reward):
    ps = ParticleSampler(mlm, qwen_reward, ParticleConfig(lam=20.0, resample_every=2))
    states = []
    out = ps.generate(PROMPTS, small(num_samples=4), progress=False,
                      callback=lambda step, st: states.append(st["x"].clone()))
    assert [len(g) for g in out.samples] == [4, 4, 4]
    resampled = [e for e in ps.resample_log if e["resampled"]]
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
                                guidance=GuidanceConfig(method="best_of_n")).avg()))
        part.append(sum(generate_particles(mlm, PROMPTS, qwen_reward, sampler=sampler, progress=False,
                                           particles=ParticleConfig(lam=5.0, resample_every=2)).avg()))
    assert sum(part) > sum(bon), (bon, part)


def test_guided_particles_run_and_validate(mlm, qwen_reward):
    out = generate_particles(mlm, PROMPTS[:1], qwen_reward, sampler=small(num_samples=2),
                             particles=ParticleConfig(guided=True, lam=1.0), progress=False)
    assert out.guidance.method == "entrgi" and out.stats.rm_backwards > 0
    with pytest.raises(ValueError, match="multiple of `num_samples`"):
        generate_particles(mlm, PROMPTS, qwen_reward, sampler=small(num_samples=2, batch_size=3), progress=False)
    with pytest.raises(ValueError, match="`resample_every`"):
        ParticleConfig(resample_every=0)
    with pytest.raises(ValueError, match="`lam`"):
        ParticleConfig(lam=-1.0)


def test_particle_state_is_typed_and_the_public_step_resamples(mlm, qwen_reward):
    """start() gives a ParticleState; driving step() by hand resamples as generate() does."""
    cfg, pc = small(num_samples=4), ParticleConfig(lam=20.0, resample_every=2)
    ps = ParticleSampler(mlm, qwen_reward, pc)
    state = ps.start(PROMPTS[:2], cfg)
    assert isinstance(state, ParticleState) and state.k == 4 and state.reward_batch is not None  # unguided: RM layout
    assert state.log_w.tolist() == [0.0] * 8 and len(state.group_streams) == 2
    while not state.done:
        ps.step(state)
    assert any(e["resampled"] for e in ps.resample_log) and state.log_w.shape == (8,)
    ref = ParticleSampler(mlm, qwen_reward, pc).generate(PROMPTS[:2], cfg, progress=False)
    assert state.response.tolist() == [s.token_ids for g in ref.samples for s in g]
    with pytest.raises(ValueError, match="whole groups of `num_samples` \\(4\\) rows"):
        ps.start(ps.rows_for(PROMPTS[:1], cfg)[:3], cfg)
