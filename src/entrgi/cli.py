"""Command line: ``entrgi generate`` (same fields as the Python API), plus the subcommands of the
evaluation layer. Run ``entrgi <command> --help`` for every flag."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from .cli_args import add_dataclass_args, dataclass_from_args, given_fields
from .config import GuidanceConfig, SamplerConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", help="Diffusion LM: hub id or local folder (default: the embedded pair).")
    g.add_argument("--family", help="Model family adapter (default: detected from the config).")
    g.add_argument("--reward", help="Reward model (HF sequence classifier): hub id or folder "
                                    "(default: the embedded pair's).")
    g.add_argument("--reward-template", default="auto", choices=["auto", "chat", "plain", "response"],
                   help="How the RM sees (prompt, response) (default: auto = its chat template if any).")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="Weights dtype (default: the checkpoint's).")
    g.add_argument("--device-map", default=None,
                   help="accelerate placement over several GPUs (e.g. auto, balanced); overrides --device.")
    g.add_argument("--rm-checkpointing", action="store_true", help="Gradient checkpointing in the reward model.")


def load_pair(args: argparse.Namespace):
    """(diffusion LM, reward model or None) from ``--model`` / ``--reward``, or the embedded default pair."""
    dtype = DTYPES.get(args.dtype) if args.dtype else None
    if args.model is None and args.reward is None:
        from .default_pair import load_default_pair
        return load_default_pair(device=args.device)
    if args.model is None:
        raise ValueError("`--reward` needs `--model` (the embedded pair's DLLM reads only its own vocabulary); "
                         "give both, or neither for the embedded default pair.")
    from .models import load_diffusion_lm
    model = load_diffusion_lm(args.model, family=args.family, dtype=dtype, device=args.device,
                              device_map=args.device_map)
    if args.reward is None:
        reward = None  # unguided sampling only (checked by cmd_generate)
    else:
        from .reward.hf import HFRewardModel
        reward = HFRewardModel.from_pretrained(args.reward, dtype=dtype, device=args.device,
                                               device_map=args.device_map, template=args.reward_template,
                                               gradient_checkpointing=args.rm_checkpointing)
    return model, reward


def cmd_generate(args: argparse.Namespace) -> int:
    from .sampler import generate

    if args.model is None:  # the embedded default pair: its own recommended settings
        from .demo import DEMO_GUIDANCE, DEMO_SAMPLER
        base_sampler, base_guidance = SamplerConfig(**DEMO_SAMPLER), GuidanceConfig(**DEMO_GUIDANCE)
    else:  # the paper's settings
        base_sampler, base_guidance = SamplerConfig(), GuidanceConfig()
    sampler = dataclass_from_args(SamplerConfig, args, base_sampler)
    guidance = dataclass_from_args(GuidanceConfig, args, base_guidance)
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [ln.strip() for ln in Path(args.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("`--prompt` (or `--prompts-file`) is required: give at least one prompt.")
    if args.model is not None and args.reward is None and guidance.method != "none":
        raise ValueError(f"`--reward` is required with `--model` for method {guidance.method!r} "
                         "(only `--method none` samples without a reward model).")
    model, reward = load_pair(args)
    out = generate(model, prompts, reward, sampler=sampler, guidance=guidance, progress=not args.quiet)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out.to_dict(with_trace=True), indent=1))
    if args.json:
        print(json.dumps(out.to_dict(with_trace=args.trace), indent=1))
        return 0
    print(f"method={guidance.method} M={guidance.inner_steps} τ={sampler.temperature} T={sampler.steps} "
          f"L={sampler.max_new_tokens} K={sampler.num_samples}  ({out.stats.wall_time_s:.1f}s)")
    for i, group in enumerate(out.samples):
        best = out.best(i) if group[0].reward is not None else None
        print(f"\nprompt {i}: {group[0].prompt!r}")
        for s in group:
            mark = "*" if s is best else " "
            r = f"{s.reward:+7.3f}" if s.reward is not None else "   n/a "
            print(f" {mark} [{r}] {s.text}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.config import EvalConfig
    from .eval.report import write_report
    from .eval.runner import run_eval

    data = dataclasses.asdict(EvalConfig.from_yaml(args.config)) if args.config else {}
    data.update(given_fields(EvalConfig, args))
    data["sampler"] = {**data.get("sampler", {}), **given_fields(SamplerConfig, args)}
    data["guidance"] = {**data.get("guidance", {}), **given_fields(GuidanceConfig, args)}
    out = run_eval(EvalConfig.from_dict(data), progress=not args.quiet)
    if not args.no_report:
        report = write_report(out)
        print((out / "table.md").read_text())
        print(f"report: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .eval.report import write_report

    report = write_report(args.run_dir, plots=not args.no_plots)
    print(report.read_text().split("\n## ")[0])
    print(f"report: {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print(run_demo(args.out, n_prompts=args.prompts, temperature=args.temperature, seed=args.seed,
                   progress=not args.quiet))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entrgi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="Sample responses with reward guidance and print them with rewards.")
    g.add_argument("--prompt", action="append", help="A prompt (repeat for several).")
    g.add_argument("--prompts-file", help="A text file with one prompt per line.")
    g.add_argument("--json", action="store_true", help="Print the output as JSON.")
    g.add_argument("--trace", action="store_true", help="Include the per-step trace in the --json output.")
    g.add_argument("--output", help="Write the full output (with traces) to this JSON file.")
    g.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_model_args(g)
    add_dataclass_args(g.add_argument_group("sampler (SamplerConfig)"), SamplerConfig)
    add_dataclass_args(g.add_argument_group("guidance (GuidanceConfig)"), GuidanceConfig)
    g.set_defaults(func=cmd_generate)

    from .eval.config import EvalConfig
    e = sub.add_parser("eval", help="Run (or resume) an evaluation grid: methods x temperatures x seeds x prompt sets.")
    e.add_argument("--config", help="YAML file of EvalConfig fields (flags override it).")
    e.add_argument("--quiet", action="store_true", help="No progress bar.")
    e.add_argument("--no-report", action="store_true", help="Do not write the report at the end.")
    add_dataclass_args(e.add_argument_group("run (EvalConfig)"), EvalConfig)
    add_dataclass_args(e.add_argument_group("sampler (SamplerConfig; temperature/seed come from the grid)"),
                       SamplerConfig, skip=("temperature", "seed"))
    add_dataclass_args(e.add_argument_group("guidance (GuidanceConfig; method comes from the grid)"),
                       GuidanceConfig, skip=("method",))
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="Reward guidance on the embedded default pair (offline, CPU, ~1 min).")
    d.add_argument("--out", default="outputs/demo", help="Output folder (replaced).")
    d.add_argument("--prompts", type=int, default=4, help="Number of sentence beginnings (default: 4).")
    d.add_argument("--temperature", type=float, default=0.7)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train-default", add_help=False,
                       help="Retrain the embedded default pair (see entrgi/default_pair/recipe.py; --help for flags).")
    t.add_argument("recipe_args", nargs=argparse.REMAINDER)  # (main() hands these to the recipe's parser)

    r = sub.add_parser("report", help="Write the paper-layout table (Markdown, CSV) and plots of a run directory.")
    r.add_argument("run_dir")
    r.add_argument("--no-plots", action="store_true")
    r.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-default"]:  # its own parser (every flag, --help included, goes to the recipe)
        from .default_pair.recipe import main as recipe_main
        return recipe_main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # configuration errors: one clear line, no traceback
        print(f"entrgi {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
