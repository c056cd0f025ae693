"""The mixing rules against direct formulas, and where their gradients flow."""

import math

import pytest
import torch

from entrgi.guidance import entropy, entropy_weight, reward_input_embeddings, soft_embeddings

F64 = torch.float64  # the maths is checked in double precision


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=F64) * 2  # (B, L, V)
    table = torch.randn(11, 4, generator=g, dtype=F64)  # (V, d)
    uniforms = torch.rand(3, 5, generator=g, dtype=F64)
    return logits, table, uniforms


def direct_soft(logits, table, tau):
    p = torch.exp(logits / tau)
    p = p / p.sum(-1, keepdim=True)
    return torch.einsum("blv,vd->bld", p, table)


def direct_hard_ids(logits, tau, uniforms):
    """Inverse CDF by a Python loop: the first id whose cumulative probability exceeds u."""
    p = torch.softmax(logits / tau, -1)
    out = torch.empty(logits.shape[:-1], dtype=torch.long)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in logits.shape[:-1]]):
        idx = tuple(idx.tolist())
        c = 0.0
        for v in range(logits.shape[-1]):
            c += float(p[idx][v])
            if c > float(uniforms[idx]):
                break
        out[idx] = v
    return out


def direct_weight(logits, temperature):
    p = torch.softmax(logits / temperature, -1)
    return -(p * p.log()).sum(-1) / math.log(logits.shape[-1])


@pytest.mark.parametrize("tau", [0.7, 1.0])
def test_expectation_is_the_soft_embedding(setup, tau):
    logits, table, u = setup
    embeds, w = reward_input_embeddings(logits, table, "expectation", temperature=tau, uniforms=u)
    torch.testing.assert_close(embeds, direct_soft(logits, table, tau))
    assert torch.equal(w, torch.zeros(3, 5, dtype=F64))


@pytest.mark.parametrize("tau", [0.7, 1.0])
def test_aps_forward_is_the_hard_embedding(setup, tau):
    logits, table, u = setup
    embeds, w = reward_input_embeddings(logits, table, "aps", temperature=tau, uniforms=u)
    torch.testing.assert_close(embeds, table[direct_hard_ids(logits, tau, u)])
    assert torch.equal(w, torch.ones(3, 5, dtype=F64))


@pytest.mark.parametrize("tau,ent_t", [(0.7, 1.0), (0.7, 0.7), (1.0, 1.0)])
def test_entrgi_forward_is_the_entropy_weighted_mix(setup, tau, ent_t):
    logits, table, u = setup
    embeds, w = reward_input_embeddings(logits, table, "entrgi", temperature=tau, entropy_temperature=ent_t, uniforms=u)
    w_direct = direct_weight(logits, ent_t)
    torch.testing.assert_close(w, w_direct)
    soft, hard = direct_soft(logits, table, tau), table[direct_hard_ids(logits, tau, u)]
    torch.testing.assert_close(embeds, (1 - w_direct).unsqueeze(-1) * soft + w_direct.unsqueeze(-1) * hard)


@pytest.mark.parametrize("method", ["expectation", "aps", "entrgi"])
def test_gradient_is_the_soft_paths_gradient(setup, method):
    """∂(c·ê)/∂φ equals the analytic gradient of the soft path: (1/τ) q ⊙ (E c − q·E c)."""
    logits, table, u = setup
    tau = 0.7
    c = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    phi = logits.clone().requires_grad_(True)
    embeds, _ = reward_input_embeddings(phi, table, method, temperature=tau, uniforms=u)
    (embeds * c).sum().backward()
    q = torch.softmax(logits / tau, -1)
    ec = torch.einsum("vd,bld->blv", table, c)  # (B, L, V): E c per id
    expected = q * (ec - (q * ec).sum(-1, keepdim=True)) / tau
    torch.testing.assert_close(phi.grad, expected)


