"""Files the commands read and write: paths checked before any model work, atomic writes, UTF-8 text, and
folders whose files a command replaces or deletes only when it can prove it wrote them (:class:`OwnedFolder`).

Every error names the file (and the flag that gave it)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def check_writable(path: str | Path, flag: str, *, folder: bool = False) -> Path:
    """``path`` if it can be written (a file path that is not a folder; with ``folder``, a folder path),
    checked now, before any model work: its nearest existing ancestor must be a folder we may write in."""
    if not str(path).strip():
        raise ValueError(f"`{flag}` is empty: give a {'folder' if folder else 'file'} path (`.` for the current "
                         "folder).")
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
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
    if not str(path).strip():
        raise ValueError(f"`{flag}` is empty: give a file path.")
    p = Path(path)
    if not p.exists():
        raise ValueError(f"`{flag}` {path!r}: no such file.")
    if p.is_dir():
        raise ValueError(f"`{flag}` {path!r} is a folder, not a file.")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"`{flag}` {path!r} is not UTF-8 text.") from None


# ---- folders a command owns: a manifest of what it wrote, with content hashes ---------------------------
#: The manifest of an owned folder: ``{"written_by": "entrgi", "kind": ..., "files": {name: entry}}``, an entry
#: ``{"sha256": hex, "size": bytes}`` (plus ``"append": true`` for a results file, and ``"pending"``: the
#: hash and size a write in progress will leave).
MANIFEST = ".entrgi-manifest.json"
#: Files of a folder that are the machinery's, never a user's or a result: the manifest, locks, temporary files.
SCRATCH_PREFIXES = (MANIFEST, ".lock-", ".entrgi-tmp-")


@dataclass
class Proof:
    """What a folder's manifest proves about one of its files: ``state`` is ``absent``, ``ours`` (its content is
    what the command last wrote), ``torn`` (an appended file whose last line a kill cut: ours up to ``size``)
    or ``foreign``; ``hasher`` holds the hash of the proven content (``ours``/``torn``)."""

    state: str
    size: int = 0
    hasher: Any = None


class OwnedFolder:
    """A folder whose files a command replaces or deletes only when its manifest (:data:`MANIFEST`, written
    atomically before and after every write) proves by content hash that an entrgi command of this ``kind``
    wrote them; names never count. ``flag`` names the folder in errors (``--out``).

    Write through :meth:`write` / :meth:`write_text` / :meth:`appender`, delete through :meth:`remove`; check
    first with :meth:`refuse_foreign`, so that a refused command touches nothing."""

    def __init__(self, path: str | Path, kind: str | None = None, flag: str = "--out",
                 command: str = "entrgi"):
        self.path = Path(path)
        self.kind = kind
        self.flag = flag
        self.command = command

    def __repr__(self) -> str:
        return f"OwnedFolder({str(self.path)!r}, kind={self.kind!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    # ---- the manifest ---------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest (validated), or ``None`` when the folder has none; a corrupt one is a ``ValueError``."""
        p = self.manifest_path
        if not p.exists():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            ok = (isinstance(data, dict) and data.get("written_by") == "entrgi" and isinstance(data.get("files"), dict)
                  and all(isinstance(k, str) and _valid_entry(v) for k, v in data["files"].items()))
            if not ok:
                raise ValueError("not an entrgi manifest")
        except (OSError, ValueError) as e:
            raise ValueError(f"`{self.flag}` {str(self.path)!r}: its manifest {str(p)!r} is unreadable ({e}), so no "
                             "file there can be proven to be entrgi's; move the folder's files away or choose another "
                             f"`{self.flag}` folder.") from None
        return data

    def folder_kind(self) -> str | None:
        manifest = self.read_manifest()
        return None if manifest is None else manifest.get("kind")

    def check_kind(self) -> None:
        """``ValueError`` when the folder's manifest says another kind of command wrote it (a demo folder is not an
        eval run folder)."""
        found = self.folder_kind()
        if self.kind is not None and found is not None and found != self.kind:
            raise ValueError(f"`{self.flag}` {str(self.path)!r} holds the files of `entrgi {found}`, not of "
                             f"`{self.command}`: choose another `{self.flag}` folder; nothing was changed.")

    @contextlib.contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        """Serialise read-modify-write of the manifest between processes (``flock`` on the folder itself)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: one writer per folder is the lock's job
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _update(self, name: str, entry: dict[str, Any] | None) -> None:
        """Set (or with ``None`` drop) the manifest entry of ``name``, atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self._manifest_lock():
            manifest = self.read_manifest() or {"written_by": "entrgi", "kind": self.kind, "version": 1, "files": {}}
            if manifest.get("kind") is None:
                manifest["kind"] = self.kind
            if entry is None:
                manifest["files"].pop(name, None)
            else:
                manifest["files"][name] = entry
            write_atomic(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    # ---- proofs ---------------------------------------------------------------------------------
    def proof(self, name: str, manifest: dict[str, Any] | None = None) -> Proof:
        """What the manifest proves about the file ``name`` (see :class:`Proof`)."""
        p = self.path / name
        if not p.exists() and not p.is_symlink():
            return Proof("absent")
        if p.is_symlink() or not p.is_file():
            return Proof("foreign")
        manifest = self.read_manifest() if manifest is None else manifest
        entry = None if manifest is None else manifest["files"].get(name)
        if entry is None:
            return Proof("foreign")
        targets = [entry, *([entry["pending"]] if "pending" in entry else [])]
        cuts = {t["size"] for t in targets}
        at: dict[int, Any] = {}  # the hash of the file's first n bytes, at each size a target names
        with p.open("rb") as f:
            h = hashlib.sha256()
            size = 0
            if 0 in cuts:
                at[0] = h.copy()
            while chunk := f.read(1 << 20):
                for cut in sorted(c for c in cuts if size < c <= size + len(chunk)):
                    head = h.copy()
                    head.update(chunk[:cut - size])
                    at[cut] = head
                h.update(chunk)
                size += len(chunk)
            for t in targets:
                if size == t["size"] and h.hexdigest() == t["sha256"]:
                    return Proof("ours", size, h)
            if entry.get("append"):  # a line cut by a kill (no newline yet) after a proven prefix: ours up to it
                for t in sorted(targets, key=lambda t: -t["size"]):
                    if t["size"] in at and at[t["size"]].hexdigest() == t["sha256"]:
                        f.seek(t["size"])
                        if b"\n" not in f.read():
                            return Proof("torn", t["size"], at[t["size"]])
        return Proof("foreign")

    def foreign(self, names: Iterable[str]) -> list[str]:
        """Of ``names``, those that exist in the folder and are not provably this command's."""
        self.check_kind()
        manifest = self.read_manifest()
        return [n for n in names if self.proof(n, manifest).state == "foreign"]

    def refuse_foreign(self, names: Iterable[str], action: str = "would replace") -> None:
        """``ValueError`` (one line naming every such file) when any of ``names`` exists and is not provably ours."""
        bad = self.foreign(names)
        if bad:
            raise ValueError(f"`{self.flag}` {str(self.path)!r} holds {', '.join(bad)}, which `{self.command}` "
                             f"{action} but did not write (or which changed since it did; the folder's {MANIFEST} "
                             f"proves what it wrote): move {'it' if len(bad) == 1 else 'them'} away or choose another "
                             f"`{self.flag}` folder; nothing was changed.")

    def others(self) -> list[str]:
        """The folder's entries that are neither provably ours nor its machinery (manifest, locks, temporaries)."""
        if not self.path.is_dir():
            return []
        manifest = self.read_manifest()
        return sorted(n for n in os.listdir(self.path) if not n.startswith(SCRATCH_PREFIXES)
                      and self.proof(n, manifest).state not in ("ours", "torn"))

    # ---- writing and removing -------------------------------------------------------------------
    def write(self, name: str, writer: Callable[[Path], Any]) -> bool:
        """Write ``name`` through ``writer(temporary path)`` (same folder, same suffix), then replace it atomically,
        the manifest recording its hash first as pending, then as written. Returns False (nothing changed) when
        ``writer`` wrote nothing. A foreign file of that name is never replaced (``ValueError``)."""
        self.refuse_foreign([name])
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".entrgi-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
        try:
            writer(tmp)
            if not tmp.exists():
                return False
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
                h = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            new = {"sha256": h.hexdigest(), "size": tmp.stat().st_size}
            old = (self.read_manifest() or {"files": {}})["files"].get(name)
            if old is not None and (self.path / name).exists():
                self._update(name, {**{k: v for k, v in old.items() if k != "pending"}, "pending": new})
            else:
                self._update(name, {**new, "pending": new})
            os.replace(tmp, self.path / name)
            self._update(name, new)
        except OSError as e:
            if e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.path / name)) from e
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def write_text(self, name: str, text: str) -> None:
        """:meth:`write` of UTF-8 ``text``."""
        self.write(name, lambda p: p.write_text(text, encoding="utf-8"))

    def read_json(self, name: str, default: Any = None) -> Any:
        """The JSON value of the file ``name`` (``default`` when absent); a ``ValueError`` naming the file when it is
        not JSON."""
        p = self.path / name
        if not p.exists():
            return default
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{str(p)!r} is not valid JSON ({e}); restore it or choose another `{self.flag}` "
                             "folder.") from None

    def remove(self, names: Iterable[str]) -> list[str]:
        """Delete those of ``names`` that are provably ours (never another file); returns the deleted names."""
        self.check_kind()
        manifest = self.read_manifest()
        gone = []
        for name in names:
            if self.proof(name, manifest).state in ("ours", "torn"):
                (self.path / name).unlink()
                self._update(name, None)
                gone.append(name)
        return gone

    def appender(self, name: str) -> Appender:
        """An :class:`Appender` on ``name``: created (and recorded) when absent, a torn last line of ours cut away
        (with a warning); a foreign file is never appended to (``ValueError``)."""
        self.refuse_foreign([name], "would append to")
        return Appender(self, name)


