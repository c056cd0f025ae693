"""Files the commands read and write: paths checked before any model work, atomic writes, UTF-8 text.

Every error names the file (and the flag that gave it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_writable(path: str | Path, flag: str, *, folder: bool = False) -> Path:
    """``path`` if it can be written (a file path that is not a folder; with ``folder``, a folder path),
    checked now, before any model work: its nearest existing ancestor must be a folder we may write in."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"`{flag}` {str(p)!r} is a file, not a folder: give a folder path.")
    if not folder and p.is_dir():
        raise ValueError(f"`{flag}` {str(p)!r} is a folder: give a file path, e.g. {str(p / 'output.json')!r}.")
    base = p if p.is_dir() else p.parent
    while not base.exists() and base != base.parent:  # missing folders are created when writing
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"`{flag}` {str(p)!r}: {str(base)!r} is a file, not a folder; choose another path.")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".entrgi-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"`{flag}` {str(p)!r}: cannot write in {str(base)!r} ({e.strerror}); "
                         "choose another path.") from None
    return p


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same folder and ``os.replace`` (a failure leaves any old
    file whole); a device or pipe (``/dev/stdout``) is written directly. OSErrors name ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.exists() and not path.is_file():
            path.write_text(text)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tmp.open("x") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def read_text_file(path: str, flag: str) -> str:
    """The UTF-8 text of the file that ``flag`` names, or a ``ValueError`` naming both."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"`{flag}` {path!r}: no such file.")
    if p.is_dir():
        raise ValueError(f"`{flag}` {path!r} is a folder, not a file.")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"`{flag}` {path!r} is not UTF-8 text.") from None


__all__ = ["check_writable", "read_text_file", "write_atomic"]
