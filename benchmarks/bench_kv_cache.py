"""The DLLM KV cache for block decoding (``SamplerConfig.kv_cache``): what the DLLM part of a step costs with
no cache, the prefix cache and the dual cache, and how far the cache moves greedy samples.

    python benchmarks/bench_kv_cache.py              # CPU, scaled Dream shapes: a few minutes
    python benchmarks/bench_kv_cache.py --quick      # fewer repetitions, the agreement on one prompt
    python benchmarks/bench_kv_cache.py --device cuda --scale full   # Dream-7B shapes, bf16

Model: the Dream-shaped DLLM of ``benchmarks/bench_guidance.py`` (the project's Dream adapter, Qwen2 layers,
logit width 152,064, the real Qwen2.5 tokenizer laid out as Dream's, random weights, lm_head scaled for a
Dream-like logit spread), at its ``--scale`` shapes. Prompt: 256 tokens (chat template included), response
L = 128 in blocks of 32, T = L (32 steps per block), B rows.

*DLLM part of a step*: ``Dream.response_logits`` as the sampler calls it, from a mid-trajectory state (the
second block current and half committed, the first block committed, the later ones masked). With a cache,
the block's first step is a full forward that also stores every layer's keys/values ("first step"); the
other 31 run only the query window ("cached step"); the per-step mean over a block is
(first + 31 · cached) / 32. Repetitions are interleaved across the modes; min / median are reported.

*Greedy token agreement*: temperature 0, no guidance, the same prompts generated with each mode; the share
of response slots whose token equals the uncached sampler's. On a random-weight model this is a
pessimistic figure (its hidden states have no structure for the stale keys/values to preserve).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench_guidance also puts tests/ on the path
from bench_guidance import DREAM_WIDTH, PROMPT, SCALES, device_setup, fmt_s, machine_line, sync
from support.tiny_checkpoints import dream_config, write_dream_tokenizer

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.models.dream import Dream, DreamModule, qwen2_config
from entrgi.reward.base import position_ids_from
from entrgi.sampling.agreement import token_agreement

MODES = ("none", "prefix", "dual")
PROMPT_TOKENS, L, BLOCK = 256, 128, 32


def build_dream(scale: str, device: torch.device, dtype: torch.dtype, seed: int = 0,
                logit_std: float = 3.0) -> Dream:
    """bench_guidance's Dream-shaped DLLM (random weights, the real tokenizer)."""
    from transformers import AutoTokenizer

    h, layers, heads, kv, inter = SCALES[scale][0]
    tok = AutoTokenizer.from_pretrained(write_dream_tokenizer(Path(tempfile.mkdtemp(prefix="entrgi-kv-")) / "dream",
                                                              hub_layout=False))
    torch.manual_seed(seed)
    with torch.device(device):
        module = DreamModule(qwen2_config(dream_config(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                                                       num_attention_heads=heads, num_key_value_heads=kv)))
        with torch.no_grad():
            module.lm_head.weight.normal_(0.0, logit_std / math.sqrt(h))
    return Dream.from_module(module.to(dtype), tok)


def prompt_of(model: Dream, tokens: int, variant: int = 0) -> str:
    """A text whose chat-template encoding is ``tokens`` ids long (or the closest below): the benchmark
    prompt repeated and cut at a word."""
    words = ((PROMPT + " ") * 8).split()
    if variant:
        words = [f"({variant})"] + words
    length = lambda n: len(model.encode_prompt(" ".join(words[:n])))  # noqa: E731
    lo, hi = 1, len(words)
    while lo < hi:  # the largest n with length(n) <= tokens
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if length(mid) <= tokens else (lo, mid - 1)
    return " ".join(words[:lo])


def step_state(model: Dream, prompt: str, rows: int, device, seed: int = 0):
    """Canvas (B, P + L) mid-trajectory: block 0 committed, block 1 half committed, blocks 2-3 masked."""
    ids = torch.tensor(model.encode_prompt(prompt), device=device).expand(rows, -1)
    P = ids.shape[1]
    g = torch.Generator().manual_seed(seed)
    resp = torch.full((rows, L), model.mask_token_id)
    resp[:, :BLOCK] = torch.randint(0, 150000, (rows, BLOCK), generator=g)
    half = torch.rand(rows, BLOCK, generator=g) < 0.5
    resp[:, BLOCK:2 * BLOCK][half] = torch.randint(0, 150000, (int(half.sum()),), generator=g)
    x = torch.cat([ids, resp.to(device)], 1)
    attn = torch.ones_like(x)
    return x, attn, position_ids_from(attn), P, (P + BLOCK, P + 2 * BLOCK)


