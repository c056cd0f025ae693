"""Measured tables of docs/rewards.md on the embedded default pair (demo settings: L = T = 16, K = 4, τ = 0.7,
EntRGi M = 3, Adam lr 1.0), through the evaluation harness (``entrgi.eval``):

(a) a constraint text reward (``examples/constraint_rewards.py:both_constraints``: mentions a positive word +
    fewer than 12 words) used by unguided sampling (not at all), Best-of-N (the pick), particles (the weights)
    and hybrid particles (EntRGi gradients from the sentiment RM, weights from the text reward): how often the
    constraints hold, and the RM reward;
(b) reward vs DLLM pseudo-perplexity of EntRGi with the KL penalty λ (``GuidanceConfig.kl_weight``).

    python scripts/reward_tables.py                             # seed 1 for both (~25 min on 2 loaded cores)
    python scripts/reward_tables.py --seeds-a 1 2 3 --seeds-b 1 2   # the docs' tables (resumes the seed-1 runs)

Runs are resumable (one folder per table under ``--out``); the tables (Markdown) go to stdout and
``OUT/tables.md``. Cells are mean ± SEM over seeds of each seed's mean over its 16 prompts (SEM "–" for one seed).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from entrgi.cli.demo import DEMO_GUIDANCE, DEMO_SAMPLER
from entrgi.default_pair import load_default_pair
from entrgi.eval import EvalConfig, EvalRunner, mean_sem, read_records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "constraint_rewards.py"
TEXT_REWARD = f"text:{EXAMPLE}:both_constraints"
MENTION, SHORT = "text:mentions_positive_word", "text:fewer_than_12_words"
JUDGES = (f"text:{EXAMPLE}:mentions_positive_word", f"text:{EXAMPLE}:fewer_than_12_words")
METHODS_A = ("none", "best_of_n", "particles", "particles_entrgi")
LABELS = {"none": "unguided", "best_of_n": "Best-of-4 (text reward picks)", "particles": "particles (text weights)",
          "particles_entrgi": "hybrid particles (RM gradients, text weights)", "entrgi": "EntRGi (RM only)"}


def base_config(out: Path, seeds, n_prompts: int, **kw) -> EvalConfig:
    fields = dict(out=str(out), prompt_sets=("continuations",), n_prompts=n_prompts, subsample="paper",
                  temperatures=(0.7,), seeds=tuple(seeds), sampler=dict(DEMO_SAMPLER), guidance=dict(DEMO_GUIDANCE),
                  judges=JUDGES, prompts_per_batch=8, perplexity=True, track_reward=False)
    fields.update(kw)
    return EvalConfig(**fields)


def run(cfg: EvalConfig, pair) -> tuple[list[dict], float]:
    t = time.perf_counter()
    EvalRunner(cfg, model=pair[0], reward=pair[1], progress=False).run()
    return read_records(Path(cfg.out)), time.perf_counter() - t


def per_seed(records, method, value) -> list[float]:
    """Each seed's mean over its prompts of ``value(record)``."""
    seeds = sorted({r["seed"] for r in records if r["method"] == method})
    out = []
    for s in seeds:
        vals = [value(r) for r in records if r["method"] == method and r["seed"] == s]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        out.append(math.fsum(vals) / len(vals) if vals else math.nan)
    return out


def cell(values: list[float], fmt: str = "{:.3f}") -> str:
    m, sem = mean_sem(values)
    return fmt.format(m) + (" ± " + fmt.format(sem) if math.isfinite(sem) else " ± –")


def frac_both(rec, best_only: bool) -> float:
    samples = [rec["samples"][rec["best_index"]]] if best_only else rec["samples"]
    return sum(s["judges"][MENTION] * s["judges"][SHORT] for s in samples) / len(samples)


def text_score(rec, best_only: bool) -> float:
    """``both_constraints`` (mentions + fewer than 12 words, 0–2) of the Top@1 sample or averaged over all K."""
    samples = [rec["samples"][rec["best_index"]]] if best_only else rec["samples"]
    return sum(s["judges"][MENTION] + s["judges"][SHORT] for s in samples) / len(samples)


