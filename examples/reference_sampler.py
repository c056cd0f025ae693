"""Read this first: EntRGi as one straight function (docs/method.md (1)–(9)), in the style of LLaDA's ``generate()``.

    python examples/reference_sampler.py      # runs it and entrgi.generate on the embedded default pair: same tokens

Slow on purpose: dense full-vocabulary tensors, the RM over the whole row at every inner step, Adam written out.
It draws from the same per-row streams (:class:`entrgi.ops.rng.RowStreams`) in the same order as
:class:`entrgi.DiffusionSampler`, so its tokens must equal the library's exactly and its rewards to float rounding
(tests/test_contract.py checks it). Supported: the built-in rules (none, expectation, aps, entrgi) guiding every
row at every step; ``optimizer`` adam / ascent; ``sampling`` inverse_cdf; ``remasking`` entropy / maskgit_plus /
topk_margin / low_confidence / random with ``remasking_temperature`` 0; ``confidence_from``, ``schedule``, blocks,
τ (0 = greedy), top-k, top-p, ``min_new_tokens``, ``deprioritize_eos``, ``match_released``, ``batch_size``.
Anything else (gumbel, origin, registered rules, guidance schedules, parallel decoding, the KV cache,
``soft_top_k``) raises ``ValueError``; the exact cost switches (``prefix_cache``, ``vocab_chunk``, ``compile``) do
not apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from entrgi import (
    ComputeStats,
    DiffusionLM,
    GenerationOutput,
    GuidanceConfig,
    RewardModel,
    Row,
    Sample,
    SamplerConfig,
    StepOutput,
    StepTrace,
)
from entrgi.ops.rng import RowStreams, row_seed
from entrgi.sampling.sampler import bridge_for

NEG_INF = float("-inf")
REMASKING = ("entropy", "maskgit_plus", "topk_margin", "low_confidence", "random")
RULES = ("none", "expectation", "aps", "entrgi")


def dense_draw(logits: torch.Tensor, u: torch.Tensor, tau: float, top_p: float, top_k: int | None) -> torch.Tensor:
    """x ~ top-p(top-k(softmax(logits / τ))) (n,) by inverse CDF with uniforms ``u`` (n,): (2) and (5)."""
    if tau == 0:
        return logits.argmax(-1)  # τ = 0: greedy
    z = logits / tau  # temperature
    if top_k is not None and top_k < z.shape[-1]:
        z = z.masked_fill(z < z.topk(top_k, -1).values[:, -1:], NEG_INF)  # keep the k largest (ties kept)
    if top_p < 1:
        zs, order = z.sort(-1, descending=True)  # the whole vocabulary, most likely first
        p = zs.softmax(-1)
        drop = (p.cumsum(-1) - p) > top_p  # the mass before an id already exceeds top_p (the crossing id stays)
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), NEG_INF)  # back to id order
    p = z.double().softmax(-1)  # float64 probabilities over the whole vocabulary
    cdf = p.cumsum(-1)
    target = (u.double().unsqueeze(-1) * cdf[:, -1:]).clamp(max=cdf[:, -1:] * (1 - 1e-7))  # u · total, below it
    ids = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=z.shape[-1] - 1)  # first cdf > target
    return torch.where(p.gather(-1, ids.unsqueeze(-1)).squeeze(-1) > 0, ids, p.argmax(-1))  # never a p = 0 id


def entropy_weight(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """EntRGi's w = H(softmax(z / T)) / log V (n,), (7); 0 at T = 0."""
    if temperature == 0:
        return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    p = (z / temperature).softmax(-1)
    h = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)  # H(p), 0 · log 0 = 0
    return (h / math.log(z.shape[-1])).clamp(0, 1)


def check_supported(sampler: SamplerConfig, guidance: GuidanceConfig) -> None:
    """Raise ``ValueError`` for the options this reference does not implement."""
    unsupported = {"sampling": sampler.sampling != "inverse_cdf", "remasking": sampler.remasking not in REMASKING,
                   "remasking_temperature": sampler.remasking_temperature != 0,
                   "kv_cache": getattr(sampler, "kv_cache", "none") != "none",
                   "parallel_threshold": getattr(sampler, "parallel_threshold", None) is not None,
                   "rule": guidance.rule not in RULES, "soft_top_k": guidance.soft_top_k is not None,
                   "guide_every": getattr(guidance, "guide_every", 1) != 1,
                   "guide_until": getattr(guidance, "guide_until", 1.0) != 1.0,
                   "guide_min_weight": getattr(guidance, "guide_min_weight", 0.0) != 0.0,
                   "inner_tol": getattr(guidance, "inner_tol", None) is not None}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"the reference sampler does not implement {bad}: see examples/reference_sampler.py.")


