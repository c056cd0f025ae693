"""The mechanisms behind issue #22: folders whose files a command proves it wrote (entrgi.files.OwnedFolder), the
record schema (entrgi.eval.records) and typed config values (entrgi.typecheck)."""

import json
import os
from pathlib import Path

import pytest

from entrgi import files
from entrgi.eval.records import RECORD_SCHEMA, record_problem
from entrgi.files import MANIFEST, OwnedFolder
from entrgi.typecheck import check_keys, type_problem


def test_a_file_is_ours_only_while_its_content_is_what_we_wrote(tmp_path):
    folder = OwnedFolder(tmp_path / "run", kind="eval")
    folder.write_text("run.json", "{}")
    assert folder.proof("run.json").state == "ours" and folder.foreign(["run.json", "absent.txt"]) == []
    (folder.path / "run.json").write_text('{"edited": true}')
    assert folder.foreign(["run.json"]) == ["run.json"]
    with pytest.raises(ValueError, match=r"holds run.json, which `entrgi` would replace but did not write"):
        folder.write_text("run.json", "{}")
    assert folder.remove(["run.json"]) == [] and (folder.path / "run.json").read_text() == '{"edited": true}'
    (folder.path / "user.txt").write_text("mine")
    (folder.path / "sub").mkdir()
    os.symlink(folder.path / "user.txt", folder.path / "link")
    assert folder.foreign(["user.txt", "sub", "link"]) == ["user.txt", "sub", "link"]
    assert folder.others() == ["link", "run.json", "sub", "user.txt"]
    folder.write_text("table.md", "| a |")
    assert folder.remove(["table.md", "user.txt"]) == ["table.md"] and (folder.path / "user.txt").exists()
    assert "table.md" not in json.loads((folder.path / MANIFEST).read_text())["files"]


def test_a_folder_of_another_kind_or_a_corrupt_manifest_is_refused(tmp_path):
    OwnedFolder(tmp_path, kind="demo").write_text("demo.txt", "x")
    with pytest.raises(ValueError, match="holds the files of `entrgi demo`"):
        OwnedFolder(tmp_path, kind="eval").foreign(["run.json"])
    assert OwnedFolder(tmp_path).foreign(["demo.txt"]) == []  # the report writes into any kind
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match=rf"its manifest .*{MANIFEST}' is unreadable"):
        OwnedFolder(tmp_path, kind="demo").foreign(["demo.txt"])


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_an_appended_file_is_proven_at_every_point_a_kill_can_leave_it(tmp_path, monkeypatch):
    folder = OwnedFolder(tmp_path, kind="eval")
    results = folder.appender("results.jsonl")
    results.append('{"line": 1}')
    real = os.fsync

    def killed_after_the_write(fd):  # the line is on disk, its manifest entry still says "pending"
        if os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
            raise KeyboardInterrupt
        real(fd)
    monkeypatch.setattr(files.os, "fsync", killed_after_the_write)
    with pytest.raises(KeyboardInterrupt):
        results.append('{"line": 2}')
    monkeypatch.undo()
    path, manifest = tmp_path / "results.jsonl", tmp_path / MANIFEST
    full, killed = path.read_bytes(), manifest.read_bytes()
    assert full == b'{"line": 1}\n{"line": 2}\n' and "pending" in json.loads(killed)["files"]["results.jsonl"]
    assert folder.proof("results.jsonl").state == "ours"  # the pending line, whole
    for cut, kept in ((full[:-5], 12), (full + b'{"line": 3', 24)):  # cut mid-line; a line cut after the pending one
        path.write_bytes(cut)
        manifest.write_bytes(killed)
        assert (folder.proof("results.jsonl").state, folder.proof("results.jsonl").size) == ("torn", kept)
        with pytest.warns(UserWarning, match="removed the torn last line"):
            again = folder.appender("results.jsonl")
        again.append('{"line": 4}')
        assert path.read_bytes() == full[:kept] + b'{"line": 4}\n' and folder.proof("results.jsonl").state == "ours"
    path.write_bytes(full[:12] + b'{"user": "line"}\n')  # a whole line the manifest never heard of: not ours
    assert folder.proof("results.jsonl").state == "foreign"
    with pytest.raises(ValueError, match="would append to but did not write"):
        folder.appender("results.jsonl")
    assert path.read_bytes() == full[:12] + b'{"user": "line"}\n'


def test_the_record_schema_names_the_field_and_the_rule():
    ok = {"key": "k", "prompt_set": "s", "method": "best_of_n@4", "temperature": 0.7, "seed": 0, "num_samples": 4,
          "best_index": 3, "curves": {"estimate": [[0.1, None]]}, "run": "0123456789abcdef"}
    assert record_problem(ok) is None
    for field, value in (("seed", None), ("seed", True), ("temperature", float("nan")), ("method", "x@0"),
                         ("best_index", 4), ("run", "xyz"), ("curves", {"estimate": [["a"]]}),
                         ("samples", [{"text": "a"}]), ("judges", {"vader": 1.0}), ("key", "")):
        problem = record_problem({**ok, field: value})
        assert problem is not None and problem.startswith(f"`{field}` = ") and field in RECORD_SCHEMA, (field, problem)
    assert "without ['seed']" in record_problem({k: v for k, v in ok.items() if k != "seed"})


def test_type_problems_name_the_element_and_keys_the_closest_name():
    assert (type_problem([1, "a"], tuple[str, ...], "methods")
            == "`methods[0]` must be a non-empty string, got 1 (an integer).")
    assert type_problem("no", bool, "perplexity") == "`perplexity` must be true or false, got 'no' (a string)."
    assert type_problem(None, int | None, "n") is None and type_problem(True, int, "n").endswith("(a boolean).")
    assert type_problem(" ", str, "out") == "`out` must be a non-empty string, got ' ' (an empty string)."
    with pytest.raises(ValueError, match=r"unknown keys \['lrr', 'x'\] \(did you mean 'lr' for 'lrr'\?\)"):
        check_keys({"lrr": 1, "x": 2, "lr": 3}, ["lr", "method"], "keys")
