"""Reward against cost on the default pair: Best-of-N, full EntRGi, the fast preset, schedules, particles.

    python scripts/frontier.py                                  # every setting of configs/frontier.yaml
    python scripts/frontier.py --only plain entrgi fast --seeds 1
    python scripts/frontier.py --table --plot docs/images/frontier.png   # only report what is stored

Each setting is resolved as every entry point resolves settings (:func:`entrgi.settings.resolve_settings`): the
default pair's own settings (L = T = 16, K = 4, top-p 0.95, EntRGi M = 3, Adam lr 1.0), then the setting's preset,
method and sections from ``configs/frontier.yaml``, then τ and the seed; it runs on the ``continuations`` prompts
(each seed its own 16, the eval's ``paper`` subsampling), without trace and without ``track_reward`` (their cost is
counted apart anyway), so that the cost is the method's own: ``ComputeStats.flops`` per prompt (deterministic, docs/performance.md "Cost count"; all samples and
the final re-score included). Reported per setting: Top@1 and Avg@K of the guiding RM (Best-of-N@N: the best of
its N samples, and the mean over them), VADER of the Top@1 sample, mean ± SEM over seeds, the cost relative to
plain sampling (``plain``: unguided, T = L) and to full EntRGi, and the DLLM forwards / RM backward passes per
sample. Then the claims of docs/fast-guidance.md, computed from the same records: the fast preset against full
EntRGi (reward difference in SEMs, cost ratio), against plain sampling (cost ratio), and against Best-of-N at the
fast preset's cost (Best-of-N's Top@1 interpolated linearly in log-cost between the two Ns around it, per seed;
the paired difference mean ± SEM over seeds).

Results are appended to ``--out`` (JSON lines, one per setting and seed); a stored (setting, seed, config) is
not rerun, so an interrupted run resumes.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from entrgi import generate  # noqa: E402
from entrgi.sampling.outputs import ComputeStats  # noqa: E402
from entrgi.settings import RunSettings, model_defaults, resolve_settings  # noqa: E402

PROMPT_SET = "continuations"

CONFIG = ROOT / "configs" / "frontier.yaml"
#: The paper's pair for the projected cost: (N_dllm, N_rm) non-embedding parameters, the DLLM's output layer and
#: the RM's V·d, from the model cards (Qwen2.5-7B, the base of Dream-v0-Instruct-7B: 6.53B non-embedding, an untied
#: 152,064 × 3,584 lm_head, V = 152,064; Qwen3-0.6B / Qwen3-1.7B, the bases of Skywork-Reward-V2-Qwen3-0.6B / -1.7B:
#: 0.44B / 1.4B non-embedding, d = 1024 / 2048).
DREAM_HEAD = 152064 * 3584
PAPER_PAIRS = {"7B+0.6B": (6.53e9, 0.44e9, DREAM_HEAD, 152064 * 1024),
               "7B+1.7B": (6.53e9, 1.4e9, DREAM_HEAD, 152064 * 2048)}


def load_settings(path: Path) -> tuple[dict, dict[str, dict]]:
    """The YAML's run fields and its settings: ``kind`` (``sample``, or ``best_of_n`` with its ``ns``) and the
    setting's fields as a settings layer (``preset``, ``method``, ``sampler``, ``guidance``, ``search``)."""
    data = yaml.safe_load(path.read_text())
    settings = {}
    for name, raw in (data.get("settings") or {}).items():
        raw = dict(raw or {})
        kind = raw.pop("kind", "sample")
        ns = [int(n) for n in raw.pop("ns", [4, 8, 16, 32])]
        settings[name] = {"kind": kind, "layer": raw, **({"ns": ns} if kind == "best_of_n" else {})}
    return data, settings


def resolved(setting: dict, temperature: float, seed: int | None = None) -> RunSettings:
    """A setting's run settings on the default pair at ``temperature`` (and ``seed``); Best-of-N with max(ns)
    samples."""
    layer = {k: dict(v) if isinstance(v, dict) else v for k, v in setting["layer"].items()}
    sampler = {**layer.get("sampler", {}), "temperature": temperature, **({} if seed is None else {"seed": seed})}
    if setting["kind"] == "best_of_n":
        layer["method"] = "best_of_n"
        sampler["num_samples"] = max(setting["ns"])
    layer["sampler"] = sampler
    return resolve_settings(model_defaults=model_defaults(None), overrides=layer, overrides_source="the setting")


