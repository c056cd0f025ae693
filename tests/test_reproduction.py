"""Reproduction modes (``match_released``, ``match_reference``; docs/differences.md): the reference samplers'
golden records replayed token for token without them, each reproduction choice against a slow transcription of
the reference's code, the default path pinned to its records from before the modes, and the settings' checks.

The golden records come from ``scripts/reproduce_reference.py --write`` (the released code at the commit they
name, Dream's ``diffusion_generate``, LLaDA's ``generate``); ``default_path.json`` from ``--default-records`` on
the commit before the reproduction modes.
"""

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support import reproduction_cases as rc

from entrgi import GuidanceConfig, SamplerConfig
from entrgi.guidance.inner_loop import released_optimizer
from entrgi.guidance.mixing import reward_input_embeddings_released
from entrgi.guidance.optimizers import make_optimizer
from entrgi.ops.logit_ops import top_p_filter
from entrgi.ops.released import (
    entropy_weight_eps,
    filtered_probs,
    gumbel_argmax_llada,
    inverse_cdf_probs,
    top_p_keep,
    top_p_keep_sorted,
)
from entrgi.ops.rng import RowStreams
from entrgi.reproduction import Reproduction, reproduction_for
from entrgi.reward.base import RewardBatch, rescore_texts, sequence_position_ids
from entrgi.reward.vocab import VocabBridge
from entrgi.sampling.masked import response_bias
from entrgi.sampling.reproduce import reference_confidence, reference_draw, reference_select
from entrgi.sampling.schedule import commit_counts, dream_commit_counts, released_commit_counts

FIXTURES = Path(__file__).parent / "fixtures" / "reproduction"
SCRIPT = Path(__file__).parents[1] / "scripts" / "reproduce_reference.py"
GOLDEN = json.loads((FIXTURES / "golden.json").read_text())
DEFAULT = json.loads((FIXTURES / "default_path.json").read_text())
CASES = {c["name"]: c for c in GOLDEN["cases"]}
TOL = 1e-6  # rewards: the bound (the records agree to the bit on the machine that wrote them)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The records were written with one torch thread (``--threads 1``): a reduction over one row is then never
    split across threads, so the float32 rewards do not depend on the machine's core count (tokens do not)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the golden records ------------------------------------------------------------------------------------------
def test_golden_records_cover_the_cases_and_name_their_sources():
    assert sorted(CASES) == sorted(c["name"] for c in rc.cases())
    for case in rc.cases():  # the replay below reads the stored settings: they are the support module's
        stored = CASES[case["name"]]
        assert {k: stored[k] for k in case} == case
    refs = GOLDEN["produced_by"]["references"]
    assert set(refs) == {"released", "dream", "llada"}
    assert refs["released"]["commit"].startswith("2e60bdf")  # the commit docs/differences.md cites
    for ref in refs.values():
        assert len(ref["commit"]) == 40 and all(len(f["sha256"]) == 64 for f in ref["files"].values())
    assert all(r["after"] == r["n"] == 4 for r in GOLDEN["agreement"])  # what the script measured when writing


