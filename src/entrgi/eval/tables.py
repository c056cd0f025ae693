"""What the report and the plots share: method order and labels, metric access, and the aggregation
(per-seed mean over prompts, then mean ± SEM over seeds)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .config import MATCHED_BON, split_method
from .metrics import mean_sem

METHOD_ORDER = ("none", "best_of_n", MATCHED_BON, "expectation", "aps", "aps_anchored", "entrgi", "particles",
                "particles_entrgi")
METHOD_LABELS = {"none": "Unguided", "best_of_n": "BoN", MATCHED_BON: "BoN (compute-matched)",
                 "expectation": "Expectation", "aps": "APS", "aps_anchored": "APS (anchored)", "entrgi": "EntRGi",
                 "particles": "Particles", "particles_entrgi": "Particles+EntRGi"}


def method_rank(m: str) -> tuple[int, int]:
    """Sort key: the paper's method order, then N."""
    base, n = split_method(m)
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), n or 0)


def method_label(m: str) -> str:
    base, n = split_method(m)
    label = METHOD_LABELS.get(base, base)
    return label if n is None else f"{label} (N={n})"


def cell_label(name: str, own: str | None = None, preset: str | None = None) -> str:
    """A method's label in the tables: its ``own`` label, else its name's (with the run's ``preset`` when one
    applied to it: ``EntRGi (fast)``)."""
    if own is not None:
        return own
    base = method_label(name)
    return f"{base} ({preset})" if preset else base


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_mean(xs) -> float:
    """Mean of the finite numbers in ``xs`` (None and NaN/inf left out: the report lists them); NaN if none."""
    xs = [x for x in xs if is_finite_number(x)]
    return math.fsum(xs) / len(xs) if xs else math.nan


#: metric name -> how to read it from a record
METRICS: dict[str, Callable[[dict], float | None]] = {
    "top1": lambda r: r["top1"],
    "avg": lambda r: r["avg"],
    "wall_time_s": lambda r: r["compute"]["wall_time_s"],
    "dllm_forwards": lambda r: r["compute"]["dllm_forwards"],
    "rm_forwards": lambda r: r["compute"]["rm_forwards"],
    "rm_backwards": lambda r: r["compute"]["rm_backwards"],
    "flops": lambda r: r["compute"].get("flops"),  # absent in records written before cost estimates
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


def non_finite_metrics(record: dict, names: list[str]) -> list[str]:
    """The metrics of ``record`` that are present but not finite numbers (NaN, inf, text). Pseudo-perplexity
    is left out: it is NaN by definition for an empty response."""
    bad = []
    for name in names:
        if name.startswith("ppl:"):
            continue
        try:
            v = read_metric(record, name)
        except (KeyError, TypeError, AttributeError):
            bad.append(name)  # a record without the field the others have
            continue
        if v is not None and not is_finite_number(v):
            bad.append(name)
    return bad


def aggregate(records: list[dict]) -> dict[tuple[str, float, str], dict[str, Any]]:
    """(prompt set, τ, method) -> {metric: (mean, sem), "seeds": n, "prompts": per-seed prompt count, "label": the
    method's label in the tables}."""
    by_seed: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_seed[(r["prompt_set"], r["temperature"], r["method"])][r["seed"]].append(r)
    names = metric_names(records)
    table = {}
    for key, seeds in by_seed.items():
        first = next(iter(seeds.values()))[0]
        row: dict[str, Any] = {"seeds": len(seeds), "prompts": sorted({len(v) for v in seeds.values()}),
                               "label": first.get("label") or method_label(key[2])}
        for name in names:
            per_seed = [finite_mean([_safe_metric(r, name) for r in rs]) for rs in seeds.values()]
            row[name] = mean_sem([v for v in per_seed if not math.isnan(v)])
        table[key] = row
    return table


def _safe_metric(record: dict, name: str) -> float | None:
    try:
        return read_metric(record, name)
    except (KeyError, TypeError, AttributeError):
        return None
