"""The package's import graph has no cycles and no upward imports: every import (at module level, inside
functions, under ``TYPE_CHECKING``) goes from a layer to one below it (docs/development.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "entrgi"
#: Bottom to top; a module may import only from its own part or the parts below it.
LAYERS = [
    ("ops", "errors", "registry", "dtypes", "files", "plugins", "version", "typecheck", "hub",
     "conversation", "reproduction"),
    ("config",),
    ("guidance", "presets", "models"),
    ("reward",),
    ("sampling",),
    ("default_pair", "pair", "settings"),
    ("eval",),
    ("cli", "serve", "integrations"),
    ("__init__", "__main__", "data"),
]
RANK = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every entrgi module ``path`` imports, wherever the import statement is."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("entrgi")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("entrgi"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names if (SRC.parent / f"{target}.{a.name}".replace(
                    ".", "/")).with_suffix(".py").exists() or (SRC.parent / f"{target}.{a.name}".replace(".", "/")).is_dir()}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    return {m: {t for t in imports(p) if t in modules and t != m} for m, p in modules.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_part_has_a_layer():
    assert {part(m) for m in graph()} <= set(RANK), {part(m) for m in graph()} - set(RANK)


def test_no_upward_import():
    upward = [(m, t) for m, targets in graph().items() for t in targets
              if part(m) != part(t) and RANK[part(t)] > RANK[part(m)] and part(m) != "__init__"]
    assert not upward, upward


def test_no_cycle_between_modules():
    g = graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycle.extend(path[path.index(t):] + [m, t] if t in path else [m, t])
                return True
            if t not in state and visit(t, path + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(g):
        if m not in state and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_layers_are_what_the_docs_draw():
    doc = (SRC.parent.parent / "docs" / "development.md").read_text()
    for parts in LAYERS[:-1]:
        assert all(f"{p}" in doc for p in parts)
