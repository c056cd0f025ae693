"""`min_new_tokens`: no EOS in the first slots, seen by guidance, drawing and confidence alike; 0 changes nothing."""

import pytest
import torch
from conftest import table_model
from support.naive_reference import NaiveSampler

from entrgi import DiffusionSampler, GuidanceConfig, SamplerConfig
from entrgi.sampling.masked import response_bias

L = 12


def eos_heavy_model(tok):
    """Every position: EOS ([SEP]) with probability 0.6, 'happy' 0.25, 'dog' 0.15."""
    table = torch.full((40, len(tok)), -1e4)
    for word, p in (("[SEP]", 0.6), ("happy", 0.25), ("dog", 0.15)):
        table[:, tok.convert_tokens_to_ids(word)] = torch.tensor(p).log()
    return table_model(tok, table)


def cfg(m, **kw):
    return SamplerConfig(**{**dict(max_new_tokens=L, steps=6, num_samples=8, temperature=1.0, top_p=1.0,
                                   remasking="maskgit_plus", min_new_tokens=m), **kw})


def first_eos(ids, eos):
    return next((j for j, t in enumerate(ids) if t in eos), len(ids))


def run(sampler_cls, model, reward, config, guidance, states=None):
    cb = (lambda step, st: states.append({k: v.clone() for k, v in st.items() if torch.is_tensor(v)})) \
        if states is not None else None
    return sampler_cls(model, reward).generate(["the cat", "a dog"], config, guidance, progress=False, callback=cb)


@pytest.mark.parametrize("impl", [DiffusionSampler, NaiveSampler])
@pytest.mark.parametrize("method", ["none", "entrgi"])
def test_no_eos_before_min_new_tokens(tok, pref_reward, impl, method):
    model = eos_heavy_model(tok)
    eos = set(model.eos_token_ids)
    guidance = GuidanceConfig(rule=method, lr=2.0)
    plain = run(impl, model, pref_reward, cfg(0), guidance)
    early = [first_eos(s.token_ids, eos) for g in plain.samples for s in g]
    assert min(early) < 5  # not vacuous: without the constraint some response ends before slot 5
    states = []
    out = run(impl, model, pref_reward, cfg(5), guidance, states)
    for s in (s for g in out.samples for s in g):
        assert first_eos(s.token_ids, eos) >= 5
        assert model.mask_token_id not in s.token_ids
        assert len(s.text.split()) >= 5  # the decoded response has the 5 tokens before its end
    eos_cols = list(eos)
    for st in states:  # the prior and the guided logits both carry the bias (the draw and the ranking see it)
        for key in ("logits", "guided_logits"):
            assert torch.isneginf(st[key][:, :5][..., eos_cols]).all()
            assert torch.isfinite(st[key][:, 5:, tok.sep_token_id]).all()


def test_min_new_tokens_equal_to_the_length_means_no_eos_at_all(tok):
    model = eos_heavy_model(tok)
    out = run(DiffusionSampler, model, None, cfg(L), GuidanceConfig(rule="none"))
    assert all(not set(s.token_ids) & set(model.eos_token_ids) for g in out.samples for s in g)


def test_bias_is_exactly_minus_inf_on_the_eos_columns_of_the_first_slots(tok):
    model = eos_heavy_model(tok)
    old = torch.zeros(model.logit_width).masked_fill(model.invalid_mask(), float("-inf"))  # the bias before
    assert torch.equal(response_bias(model, cfg(0), "cpu"), old)  # (V,): the same tensor, same ops
    bias = response_bias(model, cfg(3), "cpu")
    expected = old.repeat(L, 1)
    for j in range(3):
        for e in model.eos_token_ids:
            expected[j, e] = float("-inf")
    assert bias.shape == (L, model.logit_width) and torch.equal(bias, expected)


@pytest.mark.parametrize("method", ["none", "aps"])
def test_zero_is_bit_identical_to_the_sampler_without_the_field(mlm, pref_reward, method):
    """min_new_tokens = 0 against a sampler whose bias is built the way it was before the field existed."""

    class Before(DiffusionSampler):
        calls = 0

        def start(self, *args, **kwargs):
            state = super().start(*args, **kwargs)
            state.invalid_bias = torch.zeros(self.model.logit_width).masked_fill(self.model.invalid_mask(),
                                                                                 float("-inf"))
            Before.calls += 1
            return state

    config = SamplerConfig(max_new_tokens=8, steps=8, num_samples=3, temperature=1.0)
    guidance = GuidanceConfig(rule=method)
    a = DiffusionSampler(mlm, pref_reward).generate(["the cat sat", "a dog"], config, guidance, progress=False)
    b = Before(mlm, pref_reward).generate(["the cat sat", "a dog"], config, guidance, progress=False)
    assert Before.calls == 1  # the override ran: the comparison is against the old bias
    assert [s.token_ids for g in a.samples for s in g] == [s.token_ids for g in b.samples for s in g]
    assert [s.reward for g in a.samples for s in g] == [s.reward for g in b.samples for s in g]
    assert [[t.rewards for t in s.trace] for g in a.samples for s in g] == \
        [[t.rewards for t in s.trace] for g in b.samples for s in g]
