"""One-line errors and warnings of the ``entrgi`` command: ``entrgi <verb>: error: <what is wrong and what to do>``.

Exit 2 for a usage, configuration or input mistake, 1 for a failure while running; ``entrgi --debug <verb>``
(or ``ENTRGI_DEBUG=1``) shows the full traceback instead."""

from __future__ import annotations

import argparse
import errno
import json
import pickle
import sys
import warnings
from collections.abc import Callable

import torch
import yaml

from ..errors import NonFiniteError


# ---- one-line errors and warnings -------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too: ``entrgi <command>: error: <message> (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


_OS_HINTS = {errno.ENOSPC: "free some disk space or write elsewhere",
             errno.EROFS: "the file system is read-only: write elsewhere",
             errno.EACCES: "permission denied: choose a path you may write, or fix its permissions",
             errno.EPERM: "operation not permitted: choose another path"}


def yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is None or what is None:
        return one_line(exc)
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}"


def user_error(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for a failure the user can act on; ``None`` for a bug (traceback).

    2: a usage, configuration or input mistake (``ValueError``, bad YAML / JSON, a missing file);
    1: a failure while running (disk full, read-only, no permission, unreadable checkpoint, device errors)."""
    from safetensors import SafetensorError

    if isinstance(exc, yaml.YAMLError):
        return 2, f"invalid YAML: {yaml_problem(exc)}."
    if isinstance(exc, json.JSONDecodeError):
        return 2, f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
    if isinstance(exc, NonFiniteError):  # the reward model (or the run) produced inf/NaN: a runtime failure
        return 1, one_line(exc)
    if isinstance(exc, ValueError):
        return 2, one_line(exc)
    if isinstance(exc, OSError):
        where = f"{str(exc.filename)!r}: " if exc.filename is not None else ""
        hint = _OS_HINTS.get(exc.errno)
        code = 2 if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) else 1
        return code, one_line(f"{where}{exc.strerror or exc}" + (f"; {hint}." if hint else ""))
    if isinstance(exc, SafetensorError):
        return 1, one_line(f"cannot read a safetensors checkpoint: {exc}")
    if isinstance(exc, (pickle.UnpicklingError, EOFError)):
        return 1, one_line(f"cannot read a checkpoint: {exc}")
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return 1, one_line(f"{exc} Try a smaller `--batch-size` (rows per forward pass) or `--num-samples`.")
    if isinstance(exc, (RuntimeError, ImportError)):
        return 1, one_line(f"{exc} (`entrgi --debug ...` shows the traceback)")
    return None


def run_command(verb: str, func: Callable[[], int], debug: bool = False) -> int:
    """``func()`` with one-line warnings and user errors (``debug``: errors keep their traceback)."""
    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"entrgi {verb}: warning: {one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return func()
        except KeyboardInterrupt:
            if debug:
                raise
            resume = " (run the same command again to resume)" if verb == "eval" else ""
            print(f"entrgi {verb}: interrupted{resume}.", file=sys.stderr)
            return 130
        except Exception as exc:
            found = None if debug else user_error(exc)
            if found is None:
                raise
            print(f"entrgi {verb}: error: {found[1]}", file=sys.stderr)
            return found[0]


__all__ = ["Parser", "one_line", "run_command", "user_error", "yaml_problem"]
