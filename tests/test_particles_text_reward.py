"""Particles weighed by a text reward (code on the decoded predicted completion), unguided or hybrid
(gradients from the differentiable RM, weights from the text reward)."""

from pathlib import Path

import pytest
import torch
from test_sampler import PROMPTS, small, tokens_by_prompt

from entrgi import DiffusionSampler, GuidanceConfig, SearchConfig, generate, resolve_settings
from entrgi.errors import NonFiniteError
from entrgi.reward.text import TextReward
from entrgi.sampling.particles import effective_sample_size

NONE = GuidanceConfig(rule="none")


def particles(**kw) -> SearchConfig:
    return SearchConfig("particles", **kw)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "constraint_rewards.py"


class Recorder:
    """A per-item text reward: the number of characters of the response, recording every call."""

    def __init__(self, fn=None):
        self.calls = []
        self.fn = fn or (lambda p, r: float(len(r)))

    def __call__(self, prompt, response):
        self.calls.append((prompt, response))
        return self.fn(prompt, response)


class Snapshot:
    """An observer that records, at each weighting (before the resampling), the predicted completions decoded
    independently of the resampler's helper."""

    def __init__(self, model):
        self.model, self.expected = model, []

    def on_step(self, state, output):
        every = state.search.resample_every
        if (output.step + 1) % every == 0 and output.step + 1 < state.sampler.steps:
            resp = output.x[:, output.prompt_length:]
            x_hat = torch.where(resp == self.model.mask_token_id, output.guided_logits.argmax(-1), resp)
            self.expected.append([self.model.decode_response(t) for t in x_hat.tolist()])


def test_unguided_particles_with_a_text_reward_need_no_reward_model(mlm):
    fn = Recorder()
    sampler = small(num_samples=3)
    ps, snap = DiffusionSampler(mlm, TextReward(fn)), Snapshot(mlm)
    out = ps.generate(PROMPTS, sampler, NONE, particles(lam=0.5, resample_every=2), observers=[snap], progress=False)
    B = len(PROMPTS) * 3
    weighings = len(snap.expected)
    assert weighings == 3  # steps 1, 3, 5 of 8 (not after the last)
    # the weights read exactly the decoded predicted completions, then the final samples are scored
    called = [r for _, r in fn.calls]
    assert called[:B * weighings] == [t for texts in snap.expected for t in texts]
    assert [p for p, _ in fn.calls[:B]] == [p for p in PROMPTS for _ in range(3)]
    for group in out.samples:
        assert [s.reward for s in group] == [float(len(s.text)) for s in group]
    assert out.stats.rm_forward_tokens == 0  # code on text: no RM tokens
    # the first weighting: log w = λ·r (the diff potential from r = 0), ESS from those weights exactly
    r0 = torch.tensor([float(len(t)) for t in snap.expected[0]], dtype=torch.float64)
    for g in range(len(PROMPTS)):
        w = torch.softmax(0.5 * r0[3 * g:3 * g + 3], 0)
        entry = ps.search_log[g]
        assert entry["step"] == 1 and entry["ess"] == pytest.approx(effective_sample_size(w), rel=1e-12)


def test_a_sharp_text_potential_copies_the_best_particle(mlm):
    fn = Recorder()
    ps, snap = DiffusionSampler(mlm, TextReward(fn)), Snapshot(mlm)
    ps.generate(PROMPTS, small(num_samples=4), NONE, particles(lam=1e3, resample_every=4), observers=[snap],
                progress=False)
    scores = [float(len(t)) for t in snap.expected[0]]
    checked = 0
    for g in range(len(PROMPTS)):
        s = scores[4 * g:4 * g + 4]
        if s.count(max(s)) == 1:  # a unique best: every particle continues from it
            entry = ps.search_log[g]
            assert entry["resampled"] and entry["ancestors"] == [s.index(max(s))] * 4
            checked += 1
    assert checked