def test_docs_show_the_script_s_tables_of_these_records():
    """docs/differences.md's agreement and per-choice tables are the script's, built from the golden records."""
    spec = importlib.util.spec_from_file_location("reproduce_reference", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    docs = (Path(__file__).parents[1] / "docs" / "differences.md").read_text()
    assert script.markdown_table(GOLDEN["agreement"]) in docs
    assert script.ablation_table(GOLDEN["ablations"]) in docs


def check_record(ours: dict, ref: dict, name: str) -> None:
    for row, (a, b) in enumerate(zip(ours["tokens"], ref["tokens"], strict=True)):
        assert a == b, f"{name}: row {row} tokens differ"
    assert ours["commits"] == ref["commits"], f"{name}: per-step commits differ"
    if "rewards" in ref:
        assert max(abs(a - b) for a, b in zip(ours["rewards"], ref["rewards"], strict=True)) <= TOL
    if "step_rewards" in ref:
        pairs = [(a, b) for ra, rb in zip(ours["step_rewards"], ref["step_rewards"], strict=True)
                 for sa, sb in zip(ra, rb, strict=True) if sa for a, b in zip(sa, sb, strict=True)]
        assert pairs and max(abs(a - b) for a, b in pairs) <= TOL


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_case_is_token_exact(name):
    """entrgi with the case's switch reproduces the reference's every row, every step's commits and its rewards."""
    case = CASES[name]
    check_record(rc.run_entrgi(case, rc.model_for(case), rc.reward()), case, name)


@pytest.mark.parametrize("name", ["released-peaked-guided", "released-flat-unguided", "dream-entropy"])
def test_default_path_is_unchanged(name):
    """Without a switch entrgi gives what it gave before the reproduction modes (records from that commit)."""
    case = CASES[name]
    ours = rc.run_entrgi(case, rc.model_for(case), rc.reward(), profile="default")
    check_record(ours, DEFAULT["cases"][name], name)


def test_the_switch_changes_tokens_where_the_choices_matter():
    """On flat logits the default path and the reference part ways (the top-p boundary, the non-token ids)."""
    for name in ("released-flat-unguided", "dream-entropy"):
        assert DEFAULT["cases"][name]["tokens"] != CASES[name]["tokens"]


# ---- 1. ids that are not tokens ----------------------------------------------------------------------------------
def test_non_token_ids_keep_finite_logits_only_under_a_switch():
    model = rc.dream("flat")
    invalid = torch.tensor(model.invalid_token_ids)
    default = response_bias(model, SamplerConfig(), "cpu")
    released = response_bias(model, SamplerConfig(match_released=True), "cpu")
    assert torch.isneginf(default[invalid]).all() and (default[default > -math.inf] == 0).all()
    assert torch.equal(released, torch.zeros_like(released))
    assert torch.isneginf(response_bias(model, SamplerConfig(match_released=True), "cpu", keep_non_tokens=False)
                          [invalid]).all()


# ---- 2. the top-p boundary in float32 ------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.05, 0.4, 1.5, 6.0])
def test_top_p_keep_equals_the_sorting_reference(scale):
    g = torch.Generator().manual_seed(int(scale * 100))
    x = torch.randn(3, 152064, generator=g) * scale
    assert torch.equal(top_p_keep(x, 0.95), top_p_keep_sorted(x, 0.95))
    ties = (torch.randn(3, 5000, generator=g) * scale).round(decimals=1)  # runs of equal logits at the boundary
    assert torch.equal(top_p_keep(ties, 0.9), top_p_keep_sorted(ties, 0.9))
    assert torch.equal(top_p_keep(x.double()[:, :4000], 0.8), top_p_keep_sorted(x.double()[:, :4000], 0.8))


def test_top_p_boundary_in_float32_and_in_float64_keep_different_ids():
    """A flat row and top-p just above the exact (float64) mass through the k-th id: the reference's float32
    cumsum there is already over it (its normaliser rounds low), so it keeps one id fewer than the project."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 152064, generator=g) * 0.3
    values = torch.sort(x, descending=True).values
    cum32 = torch.cumsum(F.softmax(values, -1), -1)[0].double()
    cum64 = torch.cumsum(F.softmax(values.double(), -1), -1)[0]
    ahead = ((cum32 - cum64) > 1e-7) & (cum64 > 0.9) & (cum64 < 0.99)  # float32 over the exact sum by > 1 ulp
    k = int(ahead.nonzero()[0])
    top_p = float(cum64[k] + (cum32[k] - cum64[k]) / 4)  # above the exact mass, below float32's by > half an ulp
    released, project = top_p_keep(x, top_p), torch.isfinite(top_p_filter(x, top_p))
    assert torch.equal(released, top_p_keep_sorted(x, top_p))
    assert int(released.sum()) == k + 1 and int(project.sum()) == k + 2


# ---- the draws ---------------------------------------------------------------------------------------------------
def test_inverse_cdf_probs_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 40, generator=g) * 2, -1)
    probs[:, 30:] = 0
    probs[2, :5] = 0
    u = torch.tensor([0.0, 0.3, 0.5, 0.9, 0.999999, 1 - 2 ** -53], dtype=torch.float64)
    expected = []
    for p, ui in zip(probs.double(), u.tolist(), strict=True):
        total = list(itertools.accumulate(p.tolist()))[-1]  # the sum in id order, as the cdf's last entry
        acc, pick = 0.0, int(p.nonzero().max())  # the last positive id if no partial sum exceeds u · total
        for j, pj in enumerate(p.tolist()):
            acc += pj
            if acc > ui * total:
                pick = j
                break
        expected.append(pick)
    assert inverse_cdf_probs(probs, u).tolist() == expected
    assert all(probs[i, t] > 0 for i, t in enumerate(expected))


def small_candidates():
    """Two rows of 6 slots, 4 and 3 candidates; logits over V = 300 with ties and a clear favourite."""
    g = torch.Generator().manual_seed(5)
    cand = torch.tensor([[1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 1]], dtype=torch.bool)
    logits = torch.randn(int(cand.sum()), 300, generator=g) * 2
    return cand, logits


@pytest.mark.parametrize("reference", ["released", "dream"])
def test_reference_draw_equals_the_reference_formula(reference):
    """released: multinomial(softmax(top-p(φ/τ))) per trajectory; Dream: the same probabilities normalised as
    Categorical, all rows at once; the draw of each at the rows' uniforms."""
    cand, logits = small_candidates()
    cfg = SamplerConfig(temperature=0.7, top_p=0.9, deprioritize_eos=False, **(
        {"match_released": True} if reference == "released" else {"match_reference": "dream"}))
    got = reference_draw(reproduction_for(cfg), logits, cand, RowStreams([1, 2]), cfg)
    u = RowStreams([1, 2]).uniform_at(cand)[cand]
    expected = []
    groups = [(0, 4), (4, 7)] if reference == "released" else [(0, 7)]
    for lo, hi in groups:
        x = logits[lo:hi] / 0.7
        probs = F.softmax(x.masked_fill(~top_p_keep_sorted(x, 0.9), torch.finfo(x.dtype).min), -1)
        if reference == "dream":
            probs = torch.distributions.Categorical(probs=probs).probs
        expected += inverse_cdf_probs(probs, u[lo:hi]).tolist()
    assert got.tolist() == expected


def test_llada_gumbel_equals_add_gumbel_noise():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 50, generator=g) * 3
    u = torch.rand(5, 50, generator=g, dtype=torch.float64)
    noise = (-torch.log(u)) ** 0.7  # LLaDA's generate.py: logits.exp() / (-log u)^τ in float64, then argmax
    assert torch.equal(gumbel_argmax_llada(logits, u, 0.7), (logits.double().exp() / noise).argmax(-1))
    assert torch.equal(gumbel_argmax_llada(logits, u, 0.0), logits.argmax(-1))


