"""The records of an evaluation run folder on disk: reading them (checked against :data:`RECORD_SCHEMA`,
de-duplicated, every unusable line named), appending one as soon as it exists, and the one-writer lock of a
results file.

A results file is JSON lines, one record per (prompt, cell). One process writes a results file at a time
(``out/.lock-<file>``, created with O_CREAT|O_EXCL); a kill loses at most the line being written, which the next
run cuts. Every record carries its run's identity hash (``run``) and its cell's resolved configuration
(``config``), so records of different configurations are never mixed (:func:`configurations`). See
docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import os
import re
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

#: The record schema, checked on every read: field -> what it must be ("required" ones must be present; the
#: others, when present, must have this form). Metric values may be non-finite (the report lists them and
#: leaves them out of the means); everything else must be finite and in range.
RECORD_SCHEMA: dict[str, str] = {
    "key": "required: a non-empty string (hash of the run identity, the cell and the prompt)",
    "prompt_set": "required: a non-empty string",
    "method": "required: a method name, optionally NAME@N with N >= 1",
    "temperature": "required: a finite number >= 0",
    "seed": "required: an integer >= 0",
    "num_samples": "required: an integer >= 1",
    "run": "the identity hash of the run that wrote it: 16 hex digits",
    "config": "the cell's resolved configuration: a mapping (sampler, guidance, search, preset, models, judges, ...)",
    "settings": "the resolved RunSettings the cell ran with: a mapping (sampler, guidance, search, preset)",
    "observer_compute": "a mapping counter -> a number or null (what observers such as the trace added)",
    "prompt_id": "a string", "prompt": "a string", "rank": "an integer >= 0", "match_released": "true or false",
    "best_index": "an integer in [0, num_samples)",
    "top1": "a number or null", "avg": "a number or null",
    "judges": "a mapping judge -> {top1, avg: a number or null}",
    "distinct": "a mapping n -> a number or null",
    "ppl": "a mapping -> a number or null",
    "selection": "a mapping (reward: a string; top1, avg: numbers)",
    "compute": "a mapping counter -> a number or null",
    "samples": "a list of num_samples mappings {text: a string, reward/ppl/selection: a number or null, judges}",
    "curves": "a mapping name -> per sample, per step: a finite number or null",
}
_METHOD = re.compile(r"[^@\s]+(@[1-9][0-9]*)?")
_RUN = re.compile(r"[0-9a-f]{16}")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(x: Any, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _metric(x: Any) -> bool:
    return x is None or _number(x)


def _metric_map(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and _metric(v) for k, v in x.items())


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` does not follow :data:`RECORD_SCHEMA` (the first field found), or ``None`` when it does."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not a record"
    missing = [k for k in RECORD_FIELDS if k not in rec]
    if missing:
        return f"a record without {missing}"
    checks = {
        "key": lambda v: isinstance(v, str) and bool(v),
        "prompt_set": lambda v: isinstance(v, str) and bool(v.strip()),
        "method": lambda v: isinstance(v, str) and _METHOD.fullmatch(v) is not None,
        "temperature": lambda v: _number(v) and math.isfinite(v) and v >= 0,
        "seed": lambda v: _int(v, 0),
        "num_samples": lambda v: _int(v, 1),
        "run": lambda v: isinstance(v, str) and _RUN.fullmatch(v) is not None,
        "config": lambda v: isinstance(v, dict), "settings": lambda v: isinstance(v, dict),
        "observer_compute": _metric_map,
        "prompt_id": lambda v: isinstance(v, str), "prompt": lambda v: isinstance(v, str),
        "rank": lambda v: _int(v, 0), "match_released": lambda v: isinstance(v, bool),
        "best_index": lambda v: _int(v, 0) and v < rec["num_samples"],
        "top1": _metric, "avg": _metric,
        "judges": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _metric_map(j) for k, j in v.items()),
        "distinct": lambda v: _metric_map(v) and all(k.isdigit() for k in v),
        "ppl": _metric_map,
        "selection": lambda v: isinstance(v, dict) and all(_metric(v.get(k)) for k in ("top1", "avg")),
        "compute": _metric_map,
        "samples": lambda v: isinstance(v, list) and all(_sample_ok(s) for s in v) and (
            not v or len(v) == rec["num_samples"]),
        "curves": lambda v: isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(c, list) and all(isinstance(row, list) and all(_metric(x) for x in row)
                                                              for row in c) for k, c in v.items()),
    }
    for name, ok in checks.items():
        if name in rec and not ok(rec[name]):
            shown = json.dumps(rec[name], default=str)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return f"`{name}` = {shown}: must be {RECORD_SCHEMA[name].removeprefix('required: ')}"
    return None


def _sample_ok(s: Any) -> bool:
    return (isinstance(s, dict) and isinstance(s.get("text", ""), str)
            and all(_metric(s.get(k)) for k in ("reward", "ppl", "selection"))
            and _metric_map(s.get("judges", {})))


def curve_problems(rec: dict[str, Any]) -> dict[str, str]:
    """The curves of a (schema-checked) record that hold a non-finite value, each with where
    (``{"estimate": "sample 2, step 5 = inf"}``): such a curve is left out of the plots, never plotted partially."""
    bad = {}
    for name, per_sample in rec.get("curves", {}).items():
        for i, row in enumerate(per_sample):
            j = next((j for j, x in enumerate(row) if x is not None and not math.isfinite(x)), None)
            if j is not None:
                bad[name] = f"sample {i + 1}, step {j + 1} = {row[j]}"
                break
    return bad


def configurations(records: list[dict[str, Any]]) -> dict[str | None, list[int]]:
    """Record indices by the run identity (``run``) they were computed under; ``None`` for records written before
    records carried it. More than one key: the records are of different configurations and must not be mixed."""
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.get("run"), []).append(i)
    return groups


def config_difference(a: dict[str, Any] | None, b: dict[str, Any] | None, limit: int = 4) -> str:
    """The fields in which two records' ``config`` (or a run identity) differ (``guidance.lr: 1.0 vs 0.5``): the
    fields both hold, grid fields (temperature, seed, method, N) left out."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return "one of them carries no configuration (written by an older entrgi)"
    grid = {"sampler.temperature", "sampler.seed", "sampler.num_samples", "guidance.rule", "search.strategy"}

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and not prefix:
                out.update(flat(v, f"{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out
    fa, fb = flat(a), flat(b)
    diff = [k for k in sorted(set(fa) & set(fb)) if k not in grid and fa[k] != fb[k]]
    shown = "; ".join(f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in diff[:limit])
    return (shown + ("; ..." if len(diff) > limit else "")) if diff else "the same settings, another run identity"


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
            except (UnicodeDecodeError, ValueError) as e:
                last = torn_tail and i == len(lines)
                kind = "torn last line (a killed or still running run)" if last else "corrupted line"
                res.problems.append(DataProblem(str(path), i, kind, str(e)[:80]))
                continue
            problem = record_problem(rec)
            if problem is not None:
                res.problems.append(DataProblem(str(path), i, "invalid record (left out)", problem))
                continue
            curves = curve_problems(rec)
            if curves:
                res.problems.append(DataProblem(str(path), i, "non-finite curve value (that curve left out of "
                                                "the plots)", "; ".join(f"{k}: {v}" for k, v in curves.items())))
                rec = {**rec, "curves": {k: v for k, v in rec["curves"].items() if k not in curves}}
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


_HELD: dict[str, int] = {}  # locks this process holds -> depth (a command that runs the runner holds it already)


@contextmanager
def results_lock(results: Path, reentrant: bool = False) -> Iterator[Path]:
    """Hold ``.lock-<results file>`` (created with O_CREAT|O_EXCL, holding pid and host) while the block runs.
    ``reentrant``: a lock this process already holds is entered again (``entrgi demo`` takes the lock before it
    clears its folder, then runs the runner, which takes it so); otherwise a second holder is refused.

    A lock of a dead process on this host is stale: taken over with a warning. A live one (or one of another
    host, which cannot be checked from here) raises ValueError. A lock that could not be written whole (a full
    disk) is removed at once, never left behind."""
    lock = lock_path(results)
    held = str(lock.absolute())
    if reentrant and _HELD.get(held):
        _HELD[held] += 1
        try:
            yield lock
        finally:
            _HELD[held] -= 1
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
    _acquire(lock, me)
    _HELD[held] = 1
    try:
        yield lock
    finally:
        _HELD.pop(held, None)
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
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me))
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException as e:  # a full disk: no empty lock left to block every later run
                lock.unlink(missing_ok=True)
                if isinstance(e, OSError) and e.filename is None:
                    raise OSError(e.errno, e.strerror, str(lock)) from e
                raise
            return
        owner = _read_lock(lock)
        if owner is None:
            if not lock.exists():
                continue  # released meanwhile
            unreadable += 1
            if unreadable < 20:  # an owner between creating and writing it
                time.sleep(0.05)
                continue
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                continue
            if lock.stat().st_size == 0 and age > 5:  # created, never written: a writer that died (a full disk)
                grab = lock.with_name(f"{lock.name}.stale-{me['token']}")
                try:
                    os.rename(lock, grab)
                except FileNotFoundError:
                    continue
                grab.unlink()
                warnings.warn(f"{lock}: removed an empty lock file left {age:.0f} s ago by a run that could not "
                              "write it (a full disk?).", stacklevel=4)
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


__all__ = ["RECORD_FIELDS", "RECORD_SCHEMA", "DataProblem", "Results", "append_record", "config_difference",
           "configurations", "curve_problems", "cut_torn_tail", "load_results", "lock_path", "read_records",
           "record_problem", "results_lock"]
