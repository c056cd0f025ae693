"""Aggregate a run directory into the paper's table (Markdown + CSV), compute accounting and plots.

Every number is a per-seed mean over prompts, then mean ± SEM over seeds (the paper's ±). Records are checked
against the record schema and de-duplicated by key; corrupted, invalid or torn lines, non-finite metrics and
curves are left out of the means and plots but never silently: a warning names them and report.md lists them
under "Data problems" (file and line). Records of different configurations (run identities) are never averaged
together: the report refuses them. The report's files are written only where the folder's manifest proves an
entrgi command wrote them (:class:`~entrgi.files.OwnedFolder`).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

from ..files import OwnedFolder
from .config import MATCHED_BON
from .records import DataProblem, config_difference, configurations, load_results, results_lock
from .tables import (
    METHOD_LABELS,
    METHOD_ORDER,
    METRICS,
    aggregate,
    method_label,
    method_rank,
    metric_names,
    non_finite_metrics,
    read_metric,
)

__all__ = ["METHOD_LABELS", "METHOD_ORDER", "METRICS", "REPORT_FILES", "aggregate", "check_one_configuration",
           "data_problems", "method_label", "method_rank", "metric_names", "paper_table", "extras_table", "read_metric",
           "write_csv", "write_report"]

#: The files a report writes into its run folder (the plots only when the records support them).
REPORT_FILES = ("report.md", "table.md", "table.csv", "reward_vs_step.png", "entropy_weight_vs_step.png", "bars.png",
                "reward_vs_compute.png")


def _fmt(ms: tuple[float, float], digits: int = 2) -> str:
    m, s = ms
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f}±{s:.{digits}f}"


def paper_table(table: dict, records: list[dict]) -> str:
    """Rows τ × method; per prompt set: Top@1, Avg@K, and each judge on the Top@1 response."""
    sets = sorted({k[0] for k in table})
    judges = sorted({j for r in records for j in r.get("judges", {})})
    k = sorted({r["num_samples"] for r in records if r["method"] != MATCHED_BON and not r.get("matched")})
    avg_label = f"Avg@{k[0]}" if len(k) == 1 else "Avg@K"
    head = ["τ", "method"] + [f"{s} {c}" for s in sets for c in ("Top@1", avg_label, *judges)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in sorted({k[1] for k in table}):
        for m in sorted({k[2] for k in table if k[1] == t}, key=method_rank):
            cells = [f"{t:g}", table[next(k for k in table if k[1] == t and k[2] == m)]["label"]]
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
            "time/prompt (s)", "GFLOP/prompt", "DLLM fwd/prompt", "RM fwd/prompt", "RM bwd/prompt"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    nan = (math.nan, math.nan)
    for (s, t, m) in sorted(table, key=lambda k: (k[0], k[1], method_rank(k[2]))):
        row = table[(s, t, m)]
        lines.append("| " + " | ".join([
            s, f"{t:g}", row["label"], str(row["seeds"]), "/".join(map(str, row["prompts"])),
            f"{row['num_samples'][0]:.0f}", _fmt(row.get("distinct-1", nan)), _fmt(row.get("distinct-2", nan)),
            _fmt(row.get("ppl:top1", nan), 1), _fmt(row["wall_time_s"]), _gflop(row["flops"][0]),
            f"{row['dllm_forwards'][0]:.0f}",
            f"{row['rm_forwards'][0]:.0f}", f"{row['rm_backwards'][0]:.0f}"]) + " |")
    return "\n".join(lines)


def _gflop(flops: float) -> str:
    return "–" if math.isnan(flops) else f"{flops / 1e9:.4g}"


def data_problems(results) -> list[DataProblem]:
    """The lines of :func:`~entrgi.eval.records.load_results` it could not use, then every record's non-finite
    (or missing) metrics, in file order."""
    problems = list(results.problems)
    names = metric_names(results.records)
    for rec, (path, line) in zip(results.records, results.sources):
        bad = non_finite_metrics(rec, names)
        if bad:
            vals = ", ".join(f"{n}={_show(rec, n)}" for n in bad)
            problems.append(DataProblem(path, line, "non-finite metric (left out of its mean)", vals))
    return sorted(problems, key=lambda p: (p.path, p.line))


def _show(rec: dict, name: str) -> str:
    try:
        return repr(read_metric(rec, name))
    except (KeyError, TypeError, AttributeError):
        return "missing"


def problems_section(problems: list[DataProblem], limit: int = 100) -> list[str]:
    kinds: dict[str, int] = {}
    for p in problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    lines = ["## Data problems", "", f"{len(problems)} line(s) of the results were not used as they stand: "
             + ", ".join(f"{n} × {k}" for k, n in kinds.items()) + ". Duplicates keep the first record with that "
             "key; `entrgi eval` on this folder removes a torn last line and recomputes missing records.", ""]
    lines += [f"- {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"- … and {len(problems) - limit} more")
    return lines + [""]


def write_csv(table: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt_set", "temperature", "method", "metric", "mean", "sem", "seeds"])
        for (s, t, m), row in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1], method_rank(kv[0][2]))):
            for name, val in row.items():
                if isinstance(val, tuple):
                    w.writerow([s, t, m, name, val[0], val[1], row["seeds"]])


def check_one_configuration(results, out: Path) -> None:
    """``ValueError`` (one line, naming where each configuration's records are) when the records were computed
    under more than one run identity: averaging them together would be silently wrong."""
    groups = configurations(results.records)
    if len(groups) <= 1:
        return
    parts = []
    first = results.records[next(iter(groups.values()))[0]]
    for run, idx in groups.items():
        path, line = results.sources[idx[0]]
        name = f"run {run}" if run else "records without a stored configuration (older entrgi)"
        parts.append(f"{name}: {len(idx)} record(s), first at {Path(path).name} line {line}")
    other = results.records[list(groups.values())[1][0]]
    differ = config_difference(first.get("config"), other.get("config"))
    raise ValueError(f"{str(out)!r} holds records of {len(groups)} different configurations, which a report would "
                     f"average together ({'; '.join(parts)}; they differ in {differ}). Move each configuration's "
                     "results files into a folder of its own and report each.")


def write_report(run_dir: str | Path, plots: bool = True) -> Path:
    """Write ``report.md``, ``table.md``, ``table.csv`` (and PNG plots) into ``run_dir``; returns report.md.

    Under the report's lock (``.lock-report.md``); refused (nothing written) when the records mix configurations
    or when a file of :data:`REPORT_FILES` there is not provably an entrgi command's."""
    out = Path(run_dir)
    if not out.is_dir():
        raise ValueError(f"no results in {str(out)!r} (no such folder): run `entrgi eval` first.")
    folder = OwnedFolder(out, flag="RUN_DIR", command="entrgi report")
    with results_lock(out / "report.md"):
        return _write(folder, plots)


def _write(folder: OwnedFolder, plots: bool) -> Path:
    out = folder.path
    results = load_results(out)
    if not results.records:
        raise ValueError(f"no results in {str(out)!r}: run `entrgi eval` first.")
    check_one_configuration(results, out)
    folder.refuse_foreign(REPORT_FILES)
    records = results.records
    problems = data_problems(results)
    if problems:
        shown = "; ".join(map(str, problems[:5])) + ("; …" if len(problems) > 5 else "")
        warnings.warn(f"{len(problems)} data problem(s) in {out} (listed in report.md, 'Data problems'): {shown}",
                      stacklevel=2)
    table = aggregate(records)
    main, extras = paper_table(table, records), extras_table(table)
    folder.write_text("table.md", main + "\n")
    folder.write("table.csv", lambda p: write_csv(table, p))
    parts = ["# Evaluation report", "", f"Run directory: `{out}` — {len(records)} prompt records. "
             "Mean ± SEM over seeds of per-seed means over prompts; Top@1 / Avg@K by the guiding RM on "
             "discrete text; judges score the Top@1 response."
             + (f" **{len(problems)} data problem(s)**: see *Data problems* below." if problems else ""),
             "", main, "",
             "## Diversity, perplexity and compute", "", extras, ""]
    if plots:
        from .plots import curve_gaps, write_plots
        for name in write_plots(records, out, folder):
            parts += [f"![{name}]({name})", ""]
        gaps = [g for key in ("estimate", "entropy_weight") for g in curve_gaps(records, key)]
        if gaps:
            warnings.warn(f"{len(gaps)} plotted curve(s) of {out} miss seeds at some steps: {gaps[0]}"
                          + (" …" if len(gaps) > 1 else ""), stacklevel=3)
            parts += ["## Incomplete curves", "", "These curves average fewer seeds at some steps than at others:",
                      "", *[f"- {g}" for g in gaps], ""]
    if problems:
        parts += problems_section(problems)
    folder.write_text("report.md", "\n".join(parts))
    return out / "report.md"
