"""The KL penalty of the inner loop: R − λ·Σ_slots KL(softmax(φ/τ) ‖ softmax(φ₀/τ)) (GuidanceConfig.kl_weight)."""

import math

import pytest
import torch

from entrgi import GuidanceConfig, SamplerConfig, generate, resolve_settings
from entrgi.cli.args import settings_layer
from entrgi.cli.commands import build_parser
from entrgi.guidance.inner_loop import guide_logits, response_attention
from entrgi.guidance.mixing import add_kl_gradient_, kl_divergence
from entrgi.ops.rng import RowStreams

NEG = float("-inf")


def direct_kl(phi, phi0, tau):
    """Σ_v p_v log(p_v / p0_v) over the ids of nonzero p, one row at a time in Python floats."""
    out = []
    for a, b in zip(phi.tolist(), phi0.tolist()):
        za = [x / tau for x in a]
        zb = [x / tau for x in b]
        ma, mb = max(za), max(zb)
        sa = sum(math.exp(x - ma) for x in za if x != NEG)
        sb = sum(math.exp(x - mb) for x in zb if x != NEG)
        kl = 0.0
        for x, y in zip(za, zb):
            if x == NEG:
                continue
            p = math.exp(x - ma) / sa
            lp, lp0 = x - ma - math.log(sa), y - mb - math.log(sb)
            kl += p * (lp - lp0)
        out.append(kl)
    return out


