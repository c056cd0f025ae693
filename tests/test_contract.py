"""One contract every sampler keeps (diffusers' ``SchedulerCommonTest`` style): the optimised sampler, the straight
reference (support/reference.py) and the particle sampler with λ = 0, unguided and guided, run the same checks.

Invariants: prompt and committed tokens never change; ids that are never response tokens are never drawn; EOS
candidates are committed last; a row's sample does not depend on what it is batched with (alone, other prompts,
their order, ``batch_size``); the samples are deterministic per seed.
"""

import pytest
import torch
from conftest import table_model
from reference_sampler import reference_generate

from entrgi import DiffusionSampler, GuidanceConfig, SamplerConfig, SearchConfig

PROMPTS = ["the cat sat", "a dog", "it was a very big day and the sun"]
CONFIGS = {  # check_over_configs: the invariants hold for each
    "linear": {},
    "blocks": {"block_length": 4, "steps": 4, "schedule": "uniform", "remasking": "maskgit_plus"},
}


def small(**kw) -> SamplerConfig:
    return SamplerConfig(**{"max_new_tokens": 8, "steps": 8, "num_samples": 2, "temperature": 1.0, "top_p": 0.95,
                            **kw})


def by_prompt(out) -> dict[str, list[list[int]]]:
    return {g[0].prompt: [s.token_ids for s in g] for g in out.samples}


def eos_heavy_model(tok):
    """Every position: EOS ([SEP]) with probability 0.6, 'cat' 0.25, 'dog' 0.15."""
    table = torch.full((40, len(tok)), -1e4)
    for word, p in (("[SEP]", 0.6), ("cat", 0.25), ("dog", 0.15)):
        table[:, tok.convert_tokens_to_ids(word)] = torch.tensor(p).log()
    return table_model(tok, table)


def invalid_heavy_model(tok):
    """Almost all the mass on the mask, [CLS], [UNK] and four padded logit rows beyond the vocabulary."""
    width = len(tok) + 4
    table = torch.zeros(40, width)
    for t in ("[MASK]", "[CLS]", "[UNK]"):
        table[:, tok.convert_tokens_to_ids(t)] = 20.0
    table[:, len(tok):] = 20.0
    model = table_model(tok, table)
    model.logit_width = width
    model.invalid_token_ids = tuple(sorted({*model.invalid_token_ids, *range(len(tok), width)}))
    return model


class SamplerContract:
    """The shared checks; a subclass says how to run its implementation (:meth:`run`) and with which guidance."""

    guidance = GuidanceConfig(rule="none")
    rows_alone = True  # a row may run alone (particles resample a prompt's K rows together: batches of K)

    def run(self, model, prompts, reward, sampler: SamplerConfig, callback=None):
        """The implementation's GenerationOutput; ``callback(step, StepOutput)`` after every step."""
        raise NotImplementedError

    @pytest.mark.parametrize("config", list(CONFIGS))
    def test_prompt_and_committed_tokens_never_change(self, mlm, pref_reward, config):
        steps = []
        self.run(mlm, PROMPTS, pref_reward, small(**CONFIGS[config]),
                 callback=lambda i, out: steps.append((out.x.clone(), out.committed.clone(), out.prompt_length)))
        assert steps
        first, _, P = steps[0]
        for (prev, _, _), (cur, committed, _) in zip(steps, steps[1:]):
            assert torch.equal(cur[:, :P], first[:, :P])  # the prompt
            done = prev[:, P:] != mlm.mask_token_id
            assert torch.equal(cur[:, P:][done], prev[:, P:][done])  # what was committed stays
            assert not (committed & done).any()  # a step commits only masked slots
        assert (steps[-1][0][:, P:] != mlm.mask_token_id).all()  # everything committed at the end

    def test_invalid_ids_are_never_drawn(self, tok, pref_reward):
        model = invalid_heavy_model(tok)
        out = self.run(model, PROMPTS, pref_reward, small(num_samples=4))
        bad = {tok.mask_token_id, tok.cls_token_id, tok.unk_token_id, *range(len(tok), model.logit_width)}
        assert all(not set(s.token_ids) & bad for g in out.samples for s in g)

    def test_eos_candidates_are_committed_last(self, tok, pref_reward):
        model = eos_heavy_model(tok)
        eos = torch.tensor(model.eos_token_ids)
        violations, eos_commits = 0, 0
        def check(i, out):
            nonlocal violations, eos_commits
            is_eos = torch.isin(out.proposal, eos) & out.candidates
            left_non_eos = out.candidates & ~is_eos & ~out.committed
            eos_now = (out.committed & is_eos).any(-1)
            violations += int((eos_now & left_non_eos.any(-1)).sum())
            eos_commits += int(eos_now.sum())
        self.run(model, ["the cat", "a dog"], pref_reward,
                 small(num_samples=4, max_new_tokens=12, steps=6, remasking="maskgit_plus"), callback=check)
        assert eos_commits > 0 and violations == 0  # not vacuous: EOS (prob. 0.6) is proposed and committed

    @pytest.mark.parametrize("config", list(CONFIGS))
    def test_samples_do_not_depend_on_the_batch(self, mlm, pref_reward, config):
        cfg = CONFIGS[config]
        ref = by_prompt(self.run(mlm, PROMPTS, pref_reward, small(**cfg)))
        assert len({tuple(t) for ts in ref.values() for t in ts}) > 1
        reordered = by_prompt(self.run(mlm, PROMPTS[::-1], pref_reward, small(batch_size=2, **cfg)))
        alone = by_prompt(self.run(mlm, PROMPTS[2], pref_reward, small(batch_size=1 if self.rows_alone else 2,
                                                                         **cfg)))
        assert reordered == ref and alone[PROMPTS[2]] == ref[PROMPTS[2]]

    def test_deterministic_per_seed(self, mlm, pref_reward):
        a, b, c = (by_prompt(self.run(mlm, PROMPTS[:2], pref_reward, small(seed=s))) for s in (3, 3, 4))
        assert a == b != c


class TestDiffusionSampler(SamplerContract):
    guidance = GuidanceConfig(rule="entrgi", lr=2.0)

    def run(self, model, prompts, reward, sampler, callback=None):
        return DiffusionSampler(model, reward).generate(prompts, sampler, self.guidance, progress=False,
                                                        callback=callback)


class TestUnguidedDiffusionSampler(TestDiffusionSampler):
    guidance = GuidanceConfig(rule="none")


class TestReference(SamplerContract):
    guidance = GuidanceConfig(rule="entrgi", lr=2.0)

    def run(self, model, prompts, reward, sampler, callback=None):
        return reference_generate(model, prompts, reward, sampler, self.guidance, callback=callback)


class TestParticles(SamplerContract):
    guidance = GuidanceConfig(rule="none")
    particles = SearchConfig("particles", lam=0.0, resample_every=2)
    rows_alone = False

    def run(self, model, prompts, reward, sampler, callback=None):
        return DiffusionSampler(model, reward).generate(prompts, sampler, self.guidance, self.particles,
                                                        progress=False, callback=callback)


class TestGuidedParticles(TestParticles):
    guidance = GuidanceConfig(rule="entrgi")
