"""Filtering and sampling against slow, obviously-correct references."""

import pytest
import math

import torch

from entrgi.logit_ops import sample_from_logits, sample_gumbel_max, sampling_logits, scale, top_k_filter, top_p_filter


def slow_top_p(row: torch.Tensor, top_p: float) -> torch.Tensor:
    """Dream's rule, one row at a time: sort descending, keep ids while the mass before them <= top_p."""
    probs = torch.softmax(row, -1)
    keep = torch.zeros_like(row, dtype=torch.bool)
    mass = 0.0
    for i in torch.argsort(row, descending=True).tolist():
        if mass > top_p:
            break
        keep[i] = True
        mass += float(probs[i])
    return row.masked_fill(~keep, float("-inf"))


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 1.0])
def test_top_p_matches_reference(top_p):
    logits = torch.randn(20, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    got = top_p_filter(logits, top_p)
    for r in range(20):
        assert torch.equal(got[r], slow_top_p(logits[r], top_p))


def test_top_p_always_keeps_the_argmax():
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    out = top_p_filter(logits, 1e-6)
    assert torch.isfinite(out[0, 0]) and torch.isinf(out[0, 1:]).all()


def test_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]
    assert torch.equal(top_k_filter(logits, None), logits)


def test_scale_greedy_is_one_hot_without_division():
    logits = torch.tensor([[0.1, 2.0, -1.0]])
    out = scale(logits, 0.0)
    assert out.tolist() == [[float("-inf"), 0.0, float("-inf")]]


def test_sample_frequencies_match_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = sample_from_logits(probs.log().expand(n, 4), u)
    freq = torch.bincount(ids, minlength=4).double() / n
    assert torch.allclose(freq, probs, atol=0.01)


def test_sampling_never_returns_zero_probability_ids():
    logits = torch.randn(1000, 10, generator=torch.Generator().manual_seed(1))
    logits[:, ::2] = float("-inf")
    u = torch.cat([torch.zeros(500), torch.full((500,), 1 - 1e-12, dtype=torch.float64)])
    ids = sample_from_logits(logits, u)
    assert (ids % 2 == 1).all()


def test_sampling_logits_greedy_then_sample_is_argmax():
    logits = torch.randn(50, 7)
    ids = sample_from_logits(sampling_logits(logits, 0.0, 0.9, 3), torch.rand(50, dtype=torch.float64))
    assert torch.equal(ids, logits.argmax(-1))


def test_gumbel_max_frequencies_match_tempered_probabilities():
    logits = torch.tensor([0.0, 1.0, 2.0, float("-inf")], dtype=torch.float64)
    n, tau = 20000, 0.7
    u = torch.rand(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = sample_gumbel_max((logits / tau).expand(n, 4), u)
    freq = torch.bincount(ids, minlength=4).double() / n
    assert torch.allclose(freq, torch.softmax(logits / tau, -1), atol=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_flushed_equals_exp_without_denormals(dtype):
    from entrgi.logit_ops import exp_flushed_
    tiny = torch.finfo(dtype).tiny
    z = torch.cat([torch.linspace(-800.0, 5.0, 4001, dtype=dtype), torch.tensor([float("-inf")], dtype=dtype)])
    got = exp_flushed_(z.clone())
    ref = z.exp()
    keep = ref >= tiny * math.e
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-6, atol=0.0)
    assert (got[~keep] == 0).all() and not ((got > 0) & (got < tiny)).any()  # flushed, no denormal left
    assert keep.sum() > 100 and (~keep).sum() > 100
