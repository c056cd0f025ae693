"""Every config field is validated with an error naming it and its allowed range."""

import dataclasses
import math
import re
import typing

import pytest

from entrgi import GuidanceConfig, SamplerConfig, SearchConfig
from entrgi.config import check_float

BAD_SAMPLER = [
    ("max_new_tokens", 0, r"`max_new_tokens` must be an integer >= 1, got 0"),
    ("steps", 0, r"`steps` must be an integer >= 1"),
    ("steps", 2.5, r"`steps` must be an integer"),
    ("num_samples", -1, r"`num_samples`"),
    ("temperature", -0.1, r"`temperature` must be >= 0.0"),
    ("top_p", 0.0, r"`top_p` must be in \(0.0, 1.0\], got 0.0"),
    ("top_p", 1.5, r"`top_p` must be in \(0.0, 1.0\], got 1.5"),
    ("top_k", 0, r"`top_k`"),
    ("remasking", "confident", r"`remasking` must be one of \['origin'"),
    ("remasking_temperature", -1.0, r"`remasking_temperature`"),
    ("confidence_from", "posterior", r"`confidence_from` must be one of"),
    ("eps", 0.0, r"`eps` must be in \(0.0, 1.0\)"),
    ("schedule", "cosine", r"`schedule`"),
    ("block_length", 0, r"`block_length`"),
    ("seed", -3, r"`seed`"),
    ("batch_size", 0, r"`batch_size`"),
    ("deprioritize_eos", "yes", r"`deprioritize_eos`"),
    ("temperature", float("nan"), r"`temperature`"),
    ("temperature", True, r"`temperature`"),
]


@pytest.mark.parametrize("field,value,message", BAD_SAMPLER)
def test_sampler_field_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**{field: value})


