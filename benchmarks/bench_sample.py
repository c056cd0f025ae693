"""What one whole SAMPLE costs with each fast-guidance part on and off: parallel (threshold) decoding, the
guidance schedule, the DLLM dual KV cache and the ``fast`` preset, as wall time and as the deterministic cost
count (:class:`~entrgi.sampling.outputs.ComputeStats`), with ratios to unguided sampling in the same run.

    python benchmarks/bench_sample.py                  # CPU, L = 64 (2 blocks), 256-token prompt, 1 row, 2 reps
    python benchmarks/bench_sample.py --quick          # L = 32 (1 block), 128-token prompt, 1 rep (~1/5 of that)
    python benchmarks/bench_sample.py --peaked         # the DLLM's logits ×4, so that the threshold fires more
    python benchmarks/bench_sample.py --device cuda --scale full --length 256 --rows 4

Models: bench_guidance's Dream-shaped DLLM and Skywork-shaped RM (:func:`bench_guidance.build_pair`: random
weights, real tokenizers and vocabularies, ``--scale`` shapes). Prompt: ``--prompt-tokens`` (default 256) tokens
of the DLLM's chat-template encoding (:func:`bench_kv_cache.prompt_of`). Each setting generates the same
prompt with the same seed, ``--rows`` samples (K), response L = ``--length`` in blocks of 32, T = L steps (the
fast preset: its own T = L/4; τ 0.7, top-p 0.95, entropy remasking; a maximum with the threshold), with the RM
re-scoring the decoded texts as every setting does. Repetitions are interleaved over the settings after one
short warm-up of every code path; min / median wall time per sample (a generation's wall time / rows). On a
quiet 2-core CPU ``--quick`` takes 2 min and the default 8 min (at load ~7, 27 min and over an hour).

Per sample, from ``GenerationOutput.stats`` divided by the rows: FLOPs (the cost count's formula,
docs/performance.md "Cost count"), DLLM forwards and RM backward passes; "DLLM tokens run" counts the positions
the forwards ran, read in the step callback (on a KV cache's cached steps its query window,
``Dream.kv_cache.query_tokens``), to set beside the count's ``dllm_tokens``. Slots per step: committed slots per
step that ran, averaged over the rows (1 for T = L without the threshold).

Random weights rarely give a token probability above the 0.9 threshold, so there the threshold changes little;
``--peaked`` multiplies the DLLM's output layer (lm_head, no bias) by ``--peak-factor`` (default 4: logits' std
≈ 12) so that it fires at a rate like a trained model's; the table says which logits were used.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench_guidance also puts tests/ on the path
from bench_guidance import SCALES, build_pair, device_setup, fmt_s, lm_head_scaled, machine_line
from bench_kv_cache import prompt_of

from entrgi import GuidanceConfig, SamplerConfig, resolve_settings
from entrgi.presets import get_preset
from entrgi.sampling.outputs import ComputeStats
from entrgi.sampling.sampler import DiffusionSampler

BLOCK = 32
#: The threshold part: the ``fast`` preset's sampler fields (parallel_threshold, confidence_from).
THRESHOLD = dict(get_preset("fast").sampler)
#: The schedule part: guidance on the first quarter of the response only.
SCHEDULE = {"guide_until": 0.25}
DUAL = {"kv_cache": "dual"}


@dataclass(frozen=True)
class Setting:
    """A named configuration: ``guided`` (EntRGi, else method none), sampler and guidance field overrides, and
    whether the ``fast`` preset's fields come first."""

    name: str
    guided: bool
    sampler: dict = field(default_factory=dict)
    guidance: dict = field(default_factory=dict)
    preset: bool = False


SETTINGS = (
    Setting("unguided", False),
    Setting("unguided + threshold", False, THRESHOLD),
    Setting("unguided + dual cache", False, DUAL),
    Setting("EntRGi M=3", True),
    Setting("EntRGi + threshold", True, THRESHOLD),
    Setting("EntRGi + schedule", True, guidance=SCHEDULE),
    Setting("EntRGi + dual cache", True, DUAL),
    Setting("fast preset", True, preset=True),
    Setting("fast preset + dual cache", True, DUAL, preset=True),
)


