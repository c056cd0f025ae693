"""Aggregate a run directory into the paper's table (Markdown + CSV), compute accounting and plots.

Every number is a per-seed mean over prompts, then mean ± SEM over seeds (the paper's ±).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import MATCHED_BON, split_method
from .metrics import mean_sem
from .runner import read_records

METHOD_ORDER = ("none", "best_of_n", MATCHED_BON, "expectation", "aps", "aps_anchored", "entrgi", "particles",
                "particles_entrgi")
METHOD_LABELS = {"none": "Unguided", "best_of_n": "BoN", MATCHED_BON: "BoN (compute-matched)",
                 "expectation": "Expectation", "aps": "APS", "aps_anchored": "APS (anchored)", "entrgi": "EntRGi", "particles": "Particles",
                 "particles_entrgi": "Particles+EntRGi"}


def _method_rank(m: str) -> tuple[int, int]:
    base, n = split_method(m)
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), n or 0)


def method_label(m: str) -> str:
    base, n = split_method(m)
    label = METHOD_LABELS.get(base, base)
    return label if n is None else f"{label} (N={n})"


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return math.fsum(xs) / len(xs) if xs else math.nan


#: metric name -> how to read it from a record
METRICS: dict[str, Callable[[dict], float | None]] = {
    "top1": lambda r: r["top1"],
    "avg": lambda r: r["avg"],
    "wall_time_s": lambda r: r["compute"]["wall_time_s"],
    "dllm_forwards": lambda r: r["compute"]["dllm_forwards"],
    "rm_forwards": lambda r: r["compute"]["rm_forwards"],
    "rm_backwards": lambda r: r["compute"]["rm_backwards"],
    "num_samples": lambda r: r["num_samples"],
}


def metric_names(records: list[dict]) -> list[str]:
    names = list(METRICS)
    judges = sorted({j for r in records for j in r.get("judges", {})})
    names += [f"judge:{j}:top1" for j in judges]
    names += [f"judge:{j}:avg" for j in judges if any(r["judges"].get(j, {}).get("avg") is not None for r in records)]
    names += [f"distinct-{n}" for n in sorted({n for r in records for n in r.get("distinct", {})}, key=int)]
    if any("ppl" in r for r in records):
        names += ["ppl:top1", "ppl:avg"]
    return names


def read_metric(record: dict, name: str) -> float | None:
    if name in METRICS:
        return METRICS[name](record)
    if name.startswith("judge:"):
        _, judge, which = name.split(":")
        return record.get("judges", {}).get(judge, {}).get(which)
    if name.startswith("distinct-"):
        return record.get("distinct", {}).get(name.split("-")[1])
    if name.startswith("ppl:"):
        return record.get("ppl", {}).get(name.split(":")[1])
    raise KeyError(name)


def aggregate(records: list[dict]) -> dict[tuple[str, float, str], dict[str, Any]]:
    """(prompt set, τ, method) -> {metric: (mean, sem), "seeds": n, "prompts": per-seed prompt count}."""
    by_seed: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_seed[(r["prompt_set"], r["temperature"], r["method"])][r["seed"]].append(r)
    names = metric_names(records)
    table = {}
    for key, seeds in by_seed.items():
        row: dict[str, Any] = {"seeds": len(seeds), "prompts": sorted({len(v) for v in seeds.values()})}
        for name in names:
            per_seed = [_mean([read_metric(r, name) for r in rs]) for rs in seeds.values()]
            row[name] = mean_sem([v for v in per_seed if not math.isnan(v)])
        table[key] = row
    return table


def _fmt(ms: tuple[float, float], digits: int = 2) -> str:
    m, s = ms
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f}±{s:.{digits}f}"


def paper_table(table: dict, records: list[dict]) -> str:
    """Rows τ × method; per prompt set: Top@1, Avg@K, and each judge on the Top@1 response."""
    sets = sorted({k[0] for k in table})
    judges = sorted({j for r in records for j in r.get("judges", {})})
    k = sorted({r["num_samples"] for r in records if r["method"] != MATCHED_BON})
    avg_label = f"Avg@{k[0]}" if len(k) == 1 else "Avg@K"
    head = ["τ", "method"] + [f"{s} {c}" for s in sets for c in ("Top@1", avg_label, *judges)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in sorted({k[1] for k in table}):
        for m in sorted({k[2] for k in table if k[1] == t}, key=_method_rank):
            cells = [f"{t:g}", method_label(m)]
            for s in sets:
                row = table.get((s, t, m))
                if row is None:
                    cells += ["–"] * (2 + len(judges))
                    continue
                cells += [_fmt(row["top1"]), _fmt(row["avg"])] + [_fmt(row[f"judge:{j}:top1"]) for j in judges]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def extras_table(table: dict) -> str:
    """Diversity, perplexity and compute per prompt set, τ and method."""
    head = ["set", "τ", "method", "seeds", "prompts/seed", "N", "distinct-1", "distinct-2", "ppl (Top@1)",
            "time/prompt (s)", "DLLM fwd/prompt", "RM fwd/prompt", "RM bwd/prompt"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    nan = (math.nan, math.nan)
    for (s, t, m) in sorted(table, key=lambda k: (k[0], k[1], _method_rank(k[2]))):
        row = table[(s, t, m)]
        lines.append("| " + " | ".join([
            s, f"{t:g}", method_label(m), str(row["seeds"]), "/".join(map(str, row["prompts"])),
            f"{row['num_samples'][0]:.0f}", _fmt(row.get("distinct-1", nan)), _fmt(row.get("distinct-2", nan)),
            _fmt(row.get("ppl:top1", nan), 1), _fmt(row["wall_time_s"]), f"{row['dllm_forwards'][0]:.0f}",
            f"{row['rm_forwards'][0]:.0f}", f"{row['rm_backwards'][0]:.0f}"]) + " |")
    return "\n".join(lines)


def write_csv(table: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt_set", "temperature", "method", "metric", "mean", "sem", "seeds"])
        for (s, t, m), row in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1], _method_rank(kv[0][2]))):
            for name, val in row.items():
                if isinstance(val, tuple):
                    w.writerow([s, t, m, name, val[0], val[1], row["seeds"]])


def write_report(run_dir: str | Path, plots: bool = True) -> Path:
    """Write ``report.md``, ``table.md``, ``table.csv`` (and PNG plots) into ``run_dir``; returns report.md."""
    out = Path(run_dir)
    records = read_records(out)
    if not records:
        raise ValueError(f"no results in {str(out)!r}: run `entrgi eval` first.")
    table = aggregate(records)
    main, extras = paper_table(table, records), extras_table(table)
    (out / "table.md").write_text(main + "\n")
    write_csv(table, out / "table.csv")
    parts = ["# Evaluation report", "", f"Run directory: `{out}` — {len(records)} prompt records. "
             "Mean ± SEM over seeds of per-seed means over prompts; Top@1 / Avg@K by the guiding RM on "
             "discrete text; judges score the Top@1 response.", "", main, "",
             "## Diversity, perplexity and compute", "", extras, ""]
    if plots:
        from .plots import write_plots
        for name in write_plots(records, out):
            parts += [f"![{name}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