# ---- 3. confidences and the commit order ---------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["entropy", "maskgit_plus", "topk_margin"])
def test_reference_confidence_equals_the_reference_code(rule):
    """released entropy: Σ p log(p + 1e-10) of the unfiltered softmax(φ₀/τ), per trajectory; Dream: every rule on
    the top-p filtered probabilities of all rows at once; float32."""
    cand, logits = small_candidates()
    tokens = logits.argmax(-1)
    for reference in ("released", "dream"):
        cfg = SamplerConfig(temperature=0.7, top_p=0.9, remasking=rule, deprioritize_eos=False, **(
            {"match_released": True} if reference == "released" else {"match_reference": "dream"}))
        got = reference_confidence(reproduction_for(cfg), logits, tokens, cand, cfg)
        expected = []
        for lo, hi in ([(0, 4), (4, 7)] if reference == "released" else [(0, 7)]):
            x = logits[lo:hi]
            if reference == "released" and rule == "entropy":
                p = F.softmax(x / 0.7, dim=-1)
            else:
                s = x / 0.7
                p = F.softmax(s.masked_fill(~top_p_keep_sorted(s, 0.9), torch.finfo(s.dtype).min), -1)
            if rule == "entropy":
                expected.append(torch.sum(p * torch.log(p + 1e-10), dim=-1))
            elif rule == "topk_margin":
                sp = torch.sort(p, dim=-1, descending=True).values
                expected.append(sp[:, 0] - sp[:, 1])
            else:
                expected.append(torch.gather(p, -1, tokens[lo:hi].unsqueeze(-1)).squeeze(-1))
        assert got.dtype == torch.float32 and torch.equal(got, torch.cat(expected))


