"""Reward against cost for parallel decoding and guidance schedules on the default pair: picks ``--preset fast``.

    python scripts/tune_fast_preset.py                          # every setting below, seeds 1 2 3, 16 prompts
    python scripts/tune_fast_preset.py --only plain entrgi fast --seeds 1
    python scripts/tune_fast_preset.py --table                  # print the table of what is stored

Settings: the demo's (``entrgi.cli.demo``: L = T = 16, K = 4, τ = 0.7, top-p 0.95, EntRGi M = 3, Adam lr 1.0)
on the ``continuations`` prompts (each seed its own 16, the eval's ``paper`` subsampling), generated without
trace and without ``track_reward``, so that the cost is the method's own: ``ComputeStats.flops`` per prompt
(deterministic, docs/performance.md "Cost count"; K samples and the final re-score included). Reported:
Top@1 and Avg@4 of the guiding RM and VADER of the Top@1 sample, mean ± SEM over seeds (the paper's ±),
the cost relative to plain sampling (``plain``: unguided, T = L) and to full EntRGi, and the DLLM forwards
and RM backward passes per sample. Results are appended to ``--out`` (JSON lines, one per setting and
seed; a stored (setting, seed) is not rerun).

Measured (CPU, seeds 1 2 3, 16 prompts each; FLOPs per prompt, ratios to plain unguided T = L):
see the README of this preset in ``entrgi/presets.py`` and the table this script prints.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from entrgi import GuidanceConfig, SamplerConfig, generate  # noqa: E402
from entrgi.cli.demo import DEMO_GUIDANCE, DEMO_PROMPT_SET, DEMO_SAMPLER  # noqa: E402
from entrgi.presets import get_preset  # noqa: E402

TAU = 0.7
FAST = get_preset("fast")
#: name: (sampler overrides, guidance overrides) on top of the demo settings.
SETTINGS: dict[str, tuple[dict, dict]] = {
    "plain": ({}, {"method": "none"}),
    "entrgi": ({}, {}),
    "fast": (dict(FAST.sampler), dict(FAST.guidance)),
    # parallel decoding alone
    "plain-thr0.9": ({"parallel_threshold": 0.9}, {"method": "none"}),
    "plain-thr0.7": ({"parallel_threshold": 0.7}, {"method": "none"}),
    "entrgi-thr0.9": ({"parallel_threshold": 0.9}, {}),
    "entrgi-thr0.9-guided": ({"parallel_threshold": 0.9, "confidence_from": "guided"}, {}),
    "entrgi-thr0.7-guided": ({"parallel_threshold": 0.7, "confidence_from": "guided"}, {}),
    # schedules alone
    "entrgi-every4": ({}, {"guide_every": 4}),
    "entrgi-until0.25": ({}, {"guide_until": 0.25}),
    "entrgi-minw0.5": ({}, {"guide_min_weight": 0.5}),
    "entrgi-tol0.1": ({}, {"inner_tol": 0.1}),
    # combinations
    "thr0.9-guided-until0.25": ({"parallel_threshold": 0.9, "confidence_from": "guided"}, {"guide_until": 0.25}),
    "thr0.9-guided-until0.5": ({"parallel_threshold": 0.9, "confidence_from": "guided"}, {"guide_until": 0.5}),
    "thr0.9-guided-every4": ({"parallel_threshold": 0.9, "confidence_from": "guided"}, {"guide_every": 4}),
    "thr0.7-guided-until0.25": ({"parallel_threshold": 0.7, "confidence_from": "guided"}, {"guide_until": 0.25}),
    "thr0.9-guided-until0.25-M2": ({"parallel_threshold": 0.9, "confidence_from": "guided"},
                                   {"guide_until": 0.25, "inner_steps": 2}),
    "thr0.9-guided-until0.25-tol0.1": ({"parallel_threshold": 0.9, "confidence_from": "guided"},
                                       {"guide_until": 0.25, "inner_tol": 0.1}),
}


def run_one(model, reward, judge, prompts: list[str], seed: int, sampler_kw: dict, guidance_kw: dict) -> dict:
    sampler = SamplerConfig(**{**DEMO_SAMPLER, "temperature": TAU, "seed": seed, **sampler_kw})
    guidance = GuidanceConfig(**{**DEMO_GUIDANCE, **guidance_kw})
    start = time.perf_counter()
    out = generate(model, prompts, reward, sampler=sampler, guidance=guidance, progress=False, trace=False)
    best = [out.best(i) for i in range(len(prompts))]
    rows = len(prompts) * sampler.num_samples
    return {
        "top1": statistics.fmean(out.top1()), "avg": statistics.fmean(out.avg()),
        "vader_top1": statistics.fmean(judge.score(prompts, [s.text for s in best])),
        "flops_per_prompt": out.stats.flops / len(prompts),
        "dllm_forwards_per_sample": out.stats.dllm_forwards / rows,
        "rm_backwards_per_sample": out.stats.rm_backwards / rows,
        "wall_s": time.perf_counter() - start,
    }


def mean_sem(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan)


def table(records: list[dict], seeds: list[int]) -> str:
    by: dict[str, dict[int, dict]] = {}
    for r in records:
        by.setdefault(r["setting"], {})[r["seed"]] = r
    cost = {name: statistics.fmean(v[s]["flops_per_prompt"] for s in seeds)
            for name, v in by.items() if all(s in v for s in seeds)}
    lines = [f"seeds {seeds}; cost = FLOPs per prompt (K = 4 samples), ×plain = / unguided T = L, "
             "×EntRGi = / full EntRGi",
             f"{'setting':<32}{'Top@1':>14}{'Avg@4':>14}{'VADER@1':>14}{'GFLOPs':>9}{'×plain':>8}{'×EntRGi':>9}"
             f"{'fwd/smp':>8}{'bwd/smp':>8}"]
    for name in [n for n in SETTINGS if n in cost]:
        v = [by[name][s] for s in seeds]
        cells = []
        for key in ("top1", "avg", "vader_top1"):
            m, e = mean_sem([r[key] for r in v])
            cells.append(f"{m:>7.2f} ± {e:<4.2f}")
        c = cost[name]
        rel = lambda base: f"{c / cost[base]:.2f}" if base in cost else "n/a"  # noqa: E731
        lines.append(f"{name:<32}{''.join(f'{x:>14}' for x in cells)}{c / 1e9:>9.1f}{rel('plain'):>8}"
                     f"{rel('entrgi'):>9}{statistics.fmean(r['dllm_forwards_per_sample'] for r in v):>8.1f}"
                     f"{statistics.fmean(r['rm_backwards_per_sample'] for r in v):>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--only", nargs="+", choices=list(SETTINGS), help="Run only these settings.")
    p.add_argument("--out", default=str(ROOT / "runs" / "tune-fast-preset.jsonl"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="Only print the table of the stored results.")
    args = p.parse_args(argv)
    out = Path(args.out)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    if not args.table:
        torch.set_num_threads(args.threads)
        from entrgi.default_pair import load_default_pair
        from entrgi.eval.judges import load_judge
        from entrgi.eval.prompts import load_prompt_set

        model, reward = load_default_pair()
        judge = load_judge("vader")
        prompt_set = load_prompt_set(DEMO_PROMPT_SET)
        done = {(r["setting"], r["seed"], json.dumps(r["config"], sort_keys=True)) for r in records}
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.only or list(SETTINGS):
            s_kw, g_kw = SETTINGS[name]
            config = {"sampler": s_kw, "guidance": g_kw, "n_prompts": args.n_prompts}
            for seed in args.seeds:
                if (name, seed, json.dumps(config, sort_keys=True)) in done:
                    continue
                prompts = [q.text for q in prompt_set.subsample(args.n_prompts, "paper", seed)]
                rec = {"setting": name, "seed": seed, "config": config,
                       **run_one(model, reward, judge, prompts, seed, s_kw, g_kw)}
                records.append(rec)
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name} seed {seed}: Top@1 {rec['top1']:.2f} Avg@4 {rec['avg']:.2f} "
                      f"GFLOPs/prompt {rec['flops_per_prompt'] / 1e9:.1f} ({rec['wall_s']:.0f} s)", flush=True)
    current = [r for r in records if r["config"] == {"sampler": SETTINGS[r["setting"]][0],
                                                     "guidance": SETTINGS[r["setting"]][1],
                                                     "n_prompts": args.n_prompts}
               if r["setting"] in SETTINGS]
    print(table(current, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
