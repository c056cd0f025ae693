"""PNG plots of a run: reward vs denoising step, entropy weight vs step, per-method bars with SEM."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .metrics import mean_sem  # noqa: E402
from .tables import aggregate, method_label, method_rank  # noqa: E402


def curve_gaps(records: list[dict], key: str) -> list[str]:
    """The curves ``key`` whose steps are not all averaged over the same seeds (a seed's records stop early or miss
    a step): ``EntRGi (continuations, τ = 0.7): steps 9-16 from 1 of 3 seeds``. The report lists them: a partial
    curve is never plotted silently."""
    acc: dict[tuple, dict[int, set]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        for sample_curve in r.get("curves", {}).get(key, []):
            for step, v in enumerate(sample_curve):
                if v is not None:
                    acc[(r["prompt_set"], r["temperature"], r["method"])][step].add(r["seed"])
    gaps = []
    for (ps, t, m), per_step in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1], method_rank(kv[0][2]))):
        seeds = set().union(*per_step.values())
        short = sorted(s for s, have in per_step.items() if len(have) < len(seeds))
        if short:
            fewest = min(len(per_step[s]) for s in short)
            gaps.append(f"{key} of {method_label(m)} ({ps}, τ = {t:g}): steps {short[0] + 1}-{short[-1] + 1} "
                        f"from as few as {fewest} of {len(seeds)} seeds")
    return gaps


def step_curve(records: list[dict], key: str) -> dict[tuple, tuple[list[float], list[float]]]:
    """(prompt set, τ, method) -> (mean, SEM over seeds) of curve ``key`` at each step."""
    acc: dict[tuple, dict[int, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        for sample_curve in r.get("curves", {}).get(key, []):
            for step, v in enumerate(sample_curve):
                if v is not None:
                    acc[(r["prompt_set"], r["temperature"], r["method"])][r["seed"]][step].append(v)
    out = {}
    for k, seeds in acc.items():
        steps = sorted({s for per in seeds.values() for s in per})
        means, sems = [], []
        for s in steps:
            per_seed = [sum(v[s]) / len(v[s]) for v in seeds.values() if v.get(s)]
            m, e = mean_sem(per_seed)
            means.append(m)
            sems.append(0.0 if math.isnan(e) else e)
        out[k] = (means, sems)
    return out


def _panels(keys):
    panels = sorted({(k[0], k[1]) for k in keys})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    return panels, fig, axes[0]


def plot_curve(records: list[dict], key: str, ylabel: str, path: Path) -> bool:
    curves = step_curve(records, key)
    if not curves:
        return False
    panels, fig, axes = _panels(curves)
    for ax, (ps, t) in zip(axes, panels):
        for m in sorted({k[2] for k in curves if k[:2] == (ps, t)}, key=method_rank):
            mean, sem = curves[(ps, t, m)]
            x = range(len(mean))
            ax.plot(x, mean, label=method_label(m))
            ax.fill_between(x, [a - b for a, b in zip(mean, sem)], [a + b for a, b in zip(mean, sem)], alpha=0.2)
        ax.set_title(f"{ps}, τ = {t:g}")
        ax.set_xlabel("denoising step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_bars(records: list[dict], path: Path) -> None:
    table = aggregate(records)
    judges = sorted({j for r in records for j in r.get("judges", {})})
    metrics = [("top1", "Top@1 (guiding RM)"), ("avg", "Avg@K (guiding RM)")] + [
        (f"judge:{j}:top1", f"{j} (Top@1 response)") for j in judges]
    panels = sorted({(k[0], k[1]) for k in table})
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(5.2 * len(panels), 2.8 * len(metrics)), squeeze=False)
    for col, (ps, t) in enumerate(panels):
        methods = sorted({k[2] for k in table if k[:2] == (ps, t)}, key=method_rank)
        for row, (name, label) in enumerate(metrics):
            ax = axes[row][col]
            vals = [table[(ps, t, m)][name] for m in methods]
            ax.bar(range(len(methods)), [v[0] for v in vals],
                   yerr=[0 if math.isnan(v[1]) else v[1] for v in vals], capsize=3,
                   color=[f"C{i}" for i in range(len(methods))])
            ax.set_xticks(range(len(methods)), [method_label(m) for m in methods], rotation=20, fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(f"{ps}, τ = {t:g} (mean ± SEM over seeds)")
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reward_vs_compute(records: list[dict], path: Path) -> None:
    """Top@1 against the estimated FLOPs per prompt (wall time for records without them), one point per
    method (± SEM over seeds); the Best-of-N family (any N) is joined by a line: the frontier that guidance
    must beat."""
    table = aggregate(records)
    use_flops = all(not math.isnan(row["flops"][0]) and row["flops"][0] > 0 for row in table.values())
    cost, xlabel = ("flops", "estimated FLOPs per prompt (log)") if use_flops else (
        "wall_time_s", "wall time per prompt (s, log)")
    panels = sorted({(k[0], k[1]) for k in table})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (ps, t) in zip(axes[0], panels):
        methods = sorted({k[2] for k in table if k[:2] == (ps, t)}, key=method_rank)
        bon = []
        for i, m in enumerate(methods):
            row = table[(ps, t, m)]
            x, (y, e) = row[cost][0], row["top1"]
            ax.errorbar([x], [y], yerr=[0 if math.isnan(e) else e], fmt="o", color=f"C{i}", capsize=3,
                        label=method_label(m))
            if m.split("@")[0] in ("best_of_n", "best_of_n_matched"):
                bon.append((x, y))
        if len(bon) > 1:
            bon.sort()
            ax.plot([b[0] for b in bon], [b[1] for b in bon], "k--", lw=1, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Top@1 (guiding RM)")
        ax.set_title(f"{ps}, τ = {t:g}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(records: list[dict], out: Path, folder=None) -> list[str]:
    """Write the plots that the records support; returns their file names. With ``folder`` (an
    :class:`~entrgi.files.OwnedFolder`), each goes through it (replacing only a file it proves an entrgi
    command wrote)."""
    plots = [("reward_vs_step.png", lambda p: plot_curve(records, "estimate", "RM reward of predicted completion", p)),
             ("entropy_weight_vs_step.png",
              lambda p: plot_curve(records, "entropy_weight", "mean entropy weight w", p)),
             ("bars.png", lambda p: plot_bars(records, p)),
             ("reward_vs_compute.png", lambda p: plot_reward_vs_compute(records, p))]
    written = []
    for name, plot in plots:
        if folder is not None:
            if folder.write(name, plot):
                written.append(name)
        elif plot(out / name) is not False:
            written.append(name)
    return written