def test_reference_select_follows_each_reference_layout_and_topk_ties():
    """released: ``torch.topk`` of each trajectory's compact confidences, EOS at −∞; Dream: of the full
    (B, P + L) rows with one count; LLaDA: of each full row. Tied confidences fall in ``torch.topk``'s order."""
    cand = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    conf = torch.zeros(int(cand.sum()))  # ties everywhere (peaked rows: p = 1, entropy 0)
    conf[[2, 9]] = -0.5
    eos = torch.zeros_like(conf, dtype=torch.bool)
    eos[0] = True
    counts = torch.tensor([3, 3])
    P = 5
    released = torch.zeros_like(cand)
    lo = 0
    for b in range(2):
        n = int(cand[b].sum())
        c = conf[lo:lo + n].clone()
        c[eos[lo:lo + n]] = -math.inf
        released[b, cand[b].nonzero().flatten()[torch.topk(c, min(3, n)).indices]] = True
        lo += n
    assert torch.equal(reference_select("released", conf, eos, cand, counts, P), released)
    full = torch.full((2, P + 8), -math.inf)
    full[:, P:][cand] = conf
    dream = torch.zeros_like(cand)
    idx = torch.topk(full, 3).indices - P
    for b in range(2):
        dream[b, idx[b]] = True
    assert torch.equal(reference_select("dream", conf, torch.zeros_like(eos), cand, counts, P), dream)
    llada = torch.zeros_like(cand)
    for b in range(2):
        llada[b, torch.topk(full[b], 3).indices - P] = True
    assert torch.equal(reference_select("llada", conf, torch.zeros_like(eos), cand, counts, P), llada)
    assert all(int(x.sum()) == 6 for x in (released, dream, llada))


def test_reference_counts_equal_the_float32_schedule():
    """released: int(n (1 − s.item()/t.item())); Dream: int(mean (1 − s/t)) in float32 tensors; both from
    torch.linspace(1, eps, T + 1). Rarely one off the project's float64 formula (e.g. T = 74, step 72, n = 56)."""
    for T in (4, 16, 74, 128):
        ts = torch.linspace(1, 1e-3, T + 1)
        for step in range(T):
            n = torch.arange(1, 129)
            rel = released_commit_counts(n, step, T)
            if step < T - 1:
                frac = 1 - ts[step + 1].item() / ts[step].item()
                assert rel.tolist() == [int(v * frac) for v in n.tolist()]
                rows = torch.tensor([7, 9, 8])
                assert dream_commit_counts(rows, step, T).tolist() == [int(rows.sum() / 3 * (1 - ts[step + 1] /
                                                                                               ts[step]))] * 3
            else:
                assert torch.equal(rel, n) and dream_commit_counts(torch.tensor([5, 5]), step, T).tolist() == [5, 5]
    n = torch.tensor([56])
    assert int(released_commit_counts(n, 72, 74)) == 26 and int(commit_counts(n, 72, 74)) == 27
    assert int(dream_commit_counts(torch.tensor([55, 55]), 35, 37)[0]) == 27 and int(commit_counts(
        torch.tensor([55]), 35, 37)) == 26


# ---- 4. RM position ids, 5. the unmapped ids' replacement, 7. re-scoring ------------------------------------------
def test_rm_sequence_positions_are_what_the_model_uses_without_position_ids():
    reward = rc.reward()
    ctx = reward.context("Hello there")
    batch = RewardBatch(reward, [ctx, ctx], 5, sequence_positions=True)
    default = RewardBatch(reward, [ctx, ctx], 5)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 5, 32, generator=g)
    attn = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]])  # a masked-out slot in row 0
    inputs, mask, pos = batch.inputs(embeds, attn)
    assert torch.equal(pos, sequence_position_ids(mask))
    with torch.no_grad():
        direct = reward.model(inputs_embeds=inputs, attention_mask=mask).logits[:, 0]  # the released code's call
        assert torch.allclose(batch.score(embeds, attn), direct, atol=1e-6, rtol=0)
        shifted = default.score(embeds, attn)
    assert abs(float(shifted[0] - direct[0])) > 1e-4 and abs(float(shifted[1] - direct[1])) <= 1e-6


def test_released_token_mapping_sends_unmatched_ids_to_im_end():
    """The released code maps by string and sends the rest to unk, else eos: Qwen3's files have no unk, so every
    unmatched Dream id (the mask, <|beginoftext|>, padded rows) reads <|im_end|>'s embedding."""
    model, reward = rc.dream("flat"), rc.reward()
    bridge = VocabBridge.released(model.tokenizer, reward.tokenizer, model.logit_width)
    rm_vocab = reward.tokenizer.get_vocab()
    expected = torch.full((model.logit_width,), reward.tokenizer.eos_token_id)
    for tok, i in model.tokenizer.get_vocab().items():
        if tok in rm_vocab:
            expected[i] = rm_vocab[tok]
    assert torch.equal(bridge.dllm_to_rm, expected)
    assert reward.tokenizer.convert_ids_to_tokens(reward.tokenizer.eos_token_id) == "<|im_end|>"
    assert bridge.mapped.all() and set(bridge.report.unmapped_ids) >= set(model.invalid_token_ids)
    assert int(bridge.dllm_to_rm[model.mask_token_id]) == 151645


