"""The mixing rules against direct formulas, and where their gradients flow."""

import math

import pytest
import torch
from support.naive_reference import NaiveSampler

from entrgi import DiffusionSampler, GuidanceConfig, SamplerConfig, SearchConfig, generate
from entrgi.errors import NonFiniteError
from entrgi.guidance.inner_loop import check_inner_step
from entrgi.guidance.mixing import entropy, entropy_weight, reward_input_embeddings, soft_embeddings
from entrgi.reward.callable import CallableReward

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
    with pytest.raises(ValueError, match=r"Unknown guidance rule 'soft'\. Available: \['expectation', 'aps', 'entrgi'"):
        reward_input_embeddings(torch.zeros(2, 3), torch.zeros(3, 2), "soft")
    with pytest.raises(ValueError, match="embedding_table"):
        reward_input_embeddings(torch.zeros(2, 3), torch.zeros(4, 2), "aps")


def test_soft_embeddings_matmul():
    q = torch.softmax(torch.randn(2, 5), -1)
    table = torch.randn(5, 3)
    torch.testing.assert_close(soft_embeddings(q, table), q @ table)


# ---- entropy_weight at the temperature limits -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_entropy_weight_large_temperature_tends_to_uniform_over_finite_ids(dtype):
    logits = (torch.randn(3, 10, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    logits[0, :2] = float("-inf")  # 8 finite ids: the limit is log 8 / log 10
    limit = torch.tensor([math.log(8) / math.log(10), 1.0, 1.0], dtype=dtype)
    for T in (1e6, 1e30, 1e39, 1e300):  # 1e39 and 1e300 are beyond float32: taken as its largest value
        torch.testing.assert_close(entropy_weight(logits, T), limit)
    assert (entropy_weight(logits, 1e3) < limit).all()  # approached from below


def test_entropy_weight_zero_temperature_and_bad_temperatures():
    logits = torch.tensor([[1.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], dtype=F64)
    assert torch.equal(entropy_weight(logits, 0.0), torch.zeros(2, dtype=F64))  # one-hot limit (ties ignored)
    torch.testing.assert_close(entropy_weight(logits, 1e-3), torch.tensor([math.log(2) / math.log(4), 0.0],
                                                                          dtype=F64))  # ties: log 2 / log V
    for bad in (math.inf, -math.inf, math.nan, -0.5):
        with pytest.raises(ValueError, match="temperature` of the entropy weight must be a finite number >= 0"):
            entropy_weight(logits, bad)


# ---- non-finite rewards and gradients stop sampling with a clear error ------------------------------------
NAN, INF = math.nan, math.inf
NF_PROMPT = "the cat sat"


def nf_sampler(**kw):
    return SamplerConfig(**{**dict(max_new_tokens=4, steps=2, num_samples=3, temperature=1.0, top_p=1.0), **kw})


def bad_reward(tok, value=NAN, *, row=1, on_call=None, when="always", gradient=False):
    """A CallableReward = Σ attended coordinate 0, times ``value`` for batch row ``row`` (all rows if None).

    ``on_call``: only that (0-based) call; ``when``: "always", "grad" (with autograd on) or "no_grad";
    ``gradient``: leave the value finite and put ``value`` into the gradient instead."""
    calls = []

    def fn(embeds, attn, pos):
        k, grad_on = len(calls), torch.is_grad_enabled()
        calls.append(k)
        r = (embeds[..., 0] * attn).sum(-1)
        bad = (on_call is None or on_call == k) and when in ("always", "grad" if grad_on else "no_grad")
        if not bad:
            return r
        mult = torch.ones(r.shape[0])
        mult[slice(None) if row is None else row] = value
        if gradient:
            if embeds.requires_grad:
                embeds.register_hook(lambda g: g * mult.view(-1, 1, 1))
            return r
        return r * mult

    table = torch.randn(len(tok), 6, generator=torch.Generator().manual_seed(0))
    return CallableReward(fn, table, tok, template="response")


SAMPLERS = {"optimised": DiffusionSampler, "naive": NaiveSampler}


@pytest.mark.parametrize("impl", list(SAMPLERS))
@pytest.mark.parametrize("method", ["expectation", "aps", "entrgi"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_reward_in_the_inner_loop_names_method_steps_and_rows(mlm, tok, impl, method, value):
    reward = bad_reward(tok, value, on_call=1)  # the 2nd RM call: inner step 2 of the first denoising step
    with pytest.raises(NonFiniteError) as info:
        SAMPLERS[impl](mlm, reward).generate(NF_PROMPT, nf_sampler(), GuidanceConfig(rule=method), progress=False)
    e = info.value
    assert isinstance(e, ValueError)
    assert (e.what, e.rows, e.samples, e.step, e.steps, e.method) == ("reward", [1], [(0, 1)], 0, 2, method)
    assert str(e) == (f"the reward model returned a non-finite reward ({value}) for (prompt, sample) (0, 1) at "
                      f"denoising step 1 of 2, inner step 2 of 3 (method {method!r}); check the reward model or "
                      "function: its weights, inputs and arithmetic must give finite values.")


@pytest.mark.parametrize("impl", list(SAMPLERS))
@pytest.mark.parametrize("method", ["expectation", "aps", "entrgi"])
def test_non_finite_gradient_in_the_inner_loop(mlm, tok, impl, method):
    reward = bad_reward(tok, NAN, row=2, gradient=True, on_call=4)  # 3 inner + 1 trace call per step
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of the guided logits φ for \(prompt, sample\) "
                                             r"\(0, 2\) at denoising step 2 of 2, inner step 1 of 3 ") as info:
        SAMPLERS[impl](mlm, reward).generate(NF_PROMPT, nf_sampler(), GuidanceConfig(rule=method), progress=False)
    assert (info.value.what, info.value.rows) == ("gradient", [2])


def test_the_trace_evaluation_and_the_final_rescore_are_checked(mlm, tok):
    reward = bad_reward(tok, NAN, row=None, when="no_grad")  # finite while guiding, NaN without autograd
    with pytest.raises(NonFiniteError, match=r"\(0, 0\), \(0, 1\), \(0, 2\) at denoising step 1 of 2, the trace "
                                             r"evaluation after the last inner step \(method 'aps'\)"):
        generate(mlm, NF_PROMPT, reward, sampler=nf_sampler(), guidance=GuidanceConfig(rule="aps"), progress=False)
    with pytest.raises(NonFiniteError, match=r"non-finite reward \(nan, nan, nan\) for \(prompt, sample\) \(0, 0\), "
                                             r"\(0, 1\), \(0, 2\) at the re-score of the decoded samples"):
        generate(mlm, NF_PROMPT, reward, sampler=nf_sampler(), guidance=GuidanceConfig(rule="aps"), progress=False,
                 trace=False)


@pytest.mark.parametrize("value", [NAN, INF])
def test_best_of_n_refuses_a_non_finite_score(mlm, tok, value):
    with pytest.raises(NonFiniteError) as info:
        generate(mlm, [NF_PROMPT, "a dog"], bad_reward(tok, value, row=4), sampler=nf_sampler(),
                 guidance=GuidanceConfig(rule="none"), search="best_of_n", progress=False)
    e = info.value  # row 4 of the 6 = prompt 1, sample 1
    assert (e.rows, e.samples, e.step, e.method) == ([4], [(1, 1)], None, "best_of_n")
    assert f"non-finite reward ({value}) for (prompt, sample) (1, 1) at the re-score of the decoded samples" in str(e)


def test_particle_weights_refuse_a_non_finite_estimate(mlm, tok):
    sampler = DiffusionSampler(mlm, bad_reward(tok, NAN, row=0, when="no_grad"))
    with pytest.raises(NonFiniteError, match=r"\(0, 0\) at denoising step 2 of 4, the particle weighting"):
        sampler.generate(NF_PROMPT, nf_sampler(steps=4), GuidanceConfig(rule="none"),
                         SearchConfig("particles", resample_every=2), progress=False)


def test_finite_rewards_pass_and_huge_finite_gradients_are_not_errors(mlm, tok):
    out = generate(mlm, NF_PROMPT, bad_reward(tok, 1.0), sampler=nf_sampler(), progress=False)  # x 1: finite
    assert all(math.isfinite(s.reward) for s in out.samples[0])
    rows = torch.tensor([0, 0, 1])
    huge = torch.full((3, 5), 1e20)  # finite, but its squared norm overflows float32
    norms = torch.zeros(2).index_add_(0, rows, torch.linalg.vector_norm(huge, dim=-1).square()).sqrt()
    assert not torch.isfinite(norms).all()
    check_inner_step(torch.zeros(2), norms, huge, rows, "aps", 0, 1)  # no error
    huge[2, 1] = NAN
    with pytest.raises(NonFiniteError, match=r"gradient .* rows \[1\] of the batch at inner step 1 of 1"):
        check_inner_step(torch.zeros(2), norms, huge, rows, "aps", 0, 1)