def time_steps(model: Dream, prompt: str, rows: int, reps: int, device) -> dict:
    """Seconds per call of the DLLM part: {(mode, 'first' | 'step'): [seconds …]} (interleaved)."""
    x, attn, pos, P, (s, e) = step_state(model, prompt, rows, device)
    times: dict = {}

    def timed(key, fn):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.setdefault(key, []).append(time.perf_counter() - t0)

    with torch.no_grad():
        canvases = {m: x.clone() for m in MODES}
        for m in MODES[1:]:
            model.begin_block(m, canvases[m], s, e)
            model.response_logits(canvases[m], attn, pos, P)  # warm-up
        model.response_logits(canvases["none"], attn, pos, P)
        for _ in range(reps):
            for m in MODES:
                c = canvases[m]
                forward = lambda c=c: model.response_logits(c, attn, pos, P)  # noqa: E731
                if m == "none":
                    timed((m, "step"), forward)
                    continue
                model.begin_block(m, c, s, e)
                model.invalidate_kv_cache()
                timed((m, "first"), forward)  # full forward + recording the keys/values
                timed((m, "step"), forward)  # the window only
                assert model.kv_cache.owns(c) and model.kv_cache.query_tokens < c.shape[1]
        model.begin_block("none", x, s, e)
    return times


def step_agreement(model: Dream, prompt: str, rows: int, device) -> dict:
    """One step's argmax agreement, no trajectory effects: the cache built when block 2 starts (all masks),
    then half of the block committed (the timed state). {mode: (argmax equal to the uncached logits' at the
    block's masked slots, the same for the block's first-step logits reused as they are, those slots, mean
    |Δ logit| of the cached ones, of the reused ones)}: how much of the change since the block's start the
    cached forward recovers."""
    x, attn, pos, P, (s, e) = step_state(model, prompt, rows, device)
    start = x.clone()
    start[:, s:e] = model.mask_token_id
    masked = (x[:, P:] == model.mask_token_id)
    masked[:, :s - P] = False
    masked[:, e - P:] = False
    out = {}
    with torch.no_grad():
        ref = model.response_logits(x.clone(), attn, pos, P)[masked]
        for m in MODES[1:]:
            c = start.clone()
            model.begin_block(m, c, s, e)
            first = model.response_logits(c, attn, pos, P)[masked]  # the block's first step
            c.copy_(x)  # half the block committed since
            got = model.response_logits(c, attn, pos, P)[masked]
            assert model.kv_cache.cached_forwards == 1
            out[m] = (int((got.argmax(-1) == ref.argmax(-1)).sum()), int((first.argmax(-1) == ref.argmax(-1)).sum()),
                      int(masked.sum()), float((got - ref).abs().mean()), float((first - ref).abs().mean()))
        model.begin_block("none", x, s, e)
    return out


def agreement(model: Dream, prompts: list[str], rows_per_prompt: int) -> dict:
    """Greedy generations (T = L = 128, blocks of 32) with each mode: {mode: (output, seconds)}."""
    cfg = model.recommended_sampler(max_new_tokens=L, steps=L, block_length=BLOCK, temperature=0.0,
                                    num_samples=rows_per_prompt)
    out = {}
    for m in MODES:
        t0 = time.perf_counter()
        res = generate(model, prompts, sampler=SamplerConfig(**{**cfg.to_dict(), "kv_cache": m}),
                       guidance=GuidanceConfig(rule="none"), progress=False, trace=False)
        out[m] = (res, time.perf_counter() - t0)
        print(f"  .. generated with kv_cache={m}: {out[m][1]:.0f} s", file=sys.stderr, flush=True)
    return out