def test_released_rescoring_renders_the_template_around_the_response():
    """Qwen3's template strips leading newlines of the last assistant turn: the released re-score (template
    rendered with the response) and the placeholder re-score differ exactly there."""
    reward = rc.reward()
    prompts, texts = ["Say hi."] * 2, ["\n\nHello there", "Hello there"]
    conv = [[{"role": "user", "content": p}, {"role": "assistant", "content": t}]
            for p, t in zip(prompts, texts, strict=True)]
    with torch.no_grad():
        expected = [float(reward.model(**reward.tokenizer(reward.tokenizer.apply_chat_template(c, tokenize=False),
                                                          return_tensors="pt")).logits[0, 0]) for c in conv]
    released = rescore_texts(reward, prompts, texts, released=True).tolist()
    assert released == expected and released[0] == released[1]
    placeholder = rescore_texts(reward, prompts, texts).tolist()
    assert abs(placeholder[0] - placeholder[1]) > 1e-4


# ---- 6. the inner loop --------------------------------------------------------------------------------------------
def test_released_inner_loop_equals_a_transcription_of_the_released_code():
    """Per trajectory: w from the ε-entropy of softmax(φ) over log V, soft = softmax(φ/τ) @ E, a hard token from
    the float32 top-p probabilities, ê = soft + w (hard − soft).detach(); values and gradients to the bit."""
    g = torch.Generator().manual_seed(1)
    V, d, tau = 2000, 8, 0.7
    table = torch.randn(V, d, generator=g)
    phi0 = torch.randn(5, V, generator=g) * 2
    u = torch.rand(5, generator=g, dtype=torch.float64)
    groups = [(0, 3), (3, 5)]
    phi = phi0.clone().requires_grad_(True)
    ours, w = reward_input_embeddings_released(phi, table, "entrgi", groups, temperature=tau, uniforms=u, top_p=0.95)
    (ours * torch.arange(d)).sum().backward()
    ref_phi = phi0.clone().requires_grad_(True)
    parts = []
    for lo, hi in groups:  # main_expts/entrgi.py's inner loop, one trajectory at a time
        x = ref_phi[lo:hi]
        p = F.softmax(x, dim=-1)
        weight = (-torch.sum(p * torch.log(p + 1e-10), dim=-1) / torch.log(torch.tensor(V, dtype=p.dtype))).detach()
        sample_logits = x / tau
        soft = torch.matmul(F.softmax(sample_logits, dim=-1), table)
        filtered = sample_logits.masked_fill(~top_p_keep_sorted(sample_logits.detach(), 0.95),
                                             torch.finfo(sample_logits.dtype).min)
        hard = table[inverse_cdf_probs(F.softmax(filtered, dim=-1), u[lo:hi]).unsqueeze(-1)].mean(dim=1)
        parts.append(soft + weight.unsqueeze(-1) * (hard - soft).detach())
    ref = torch.cat(parts)
    (ref * torch.arange(d)).sum().backward()
    assert torch.equal(ours, ref) and torch.equal(phi.grad, ref_phi.grad)
    assert torch.equal(w, torch.cat([entropy_weight_eps(phi0[lo:hi]) for lo, hi in groups]))
    adam = released_optimizer(GuidanceConfig(), phi)
    assert isinstance(adam, torch.optim.Adam) and not adam.defaults["fused"]
    assert make_optimizer("adam", [phi], 0.5).defaults["fused"]  # the project's: fused
    assert released_optimizer(GuidanceConfig(optimizer="ascent"), phi) is None  # other optimisers: the registered one


def test_filtered_probs_are_zero_outside_the_top_p_set():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1000, generator=g) * 3
    p = filtered_probs(x, 0.7, 0.9, top_k=20)
    kept = top_p_keep_sorted(x / 0.7, 0.9)
    assert ((p > 0) == (kept & (p > 0))).all() and ((p > 0).sum(-1) <= 20).all()
    assert torch.allclose(p.sum(-1), torch.ones(2))