def table_a(records) -> str:
    head = ("| method | text reward (0–2) Top@1 | both hold, Top@1 | both hold, all K | mentions, all K | "
            "< 12 words, all K | RM reward of Top@1 | RM reward Avg@4 | pseudo-ppl Avg |")
    lines = [head, "|" + "---|" * 9]
    for m in [m for m in (*METHODS_A, "entrgi") if any(r["method"] == m for r in records)]:
        lines.append("| " + " | ".join([
            LABELS[m],
            cell(per_seed(records, m, lambda r: text_score(r, True)), "{:.2f}"),
            cell(per_seed(records, m, lambda r: frac_both(r, True)), "{:.2f}"),
            cell(per_seed(records, m, lambda r: frac_both(r, False)), "{:.2f}"),
            cell(per_seed(records, m, lambda r: r["judges"][MENTION]["avg"]), "{:.2f}"),
            cell(per_seed(records, m, lambda r: r["judges"][SHORT]["avg"]), "{:.2f}"),
            cell(per_seed(records, m, lambda r: r["top1"])),
            cell(per_seed(records, m, lambda r: r["avg"])),
            cell(per_seed(records, m, lambda r: r["ppl"]["avg"]), "{:.1f}")]) + " |")
    return "\n".join(lines)


def table_b(by_lambda: dict[float, list[dict]]) -> str:
    lines = ["| λ (kl_weight) | RM reward Top@1 | RM reward Avg@4 | pseudo-ppl of Top@1 | pseudo-ppl Avg | "
             "distinct-2 |", "|" + "---|" * 6]
    for lam, recs in by_lambda.items():
        lines.append("| " + " | ".join([
            f"{lam:g}",
            cell(per_seed(recs, "entrgi", lambda r: r["top1"])),
            cell(per_seed(recs, "entrgi", lambda r: r["avg"])),
            cell(per_seed(recs, "entrgi", lambda r: r["ppl"]["top1"]), "{:.1f}"),
            cell(per_seed(recs, "entrgi", lambda r: r["ppl"]["avg"]), "{:.1f}"),
            cell(per_seed(recs, "entrgi", lambda r: r["distinct"]["2"]), "{:.2f}")]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/reward-tables")
    ap.add_argument("--seeds-a", type=int, nargs="+", default=[1])
    ap.add_argument("--seeds-b", type=int, nargs="+", default=[1])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0])
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--particle-lam", type=float, default=2.0, help="λ of the particle weights exp(λ·potential).")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    pair = load_default_pair()
    timings = {}

    cfg_a = base_config(out / "constraint", args.seeds_a, args.n_prompts, methods=METHODS_A, text_reward=TEXT_REWARD,
                        particles={"resample_every": 4, "lam": args.particle_lam, "potential": "diff"})
    records_a, timings["a"] = run(cfg_a, pair)
    # EntRGi without the penalty on (a)'s seeds: a reference row of (a), and λ = 0 of (b) (the same run folder:
    # seeds are not part of a run's identity, so (b)'s λ = 0 resumes it and reuses the seeds already there)
    cfg_e = base_config(out / "entrgi", args.seeds_a, args.n_prompts, methods=("entrgi",))
    records_e, timings["a-entrgi"] = run(cfg_e, pair)
    by_lambda = {}
    for lam in args.lambdas:
        folder = out / ("entrgi" if lam == 0 else f"kl-{lam:g}")
        cfg = base_config(folder, args.seeds_b, args.n_prompts, methods=("entrgi",),
                          guidance={**DEMO_GUIDANCE, "kl_weight": lam})
        recs, timings[f"kl={lam:g}"] = run(cfg, pair)
        by_lambda[lam] = [r for r in recs if r["seed"] in args.seeds_b]

    text = [f"Default pair, continuations prompt set, {args.n_prompts} prompts per seed, L = T = 16, K = 4, τ = 0.7, "
            f"EntRGi M = 3, Adam lr 1.0; particles: resample every 4 steps, λ = {args.particle_lam:g}, diff "
            "potential.", "",
            f"(a) text reward `both_constraints`, seeds {' '.join(map(str, args.seeds_a))}:", "",
            table_a(records_a + records_e), "",
            f"(b) EntRGi with the KL penalty, seeds {' '.join(map(str, args.seeds_b))}:", "", table_b(by_lambda), "",
            "wall time (s): " + json.dumps({k: round(v, 1) for k, v in timings.items()})]
    (out / "tables.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
