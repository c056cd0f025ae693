"""``entrgi demo``: reward guidance on the embedded default pair, offline on CPU, in a few minutes on 2 cores.

Sentence beginnings are continued by the MiniLM masked diffusion LM with unguided sampling,
compute-matched Best-of-N, Expectation, APS and EntRGi; the sentiment RM guides and scores (Top@1 /
Avg@K), VADER judges independently, distinct-2 measures diversity. Prints a table and a few samples
side by side, and writes ``reward_vs_step.png`` (and the full records) to the output folder. It is a
one-seed run of the evaluation harness (:mod:`entrgi.eval`).

The output folder must be new, empty, or one the demo wrote before: its manifest (``.entrgi-manifest.json``,
:class:`~entrgi.files.OwnedFolder`) lists every file the demo wrote with its content hash, and only files it
proves the demo wrote are replaced; anything else (a file saved there meanwhile, a demo file edited since) is
left alone, and a demo file name held by such a file is refused. The run's lock is taken before anything is
removed, so a second demo on the same folder is refused before it touches the first one's files.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from ..config import check_float, check_int
from ..default_pair import GUIDANCE_DEFAULTS, SAMPLER_DEFAULTS
from ..eval.config import EvalConfig
from ..eval.plots import plot_curve
from ..eval.prompts import load_prompt_set
from ..eval.records import read_records, results_lock
from ..eval.report import aggregate, method_rank
from ..eval.runner import EvalRunner
from ..files import OwnedFolder

#: The demo's settings: the default pair's own (measured: see the README and the model card).
DEMO_SAMPLER = SAMPLER_DEFAULTS
DEMO_GUIDANCE = GUIDANCE_DEFAULTS
DEMO_METHODS = ("none", "best_of_n_matched", "expectation", "aps", "entrgi")
DEMO_PROMPT_SET = "continuations"
#: The files a demo run writes.
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
    folder = demo_folder(out)
    check_demo_dir(folder, names=False)  # a folder that is not a demo's is refused before it sees even a lock file
    out.mkdir(parents=True, exist_ok=True)
    with results_lock(out / "results.jsonl"):  # the run's lock (the runner's), before anything is removed
        claim_demo_dir(folder)
        EvalRunner(cfg, progress=progress, folder=folder).run()
        return _finish(cfg, folder, n_prompts, temperature, seed, show)


def _finish(cfg: EvalConfig, folder: OwnedFolder, n_prompts: int, temperature: float, seed: int, show: int) -> str:
    out = folder.path
    records = read_records(out)
    text = demo_text(records, show, out)
    folder.write("reward_vs_step.png", lambda p: plot_curve(records, "estimate", "RM reward of predicted completion",
                                                            p))
    folder.write_text("demo.txt", text + "\n")
    folder.write_text("demo.json", json.dumps({"config": cfg.to_dict()}, indent=1))
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


def demo_folder(out: str | Path) -> OwnedFolder:
    """The demo's :class:`~entrgi.files.OwnedFolder` at ``out``."""
    return OwnedFolder(out, kind="demo", flag="--out", command="entrgi demo")


def check_demo_dir(folder: OwnedFolder, names: bool = True) -> None:
    """``ValueError`` (nothing changed) unless ``folder`` is new, empty, or a demo's: a file, a non-empty folder
    without the demo's manifest (an eval run folder, a folder of files named like the demo's), or (``names``,
    checked under the run's lock) a demo file name held by a file the manifest does not prove the demo wrote."""
    out = folder.path
    if out.exists() and not out.is_dir():
        raise ValueError(f"`--out` {str(out)!r} is a file, not a folder: choose a new `--out` folder.")
    folder.check_kind()
    if folder.folder_kind() is None and folder.others():
        raise ValueError(f"`--out` {str(out)!r} is not empty and was not written by `entrgi demo` (no manifest proves "
                         "any of its files the demo's): choose a new `--out` folder; nothing was changed.")
    if names:
        folder.refuse_foreign(DEMO_FILES)


def claim_demo_dir(folder: OwnedFolder) -> list[str]:
    """Make ``folder`` the demo's (after :func:`check_demo_dir`): delete the files an earlier demo provably wrote
    there. Returns the names of the other entries it holds (kept)."""
    check_demo_dir(folder)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.remove(DEMO_FILES)
    return folder.others()