BAD_GUIDANCE = [
    ("rule", "dps", r"`rule` must be one of \['none', 'expectation', 'aps', 'entrgi'\]"),
    ("rule_params", {"p": 1.0}, r"Unknown parameter of guidance rule 'entrgi' \(`rule_params`\) 'p'"),
    ("optimizer_params", {"betas": 1}, r"Unknown parameter of optimizer 'adam'"),
    ("inner_steps", -1, r"`inner_steps` must be an integer >= 0"),
    ("optimizer", "sgd", r"`optimizer`"),
    ("lr", 0.0, r"`lr` must be > 0.0, got 0.0"),
    ("entropy_temperature", -1.0, r"`entropy_temperature`"),
    ("relaxation_temperature", 0.0, r"`relaxation_temperature` must be > 0.0"),
    ("hard_top_p", 2.0, r"`hard_top_p`"),
    ("prefix_cache", "yes", r"`prefix_cache` must be True or False, got 'yes'"),
    ("compile", 1, r"`compile` must be True or False, got 1"),
    ("vocab_chunk", 0, r"`vocab_chunk` must be an integer >= 1, got 0"),
    ("vocab_chunk", 4096.0, r"`vocab_chunk` must be an integer >= 1"),
    ("soft_top_k", 0, r"`soft_top_k` must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("field,value,message", BAD_GUIDANCE)
def test_guidance_field_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        GuidanceConfig(**{field: value})


def test_block_constraints():
    with pytest.raises(ValueError, match="multiple of `block_length`"):
        SamplerConfig(max_new_tokens=10, block_length=4)
    with pytest.raises(ValueError, match="`steps` .* multiple of the number of blocks"):
        SamplerConfig(max_new_tokens=12, block_length=4, steps=10)
    assert SamplerConfig(max_new_tokens=12, block_length=4, steps=9).num_blocks == 3


def test_replace_revalidates():
    with pytest.raises(ValueError, match="top_p"):
        dataclasses.replace(SamplerConfig(), top_p=3.0)


def test_greedy_sampling_needs_a_relaxation_temperature_for_guidance():
    with pytest.raises(ValueError, match="relaxation_temperature"):
        GuidanceConfig(rule="entrgi").resolve(SamplerConfig(temperature=0.0))
    r = GuidanceConfig(rule="entrgi", relaxation_temperature=1.0).resolve(SamplerConfig(temperature=0.0))
    assert r.relaxation_temperature == 1.0
    GuidanceConfig(rule="none").resolve(SamplerConfig(temperature=0.0))  # unguided greedy is fine


def test_resolve_fills_defaults_from_the_sampler():
    s = SamplerConfig(temperature=0.3, top_p=0.8)
    r = GuidanceConfig(entropy_temperature=None).resolve(s)
    assert (r.relaxation_temperature, r.entropy_temperature, r.hard_top_p) == (0.3, 0.3, 0.8)
    r = GuidanceConfig().resolve(s)
    assert r.entropy_temperature == 1.0  # the released code's choice


def test_zero_inner_steps_warns():
    with pytest.warns(UserWarning, match="inner_steps"):
        GuidanceConfig(rule="aps", inner_steps=0).resolve(SamplerConfig())


def test_defaults_are_the_papers():
    s, g = SamplerConfig(), GuidanceConfig()
    assert (s.max_new_tokens, s.steps, s.num_samples, s.temperature, s.top_p, s.remasking) == (
        128, 128, 4, 0.7, 0.95, "entropy")
    assert (g.rule, g.inner_steps, g.optimizer, g.lr, g.entropy_temperature) == ("entrgi", 3, "adam", 0.5, 1.0)


def test_cost_switches_default_to_exact_and_fast():
    g = GuidanceConfig()
    assert (g.prefix_cache, g.vocab_chunk, g.compile, g.soft_top_k) == (True, 4096, False, None)
    assert GuidanceConfig(vocab_chunk=None, soft_top_k=64).soft_top_k == 64  # None = dense; the approximation is opt-in


# ---- non-finite values and min_new_tokens ----------------------------------------------------------
def float_fields(cls):
    """Names of the fields typed float or float | None (read from the type hints, so new ones are covered)."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] in (float, float | None)]


def test_float_fields_are_the_expected_ones():  # the derivation below is not vacuous
    assert float_fields(SamplerConfig) == ["temperature", "top_p", "remasking_temperature", "eps", "parallel_threshold",
                                           "entropy_bound", "t_min", "t_max", "confidence_threshold"]
    assert float_fields(GuidanceConfig) == ["lr", "entropy_temperature", "relaxation_temperature", "hard_top_p",
                                            "guide_until", "guide_min_weight", "inner_tol", "kl_weight"]
    assert float_fields(SearchConfig) == ["lam", "ess_threshold"]


@pytest.mark.parametrize("cls,field", [(c, f) for c in (SamplerConfig, GuidanceConfig, SearchConfig)
                                       for f in float_fields(c)])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_field_refuses_inf_and_nan(cls, field, value):
    message = rf"`{field}` must be a finite number" if math.isinf(value) else rf"`{field}` must be a number"
    with pytest.raises(ValueError, match=message) as info:
        cls(**{field: value})
    assert str(info.value).endswith(f"got {value!r}.")


def test_large_values_are_accepted_up_to_the_documented_limit():
    assert GuidanceConfig(lr=1e6, entropy_temperature=1e6, relaxation_temperature=1e-6, kl_weight=1e6).lr == 1e6
    assert SamplerConfig(temperature=1e6, remasking_temperature=1e6).temperature == 1e6
    assert SearchConfig(lam=1e6).lam == 1e6
    for cls, field, value in ((GuidanceConfig, "lr", 1e300), (GuidanceConfig, "kl_weight", 2e6),
                              (GuidanceConfig, "relaxation_temperature", 1e-300), (SamplerConfig, "temperature", 1e308),
                              (SamplerConfig, "temperature", 1e-300), (SearchConfig, "lam", 1e30)):
        with pytest.raises(ValueError, match=rf"`{field}` must be .*got {re.escape(f'{value:g}')}"):
            cls(**{field: value})


def test_check_float_allows_inf_only_when_asked():
    check_float("x", math.inf, 0.0, allow_inf=True)
    with pytest.raises(ValueError, match=r"`x` must be a finite number >= 0.0, got inf"):
        check_float("x", math.inf, 0.0)
    with pytest.raises(ValueError, match=r"`x` must be a number"):
        check_float("x", math.nan, 0.0, allow_inf=True)  # NaN never
    check_float("x", 10**400, 0.0)  # a huge int is finite (no float overflow)


def test_min_new_tokens_is_validated():
    assert SamplerConfig().min_new_tokens == 0
    assert SamplerConfig(max_new_tokens=8, min_new_tokens=8).min_new_tokens == 8
    with pytest.raises(ValueError, match=r"`min_new_tokens` must be <= `max_new_tokens` \(8\), got 9"):
        SamplerConfig(max_new_tokens=8, min_new_tokens=9)
    for bad in (-1, 2.0, True, None):
        with pytest.raises(ValueError, match=r"`min_new_tokens` must be an integer >= 0"):
            SamplerConfig(min_new_tokens=bad)
