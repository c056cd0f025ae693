"""``entrgi demo``: reward guidance on the embedded default pair, offline on CPU, in about a minute.

Sentence beginnings are continued by the MiniLM masked diffusion LM with unguided sampling,
compute-matched Best-of-N, Expectation, APS and EntRGi; the sentiment RM guides and scores (Top@1 /
Avg@K), VADER judges independently, distinct-2 measures diversity. Prints a table and a few samples
side by side, and writes ``reward_vs_step.png`` (and the full records) to the output folder. It is a
one-seed run of the evaluation harness (:mod:`entrgi.eval`).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from .eval.config import EvalConfig
from .eval.plots import plot_curve
from .eval.report import aggregate, method_label
from .eval.runner import EvalRunner, read_records

#: The demo's settings (measured on the default pair: see the README and the model card).
DEMO_SAMPLER = {"max_new_tokens": 16, "steps": 16, "num_samples": 4, "top_p": 0.95}
DEMO_GUIDANCE = {"inner_steps": 3, "lr": 1.0}
DEMO_METHODS = ("none", "best_of_n_matched", "expectation", "aps", "entrgi")


def demo_config(out: str | Path, n_prompts: int = 4, temperature: float = 0.7, seed: int = 0) -> EvalConfig:
    return EvalConfig(out=str(out), prompt_sets=("continuations",), n_prompts=n_prompts, subsample="none",
                      methods=DEMO_METHODS, temperatures=(temperature,), seeds=(seed,), sampler=DEMO_SAMPLER,
                      guidance=DEMO_GUIDANCE, judges=("vader",), prompts_per_batch=n_prompts, perplexity=False,
                      track_reward=True)


def run_demo(out: str | Path = "outputs/demo", n_prompts: int = 4, temperature: float = 0.7, seed: int = 0,
             show: int = 3, progress: bool = True) -> str:
    """Run the demo into ``out`` (replaced) and return the printed text."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    cfg = demo_config(out, n_prompts, temperature, seed)
    EvalRunner(cfg, progress=progress).run()
    records = read_records(out)
    table = aggregate(records)
    k = DEMO_SAMPLER["num_samples"]
    lines = [f"entrgi demo: {n_prompts} sentence beginnings x {k} samples, L = T = {DEMO_SAMPLER['steps']}, "
             f"τ = {temperature}, M = {DEMO_GUIDANCE['inner_steps']}, Adam lr = {DEMO_GUIDANCE['lr']}, seed {seed}",
             "reward = MiniLM sentiment RM (guides, scores Top@1 / Avg@K); VADER = independent judge in [-1, 1]",
             "",
             f"{'method':<24}{'N':>4}{'Top@1':>8}{'Avg@K':>8}{'VADER@1':>9}{'VADER avg':>10}{'distinct-2':>11}"
             f"{'s/prompt':>10}"]
    ps = records[0]["prompt_set"]
    for m in DEMO_METHODS:
        row = table[(ps, temperature, m)]
        lines.append(f"{method_label(m):<24}{row['num_samples'][0]:>4.0f}{row['top1'][0]:>8.2f}{row['avg'][0]:>8.2f}"
                     f"{row['judge:vader:top1'][0]:>9.2f}{row['judge:vader:avg'][0]:>10.2f}"
                     f"{row['distinct-2'][0]:>11.2f}{row['wall_time_s'][0]:>10.2f}")
    by = {(r["method"], r["prompt"]): r for r in records}
    prompts = list(dict.fromkeys(r["prompt"] for r in records))[:show]
    for p in prompts:
        lines += ["", f"prompt: {p!r}  (best of K by the RM; reward / VADER)"]
        for m in ("none", "entrgi"):
            r = by[(m, p)]
            best = r["samples"][r["best_index"]] if m != "none" else r["samples"][0]
            tag = "unguided (sample 1)" if m == "none" else "EntRGi (Top@1)"
            text = textwrap.shorten(f"{p} {best['text']}", 90)
            lines.append(f"  {tag:<20} [{best['reward']:+6.2f} / {best['judges']['vader']:+.2f}] {text}")
    plot_curve(records, "estimate", "RM reward of predicted completion", out / "reward_vs_step.png")
    lines += ["", f"plot: {out / 'reward_vs_step.png'}   records: {out / 'results.jsonl'}"]
    text = "\n".join(lines)
    (out / "demo.txt").write_text(text + "\n")
    (out / "demo.json").write_text(json.dumps({"config": cfg.to_dict()}, indent=1))
    return text
