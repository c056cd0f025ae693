"""User code by path or module name: plugins (``--plugin``, eval ``plugins:``) and the ``file.py:function`` spellings.

A plugin is a ``.py`` file or an importable module that registers guidance rules, remasking rules or
reward loaders when it is imported (docs/extending.md). A file runs once per process, whichever spelling
names it (a plugin, a ``text:file.py:function`` reward): its module is keyed by its resolved path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType


def is_file_spec(where: str) -> bool:
    """True when ``where`` names a file (ends in .py or holds a path separator), not a module."""
    return where.endswith(".py") or "/" in where or "\\" in where


def import_file(where: str, label: str) -> ModuleType:
    """Run the Python file ``where`` once as a module (again: the same module); errors are ``ValueError``
    starting with ``label``."""
    path = Path(where).expanduser().resolve()
    if path.is_dir():
        raise ValueError(f"{label}: {where!r} is a folder, not a .py file; give the path of the Python file.")
    if not path.is_file():
        raise ValueError(f"{label}: file {where!r} not found (resolved to {str(path)!r}).")
    name = f"entrgi_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{label}: {where!r} cannot be loaded as a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # sys.exit() in user code is its failure, not the command's end
        del sys.modules[name]
        raise ValueError(f"{label}: running {where!r} failed: {_failure(e)}") from e
    return module


def _failure(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r}); a plugin must only define and register things"
    return f"{type(e).__name__}: {e}"


def import_module(where: str, label: str, hint: str = "") -> ModuleType:
    """``importlib.import_module(where)``; errors are ``ValueError`` starting with ``label`` (``hint`` is added
    when the module itself is missing)."""
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name and (where == e.name or where.startswith(e.name + ".")):
            hint = hint or "check the spelling and that it is installed or on PYTHONPATH"
            raise ValueError(f"{label}: no module named {where!r} ({hint}).") from e
        raise ValueError(f"{label}: importing {where!r} failed: {e}") from e
    except (Exception, SystemExit) as e:
        raise ValueError(f"{label}: importing {where!r} failed: {_failure(e)}") from e


def load_plugin(spec: str) -> ModuleType:
    """Import one plugin: a path to a ``.py`` file, or a module name (``my_package.rules``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"plugin {spec!r}: give a path to a .py file or an importable module name.")
    spec = spec.strip()
    label = f"plugin {spec!r}"
    if is_file_spec(spec) or Path(spec).is_file():
        return import_file(spec, label)
    if not all(part.isidentifier() for part in spec.split(".")):
        raise ValueError(f"{label} is neither a .py file nor a module name.")
    return import_module(spec, label, "check the spelling and that it is installed or on PYTHONPATH, or give the "
                                      "path of a .py file")


def load_plugins(specs: Iterable[str]) -> list[ModuleType]:
    """:func:`load_plugin` for each, in order."""
    return [load_plugin(s) for s in specs]


__all__ = ["import_file", "import_module", "is_file_spec", "load_plugin", "load_plugins"]
