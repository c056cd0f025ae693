"""``entrgi demo``: reward guidance on the embedded default pair, offline on CPU, in a few minutes on 2 cores.

Sentence beginnings are continued by the MiniLM masked diffusion LM with unguided sampling,
compute-matched Best-of-N, Expectation, APS and EntRGi; the sentiment RM guides and scores (Top@1 /
Avg@K), VADER judges independently, distinct-2 measures diversity. Prints a table and a few samples
side by side, and writes ``reward_vs_step.png`` (and the full records) to the output folder. It is a
one-seed run of the evaluation harness (:mod:`entrgi.eval`).

The output folder must be new, empty, or one the demo wrote before (it holds the marker ``.entrgi-demo``,
which lists the demo's files): only those files are replaced, anything else in it is left alone.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from ..config import check_float, check_int
from ..default_pair import GUIDANCE_DEFAULTS, SAMPLER_DEFAULTS
from ..eval.config import EvalConfig
from ..eval.plots import plot_curve
from ..eval.prompts import load_prompt_set
from ..eval.records import read_records
from ..eval.report import aggregate, method_rank
from ..eval.runner import EvalRunner

#: The demo's settings: the default pair's own (measured: see the README and the model card).
DEMO_SAMPLER = SAMPLER_DEFAULTS
DEMO_GUIDANCE = GUIDANCE_DEFAULTS
DEMO_METHODS = ("none", "best_of_n_matched", "expectation", "aps", "entrgi")
DEMO_PROMPT_SET = "continuations"
#: The marker file of a demo folder, and the files a demo run writes there.
MARKER = ".entrgi-demo"
DEMO_FILES = ("results.jsonl", "run.json", "matched_n.json", "reward_vs_step.png", "demo.txt", "demo.json")


def demo_config(out: str | Path, n_prompts: int = 4, temperature: float = 0.7, seed: int = 0) -> EvalConfig:
    return EvalConfig(out=str(out), prompt_sets=(DEMO_PROMPT_SET,), n_prompts=n_prompts, subsample="none",
                      methods=DEMO_METHODS, temperatures=(temperature,), seeds=(seed,), sampler=DEMO_SAMPLER,
                      guidance=DEMO_GUIDANCE, judges=("vader",), prompts_per_batch=n_prompts, perplexity=False,
                      track_reward=True)


def run_demo(out: str | Path = "outputs/demo", n_prompts: int = 4, temperature: float = 0.7, seed: int = 0,
             show: int = 3, progress: bool = True) -> str:
    """Run the demo into ``out`` (see the module docstring) and return the printed text.

    Every argument is checked before anything is written; a folder the demo did not make is refused."""
    out = Path(out)
    check_demo_args(n_prompts, temperature, seed)
    cfg = demo_config(out, n_prompts, temperature, seed)
    kept = claim_demo_dir(out)
    EvalRunner(cfg, progress=progress).run()
    records = read_records(out)
    text = demo_text(records, show, out)
    plot_curve(records, "estimate", "RM reward of predicted completion", out / "reward_vs_step.png")
    (out / "demo.txt").write_text(text + "\n")
    (out / "demo.json").write_text(json.dumps({"config": cfg.to_dict()}, indent=1))
    _write_marker(out, sorted(set(os.listdir(out)) - kept - {MARKER}))
    return text


def demo_text(records: list[dict], show: int = 3, out: Path | None = None) -> str:
    """What the demo prints, from its records: the table of every method, then the first ``show`` prompts' unguided
    and EntRGi samples (and where the plot and records are, given the demo's ``out``)."""
    table = aggregate(records)
    first = records[0]
    s, g = first["settings"]["sampler"], first["settings"]["guidance"]
    n_prompts = len({r["prompt"] for r in records})
    lines = [f"entrgi demo: {n_prompts} sentence beginnings x {s['num_samples']} samples, L = {s['max_new_tokens']}, "
             f"T = {s['steps']}, τ = {first['temperature']}, M = {g['inner_steps']}, Adam lr = {g['lr']}, "
             f"seed {first['seed']}",
             "reward = MiniLM sentiment RM (guides, scores Top@1 / Avg@K); VADER = independent judge in [-1, 1]",
             "",
             f"{'method':<24}{'N':>4}{'Top@1':>8}{'Avg@K':>8}{'VADER@1':>9}{'VADER avg':>10}{'distinct-2':>11}"
             f"{'s/prompt':>10}"]
    for m in sorted(dict.fromkeys(r["method"] for r in records), key=method_rank):
        row = table[(first["prompt_set"], first["temperature"], m)]
        lines.append(f"{row['label']:<24}{row['num_samples'][0]:>4.0f}{row['top1'][0]:>8.2f}{row['avg'][0]:>8.2f}"
                     f"{row['judge:vader:top1'][0]:>9.2f}{row['judge:vader:avg'][0]:>10.2f}"
                     f"{row['distinct-2'][0]:>11.2f}{row['wall_time_s'][0]:>10.2f}")
    by = {(r["method"], r["prompt"]): r for r in records}
    for p in list(dict.fromkeys(r["prompt"] for r in records))[:show]:
        lines += ["", f"prompt: {p!r}  (best of K by the RM; reward / VADER)"]
        for m in ("none", "entrgi"):
            r = by[(m, p)]
            best = r["samples"][r["best_index"]] if m != "none" else r["samples"][0]
            tag = "unguided (sample 1)" if m == "none" else "EntRGi (Top@1)"
            text = textwrap.shorten(f"{p} {best['text']}", 90)
            lines.append(f"  {tag:<20} [{best['reward']:+6.2f} / {best['judges']['vader']:+.2f}] {text}")
    if out is not None:
        lines += ["", f"plot: {out / 'reward_vs_step.png'}   records: {out / 'results.jsonl'}"]
    return "\n".join(lines)


def check_demo_args(n_prompts: int, temperature: float, seed: int) -> None:
    """``ValueError`` (naming the CLI flag) unless the demo can run with these arguments."""
    n_max = len(load_prompt_set(DEMO_PROMPT_SET).prompts)
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or not 1 <= n_prompts <= n_max:
        raise ValueError(f"`--prompts` must be an integer in [1, {n_max}] (the demo has {n_max} sentence "
                         f"beginnings), got {n_prompts!r}.")
    check_float("--temperature", temperature, 0.0, low_open=True)  # guided methods need a soft relaxation
    check_int("--seed", seed, 0)


def _write_marker(out: Path, files) -> None:
    (out / MARKER).write_text(json.dumps({"written_by": "entrgi demo", "files": list(files)}, indent=1) + "\n")


def _demo_files(out: Path, present: set[str]) -> set[str] | None:
    """The names in ``out`` that an earlier demo wrote, or ``None`` when the demo did not make ``out``."""
    if MARKER in present:
        try:
            listed = json.loads((out / MARKER).read_text())["files"]
            listed = {f for f in listed if isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..")}
        except (OSError, ValueError, KeyError, TypeError):
            listed = set()
        return (listed | set(DEMO_FILES)) & present
    if "demo.json" in present and present <= set(DEMO_FILES):  # a folder of a demo from before the marker
        return present
    return None


def claim_demo_dir(out: Path) -> set[str]:
    """Make ``out`` the demo's folder: create it, or clear the files an earlier demo wrote there. Returns the
    names of the other files it holds (kept). A non-empty folder the demo did not make is refused."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"`--out` {str(out)!r} is a file, not a folder: choose a new `--out` folder.")
    present = set(os.listdir(out)) if out.is_dir() else set()
    ours = _demo_files(out, present) if present else set()
    if ours is None:
        raise ValueError(f"`--out` {str(out)!r} is not empty and was not written by `entrgi demo` (no {MARKER} "
                         "file): choose a new `--out` folder; nothing was changed.")
    out.mkdir(parents=True, exist_ok=True)
    for name in ours:
        if (out / name).is_file():
            (out / name).unlink()
    _write_marker(out, DEMO_FILES)  # the files this run will write, in case it stops half-way
    return present - ours - {MARKER}