def record_config(setting: dict, n_prompts: int, temperature: float) -> dict:
    """What a record stores as its ``config``: the resolved settings (seed aside); a stored record counts only while
    this still matches."""
    settings = resolved(setting, temperature).to_dict()
    settings["sampler"].pop("seed")
    return {"settings": settings, "kind": setting["kind"], "n_prompts": n_prompts}


def current_records(records: list[dict], settings: dict[str, dict], n_prompts: int, temperature: float) -> list[dict]:
    """The records of the config's settings run with their current fields (stale ones left out)."""
    return [r for r in records if r["setting"] in settings
            and r["config"] == record_config(settings[r["setting"]], n_prompts, temperature)]


def labels(settings: dict[str, dict]) -> list[str]:
    """The table's rows in config order: a setting's name, or ``name@N`` for each N of a Best-of-N setting."""
    return [lab for name, st in settings.items()
            for lab in ([f"{name}@{n}" for n in st["ns"]] if st["kind"] == "best_of_n" else [name])]


def best_of_n_records(out, judge, prompts: list[str], ns: list[int], wall_s: float) -> dict[int, dict]:
    """Best-of-N for every N in ``ns`` from one run of max(ns) samples per prompt: a prompt's first N samples
    are exactly those of a Best-of-N run (each (prompt, sample) row has its own random stream, independent of the
    batch); the counts are the run's scaled by N / max(ns) (exact for the DLLM; the final re-score's padding
    into batches of 16 texts differs by a few tokens)."""
    top = max(ns)
    st, n = out.stats, len(prompts)
    recs = {}
    for N in ns:
        groups = [g[:N] for g in out.samples]
        best = [max(g, key=lambda s: s.reward) for g in groups]
        f = N / top
        recs[N] = {
            "top1": statistics.fmean(b.reward for b in best),
            "avg": statistics.fmean(statistics.fmean(s.reward for s in g) for g in groups),
            "vader_top1": statistics.fmean(judge.score(prompts, [b.text for b in best])),
            "flops_per_prompt": st.flops * f / n,
            "counts_per_prompt": {k: getattr(st, k) * f / n for k in COUNTS},
            "dllm_forwards_per_sample": st.dllm_forwards / (n * top), "rm_backwards_per_sample": 0.0,
            "wall_s": wall_s * f,
        }
    return recs


COUNTS = ("dllm_tokens", "dllm_logit_tokens", "rm_forward_tokens", "rm_backward_tokens", "soft_embedding_macs")


def run_one(model, reward, judge, prompts: list[str], seed: int, temperature: float, setting: dict) -> dict:
    s = resolved(setting, temperature, seed)
    start = time.perf_counter()
    out = generate(model, prompts, reward, sampler=s.sampler, guidance=s.guidance, search=s.search, progress=False,
                   trace=False)
    if setting["kind"] == "best_of_n":  # one run of max(ns) samples; a record per N
        vd = int(reward.embedding_table().numel())
        return {N: {**r, "rm_vd": vd} for N, r in
                best_of_n_records(out, judge, prompts, setting["ns"], time.perf_counter() - start).items()}
    best = [out.best(i) for i in range(len(prompts))]
    rows = len(prompts) * s.sampler.num_samples
    st, n = out.stats, len(prompts)
    return {
        "counts_per_prompt": {k: getattr(st, k) / n for k in COUNTS},
        "rm_vd": int(reward.embedding_table().numel()),
        "top1": statistics.fmean(out.top1()), "avg": statistics.fmean(out.avg()),
        "vader_top1": statistics.fmean(judge.score(prompts, [s.text for s in best])),
        "flops_per_prompt": out.stats.flops / len(prompts),
        "dllm_forwards_per_sample": out.stats.dllm_forwards / rows,
        "rm_backwards_per_sample": out.stats.rm_backwards / rows,
        "wall_s": time.perf_counter() - start,
    }


def projected_flops(rec: dict, pair: str) -> float:
    """The record's counts priced at a paper pair's parameter counts (:data:`PAPER_PAIRS`): the same tokens
    through bigger models, the soft embeddings scaled by the ratio of the RMs' V·d (docs/fast-guidance.md)."""
    n_dllm, n_rm, n_head, vd = PAPER_PAIRS[pair]
    c = rec["counts_per_prompt"]
    stats = ComputeStats(**{k: c[k] for k in COUNTS})
    stats.soft_embedding_macs = c["soft_embedding_macs"] * vd / rec["rm_vd"]
    return stats.estimate_flops(n_dllm, n_rm, n_head)


def mean_sem(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan)