# ---- the profile and the settings' checks ---------------------------------------------------------------------------
def test_reproduction_profiles():
    assert reproduction_for(SamplerConfig()) is None
    rep = reproduction_for(SamplerConfig(match_released=True))
    assert rep == Reproduction("released") and all(getattr(rep, n) for n in Reproduction.choices())
    off = rep.without("float32_top_p", "counts")
    assert not off.float32_top_p and not off.counts and off.draw
    with pytest.raises(ValueError, match="`names` must be among"):
        rep.without("float64")
    with pytest.raises(ValueError, match="`reference` must be one of"):
        Reproduction("bon")


@pytest.mark.parametrize("kwargs, field", [
    (dict(match_released=True, match_reference="dream"), "match_reference"),
    (dict(match_reference="mdlm"), "match_reference"),
    (dict(match_released=True, sampling="gumbel"), "sampling"),
    (dict(match_released=True, remasking="low_confidence"), "remasking"),
    (dict(match_released=True, schedule="uniform"), "schedule"),
    (dict(match_released=True, max_new_tokens=8, steps=8, block_length=4), "block_length"),
    (dict(match_released=True, min_new_tokens=2), "min_new_tokens"),
    (dict(match_released=True, parallel_threshold=0.9), "parallel_threshold"),
    (dict(match_reference="dream"), "deprioritize_eos"),
    (dict(match_reference="llada", deprioritize_eos=False, sampling="gumbel", remasking="low_confidence",
          schedule="uniform"), "top_p"),
    (dict(match_reference="llada", deprioritize_eos=False, top_p=1.0, remasking="low_confidence",
          schedule="uniform"), "sampling"),
])
def test_settings_a_reference_lacks_are_one_line_errors(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`") as e:
        SamplerConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_guidance_a_reference_lacks_is_a_one_line_error():
    dream = SamplerConfig(match_reference="dream", deprioritize_eos=False)
    with pytest.raises(ValueError, match="`rule` must be 'none'"):
        GuidanceConfig(rule="entrgi").resolve(dream)
    GuidanceConfig(rule="none").resolve(dream)
    with pytest.raises(ValueError, match="`soft_top_k` must be None"):
        GuidanceConfig(soft_top_k=8).resolve(SamplerConfig(match_released=True))


def test_the_switches_flow_through_the_one_settings_resolution():
    """generate, eval and serve resolve their settings with ``resolve_settings``: the switches are sampler fields
    there like any other (model defaults < preset < config file < flags / request), checked with the layer named."""
    from entrgi.models.llada import LLaDA
    from entrgi.settings import resolve_settings

    llada = {"sampler": dict(LLaDA.SAMPLER_DEFAULTS)}  # the model's layer of a LLaDA checkpoint
    run = resolve_settings(model_defaults=llada,
                           config={"sampler": {"match_reference": "llada", "deprioritize_eos": False}},
                           overrides={"method": "none"})
    assert run.sampler.match_reference == "llada" and reproduction_for(run.sampler) == Reproduction("llada")
    assert run.to_dict()["sampler"]["match_reference"] == "llada"  # what records carry
    released = resolve_settings(overrides={"sampler": {"match_released": True}})
    assert reproduction_for(released.sampler) == Reproduction("released")
    assert reproduction_for(resolve_settings().sampler) is None  # off by default
    with pytest.raises(ValueError, match=r"`top_p` must be 1\.0 with `match_reference` = 'llada'.*from the flags"):
        resolve_settings(model_defaults=llada,
                         overrides={"sampler": {"match_reference": "llada", "deprioritize_eos": False, "top_p": 0.9}})


def test_eval_record_keys_of_runs_without_a_switch_are_unchanged():
    """The new field at its neutral value is left out of the settings' hash: runs started before it keep resuming
    (the keys below are those of the commit before the field); a switch changes the key."""
    from entrgi.eval.config import settings_key
    from entrgi.settings import resolve_settings

    assert settings_key(resolve_settings()) == "ea40371af02ecad3"
    assert settings_key(resolve_settings(overrides={"method": "entrgi", "sampler": {"steps": 8}})) == "1d9985c6f4a568e6"
    dream = resolve_settings(overrides={"method": "none", "sampler": {"match_reference": "dream",
                                                                      "deprioritize_eos": False}})
    assert settings_key(dream) != settings_key(resolve_settings(overrides={"method": "none", "sampler": {
        "deprioritize_eos": False}}))
