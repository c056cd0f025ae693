"""Commit counts, confidence rules and position selection on hand-built inputs."""

import pytest
import torch

from entrgi.sampling.schedule import (
    DEPRIORITISED,
    commit_counts,
    confidence,
    gumbel_keys,
    linear_fraction,
    origin_reveal,
    select_top,
)


def dream_counts(n: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Dream's rule written out: ts = linspace(1, eps, T+1); int(n_masked * (1 - s/t)); all at the end."""
    ts = torch.linspace(1, eps, steps + 1, dtype=torch.float64)
    out = []
    for i in range(steps):
        k = n if i == steps - 1 else int(n * (1 - ts[i + 1] / ts[i]))
        out.append(k)
        n -= k
    return out


def llada_counts(n: int, steps: int) -> list[int]:
    """LLaDA's get_num_transfer_tokens: n // T each, +1 on the first n % T steps."""
    return [n // steps + (1 if i < n % steps else 0) for i in range(steps)]


def run_schedule(n: int, steps: int, schedule: str) -> list[int]:
    out = []
    left = torch.tensor([n])
    for i in range(steps):
        k = commit_counts(left, i, steps, schedule)
        out.append(int(k))
        left = left - k
    return out


@pytest.mark.parametrize("n,steps", [(128, 128), (128, 64), (128, 32), (24, 24), (16, 5), (7, 10)])
def test_linear_schedule_matches_dream(n, steps):
    got = run_schedule(n, steps, "linear")
    assert got == dream_counts(n, steps)
    assert sum(got) == n


def test_linear_schedule_shape_for_T_equals_L():
    got = run_schedule(128, 128, "linear")
    assert got[0] == 0 and all(k == 1 for k in got[1:-1]) and got[-1] == 2


@pytest.mark.parametrize("n,steps", [(32, 32), (32, 8), (10, 4), (3, 7), (128, 5)])
def test_uniform_schedule_matches_llada(n, steps):
    assert run_schedule(n, steps, "uniform") == llada_counts(n, steps)


def test_linear_fraction_last_step_is_one():
    assert linear_fraction(9, 10, 1e-3) == 1.0
    assert 0 < linear_fraction(3, 10, 1e-3) < 1


def make_logits(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_confidence_rules_on_chosen_probabilities():
    logits = make_logits([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    tokens = torch.tensor([1, 0])
    torch.testing.assert_close(confidence("maskgit_plus", logits, tokens, 1.0), torch.tensor([0.2, 0.4], dtype=torch.float64))
    torch.testing.assert_close(confidence("topk_margin", logits, tokens, 1.0), torch.tensor([0.5, 0.05], dtype=torch.float64))
    p = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(confidence("entropy", logits, tokens, 1.0), (p * p.log()).sum(-1))
    # temperature sharpens: entropy-confidence rises
    assert (confidence("entropy", logits, tokens, 0.5) > confidence("entropy", logits, tokens, 1.0)).all()


def test_select_top_counts_ties_and_candidates():
    keys = torch.tensor([[0.5, 0.9, 0.9, float("-inf"), 0.1]], dtype=torch.float64)
    sel = select_top(keys, torch.tensor([2]))
    assert sel.tolist() == [[False, True, True, False, False]]
    ties = torch.tensor([[0.3, 0.3, 0.3, 0.3]], dtype=torch.float64)
    assert select_top(ties, torch.tensor([2])).tolist() == [[True, True, False, False]]  # earliest first


def test_deprioritised_eos_comes_after_every_real_confidence_but_before_non_candidates():
    keys = torch.tensor([[DEPRIORITISED, -50.0, float("-inf"), -1.0]], dtype=torch.float64)
    assert select_top(keys, torch.tensor([2])).tolist() == [[False, True, False, True]]
    assert select_top(keys, torch.tensor([3])).tolist() == [[True, True, False, True]]


def test_gumbel_keys_sample_without_replacement_in_proportion():
    conf = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]], dtype=torch.float64).expand(4000, 4)
    u = torch.rand(4000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    first = select_top(gumbel_keys(conf, 1.0, u), torch.ones(4000, dtype=torch.long)).double().mean(0)
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1).double()
    assert torch.allclose(first[:3], expected, atol=0.03) and first[3] == 0


def test_origin_reveals_all_at_last_step_and_fraction_before():
    cand = torch.ones(1, 20000, dtype=torch.bool)
    u = torch.rand(1, 20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert origin_reveal(u, cand, 9, 10, 1e-3).all()
    frac = origin_reveal(u, cand, 3, 10, 1e-3).double().mean()
    assert abs(frac - linear_fraction(3, 10, 1e-3)) < 0.01


def test_low_confidence_ignores_temperature_like_llada():
    logits = make_logits([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    tokens = torch.tensor([1, 0])
    a = confidence("low_confidence", logits, tokens, 0.3)
    torch.testing.assert_close(a, torch.tensor([0.2, 0.4], dtype=torch.float64))
    assert not torch.allclose(confidence("maskgit_plus", logits, tokens, 0.3), a)