def complete(records: list[dict], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """setting -> seed -> record, for the settings stored for every seed."""
    by: dict[str, dict[int, dict]] = {}
    for r in records:
        by.setdefault(r.get("label", r["setting"]), {})[r["seed"]] = r
    return {name: v for name, v in by.items() if all(s in v for s in seeds)}


def bon_at_cost(by: dict, seed: int, flops: float) -> float | None:
    """Best-of-N's Top@1 at ``flops`` for one seed: linear in log-cost between the two stored Ns around it."""
    points = sorted((r[seed]["flops_per_prompt"], r[seed]["top1"]) for name, r in by.items()
                    if name.startswith("bon@"))
    for (c0, t0), (c1, t1) in zip(points, points[1:]):
        if c0 <= flops <= c1:
            a = (math.log(flops) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return t0 + a * (t1 - t0)
    return None


def table(by: dict, seeds: list[int], order: list[str]) -> str:
    cost = {n: statistics.fmean(v[s]["flops_per_prompt"] for s in seeds) for n, v in by.items()}
    lines = [f"seeds {seeds}; GFLOPs per prompt (all samples); ×plain = / unguided T = L; ×EntRGi = / full EntRGi", "",
             "| setting | Top@1 | Avg@K | VADER@1 | GFLOPs | ×plain | ×EntRGi | DLLM fwd / sample | RM bwd / sample | "
             + " | ".join(f"×plain at {p}" for p in PAPER_PAIRS) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(PAPER_PAIRS)]
    proj = {p: {n: statistics.fmean(projected_flops(v[s], p) for s in seeds) for n, v in by.items()}
            for p in PAPER_PAIRS}
    for name in [n for n in order if n in by]:
        v = [by[name][s] for s in seeds]
        cells = ["{:.2f} ± {:.2f}".format(*mean_sem([r[key] for r in v])) for key in ("top1", "avg", "vader_top1")]
        rel = lambda base: f"{cost[name] / cost[base]:.2f}" if base in cost else "n/a"  # noqa: E731
        lines.append(f"| {name} | {' | '.join(cells)} | {cost[name] / 1e9:.1f} | {rel('plain')} | {rel('entrgi')} | "
                     f"{statistics.fmean(r['dllm_forwards_per_sample'] for r in v):.1f} | "
                     f"{statistics.fmean(r['rm_backwards_per_sample'] for r in v):.1f} | "
                     + " | ".join(f"{proj[p][name] / proj[p]['plain']:.2f}" if "plain" in by else "n/a"
                                  for p in PAPER_PAIRS) + " |")
    return "\n".join(lines)


def claims(by: dict, seeds: list[int], name: str = "fast") -> str:
    """The fast preset against full EntRGi, plain sampling and Best-of-N at its cost (docs/fast-guidance.md)."""
    if not all(k in by for k in (name, "entrgi", "plain")):
        return f"(claims need `{name}`, `entrgi` and `plain` for every seed)"
    cost = lambda n: statistics.fmean(by[n][s]["flops_per_prompt"] for s in seeds)  # noqa: E731
    out = [f"`{name}`: cost {cost(name) / cost('entrgi'):.2f}× full EntRGi, {cost(name) / cost('plain'):.2f}× plain "
           "sampling (T = L)"]
    for pair in PAPER_PAIRS:
        pc = lambda n: statistics.fmean(projected_flops(by[n][s], pair) for s in seeds)  # noqa: E731,B023
        out.append(f"  priced at {pair}: {pc(name) / pc('entrgi'):.2f}× full EntRGi, "
                   f"{pc(name) / pc('plain'):.2f}× plain")
    for key, label in (("top1", "Top@1"), ("avg", "Avg@K"), ("vader_top1", "VADER@1")):
        m, e = mean_sem([by[name][s][key] for s in seeds])
        mr, er = mean_sem([by["entrgi"][s][key] for s in seeds])
        out.append(f"  {label}: {m:.2f} ± {e:.2f} vs EntRGi {mr:.2f} ± {er:.2f} (difference "
                   f"{(m - mr) / er if er > 0 else math.nan:+.1f} EntRGi SEMs)")
    diffs = []
    for s in seeds:
        b = bon_at_cost(by, s, by[name][s]["flops_per_prompt"])
        if b is not None:
            diffs.append(by[name][s]["top1"] - b)
    if len(diffs) == len(seeds):
        d, e = mean_sem(diffs)
        out.append(f"  Top@1 − Best-of-N at the same cost (paired over seeds): {d:+.2f} ± {e:.2f} "
                   f"({d / e if e > 0 else math.nan:.1f} SEMs)")
    else:
        out.append("  Best-of-N at the same cost: outside the stored Ns' cost range")
    return "\n".join(out)


def plot(by: dict, seeds: list[int], order: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, key, label in ((axes[0], "top1", "Top@1 (RM reward)"), (axes[1], "avg", "Avg@K (RM reward)")):
        bons = sorted((n for n in by if n.startswith("bon@")), key=lambda n: int(n[4:]))
        stat = {n: (statistics.fmean(by[n][s]["flops_per_prompt"] for s in seeds) / 1e9,
                    *mean_sem([by[n][s][key] for s in seeds])) for n in by}
        if bons:
            xs, ys, es = zip(*(stat[n] for n in bons))
            ax.errorbar(xs, ys, yerr=es, marker="o", color="0.45", capsize=3,
                        label=f"Best-of-N (N = {bons[0][4:]} … {bons[-1][4:]})")
            for n in bons:
                ax.annotate(n[4:], stat[n][:2], textcoords="offset points", xytext=(4, -10), fontsize=8,
                            color="0.35")
        others = iter(["C1", "C2", "C4", "C5", "C6", "C8", "C9", "navy", "C7", "0.5"])
        for n in [n for n in order if n in by and not n.startswith("bon@")]:
            style = dict(marker="*", markersize=14, color="C3") if n == "fast" else \
                dict(marker="s", color="C0") if n == "entrgi" else dict(marker="D", color="k") if n == "plain" else \
                dict(marker="o", color=next(others, "0.3"))
            x, y, e = stat[n]
            ax.errorbar([x], [y], yerr=[e], capsize=3, linestyle="none", label=n, **style)
        ax.set_xscale("log")
        ticks = [t for t in (25, 50, 100, 200, 400, 800) if min(v[0] for v in stat.values()) * 0.8 <= t
                 <= max(v[0] for v in stat.values()) * 1.25]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("cost: GFLOPs per prompt (deterministic count)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=6, frameon=False)
    fig.suptitle(f"Default pair, τ = 0.7, K = 4, L = 16, mean ± SEM over seeds {seeds}", fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="Default: the config's.")
    p.add_argument("--only", nargs="+", help="Run only these settings.")
    p.add_argument("--out", default=str(ROOT / "runs" / "frontier.jsonl"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="Only report the stored results.")
    p.add_argument("--plot", default=None, help="Also draw the frontier to this PNG.")
    args = p.parse_args(argv)
    data, settings = load_settings(Path(args.config))
    seeds = args.seeds or list(data.get("seeds", [1, 2, 3]))
    n_prompts, tau = int(data.get("n_prompts", 16)), float(data.get("temperature", 0.7))
    unknown = sorted(set(args.only or []) - set(settings))
    if unknown:
        p.error(f"--only: unknown settings {unknown}; the config has {list(settings)}")
    out = Path(args.out)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    key = lambda name: record_config(settings[name], n_prompts, tau)  # noqa: E731
    if not args.table:
        torch.set_num_threads(args.threads)
        from entrgi.default_pair import load_default_pair
        from entrgi.eval.judges import load_judge
        from entrgi.eval.prompts import load_prompt_set

        model, reward = load_default_pair()
        judge = load_judge("vader")
        prompt_set = load_prompt_set(PROMPT_SET)
        done = {(r["setting"], r["seed"], json.dumps(r["config"], sort_keys=True)) for r in records}
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.only or list(settings):
            for seed in seeds:
                if (name, seed, json.dumps(key(name), sort_keys=True)) in done:
                    continue
                prompts = [q.text for q in prompt_set.subsample(n_prompts, "paper", seed)]
                result = run_one(model, reward, judge, prompts, seed, tau, settings[name])
                parts = {f"{name}@{N}": r for N, r in result.items()} if settings[name]["kind"] == "best_of_n" \
                    else {name: result}
                for label, r in parts.items():
                    rec = {"setting": name, "label": label, "seed": seed, "config": key(name), **r}
                    records.append(rec)
                    with out.open("a") as f:  # saved before anything else can fail
                        f.write(json.dumps(rec) + "\n")
                    print(f"{label} seed {seed}: Top@1 {rec['top1']:.2f} Avg@K {rec['avg']:.2f} "
                          f"GFLOPs/prompt {rec['flops_per_prompt'] / 1e9:.1f} ({rec['wall_s']:.0f} s)", flush=True)
    by = complete(current_records(records, settings, n_prompts, tau), seeds)
    order = labels(settings)
    print(table(by, seeds, order))
    print()
    print(claims(by, seeds, "fast"))
    if args.plot:
        shown = data.get("plot")  # the config's `plot:` list of settings (default: all)
        plot(by, seeds, [lab for lab in order if not shown or lab.split("@")[0] in shown], Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