def block_agreement(a, b) -> list[float]:
    """:func:`token_agreement` of each block of the responses."""
    rows = lambda r: [s.token_ids for g in r.samples for s in g]  # noqa: E731
    return [token_agreement([t[lo:lo + BLOCK] for t in rows(a)], [t[lo:lo + BLOCK] for t in rows(b)])
            for lo in range(0, L, BLOCK)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 repetitions; the agreement on one prompt.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="Weights dtype (default: float32 on CPU, bfloat16 on CUDA).")
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES), help="Model shapes (bench_guidance's).")
    p.add_argument("--rows", type=int, default=4, help="B rows of the timed step.")
    p.add_argument("--reps", type=int, default=None, help="Interleaved repetitions (default 7, quick 3).")
    p.add_argument("--prompts", type=int, default=None,
                   help="Prompts of the agreement run (default 4, quick 1; 0 = skip it).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    a = p.parse_args(argv)
    setup = device_setup(a)
    if setup is None:
        return 2
    device, dtype = setup
    reps = a.reps or (3 if a.quick else 7)
    n_prompts = a.prompts if a.prompts is not None else (1 if a.quick else 4)
    t_start = time.perf_counter()
    print(machine_line(device))
    model = build_dream(a.scale, device, dtype)
    prompt = prompt_of(model, PROMPT_TOKENS)
    P = len(model.encode_prompt(prompt))
    h = model.module.config.hidden_size
    n_layer = sum(p_.numel() for n_, p_ in model.module.named_parameters() if ".layers." in n_)
    print(f"model: Dream-shaped ({a.scale}, {str(dtype).removeprefix('torch.')}), hidden {h}, "
          f"{model.module.config.num_hidden_layers} layers, {n_layer / 1e6:.1f}M layer params, V = "
          f"{DREAM_WIDTH:,}; prompt P = {P} tokens, L = {L}, blocks of {BLOCK}, T = L ({BLOCK} steps per block), "
          f"B = {a.rows} rows; {reps} interleaved repetitions")

    times = time_steps(model, prompt, a.rows, reps, device)
    S = BLOCK  # steps per block
    base_min, base_med = min(times[("none", "step")]), statistics.median(times[("none", "step")])
    shift = 1
    window = {"none": P + L, "prefix": L - BLOCK + shift, "dual": BLOCK + shift}
    print(f"\n### DLLM part of a step (response_logits; block 2 of 4, B = {a.rows}; min / median)\n")
    print("| kv_cache | query tokens per row | first step of a block | cached step | × faster (min / median) | "
          "per-step mean over a block | × faster |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in MODES:
        st = times[(m, "step")]
        s_min, s_med = min(st), statistics.median(st)
        if m == "none":
            print(f"| none | {window[m]} | {fmt_s(s_min)} / {fmt_s(s_med)} | - | 1.00 / 1.00 | {fmt_s(s_med)} | 1.00 |")
            continue
        f_med = statistics.median(times[(m, "first")])
        f_min = min(times[(m, "first")])
        mean = (f_med + (S - 1) * s_med) / S
        print(f"| {m} | {window[m]} | {fmt_s(f_min)} / {fmt_s(f_med)} | {fmt_s(s_min)} / {fmt_s(s_med)} | "
              f"{base_min / s_min:.2f} / {base_med / s_med:.2f} | {fmt_s(mean)} | {base_med / mean:.2f} |")

    one = step_agreement(model, prompt, a.rows, device)
    print("\n### One step from the same canvas (cache built at block 2's start, then half the block committed)\n")
    print("| kv_cache | argmax = uncached (block's masked slots) | same, reusing the first step's logits | mean abs "
          "logit error | same, first step's logits |")
    print("|---|---:|---:|---:|---:|")
    for m, (eq, eq0, n, err, err0) in one.items():
        print(f"| {m} | {eq} / {n} ({eq / n:.2f}) | {eq0} / {n} ({eq0 / n:.2f}) | {err:.3f} | {err0:.3f} |")

    if n_prompts:
        prompts = [prompt] + [prompt_of(model, PROMPT_TOKENS, v) for v in range(1, n_prompts)]
        gen = agreement(model, prompts, 1)
        ref, t_ref = gen["none"]
        print(f"\n### Greedy generations (temperature 0, {n_prompts} prompt(s) of ~{P} tokens, L = T = {L}, blocks of "
              f"{BLOCK}, no guidance)\n")
        blocks = " | ".join(f"block {b + 1}" for b in range(L // BLOCK))
        print(f"| kv_cache | greedy token agreement with none | slots equal / all | {blocks} | generation wall time "
              "| × faster |")
        print("|---|---:|---:|" + "---:|" * (L // BLOCK) + "---:|---:|")
        for m in MODES:
            res, secs = gen[m]
            agree = token_agreement(ref, res)
            n = sum(len(s_.token_ids) for g in res.samples for s_ in g)
            per_block = " | ".join(f"{a_:.2f}" for a_ in block_agreement(ref, res))
            print(f"| {m} | {agree:.3f} | {round(agree * n)} / {n} | {per_block} | {secs:.1f} s | {t_ref / secs:.2f} |")
    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s; load average at the end "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