def configs(setting: Setting, L: int, T: int, rows: int, block: int = BLOCK, seed: int = 0,
            inner_steps: int = 3) -> tuple[SamplerConfig, GuidanceConfig]:
    """The setting's (SamplerConfig, GuidanceConfig), resolved as every entry point does
    (:func:`entrgi.resolve_settings`): L slots in blocks of ``block``, T steps, ``rows`` samples, then the ``fast``
    preset (its T from L) when the setting asks, then the setting's fields."""
    base = {"sampler": {"max_new_tokens": L, "steps": T, "num_samples": rows, "block_length": block, "seed": seed},
            "guidance": {"rule": "entrgi", "inner_steps": inner_steps} if setting.guided else {"rule": "none"}}
    own = {"sampler": setting.sampler, "guidance": setting.guidance, **({"preset": "fast"} if setting.preset else {})}
    s = resolve_settings(model_defaults=base, overrides=own, overrides_source=f"setting {setting.name!r}")
    return s.sampler, s.guidance


@dataclass
class Run:
    """One generation: wall seconds, its ComputeStats, and what the step callback saw."""

    seconds: float
    stats: ComputeStats
    steps: int  # denoising steps that ran (idle ones skipped)
    slots_per_step: float  # committed slots per step that ran, mean over the rows
    dllm_tokens_run: int  # positions the DLLM forwards ran (the KV cache's window when cached)
    tokens: list[list[int]]


def generate_once(sampler: DiffusionSampler, prompt: str, scfg: SamplerConfig, gcfg: GuidanceConfig) -> Run:
    """One timed ``generate`` (no trace, no progress bar) with the per-step bookkeeping."""
    model = sampler.model
    steps = 0
    committed = torch.zeros(scfg.num_samples)
    active = torch.zeros(scfg.num_samples)
    run_tokens = 0

    def callback(_step, out):
        nonlocal steps, run_tokens
        steps += 1
        committed.add_(out.committed.sum(-1).cpu().double())
        active.add_(out.candidates.any(-1).cpu().double())
        cache = getattr(model, "kv_cache", None)
        if cache is not None and cache.owns(out.x):
            run_tokens += out.x.shape[0] * cache.query_tokens
        else:  # finished rows are not forwarded (no cache)
            run_tokens += int(out.masked.any(-1).sum()) * out.x.shape[1]

    t0 = time.perf_counter()
    res = sampler.generate([prompt], scfg, gcfg, progress=False, trace=False, callback=callback)
    seconds = time.perf_counter() - t0
    per_step = float((committed / active.clamp_min(1)).mean())
    return Run(seconds, res.stats, steps, per_step, run_tokens, [s.token_ids for g in res.samples for s in g])


def measure(sampler: DiffusionSampler, prompt: str, settings, L: int, T: int, rows: int, reps: int,
            warmup: bool = True, log=None) -> dict[str, list[Run]]:
    """{setting name: [Run per repetition]}, repetitions interleaved over the settings. The warm-up runs every
    setting once on one block with T = 2 (first calls, allocator, the KV-cache path)."""
    if warmup:
        for st in settings:
            s, g = configs(st, BLOCK, 2, rows)
            generate_once(sampler, prompt, s, g)
    out: dict[str, list[Run]] = {st.name: [] for st in settings}
    for rep in range(reps):
        for st in settings:
            s, g = configs(st, L, T, rows)
            r = generate_once(sampler, prompt, s, g)
            out[st.name].append(r)
            if log:
                log(f"  .. rep {rep + 1}/{reps} {st.name}: {r.seconds:.1f} s, {r.steps} steps")
    return out


def check_deterministic(results: dict[str, list[Run]]) -> None:
    """Every repetition of a setting has the same counts and tokens (they depend on the inputs only)."""
    for name, runs in results.items():
        for r in runs[1:]:
            if dataclasses.replace(r.stats, wall_time_s=0.0) != dataclasses.replace(runs[0].stats, wall_time_s=0.0) \
                    or r.tokens != runs[0].tokens:
                raise RuntimeError(f"{name}: the repetitions differ in their counts or tokens")


def summary(results: dict[str, list[Run]], rows: int, base: str = "unguided") -> list[dict]:
    """Per setting, per sample: wall min / median (s), FLOPs, DLLM forwards, RM backwards, DLLM tokens run, steps,
    slots per step, and the ratios of wall time (min, median) and FLOPs to ``base``."""
    out = []
    for name, runs in results.items():
        st = runs[0].stats
        walls = [r.seconds / rows for r in runs]
        out.append({"setting": name, "min": min(walls), "median": statistics.median(walls),
                    "flops": st.flops / rows, "dllm_forwards": st.dllm_forwards / rows,
                    "rm_backwards": st.rm_backwards / rows, "dllm_tokens_run": runs[0].dllm_tokens_run / rows,
                    "steps": runs[0].steps, "slots_per_step": runs[0].slots_per_step})
    ref = next(r for r in out if r["setting"] == base)
    for r in out:
        r["x_min"], r["x_median"] = r["min"] / ref["min"], r["median"] / ref["median"]
        r["x_flops"] = r["flops"] / ref["flops"]
    return out