def _valid_entry(entry: Any) -> bool:
    def one(e):
        return (isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
                and not isinstance(e.get("size"), bool) and e["size"] >= 0)
    return one(entry) and ("pending" not in entry or one(entry["pending"]))


class Appender:
    """Appends lines to an owned file; before each line the manifest records the hash the file will have after
    it (``pending``), after it the hash it has, so a kill at any point leaves a file the manifest proves."""

    def __init__(self, folder: OwnedFolder, name: str):
        self.folder, self.name, self.path = folder, name, folder.path / name
        proof = folder.proof(name)
        if proof.state == "absent":
            folder.path.mkdir(parents=True, exist_ok=True)
            empty = {"sha256": hashlib.sha256().hexdigest(), "size": 0, "append": True}
            folder._update(name, empty)
            with self.path.open("xb"):
                pass
            proof = Proof("ours", 0, hashlib.sha256())
        elif proof.state == "torn":
            size = self.path.stat().st_size
            with self.path.open("rb+") as f:
                f.truncate(proof.size)
                f.flush()
                os.fsync(f.fileno())
            warnings.warn(f"{self.path}: removed the torn last line ({size - proof.size} bytes) of a killed run; its "
                          "record is computed again.", stacklevel=3)
        elif proof.state != "ours":
            folder.refuse_foreign([name], "would append to")
        self.size, self.hasher = proof.size, proof.hasher
        folder._update(name, {"sha256": self.hasher.hexdigest(), "size": self.size, "append": True})

    def append(self, line: str) -> None:
        """Append ``line`` and a newline, flushed to disk."""
        data = (line + "\n").encode("utf-8")
        after = self.hasher.copy()
        after.update(data)
        done = {"sha256": after.hexdigest(), "size": self.size + len(data), "append": True}
        self.folder._update(self.name, {"sha256": self.hasher.hexdigest(), "size": self.size, "append": True,
                                        "pending": {k: done[k] for k in ("sha256", "size")}})
        try:
            with self.path.open("ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            raise
        self.folder._update(self.name, done)
        self.size, self.hasher = done["size"], after


__all__ = ["MANIFEST", "Appender", "OwnedFolder", "Proof", "check_writable", "read_text_file", "write_atomic"]
