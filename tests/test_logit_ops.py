"""Filtering and sampling against slow, obviously-correct references."""

import math

import pytest
import torch

from entrgi.ops.logit_ops import (
    sample_from_logits,
    sample_gumbel_max,
    sampling_logits,
    scale,
    top_k_filter,
    top_p_filter,
)


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
    from entrgi.ops.logit_ops import exp_flushed_
    tiny = torch.finfo(dtype).tiny
    z = torch.cat([torch.linspace(-800.0, 5.0, 4001, dtype=dtype), torch.tensor([float("-inf")], dtype=dtype)])
    got = exp_flushed_(z.clone())
    ref = z.exp()
    keep = ref >= tiny * math.e
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-6, atol=0.0)
    assert (got[~keep] == 0).all() and not ((got > 0) & (got < tiny)).any()  # flushed, no denormal left
    assert keep.sum() > 100 and (~keep).sum() > 100
    floor = math.log(tiny) + 1.0  # bit for bit the clamp / exp / zero-fill it replaced (one pass fewer)
    z = torch.cat([z, torch.linspace(floor - 1e-3, floor + 1e-3, 2001, dtype=dtype),
                   torch.tensor([floor, float("nan"), float("inf")], dtype=dtype)])
    ref = z.clamp_min(floor).exp().masked_fill(z < floor, 0.0)
    assert torch.equal(exp_flushed_(z.clone()).nan_to_num(nan=7.0), ref.nan_to_num(nan=7.0))


# ---- the sort-free nucleus and draw against the full sort, at the real vocabulary size ----------------
from entrgi.ops.logit_ops import draw, logsumexp_chunked, nucleus_by_buckets, nucleus_groups, top_p_filter_sorted  # noqa: E402

V_REAL = 151_665  # the ids a Dream / Qwen2.5 checkpoint's tokenizer defines