def random_case(n=5, V=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi0 = torch.randn(n, V, generator=g, dtype=torch.float64) * 2
    phi0[:, 3] = NEG  # an invalid id (−inf in prior and guided logits alike)
    phi0[1, 6] = NEG
    phi = phi0 + torch.randn(n, V, generator=g, dtype=torch.float64)
    return phi, phi0


@pytest.mark.parametrize("tau", [0.7, 1.0, 2.5])
def test_kl_value_and_closed_form_gradient_match_autograd_and_the_direct_formula(tau):
    phi, phi0 = random_case()
    x = phi.clone().requires_grad_(True)
    kl = kl_divergence(x, phi0, tau)
    assert kl.tolist() == pytest.approx(direct_kl(phi, phi0, tau), rel=1e-12, abs=1e-14)
    kl.sum().backward()
    grad = torch.full_like(phi, 0.25)  # add_kl_gradient_ adds to what is there
    out = add_kl_gradient_(grad, phi, lambda lo, hi: phi0[lo:hi], tau, 3.0, chunk_rows=2)
    torch.testing.assert_close(out, kl.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, 0.25 + 3.0 * x.grad, rtol=1e-10, atol=1e-13)
    assert (x.grad[:, 3] == 0).all() and x.grad[1, 6] == 0  # ids outside the support get no gradient
    # the autograd gradient itself against central finite differences (the finite ids only)
    f = lambda y: kl_divergence(y, phi0, tau).sum()  # noqa: E731
    h = 1e-6
    for i, v in ((0, 0), (2, 5), (4, 8)):
        e = torch.zeros_like(phi)
        e[i, v] = h
        fd = (f(phi + e) - f(phi - e)) / (2 * h)
        assert float(x.grad[i, v]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_kl_is_zero_at_the_prior_and_its_gradient_vanishes_there():
    _, phi0 = random_case()
    grad = torch.zeros_like(phi0)
    kl = add_kl_gradient_(grad, phi0.clone(), lambda lo, hi: phi0[lo:hi], 0.7, 5.0)
    assert kl.abs().max() < 1e-12 and grad.abs().max() < 1e-12


def linear_reward(table_dim, seed=3):
    w = torch.randn(table_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def score(embeds, attn):
        return ((embeds.double() @ w) * attn.double()).sum(-1)
    return score


def inner_case(seed=0, B=2, L=4, V=11, d=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 1.5
    logits[..., 0] = NEG  # an invalid id
    masked = torch.tensor([[True, False, True, True], [False, True, True, False]])
    response_ids = torch.where(masked, torch.full((B, L), 1), torch.randint(2, V, (B, L), generator=g))
    table = torch.randn(V, d, generator=g, dtype=torch.float64)
    rm_mapped = torch.ones(V, dtype=torch.bool)
    eos = torch.tensor([-1])
    return logits, masked, response_ids, table, rm_mapped, eos


def resolved(**kw):
    cfg = GuidanceConfig(**{"method": "expectation", "inner_steps": 4, "lr": 0.3, "vocab_chunk": None, **kw})
    return cfg.resolve(SamplerConfig(temperature=0.7))


def reference_inner_loop(logits, masked, response_ids, score, table, rm_mapped, eos, rg):
    """Autograd on −Σ_b (R_b − λ Σ_{slots of b} KL) with the KL written out, plain Adam (expectation rule)."""
    cfg, tau = rg.config, rg.relaxation_temperature
    phi0 = logits[masked]
    phi = phi0.clone().requires_grad_(True)
    opt = torch.optim.Adam([phi], lr=cfg.lr, foreach=False)
    committed = table[response_ids]
    for _ in range(cfg.inner_steps):
        soft = torch.softmax(phi / tau, -1) @ table
        resp = committed.masked_scatter(masked.unsqueeze(-1), soft)
        ids = response_ids.masked_scatter(masked, phi.detach().argmax(-1))
        r = score(resp, response_attention(ids, masked, eos, rm_mapped))
        lq, lq0 = torch.log_softmax(phi / tau, -1), torch.log_softmax(phi0 / tau, -1)
        q = lq.exp()
        finite = torch.isfinite(lq0)  # the invalid id: q = q0 = 0 there, and it adds nothing
        kl = (q * (lq.masked_fill(~finite, 0.0) - lq0.masked_fill(~finite, 0.0))).sum(-1)
        opt.zero_grad()
        (-(r.sum() - cfg.kl_weight * kl.sum())).backward()
        opt.step()
    return phi.detach()


@pytest.mark.parametrize("lam", [0.5, 4.0])
def test_guided_logits_equal_the_autograd_reference_with_the_penalty(lam):
    logits, masked, ids, table, mapped, eos = inner_case()
    score = linear_reward(table.shape[1])
    rg = resolved(kl_weight=lam)
    out = guide_logits(logits, masked, ids, score, table, mapped, rg, eos, RowStreams([1, 2], "cpu"))
    want = reference_inner_loop(logits, masked, ids, score, table, mapped, eos, rg)
    torch.testing.assert_close(out.logits[masked], want, rtol=1e-9, atol=1e-9)
    assert out.kl.shape == (2, 4) and (out.kl[:, 0] == 0).all() and (out.kl[:, 1:] > 0).all()
    assert (out.logits[~masked] == logits[~masked]).all()


def test_zero_weight_is_bit_identical_and_records_no_kl():
    logits, masked, ids, table, mapped, eos = inner_case(seed=1)
    score = linear_reward(table.shape[1])
    for method in ("expectation", "entrgi"):
        a = guide_logits(logits, masked, ids, score, table, mapped, resolved(method=method), eos,
                         RowStreams([1, 2], "cpu"))
        b = guide_logits(logits, masked, ids, score, table, mapped, resolved(method=method, kl_weight=0.0), eos,
                         RowStreams([1, 2], "cpu"))
        assert torch.equal(a.logits, b.logits) and torch.equal(a.rewards, b.rewards) and b.kl is None
        # and a tiny λ changes them (the penalty is really applied when on)
        c = guide_logits(logits, masked, ids, score, table, mapped, resolved(method=method, kl_weight=1e-3), eos,
                         RowStreams([1, 2], "cpu"))
        assert not torch.equal(a.logits, c.logits)


def test_a_larger_weight_pulls_the_guided_logits_towards_the_prior():
    logits, masked, ids, table, mapped, eos = inner_case(seed=2)
    score = linear_reward(table.shape[1])
    kls, rewards = [], []
    for lam in (0.0, 0.3, 1.0, 5.0):
        rg = resolved(kl_weight=lam, inner_steps=30, optimizer="ascent", lr=0.2)
        out = guide_logits(logits, masked, ids, score, table, mapped, rg, eos, RowStreams([1, 2], "cpu"))
        kls.append(float(kl_divergence(out.logits[masked], logits[masked], 0.7).sum()))
        rewards.append(float(score(*_final_view(out.logits, logits, masked, ids, table, mapped, eos)).sum()))
    assert all(a > b for a, b in zip(kls, kls[1:])), kls
    assert all(a >= b - 1e-9 for a, b in zip(rewards, rewards[1:])), rewards
    assert kls[-1] < 0.05 * kls[0]


def _final_view(guided, logits, masked, ids, table, mapped, eos):
    soft = torch.softmax(guided[masked] / 0.7, -1) @ table
    resp = table[ids].masked_scatter(masked.unsqueeze(-1), soft)
    return resp, response_attention(ids.masked_scatter(masked, guided[masked].argmax(-1)), masked, eos, mapped)


def test_generate_with_zero_weight_equals_the_default_and_a_positive_weight_runs(mlm, qwen_reward):
    sampler = SamplerConfig(max_new_tokens=4, steps=4, num_samples=2, temperature=1.0, top_p=1.0)
    base = generate(mlm, ["the cat sat"], qwen_reward, sampler=sampler, guidance=GuidanceConfig(lr=1.0),
                    progress=False)
    zero = generate(mlm, ["the cat sat"], qwen_reward, sampler=sampler, guidance=GuidanceConfig(lr=1.0, kl_weight=0.0),
                    progress=False)
    assert [s.token_ids for s in base.samples[0]] == [s.token_ids for s in zero.samples[0]]
    assert [s.reward for s in base.samples[0]] == [s.reward for s in zero.samples[0]]
    pen = generate(mlm, ["the cat sat"], qwen_reward, sampler=sampler,
                   guidance=GuidanceConfig(lr=1.0, kl_weight=2.0), progress=False)
    assert all(math.isfinite(s.reward) for s in pen.samples[0])
    assert [s.token_ids for s in pen.samples[0]] != [s.token_ids for s in base.samples[0]]


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, True, "1"])
def test_kl_weight_is_validated(bad):
    with pytest.raises(ValueError, match="`kl_weight`"):
        GuidanceConfig(kl_weight=bad)


def test_kl_weight_flag():
    args = build_parser().parse_args(["generate", "--prompt", "she was", "--kl-weight", "0.25"])
    assert resolve_settings(overrides=settings_layer(args)).guidance.kl_weight == 0.25
    args = build_parser().parse_args(["eval", "--kl-weight", "2"])
    assert resolve_settings(overrides=settings_layer(args)).guidance.kl_weight == 2.0