@torch.no_grad()
def reference_generate(model: DiffusionLM, prompts: str | Sequence[str], reward: RewardModel | None = None,
                       sampler: SamplerConfig | None = None, guidance: GuidanceConfig | None = None, *,
                       callback: Callable[[int, StepOutput], None] | None = None) -> GenerationOutput:
    """What :func:`entrgi.generate` computes (traced: M + 1 rewards per guided step), written out."""
    sampler, guidance = sampler or SamplerConfig(), guidance or GuidanceConfig()
    check_supported(sampler, guidance)
    if guidance.rule != "none" and reward is None:
        raise ValueError(f"`reward` is required for rule {guidance.rule!r}.")
    rg = guidance.resolve(sampler)  # τ of the relaxation, τ_H and the hard top-p, filled from the sampler
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    L, T, K, M = sampler.max_new_tokens, sampler.steps, sampler.num_samples, guidance.inner_steps
    nb = sampler.num_blocks  # LLaDA's blocks (1 without)
    S, bl = T // nb, L // nb  # steps and slots per block
    dev, V, mask_id = model.device, model.logit_width, model.mask_token_id
    eos_list = list(model.eos_ids(sampler.match_released))  # ids that end a response
    eos = torch.tensor(eos_list or [-1], device=dev)
    if reward is not None:
        bridge = bridge_for(model, reward)  # DLLM id -> RM row, by token string
        E = bridge.rm_table(reward.embedding_table(), dev)  # (V, d) E_R aligned to the DLLM's ids
        mapped = bridge.mapped.to(dev)  # (V,) True where the RM has a row
        E_rm = reward.embedding_table()  # (V_R, d) the RM's own rows: its prefix and suffix ids
        rm_bias = torch.zeros(V, device=dev).masked_fill(~mapped, NEG_INF)  # ids without an RM row get q = 0
    rows = []  # K rows per prompt, prompt-major, each with its own seeded streams
    for i, p in enumerate(prompts):
        ids = model.encode_prompt(p)
        rows += [Row(i, k, p, ids, row_seed(sampler.seed, ids, k), row_seed(sampler.seed, ids, k, stream="trace"))
                 for k in range(K)]
    tokens, traces = [], []
    chunk = sampler.batch_size or len(rows)
    for lo in range(0, len(rows), chunk):  # batches of rows: a row's result does not depend on its batch
        batch = rows[lo:lo + chunk]
        B, P = len(batch), max(len(r.prompt_ids) for r in batch)  # P: the padded prompt length
        x = torch.full((B, P + L), mask_id, device=dev)  # the canvas: L mask slots after the prompt
        attn = torch.ones((B, P + L), dtype=torch.long, device=dev)
        for b, r in enumerate(batch):
            pad = P - len(r.prompt_ids)
            x[b, :pad], attn[b, :pad] = model.pad_token_id, 0  # left padding, never attended to
            x[b, pad:P] = torch.tensor(r.prompt_ids, device=dev)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)  # position ids skip the padding
        streams = RowStreams([r.seed for r in batch], dev)  # draws, hard samples, remasking
        trace_streams = RowStreams([r.trace_seed for r in batch], dev)  # the evaluation after the inner steps
        ctx = [reward.context(r.prompt) for r in batch] if reward is not None else []  # the RM's prefix, suffix
        trace = [[] for _ in batch]
        for step in range(T):
            blk, i = divmod(step, S)  # the block and the step within it
            resp = x[:, P:]  # (B, L) view: commits write the canvas
            masked = resp == mask_id  # (B, L)
            cand = masked.clone()
            cand[:, :blk * bl], cand[:, (blk + 1) * bl:] = False, False  # only the current block's slots
            if not cand.any():
                continue  # an idle step
            logits = model(x, attn, pos)[:, P:]  # (1): every position, then the response slots (B, L, V)
            logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits.clone()
            logits[..., model.invalid_mask(dev)] = NEG_INF  # never response tokens: mask id, padded rows
            if sampler.min_new_tokens and eos_list:
                logits[:, :sampler.min_new_tokens, eos_list] = NEG_INF  # no EOS in the first slots
            prior, rewards = logits, [[] for _ in batch]  # φ₀; the RM's reward at each inner step
            if guidance.guided:  # (9): M optimiser steps on a copy of the masked slots' logits
                phi = logits[masked].clone()  # φ⁽⁰⁾ = φ₀ at the n masked slots (n, V)
                m, v = torch.zeros_like(phi), torch.zeros_like(phi)  # a fresh Adam state every denoising step
                for k in range(M + 1):  # the M steps, then the reward after the last one (the trace's evaluation)
                    source = streams if k < M else trace_streams  # the trace has its own stream
                    with torch.enable_grad():
                        phi.requires_grad_(k < M)
                        z = phi + rm_bias  # the RM's view of φ
                        q = (z / rg.relaxation_temperature).softmax(-1)  # q = softmax(φ / τ)
                        soft = q @ E  # (4) ē = q · E_R
                        e_hat = soft  # Expectation: w = 0
                        if guidance.rule != "expectation":
                            u = source.uniform_at(masked)[masked]  # one uniform per masked slot, the row's stream
                            hard = E[dense_draw(z.detach(), u, rg.relaxation_temperature, rg.hard_top_p,
                                                rg.top_k)]  # (5) ẽ = E_R[x̃], a fresh hard sample every step
                            w = (torch.ones(len(z), device=dev) if guidance.rule == "aps"
                                 else entropy_weight(z.detach(), rg.entropy_temperature))  # APS: 1; EntRGi: (7)
                            e_hat = soft + (w.unsqueeze(-1) * (hard - soft)).detach()  # (6) ê = ē + sg(w(ẽ − ē))
                        emb = E[resp.clamp_max(V - 1)].masked_scatter(masked.unsqueeze(-1), e_hat)  # (B, L, d)
                        ids = resp.masked_scatter(masked, phi.detach().argmax(-1))  # argmax φ at masked slots
                        seen = (torch.isin(ids, eos).cumsum(-1) == 0) & (masked | mapped[ids])  # before the 1st
                        # EOS, and committed ids the RM has; (8): [prefix ; slots ; suffix], whole rows, left-padded
                        e_in = [torch.cat([E_rm[list(c.prefix_ids)], emb[b], E_rm[list(c.suffix_ids)]])
                                for b, c in enumerate(ctx)]
                        a_in = [torch.cat([torch.ones(len(c.prefix_ids), dtype=torch.long, device=dev),
                                           seen[b].long(), torch.ones(len(c.suffix_ids), dtype=torch.long,
                                                                      device=dev)]) for b, c in enumerate(ctx)]
                        N = max(len(a) for a in a_in)
                        e_in = torch.stack([F.pad(e, (0, 0, N - len(e), 0)) for e in e_in])  # zeros, not attended
                        a_in = torch.stack([F.pad(a, (N - len(a), 0)) for a in a_in])
                        r = reward.forward_embeds(e_in, a_in, (a_in.cumsum(-1) - 1).clamp_min(0))  # R (B,)
                        g = -torch.autograd.grad(r.sum(), phi)[0] if k < M else None  # ∇_φ of the loss −Σ_b R_b
                    for b in range(B):
                        rewards[b].append(float(r[b]))
                    phi = phi.detach()
                    if k == M:
                        break
                    if guidance.optimizer == "ascent":
                        phi = phi - guidance.lr * g  # φ ← φ + lr ∇R
                    else:  # Adam, (β₁, β₂, ε) = (0.9, 0.999, 1e-8), step t = k + 1
                        m = 0.9 * m + 0.1 * g
                        v = 0.999 * v + 0.001 * g * g
                        denom = v.sqrt() / math.sqrt(1 - 0.999 ** (k + 1)) + 1e-8  # √v̂ + ε
                        phi = phi - guidance.lr / (1 - 0.9 ** (k + 1)) * m / denom  # φ ← φ − lr m̂ / (√v̂ + ε)
                logits = logits.clone()
                logits[masked] = phi  # the guided logits φ⁽ᴹ⁾
            x0 = dense_draw(logits[cand], streams.uniform_at(cand)[cand], sampler.temperature, sampler.top_p,
                            sampler.top_k)  # (2): candidates from the (guided) logits
            rank = logits if sampler.confidence_from == "guided" else prior  # (3): which logits rank the slots
            tau = 1.0 if sampler.remasking == "low_confidence" or sampler.temperature == 0 else sampler.temperature
            q = (rank[cand].double() / tau).softmax(-1)  # unfiltered q (float64)
            if sampler.remasking == "entropy":
                c = torch.where(q > 0, q * q.log(), torch.zeros_like(q)).sum(-1)  # Σ q log q = −H(q)
            elif sampler.remasking == "topk_margin":
                top2 = q.topk(2, -1).values
                c = top2[:, 0] - top2[:, 1]  # q₁ − q₂
            elif sampler.remasking == "random":
                c = streams.uniform_at(cand)[cand]  # a uniform random order
            else:
                c = q.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # maskgit_plus, low_confidence: q(x̃)
            if sampler.deprioritize_eos:
                c = torch.where(torch.isin(x0, eos), torch.finfo(torch.float64).min, c)  # EOS candidates last
            conf = torch.full((B, L), NEG_INF, dtype=torch.float64, device=dev)
            conf[cand] = c
            if i == 0:
                n0 = cand.sum(-1)  # LLaDA: the block's masked count at its first step
            commit = torch.zeros_like(cand)
            for b in range(B):
                n = int(cand[b].sum())
                if i == S - 1:
                    count = n  # the last step commits all that is left
                elif sampler.schedule == "linear":
                    t, s = 1 - i * (1 - sampler.eps) / S, 1 - (i + 1) * (1 - sampler.eps) / S  # Dream's ts[i], ts[i+1]
                    count = int(n * (1 - s / t))
                else:
                    count = int(n0[b]) // S + int(i < int(n0[b]) % S)  # LLaDA: n0 // S, the rest on the first steps
                commit[b, conf[b].argsort(descending=True, stable=True)[:count]] = True  # the most confident
            proposal = resp.clone()
            proposal[cand] = x0
            x[:, P:] = torch.where(commit, proposal, resp)  # commit; prompt and committed tokens never change
            w_prior = torch.zeros((B, L), device=dev)
            w_prior[masked] = entropy_weight(prior[masked], rg.entropy_temperature).to(w_prior.dtype)
            for b in range(B):
                trace[b].append(StepTrace(step=step, block=blk, masked=int(masked[b].sum()),
                                          committed=commit[b].nonzero().flatten().tolist(),
                                          entropy_weight=float(w_prior[b][masked[b]].mean()) if masked[b].any()
                                          else None, rewards=rewards[b]))
            if callback is not None:
                callback(step, StepOutput(step=step, block=blk, x=x, prompt_length=P, logits=prior,
                                          guided_logits=logits, masked=masked, candidates=cand, proposal=proposal,
                                          committed=commit, rows=batch))
        tokens += x[:, P:].tolist()
        traces += trace
    texts = [model.decode_response(t, sampler.match_released) for t in tokens]
    scores = reward.score_texts([r.prompt for r in rows], texts).tolist() if reward is not None else [None] * len(rows)
    samples = [[] for _ in prompts]
    for r, t, txt, s, tr in zip(rows, tokens, texts, scores, traces):
        samples[r.prompt_index].append(Sample(r.prompt_index, r.sample_index, r.prompt, txt, t, s, tr))
    return GenerationOutput(samples, sampler, guidance, ComputeStats())


if __name__ == "__main__":
    from entrgi import generate, load_pair

    model, rm = load_pair()  # the embedded default pair
    sampler = SamplerConfig(max_new_tokens=16, steps=16, num_samples=2, seed=1)
    guidance = GuidanceConfig(rule="entrgi", lr=1.0)
    ours = reference_generate(model, ["she was", "the weather was"], rm, sampler, guidance)
    lib = generate(model, ["she was", "the weather was"], rm, sampler=sampler, guidance=guidance, progress=False)
    for a, b in zip(ours.samples, lib.samples):
        for s, t in zip(a, b):
            print(f"same tokens: {s.token_ids == t.token_ids}  reward {s.reward:+.4f} / {t.reward:+.4f}  {s.text!r}")
