"""The numbers the README and the docs quote are the stored records' (scripts/render_docs.py): a test fails when a
page and its records disagree, and the frontier's stored records are those of the settings as they resolve now."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_block_equals_its_records(capsys):
    render = load("render_docs")
    assert render.main(["--check"]) == 0, capsys.readouterr().out
    names = {m.group("name") for path in render.FILES for m in render.BLOCK.finditer(path.read_text())}
    assert {"demo", "frontier-table", "frontier-claims", "fast-summary"} <= names


def test_a_stale_block_is_found(tmp_path, monkeypatch, capsys):
    render = load("render_docs")
    page = tmp_path / "page.md"
    page.write_text("x\n<!-- begin generated: fast-summary -->\nTop@1 9.99\n<!-- end generated: fast-summary -->\n")
    monkeypatch.setattr(render, "FILES", [page])
    monkeypatch.setattr(render, "ROOT", tmp_path)
    assert render.main(["--check"]) == 1 and "page.md: fast-summary" in capsys.readouterr().out
    assert render.main([]) == 0 and "Top@1 9.99" not in page.read_text()
    assert render.main(["--check"]) == 0


@pytest.mark.slow
def test_the_stored_demo_records_are_what_the_demo_computes_now(tmp_path):
    """``entrgi demo`` run again gives the stored records (docs/data/demo.jsonl) sample for sample: the same texts,
    rewards, judges, best indices and cost counts (the times and the run's hash aside)."""
    from entrgi.cli.demo import run_demo
    from entrgi.eval.records import read_records

    run_demo(tmp_path / "demo", progress=False)
    volatile = {"wall_time_s", "flops_per_s"}

    def stable(r):
        out = {k: v for k, v in r.items() if k not in ("rank", "run", "key", "config")}
        for section in ("compute", "observer_compute"):
            out[section] = {k: v for k, v in r.get(section, {}).items() if k not in volatile}
        return out

    now = sorted((stable(r) for r in read_records(tmp_path / "demo")), key=lambda r: (r["method"], r["prompt"]))
    stored = sorted((stable(r) for r in load("render_docs").records(ROOT / "docs" / "data" / "demo.jsonl")),
                    key=lambda r: (r["method"], r["prompt"]))
    assert len(now) == len(stored) == 20
    for a, b in zip(now, stored):
        assert a == b, (a["method"], a["prompt"])
