"""The records of an evaluation run folder on disk: reading them (de-duplicated, every unusable line named),
appending one as soon as it exists, and the one-writer lock of a results file.

A results file is JSON lines, one record per (prompt, cell). One process writes a results file at a time
(``out/.lock-<file>``, created with O_CREAT|O_EXCL); a kill loses at most the line being written, which the next
run cuts (:func:`cut_torn_tail`). See docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What every record must hold to be read at all (the report lists the others' missing metrics).
RECORD_FIELDS = ("key", "prompt_set", "method", "temperature", "seed", "num_samples")


@dataclass(frozen=True)
class DataProblem:
    """A line of a results file that was not used as it stands (``line`` counts from 1)."""

    path: str
    line: int
    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path} line {self.line}: {self.kind}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Results:
    """The records of a run folder, de-duplicated by key, with where each came from and what was left out."""

    records: list[dict[str, Any]] = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)  # (file, line) of each record
    problems: list[DataProblem] = field(default_factory=list)


def load_results(out: Path) -> Results:
    """Read ``out/results*.jsonl``: one record per key (the first seen), and a :class:`DataProblem` for every
    corrupted line, torn last line (a killed or still running run) and duplicate key."""
    res = Results()
    seen: dict[str, tuple[str, int]] = {}
    for path in sorted(Path(out).glob("results*.jsonl")):
        lines = path.read_bytes().split(b"\n")
        torn_tail = lines[-1] != b""  # the last line has no newline: cut by a kill (or being written)
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
                if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                    raise ValueError("not a record (no `key`)")
                missing = [k for k in RECORD_FIELDS if k not in rec]
                if missing:
                    raise ValueError(f"a record without {missing}")
            except (UnicodeDecodeError, ValueError) as e:
                last = torn_tail and i == len(lines)
                kind = "torn last line (a killed or still running run)" if last else "corrupted line"
                res.problems.append(DataProblem(str(path), i, kind, str(e)[:80]))
                continue
            if rec["key"] in seen:
                first = seen[rec["key"]]
                res.problems.append(DataProblem(str(path), i, "duplicate key",
                                                f"{rec['key']}, first at {first[0]} line {first[1]}; kept that one"))
                continue
            seen[rec["key"]] = (str(path), i)
            res.records.append(rec)
            res.sources.append((str(path), i))
    return res


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every usable record in ``out/results*.jsonl``, one per key (see :func:`load_results`)."""
    return load_results(out).records


def cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last complete line (a killed run's fragment); returns the bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end, chunk = size, 1 << 16
        while end > 0:  # find the last newline, reading backwards
            lo = max(0, end - chunk)
            f.seek(lo)
            nl = f.read(end - lo).rfind(b"\n")
            if nl >= 0:
                end = lo + nl + 1
                break
            end = lo
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return size - end


# ---- one writer per results file ----------------------------------------------------------------
def lock_path(results: Path) -> Path:
    return results.with_name(f".lock-{results.name}")


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(owner, dict) and isinstance(owner.get("pid"), int) and owner["pid"] > 0
          and isinstance(owner.get("host"), str))
    return owner if ok else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, ValueError):
        return False
    return True


@contextmanager
def results_lock(results: Path) -> Iterator[Path]:
    """Hold ``.lock-<results file>`` (created with O_CREAT|O_EXCL, holding pid and host) while the block runs.

    A lock of a dead process on this host is stale: taken over with a warning. A live one (or one of another
    host, which cannot be checked from here) raises ValueError."""
    lock = lock_path(results)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
    _acquire(lock, me)
    try:
        yield lock
    finally:
        owner = _read_lock(lock)
        if owner is not None and owner.get("token") == me["token"]:
            lock.unlink(missing_ok=True)


def _acquire(lock: Path, me: dict[str, Any]) -> None:
    out = lock.parent
    unreadable = 0
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            return
        owner = _read_lock(lock)
        if owner is None:
            if not lock.exists():
                continue  # released meanwhile
            unreadable += 1
            if unreadable < 20:  # an owner between creating and writing it
                time.sleep(0.05)
                continue
            raise ValueError(f"run folder {str(out)!r} has an unreadable lock file {str(lock)!r}; if no `entrgi "
                             "eval` is running on this folder, delete that file and run again.")
        here = owner["host"] == me["host"]
        if not here or _pid_alive(owner["pid"]):
            where = "" if here else " (another host: it cannot be checked from here)"
            raise ValueError(
                f"run folder {str(out)!r} is in use: `entrgi eval` pid {owner['pid']} on host {owner['host']!r}"
                f"{where} is writing {lock.name[len('.lock-'):]}. Wait for it to finish or use another `out` "
                "(several workers on one folder: launch them with torchrun, which sets RANK/WORLD_SIZE); if that "
                f"process is gone, delete {str(lock)!r}.")
        grab = lock.with_name(f"{lock.name}.stale-{me['token']}")
        try:
            os.rename(lock, grab)  # atomic: one taker wins
        except FileNotFoundError:
            continue
        if _read_lock(grab) == owner:
            grab.unlink()
            warnings.warn(f"{lock}: took over the stale lock of pid {owner['pid']} on {owner['host']!r} "
                          "(that process is gone).", stacklevel=4)
        else:  # someone took it over between our read and rename: give it back
            try:
                os.link(grab, lock)
            except FileExistsError:
                pass
            grab.unlink()


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a kill loses at most the line being written)."""
    with path.open("a+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                f.write("\n")  # a previous run died mid-line
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


__all__ = ["RECORD_FIELDS", "DataProblem", "Results", "append_record", "cut_torn_tail", "load_results", "lock_path",
           "read_records", "results_lock"]
