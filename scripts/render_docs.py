"""The numbers the README and the docs quote, rendered from the stored deterministic records, so they cannot drift.

    python scripts/render_docs.py            # rewrite every generated block
    python scripts/render_docs.py --check    # exit 1, naming the stale blocks (tests/test_render_docs.py runs this)

A generated block sits between ``<!-- begin generated: NAME -->`` and ``<!-- end generated: NAME -->`` in a
Markdown file; NAME says what renders it:

- ``demo``: what ``entrgi demo`` prints, from ``docs/data/demo.jsonl`` (the records of ``entrgi demo --out DIR``:
  ``python scripts/render_docs.py --demo DIR`` copies them in);
- ``frontier-table``, ``frontier-claims``: ``scripts/frontier.py``'s table and claims, from ``docs/data/frontier.jsonl``;
- ``fast-summary``: the one-paragraph summary of the fast preset's claims the README quotes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

import frontier  # noqa: E402

from entrgi.cli.demo import demo_text  # noqa: E402

DEMO = ROOT / "docs" / "data" / "demo.jsonl"
FRONTIER = ROOT / "docs" / "data" / "frontier.jsonl"
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- begin generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
                   re.S)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def frontier_parts() -> tuple[dict, list[int], list[str]]:
    data, settings = frontier.load_settings(frontier.CONFIG)
    seeds, n_prompts, tau = list(data["seeds"]), int(data["n_prompts"]), float(data["temperature"])
    by = frontier.complete(frontier.current_records(records(FRONTIER), settings, n_prompts, tau), seeds)
    return by, seeds, frontier.labels(settings)


def fast_summary() -> str:
    by, seeds, _ = frontier_parts()
    cost = lambda n: statistics.fmean(by[n][s]["flops_per_prompt"] for s in seeds)  # noqa: E731
    ms = {k: frontier.mean_sem([by["fast"][s][k] for s in seeds]) for k in ("top1", "avg", "vader_top1")}
    diffs = [by["fast"][s]["top1"] - frontier.bon_at_cost(by, s, by["fast"][s]["flops_per_prompt"]) for s in seeds]
    d, e = frontier.mean_sem(diffs)
    return (f"Top@1 {ms['top1'][0]:.2f} ± {ms['top1'][1]:.2f}, Avg@4 {ms['avg'][0]:.2f} ± {ms['avg'][1]:.2f}, VADER "
            f"{ms['vader_top1'][0]:.2f} ± {ms['vader_top1'][1]:.2f} at **{cost('fast') / cost('entrgi'):.2f}× full "
            f"EntRGi's cost and {cost('fast') / cost('plain'):.2f}× the cost of plain unguided sampling** "
            f"(deterministic FLOP count), {d:.2f} ± {e:.2f} above Best-of-N at the same cost")


def render(name: str) -> str:
    """The body of block ``name`` (without the markers)."""
    if name == "demo":
        return "```text\n$ entrgi demo\n" + demo_text(records(DEMO), out=Path("outputs/demo")) + "\n```\n"
    if name == "frontier-table":
        by, seeds, order = frontier_parts()
        return frontier.table(by, seeds, order) + "\n"
    if name == "frontier-claims":
        by, seeds, _ = frontier_parts()
        return "```text\n" + frontier.claims(by, seeds, "fast") + "\n```\n"
    if name == "fast-summary":
        return fast_summary() + "\n"
    raise ValueError(f"unknown generated block {name!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="Change nothing; exit 1 if a block is stale.")
    p.add_argument("--demo", metavar="DIR", help="First copy DIR/results.jsonl (an `entrgi demo --out DIR`) in.")
    args = p.parse_args(argv)
    if args.demo:
        shutil.copyfile(Path(args.demo) / "results.jsonl", DEMO)
    stale = []
    for path in FILES:
        text = path.read_text()
        new = BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)
        if new != text:
            stale += [f"{path.relative_to(ROOT)}: {m.group('name')}" for m in BLOCK.finditer(text)
                      if render(m.group("name")) != m.group("body")]
            if not args.check:
                path.write_text(new)
    if stale:
        print(("stale: " if args.check else "rewrote: ") + "; ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
