"""Command line: ``entrgi generate`` (same fields as the Python API), plus the subcommands of the
evaluation layer. Run ``entrgi <command> --help`` for every flag.

A mistake ends in one line, ``entrgi <command>: error: <what is wrong and what to do>`` (exit 2 for a usage
or configuration error, 1 for a failure while running); ``entrgi --debug <command>`` (or ``ENTRGI_DEBUG=1``)
shows the full traceback instead."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import yaml

from ..config import GuidanceConfig, SamplerConfig, SearchConfig, method_name
from ..dtypes import DTYPES
from ..files import OwnedFolder, check_writable, read_text_file, write_atomic
from ..pair import check_device
from ..plugins import load_plugins
from ..settings import RunSettings, model_defaults, resolve_settings
from .args import add_dataclass_args, add_settings_args, given_fields, settings_layer
from .errors import Parser, run_command, yaml_problem


# ---- checks before any model work -------------------------------------------------------------------
def read_eval_config(path: str) -> dict:
    """The fields of an ``--config`` YAML file, validated as an :class:`EvalConfig` (errors name the file)."""
    from ..eval.config import EvalConfig

    try:
        data = yaml.safe_load(read_text_file(path, "--config"))
    except yaml.YAMLError as e:
        raise ValueError(f"`--config` {path!r} is not valid YAML: {yaml_problem(e)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"`--config` {path!r}: the top level must be a mapping of EvalConfig fields "
                         f"(`key: value` lines), not a {type(data).__name__}.")
    for section in ("sampler", "guidance", "search", "particles"):
        if not isinstance(data.get(section, {}), dict):
            raise ValueError(f"`--config` {path!r}: `{section}` must be a mapping of field: value.")
    try:
        return dataclasses.asdict(EvalConfig.from_dict(data))
    except ValueError as e:
        raise ValueError(f"`--config` {path!r}: {e}") from None


def silence_progress_bars() -> None:
    """``--quiet``: no progress bars from the libraries either (transformers' "Loading weights")."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def empty_answers_note(texts: list[str], default_pair: bool) -> str | None:
    """A note for stderr when some responses are empty (``None`` when none is)."""
    empty = sum(1 for t in texts if not t.strip())
    if not empty:
        return None
    why = (" The embedded default pair continues English sentence beginnings (e.g. 'she was'); it does not "
           "follow instructions or answer questions." if default_pair else "")
    return (f"entrgi generate: note: {empty} of {len(texts)} responses are empty.{why} "
            "`--min-new-tokens N` makes every response at least N tokens long.")


def text_arg(what: str):
    """An argparse ``type`` for a flag that names something (a path, a model, a device): an empty value is refused
    (``--model ''`` is not the current folder)."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"the value is empty: give {what}")
        return text
    parse.__name__ = what
    return parse


# ---- commands ---------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", type=text_arg("a hub id or a local folder"),
                   help="Diffusion LM: hub id or local folder (default: the embedded pair).")
    g.add_argument("--family", type=text_arg("a model family"),
                   help="Model family adapter (default: detected from the config).")
    g.add_argument("--reward", type=text_arg("a reward spelling"),
                   help="Reward: an HF sequence classifier's hub id or folder, text:MODULE:FUNCTION or "
                        "text:FILE.py:FUNCTION (code on text: none/best_of_n only), likelihood:PATH_OR_ID, "
                        "a registered KIND:TARGET, or a weighted sum W*SPEC+W*SPEC (e.g. 0.7*PATH+0.3*likelihood:PATH) "
                        "(default: the embedded pair's).")
    g.add_argument("--reward-template", default="auto", choices=["auto", "chat", "plain", "response"],
                   help="How the RM sees (prompt, response) (default: auto = its chat template if any).")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=text_arg("a device"),
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu).")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="Weights dtype (default: the checkpoint's).")
    g.add_argument("--device-map", default=None, type=text_arg("a device map"),
                   help="accelerate placement over several GPUs (e.g. auto, balanced); overrides --device.")
    g.add_argument("--rm-checkpointing", action="store_true", help="Gradient checkpointing in the reward model.")


def load_pair(args: argparse.Namespace, methods: tuple[str, ...] = ("none",)):
    """(diffusion LM, reward model or None) from ``--model`` / ``--reward``, or the embedded default pair
    (:func:`entrgi.pair.load_pair`: the rule every front end follows)."""
    from ..pair import load_pair as load

    return load(args.model, args.reward, methods=methods, family=args.family, dtype=args.dtype, device=args.device,
                device_map=args.device_map, reward_template=args.reward_template,
                rm_checkpointing=args.rm_checkpointing)


def generate_settings(args: argparse.Namespace, model=None) -> RunSettings:
    """The run's settings from the flags (:func:`entrgi.settings.resolve_settings`): the model's defaults (read from
    its ``config.json`` before loading, from the loaded ``model`` after), the preset, then the flags."""
    defaults = model_defaults(model if model is not None else args.model, args.family)
    return resolve_settings(model_defaults=defaults, overrides=settings_layer(args))


def cmd_generate(args: argparse.Namespace) -> int:
    from ..pair import check_differentiable, check_pair
    from ..sampling.sampler import generate

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [ln.strip() for ln in read_text_file(args.prompts_file, "--prompts-file").splitlines()
                    if ln.strip()]
    if not prompts:
        raise ValueError("`--prompt` (or `--prompts-file`) is required: give at least one prompt.")
    resolve_settings(overrides=settings_layer(args))  # every flag checked before any file or model is looked at
    output = check_writable(args.output, "--output") if args.output else None
    settings = generate_settings(args)  # with the model's defaults, read from its config.json
    needs = "none" if settings.guidance.rule == "none" and settings.search.strategy == "sample" else "reward"
    check_pair(args.model, args.reward, [needs])
    check_device(args.device)
    if args.quiet:
        silence_progress_bars()
    model, reward = load_pair(args, (needs,))
    settings = generate_settings(args, model)  # the loaded model's own defaults (a checkpoint's generation config)
    sampler, guidance = settings.sampler, settings.guidance
    if guidance.guided:
        check_differentiable(reward, args.reward, f"rule {guidance.rule!r}")
    out = generate(model, prompts, reward, sampler=sampler, guidance=guidance, search=settings.search,
                   progress=not args.quiet)
    if args.json:
        print(json.dumps(out.to_dict(with_trace=args.trace), indent=1))
    else:
        print(f"method={method_name(guidance, settings.search)} M={guidance.inner_steps} τ={sampler.temperature} "
              f"T={sampler.steps} L={sampler.max_new_tokens} K={sampler.num_samples}  ({out.stats.wall_time_s:.1f}s)")
        for i, group in enumerate(out.samples):
            best = out.best(i) if group[0].reward is not None else None
            print(f"\nprompt {i}: {group[0].prompt!r}")
            for s in group:
                mark = "*" if s is best else " "
                r = f"{s.reward:+7.3f}" if s.reward is not None else "   n/a "
                print(f" {mark} [{r}] {s.text}")
    note = empty_answers_note([s.text for group in out.samples for s in group], default_pair=args.model is None)
    if note:
        sys.stdout.flush()
        print(note, file=sys.stderr)
    if output is not None:  # results first: printed above; the file written last, and never lost with it
        write_output(output, json.dumps(out.to_dict(with_trace=True), indent=1))
    return 0


def write_output(path: Path, text: str) -> None:
    """Write ``--output`` atomically; when that fails (a full disk), print ``text`` on stdout, so that the run's
    results are not lost with the file, and raise the OSError (naming the file) with that said."""
    try:
        write_atomic(path, text)
    except OSError as e:
        print(text)
        sys.stdout.flush()
        raise OSError(e.errno, f"{e.strerror or e} (the full output was printed on stdout instead)",
                      e.filename if e.filename is not None else str(path)) from e


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.config import EvalConfig
    from ..eval.report import write_report
    from ..eval.runner import run_eval

    data = read_eval_config(args.config) if args.config else {}
    data.update(given_fields(EvalConfig, args))
    data["plugins"] = list(dict.fromkeys([*data.get("plugins", ()), *(args.plugin or ())]))  # loaded already
    for section, cls in (("sampler", SamplerConfig), ("guidance", GuidanceConfig), ("search", SearchConfig)):
        data[section] = {**data.get(section, {}), **given_fields(cls, args)}
    cfg = EvalConfig.from_dict(data)
    check_device(cfg.device)
    check_writable(cfg.out, "--out", folder=True)
    check_eval_folder(cfg, report=not args.no_report)
    if args.quiet:
        silence_progress_bars()
    out = run_eval(cfg, progress=not args.quiet)
    if not args.no_report:
        report = write_report(out)
        print((out / "table.md").read_text())
        print(f"report: {report}")
    return 0


def check_eval_folder(cfg, report: bool) -> None:
    """Refuse now, before any model work (the runner checks again under its lock), an `out` folder where the run
    would replace or append to files it did not write: its results file, run.json, matched_n.json and (``report``)
    the report's files."""
    from ..eval.report import REPORT_FILES
    from ..eval.runner import Shard, run_files

    names = run_files(cfg, Shard.from_env()) + (list(REPORT_FILES) if report else [])
    OwnedFolder(cfg.out, kind="eval", command="entrgi eval").refuse_foreign(names)


def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.report import write_report

    run_dir = Path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        hint = f" ({str(run_dir.parent)!r} holds it)" if run_dir.name.startswith("results") else ""
        raise ValueError(f"{args.run_dir!r} is a file, not a run folder: give the `--out` folder of an `entrgi eval` "
                         f"run{hint}.")
    if not run_dir.is_dir():
        raise ValueError(f"run directory {args.run_dir!r} does not exist: give the `--out` folder of an "
                         "`entrgi eval` run.")
    report = write_report(args.run_dir, plots=not args.no_plots)
    print(report.read_text().split("\n## ")[0])
    print(f"report: {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.quiet:
        silence_progress_bars()
    print(run_demo(args.out, n_prompts=args.prompts, temperature=args.temperature, seed=args.seed,
                   progress=not args.quiet))
    return 0


# ---- plugins: loaded before the parser is built, so that their names are valid choices -----------------
def add_plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", metavar="PATH_OR_MODULE", type=text_arg("a .py file or a module"),
                   help="A .py file or module to import first: it registers guidance rules, remasking rules or "
                        "rewards (docs/extending.md). Repeat for several.")


def plugin_specs(argv: list[str]) -> list[str]:
    """The values of every ``--plugin X`` / ``--plugin=X`` in ``argv`` (up to a ``--``)."""
    found = []
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif a.startswith("--plugin="):
            found.append(a.split("=", 1)[1])
    return found


def build_parser(registry_choices: bool = True) -> argparse.ArgumentParser:
    """The ``entrgi`` parser. ``registry_choices=False``: names a registry decides (guidance methods, remasking
    rules) are not checked as choices, so that the command line can be checked before the plugins that may
    register them have run."""
    parser = Parser(prog="entrgi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="Show the full traceback of an error (also: ENTRGI_DEBUG=1).")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="Sample responses with reward guidance and print them with rewards.")
    g.add_argument("--prompt", action="append", help="A prompt (repeat for several).")
    g.add_argument("--prompts-file", type=text_arg("a file"), help="A text file with one prompt per line.")
    g.add_argument("--json", action="store_true", help="Print the output as JSON.")
    g.add_argument("--trace", action="store_true", help="Include the per-step trace in the --json output.")
    g.add_argument("--output", type=text_arg("a file path"),
                   help="Write the full output (with traces) to this JSON file (replaced; written after the run's "
                        "output is printed, and printed on stdout if the file cannot be written).")
    g.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_plugin_arg(g)
    add_model_args(g)
    add_settings_args(g, registry_choices=registry_choices)
    g.set_defaults(func=cmd_generate)

    from ..eval.config import EvalConfig
    e = sub.add_parser("eval", help="Run (or resume) an evaluation grid: methods x temperatures x seeds x prompt sets.")
    e.add_argument("--config", type=text_arg("a YAML file"), help="YAML file of EvalConfig fields (flags override it).")
    e.add_argument("--quiet", action="store_true", help="No progress bar.")
    e.add_argument("--no-report", action="store_true", help="Do not write the report at the end.")
    add_plugin_arg(e)
    add_dataclass_args(e.add_argument_group("run (EvalConfig)"), EvalConfig, skip=("plugins",))
    add_settings_args(e, method=False, preset=False, skip={"sampler": ("temperature", "seed"), "guidance": ("rule",),
                                                           "search": ("strategy",)},
                      registry_choices=registry_choices)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="Reward guidance on the embedded default pair (offline, CPU, a few minutes on 2 cores).")
    d.add_argument("--out", default="outputs/demo", type=text_arg("a folder path"),
                   help="Output folder: new, empty, or one an earlier demo wrote (only the files its manifest proves "
                        "it wrote are replaced; others are kept).")
    d.add_argument("--prompts", type=int, default=4, help="Number of sentence beginnings (default: 4).")
    d.add_argument("--temperature", type=float, default=0.7)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="Write the paper-layout table (Markdown, CSV) and plots of a run directory.")
    r.add_argument("run_dir", type=text_arg("a run folder"))
    r.add_argument("--no-plots", action="store_true")
    r.set_defaults(func=cmd_report)
    from ..serve.cli import add_serve_parser  # `entrgi serve` (entrgi/serve/)
    add_plugin_arg(add_serve_parser(sub))  # served methods may be a plugin's guidance rule
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ENTRGI_DEBUG", "") not in ("", "0")
    lead = 1 if argv[:1] == ["--debug"] else 0
    plugins = plugin_specs(argv)
    if plugins:
        # The whole command line is checked before a plugin runs; only the names a registry decides wait for the
        # plugins that may register them (the second parse). `--help` loads them first to list their names.
        options = argv[:argv.index("--")] if "--" in argv else argv
        if not any(a in ("-h", "--help") for a in options):
            build_parser(registry_choices=False).parse_args(argv)
        verb = next((a for a in argv if not a.startswith("-")), "entrgi")
        def load() -> int:
            load_plugins(plugins)
            return 0
        code = run_command(verb, load, debug or bool(lead))
        if code:
            return code
    args = build_parser().parse_args(argv)
    return run_command(args.command, lambda: args.func(args), debug or args.debug)


if __name__ == "__main__":
    sys.exit(main())