def real_rows(dtype=torch.float32, seed=0):
    """Rows of the real width: flat (the top-p 0.95 nucleus holds most of the vocabulary: no head settles
    them), medium, peaked, with −inf ids, with three finite ids only."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, V_REAL, generator=g)
    x[0] *= 0.5  # flat, as a random-weight checkpoint's
    x[1] *= 1.5
    x[2] *= 3.0
    x[3] *= 12.0  # peaked: settled by the 64-id head
    x[4, ::3] = float("-inf")  # flat with −inf ids
    x[5] = float("-inf")
    x[5, [7, 11, V_REAL - 1]] = torch.tensor([1.0, 2.0, 3.0])
    x[6] *= 0.05  # almost uniform
    return x.to(dtype)


def full_sort_mask(x, top_p, temperature=1.0, lse=None):
    """(n, V) top-p keep mask by sorting every row's whole vocabulary, with the nucleus' own probabilities
    (the path every row not settled by a head took before the sort-free search)."""
    keep = torch.zeros(x.shape, dtype=torch.bool)
    for rows, ids, kept in nucleus_groups(x, top_p, temperature, heads=(), lse=lse):
        assert ids.shape[-1] == x.shape[-1]
        keep[rows.unsqueeze(-1), ids] = kept
    return keep


def groups_mask(x, top_p, temperature=1.0, lse=None):
    """(n, V) keep mask from the sort-free groups, and the rows that took a full sort."""
    keep = torch.zeros(x.shape, dtype=torch.bool)
    sorted_rows = []
    for rows, ids, kept in nucleus_groups(x, top_p, temperature, lse=lse, sort_rest=False):
        if ids is None:
            keep[rows] = kept
        else:
            keep[rows.unsqueeze(-1), ids] = kept
            if ids.shape[-1] == x.shape[-1]:
                sorted_rows += rows.tolist()
    return keep, sorted_rows


def naive_reference(x, u, temperature, top_p, top_k=None):
    """Scale, top-k, top-p by a full sort (float64), then the inverse CDF over the whole vocabulary."""
    y = scale(x.double(), temperature) if top_k is None else top_k_filter(scale(x, temperature), top_k).double()
    return sample_from_logits(top_p_filter_sorted(y, top_p), u)


def uniforms(n, seed=1):
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u[0], u[-1] = 0.0, 1 - 1e-12  # both ends of the CDF
    return u


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_sort_free_nucleus_equals_the_full_sort_on_real_width_rows(dtype, temperature):
    x = real_rows(dtype)
    keep, sorted_rows = groups_mask(x, 0.95, temperature)
    assert torch.equal(keep, full_sort_mask(x, 0.95, temperature))  # the same ids, bit for bit
    assert sorted_rows == []  # and no row of these needed the sort
    sizes = keep.sum(-1)
    assert sizes[0] > 100_000 and sizes[4] > 60_000 and sizes[5] <= 3  # flat rows really are flat
    assert sizes[3] < 64 or temperature > 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [0.0, 1e-3, 1.0, 5.0])
def test_draw_equals_the_naive_full_sort_reference_on_real_width_rows(dtype, temperature):
    x = real_rows(dtype)
    u = uniforms(x.shape[0])
    # float64 normaliser, as the reference's softmax (the default one sums float32 exps for float32 rows)
    lse = torch.logsumexp(x.double() / temperature, -1) if temperature > 0 else None
    got = draw(x, u, temperature, 0.95, lse=lse)
    assert torch.equal(got, naive_reference(x, u, temperature, 0.95))
    if temperature > 0:  # the nucleus too, and with the default normaliser the same ids as the full sort's
        kept = torch.isfinite(top_p_filter_sorted(x.double() / temperature, 0.95))
        assert torch.equal(groups_mask(x, 0.95, temperature, lse)[0], kept)
        mask = full_sort_mask(x, 0.95, temperature)
        ref = sample_from_logits((x.double() / temperature).masked_fill(~mask, float("-inf")), u)
        assert torch.equal(draw(x, u, temperature, 0.95), ref)
        assert torch.equal(top_p_filter(x, 0.95), x.masked_fill(~full_sort_mask(x, 0.95), float("-inf")))
    else:
        assert torch.equal(got, x.argmax(-1))


@pytest.mark.parametrize("top_k", [50, 20_000])
def test_draw_with_top_k_equals_the_reference(top_k):
    x = real_rows()
    u = uniforms(x.shape[0], seed=2)
    for temperature in (0.7, 5.0):
        y = top_k_filter(scale(x, temperature), top_k)
        got = draw(x, u, temperature, 0.9, top_k, lse=torch.logsumexp(y.double(), -1))
        assert torch.equal(got, naive_reference(x, u, temperature, 0.9, top_k))
        assert torch.equal(draw(x, u, temperature, 0.9, top_k), sample_from_logits(
            y.double().masked_fill(~full_sort_mask(y, 0.9), float("-inf")), u))


def test_ties_at_the_boundary_are_kept_as_the_full_sort_keeps_them():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 400, (4, V_REAL), generator=g).float() / 100  # 400 values: every run of ties is long
    x[3] = torch.randn(V_REAL, generator=g) * 0.5
    x[3, 1000:1010] = x[3, 5]  # ten ties well inside the nucleus of a flat row
    keep, sorted_rows = groups_mask(x, 0.95)
    ref = full_sort_mask(x, 0.95)
    assert torch.equal(keep, ref)  # which of the tied ids stay, too: the boundary splits a run -> the full sort
    assert sorted_rows == [0, 1, 2]
    assert keep[3, 1000:1010].all() and keep[3, 5]
    naive = torch.isfinite(top_p_filter_sorted(x.double(), 0.95))
    assert torch.equal(keep.sum(-1), naive.sum(-1))  # how many stay does not depend on the sort order
    for r in range(3):
        boundary = x[r][keep[r]].min()  # the tied run the boundary splits: all above stay, all below go
        assert torch.equal(keep[r] & (x[r] != boundary), x[r] > boundary)
        assert 0 < (keep[r] & (x[r] == boundary)).sum() < (x[r] == boundary).sum()
    u = uniforms(4, seed=4)
    ref_ids = sample_from_logits(x.double().masked_fill(~ref, float("-inf")), u)
    assert torch.equal(draw(x, u, 1.0, 0.95), ref_ids)


def test_a_boundary_within_rounding_of_top_p_falls_back_to_the_full_sort():
    x = real_rows()[:3]
    lse = logsumexp_chunked(x)
    vals = x.sort(-1, descending=True).values
    mass = (vals.double() - lse.unsqueeze(-1)).exp().cumsum(-1)  # the full sort's running mass
    for top_p in (float(mass[0, 90_000]), float(mass[0, 90_000]) - 1e-14):
        keep, ok = nucleus_by_buckets(x, lse, top_p)
        assert ok.tolist() == [False, True, True]  # row 0's decision hangs on the rounding of the sums
        assert not keep[0].any()
        assert torch.equal(groups_mask(x, top_p)[0], full_sort_mask(x, top_p))
    bad = x.clone()
    bad[1, 9] = float("nan")
    bad[2, 9] = float("inf")
    assert nucleus_by_buckets(bad, logsumexp_chunked(bad), 0.95)[1].tolist() == [True, False, False]


def test_draw_is_deterministic_and_independent_of_the_batch():
    x = real_rows()
    u = uniforms(x.shape[0], seed=5)
    ids = draw(x, u, 1.0, 0.95)
    assert torch.equal(draw(x, u, 1.0, 0.95), ids)
    alone = torch.cat([draw(x[r:r + 1], u[r:r + 1], 1.0, 0.95) for r in range(x.shape[0])])
    assert torch.equal(alone, ids)
    many = x[[0, 1, 2, 4, 6]].repeat(4, 1)  # 20 flat rows: several chunks of the sort-free search
    assert torch.equal(draw(many, u[[0, 1, 2, 4, 6]].repeat(4), 1.0, 0.95), ids[[0, 1, 2, 4, 6]].repeat(4))