def table(rows_: list[dict]) -> str:
    lines = ["| setting | wall / sample (min / median) | × unguided (min / median) | GFLOP / sample | × unguided | "
             "DLLM forwards | RM backward passes | DLLM tokens run | steps | slots / step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows_:
        lines.append(f"| {r['setting']} | {fmt_s(r['min'])} / {fmt_s(r['median'])} | {r['x_min']:.2f} / "
                     f"{r['x_median']:.2f} | {r['flops'] / 1e9:,.1f} | {r['x_flops']:.2f} | "
                     f"{r['dllm_forwards']:g} | {r['rm_backwards']:g} | {r['dllm_tokens_run']:,.0f} | "
                     f"{r['steps']} | {r['slots_per_step']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="L = 32 (one block), 1 repetition, a 128-token prompt.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="Weights dtype (default: float32 on CPU, bfloat16 on CUDA).")
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES), help="Model shapes (bench_guidance's).")
    p.add_argument("--length", type=int, default=None,
                   help="L: response slots, a multiple of 32 (default 64, quick 32).")
    p.add_argument("--steps", type=int, default=None, help="T (default: L).")
    p.add_argument("--rows", type=int, default=1, help="Samples K of the prompt, in one batch.")
    p.add_argument("--reps", type=int, default=None, help="Interleaved repetitions (default 2, quick 1).")
    p.add_argument("--prompt-tokens", type=int, default=None, help="Prompt length in tokens (default 256, quick 128).")
    p.add_argument("--peaked", action="store_true", help="Scale the DLLM's lm_head by --peak-factor.")
    p.add_argument("--peak-factor", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    a = p.parse_args(argv)
    setup = device_setup(a)
    if setup is None:
        return 2
    device, dtype = setup
    L = a.length or (32 if a.quick else 64)
    if L % BLOCK:
        p.error(f"--length must be a multiple of {BLOCK}, got {L}")
    T, reps = a.steps or L, a.reps or (1 if a.quick else 2)
    t_start = time.perf_counter()
    print(machine_line(device))
    pair = build_pair(a.scale, device, dtype, rm_checkpointing=device.type == "cuda")
    sampler = DiffusionSampler(pair.dllm, pair.reward, pair.bridge)
    prompt = prompt_of(pair.dllm, a.prompt_tokens or (128 if a.quick else 256))
    P = len(pair.dllm.encode_prompt(prompt))
    print(f"models ({a.scale}, {str(dtype).removeprefix('torch.')}): DLLM {pair.dllm_params / 1e6:.0f}M params "
          f"({pair.dllm_layer_params / 1e6:.1f}M non-embedding), RM {pair.rm_params / 1e6:.0f}M "
          f"({pair.rm_layer_params / 1e6:.1f}M); V = {pair.dllm.logit_width:,}; prompt P = {P} tokens, L = {L} in "
          f"blocks of {BLOCK}, T = {T}, {a.rows} row(s); {reps} interleaved repetition(s) after a warm-up")
    print(f"settings: threshold = {THRESHOLD}; schedule = {SCHEDULE}; dual cache = {DUAL}; fast preset = "
          f"{dict(get_preset('fast').sampler)} + {dict(get_preset('fast').guidance)}; EntRGi M = 3")
    factor = a.peak_factor if a.peaked else 1.0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with lm_head_scaled(pair, factor):
        with torch.no_grad():
            s0 = sampler.start([prompt], SamplerConfig(max_new_tokens=L, steps=T, num_samples=1),
                               GuidanceConfig(rule="none"), trace=False)
            phi = sampler.model_logits(s0)
            phi = phi[torch.isfinite(phi)]
            top = sampler.model_logits(s0).div(0.7).softmax(-1).amax(-1)
        which = f"peaked, lm_head × {factor:g}" if a.peaked else "the pair's own, lm_head std 3/√h"
        print(f"DLLM logits: {which} "
              f"(std {float(phi.std()):.2f}); at the first step the top token's probability at τ 0.7 is > 0.9 at "
              f"{float((top > 0.9).double().mean()):.0%} of the slots (mean {float(top.mean()):.2f})")
        del phi, s0
        results = measure(sampler, prompt, SETTINGS, L, T, a.rows, reps, log=log)
    check_deterministic(results)
    print("\n### Per sample, each part on and off (min / median over the repetitions; counts are deterministic)\n")
    print(table(summary(results, a.rows)))
    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s; load average at the end "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