def test_a_constant_text_potential_leaves_best_of_n_and_entrgi_unchanged(mlm, qwen_reward):
    sampler, prompts = small(num_samples=2, max_new_tokens=6, steps=6), PROMPTS[:2]
    const = TextReward(lambda p, r: 1.0)
    bon = generate(mlm, prompts, qwen_reward, sampler=sampler, guidance=GuidanceConfig(rule="none"), search="best_of_n",
                   progress=False)
    ps = DiffusionSampler(mlm, qwen_reward, potential_reward=const)
    out = ps.generate(prompts, sampler, NONE, particles(lam=5.0, resample_every=2), progress=False)
    assert tokens_by_prompt(out) == tokens_by_prompt(bon)
    assert ps.search_log and not any(e["resampled"] for e in ps.search_log)
    assert [s.reward for g in out.samples for s in g] == [s.reward for g in bon.samples for s in g]  # the RM scores
    # hybrid: the RM guides (the samples are EntRGi's), the text reward weighs (constant: no resampling)
    guidance = GuidanceConfig(lr=1.0)
    entrgi = generate(mlm, prompts, qwen_reward, sampler=sampler, guidance=guidance, progress=False)
    hybrid = generate(mlm, prompts, qwen_reward, sampler=sampler, guidance=guidance,
                      search=particles(lam=5.0, resample_every=2), potential_reward=const, progress=False)
    assert tokens_by_prompt(hybrid) == tokens_by_prompt(entrgi) != tokens_by_prompt(bon)


def test_hybrid_weights_come_from_the_text_reward(mlm, qwen_reward):
    fn = Recorder()
    sampler = small(num_samples=2)
    ps, snap = DiffusionSampler(mlm, qwen_reward, potential_reward=TextReward(fn)), Snapshot(mlm)
    out = ps.generate(PROMPTS, sampler, GuidanceConfig(lr=1.0), particles(lam=2.0, resample_every=3),
                      observers=[snap], progress=False)
    assert [r for _, r in fn.calls] == [t for texts in snap.expected for t in texts]  # weighings only, no final score
    r0 = torch.tensor([float(len(t)) for t in snap.expected[0]], dtype=torch.float64)
    for g in range(len(PROMPTS)):
        w = torch.softmax(2.0 * r0[2 * g:2 * g + 2], 0)
        assert ps.search_log[g]["ess"] == pytest.approx(effective_sample_size(w), rel=1e-12)
    want = qwen_reward.score_texts([s.prompt for g in out.samples for s in g], [s.text for g in out.samples for s in g])
    assert [s.reward for g in out.samples for s in g] == want.tolist()  # the samples keep the RM's scores


def test_the_potential_reward_by_its_spelling(mlm, qwen_reward):
    spec = f"text:{EXAMPLES}:fewer_than_12_words"
    pc = particles(resample_every=2, potential_reward=spec)
    ps = DiffusionSampler(mlm, qwen_reward)
    assert ps.potential_reward(pc).score_list(["a"], ["one two"]) == [1.0]
    ps.generate(PROMPTS[:1], small(num_samples=2), NONE, pc, progress=False)
    with pytest.raises(ValueError, match="`search.potential_reward`.*Unknown reward kind 'txt'"):
        resolve_settings(overrides={"search": {"strategy": "particles", "potential_reward": "txt:foo:bar"}})
    with pytest.raises(ValueError, match="`potential_reward` must be a reward spelling"):
        particles(potential_reward=TextReward(lambda p, r: 0.0))


def test_a_text_reward_cannot_guide(mlm):
    text = TextReward(lambda p, r: 0.0, name="zero")
    with pytest.raises(ValueError, match="reward 'zero' .*scores decoded text only.*potential_reward"):
        generate(mlm, PROMPTS, text, sampler=small(), search=particles(), progress=False)  # rule entrgi
    with pytest.raises(ValueError, match="`track_reward`: the reward 'zero' .*no gradient"):
        generate(mlm, PROMPTS, text, sampler=small(), guidance=NONE, search=particles(), track_reward=True,
                 progress=False)
    with pytest.raises(ValueError, match="`reward` is required for search 'particles'"):
        generate(mlm, PROMPTS, None, sampler=small(), guidance=NONE, search=particles(), progress=False)
    with pytest.raises(ValueError, match="`potential_reward` must be a reward with `score_texts`"):
        DiffusionSampler(mlm, None, potential_reward=lambda p, r: 0.0)


def test_non_finite_text_scores_are_errors(mlm, qwen_reward):
    bad = TextReward(lambda p, r: float("nan"), name="nan_reward")
    with pytest.raises(ValueError, match="'nan_reward' returned nan .*must be finite"):
        generate(mlm, PROMPTS, bad, sampler=small(), guidance=NONE, search=particles(), progress=False)

    class NanScorer:  # not a TextReward: its scores go through entrgi.errors.check_rewards
        def score_texts(self, prompts, texts):
            return torch.tensor([float("inf")] + [0.0] * (len(texts) - 1))

    with pytest.raises(NonFiniteError, match="particle weighting"):
        generate(mlm, PROMPTS, qwen_reward, sampler=small(), guidance=NONE, potential_reward=NanScorer(),
                 search=particles(resample_every=2), progress=False)