def test_gradient_does_not_depend_on_the_hard_sample(setup):
    logits, table, u = setup
    grads = []
    for uu in (u, 1 - u):
        phi = logits.clone().requires_grad_(True)
        embeds, _ = reward_input_embeddings(phi, table, "aps", temperature=0.7, uniforms=uu)
        embeds.sum().backward()
        grads.append(phi.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_entropy_weight_limits_shape_and_detachment():
    one_hot = torch.full((2, 7, 50), -30.0, dtype=F64)
    one_hot[..., 3] = 30.0
    uniform = torch.zeros(2, 7, 50, dtype=F64, requires_grad=True)
    w0, w1 = entropy_weight(one_hot), entropy_weight(uniform)
    assert w0.shape == (2, 7) and w1.shape == (2, 7)
    assert w0.max() < 1e-6
    torch.testing.assert_close(w1, torch.ones(2, 7, dtype=F64))
    assert not w1.requires_grad
    r = entropy_weight(torch.randn(100, 50) * 3)
    assert (r >= 0).all() and (r <= 1).all()


def test_entropy_weight_temperature_and_inf_logits():
    logits = torch.randn(4, 9, dtype=F64)
    # lower temperature = sharper = lower weight
    assert (entropy_weight(logits, 0.5) < entropy_weight(logits, 1.0)).all()
    assert torch.equal(entropy_weight(logits, 0.0), torch.zeros(4))
    masked = logits.clone()
    masked[:, :3] = float("-inf")  # excluded ids: probability 0, no NaN, V still the logit width
    expected = entropy(logits[:, 3:]) / math.log(9)
    torch.testing.assert_close(entropy_weight(masked), expected)


def test_top_p_restricts_the_hard_sample_support():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)
    logits = probs.log().expand(2000, 4)
    table = torch.eye(4, dtype=F64)
    u = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=F64)
    embeds, _ = reward_input_embeddings(logits, table, "aps", top_p=0.7, uniforms=u)
    ids = embeds.argmax(-1)
    assert set(ids.tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8: the nucleus is {0, 1}
    frac = (ids == 0).double().mean()
    assert abs(frac - 0.5 / 0.8) < 0.04  # renormalised within the nucleus
    embeds, _ = reward_input_embeddings(logits, table, "aps", top_p=1.0, uniforms=u)
    assert set(embeds.argmax(-1).tolist()) == {0, 1, 2, 3}


def test_excluded_ids_get_no_mass_and_are_never_sampled():
    logits = torch.randn(500, 6)
    logits[:, 2] = float("-inf")
    table = torch.eye(6)
    soft, _ = reward_input_embeddings(logits, table, "expectation")
    assert torch.all(soft[:, 2] == 0)
    hard, _ = reward_input_embeddings(logits, table, "aps", generator=torch.Generator().manual_seed(3))
    assert torch.all(hard[:, 2] == 0)


def test_generator_makes_draws_reproducible(setup):
    logits, table, _ = setup
    a, _ = reward_input_embeddings(logits, table, "aps", generator=torch.Generator().manual_seed(5))
    b, _ = reward_input_embeddings(logits, table, "aps", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_greedy_relaxation_is_one_hot():
    logits = torch.randn(4, 8)
    table = torch.randn(8, 3)
    soft, _ = reward_input_embeddings(logits, table, "expectation", temperature=0.0)
    torch.testing.assert_close(soft, table[logits.argmax(-1)])
    assert torch.isfinite(soft).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method"):
        reward_input_embeddings(torch.zeros(2, 3), torch.zeros(3, 2), "soft")
    with pytest.raises(ValueError, match="embedding_table"):
        reward_input_embeddings(torch.zeros(2, 3), torch.zeros(4, 2), "aps")


def test_soft_embeddings_matmul():
    q = torch.softmax(torch.randn(2, 5), -1)
    table = torch.randn(5, 3)
    torch.testing.assert_close(soft_embeddings(q, table), q @ table)
