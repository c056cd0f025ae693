"""The CLI's safety rules and one-line errors: every user mistake ends in ONE stderr line
``entrgi <verb>: error: ...`` naming the flag / file and a non-zero exit, never a traceback; the demo
never deletes a folder it did not make; outputs are checked before any model work."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from support.tiny_models import CHAT_TEMPLATE, tiny_mlm, tiny_qwen3_reward, word_tokenizer

from entrgi import files
from entrgi.cli import commands as cli
from entrgi.cli import demo
from entrgi.cli.commands import main
from entrgi.cli.errors import user_error
from entrgi.eval.prompts import load_prompt_set

ENTRGI = Path(sys.executable).with_name("entrgi")  # the installed console script of this venv
N_DEMO_PROMPTS = len(load_prompt_set(demo.DEMO_PROMPT_SET).prompts)


def run_cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess (offline, no debug)."""
    full = {k: v for k, v in os.environ.items() if k != "ENTRGI_DEBUG"}
    full.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([str(ENTRGI), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=full)


def one_line(stderr: str, verb: str, kind: str = "error") -> str:
    """The single stderr line ``entrgi <verb>: <kind>: ...`` (fails on anything else, e.g. a traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"entrgi {verb}: {kind}: "), stderr
    return lines[0]


def assert_error(res: subprocess.CompletedProcess, verb: str, *needles: str, code: int = 2) -> str:
    line = one_line(res.stderr, verb)
    assert res.returncode == code, (res.returncode, res.stderr)
    for n in needles:
        assert n in line, line
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny HF checkpoints: a BERT DLLM, a Qwen3 RM, and a DLLM whose head always prefers [SEP] (= EOS)."""
    d = tmp_path_factory.mktemp("ckpt")
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    mlm, rm = tiny_mlm(tok), tiny_qwen3_reward(tok, seed=1)
    mlm.module.save_pretrained(d / "mlm")
    tok.save_pretrained(d / "mlm")
    rm.model.save_pretrained(d / "rm")
    tok.save_pretrained(d / "rm")
    with torch.no_grad():
        mlm.module.cls.predictions.bias[tok.sep_token_id] = 50.0
    mlm.module.save_pretrained(d / "eos")
    tok.save_pretrained(d / "eos")
    return d


# ---- demo: never delete what it did not write; arguments before the disk ---------------------------
@pytest.fixture
def user_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my thesis, no backup\n")
    return folder


@pytest.mark.parametrize("args,needles", [
    (["--prompts", "0"], ["`--prompts`", f"[1, {N_DEMO_PROMPTS}]", "got 0"]),
    (["--prompts", "1"], ["`--out`", "not written by `entrgi demo`", "choose a new `--out`"]),
])
def test_demo_leaves_a_folder_it_did_not_make_untouched(user_folder, args, needles):
    before = snapshot(user_folder)
    res = run_cli("demo", "--out", user_folder, "--quiet", *args)
    line = assert_error(res, "demo", *needles)
    if args[1] == "1":
        assert str(user_folder) in line
    assert snapshot(user_folder) == before  # not one byte changed, no manifest or lock written


@pytest.mark.parametrize("args,needle", [
    (["--prompts", "-1"], "`--prompts`"),
    (["--prompts", str(N_DEMO_PROMPTS + 1)], f"got {N_DEMO_PROMPTS + 1}"),
    (["--seed", "-1"], "`--seed`"),
    (["--temperature", "0"], "`--temperature`"),
    (["--temperature", "nan"], "`--temperature`"),
    (["--temperature", "inf"], "`--temperature`"),
    ([], "not written by `entrgi demo`"),  # good arguments, but a folder with someone else's file
])
def test_demo_checks_everything_before_disk_and_models(user_folder, tmp_path, monkeypatch, capsys, args, needle):
    def no_models(*a, **k):
        raise AssertionError("the demo started loading models")
    monkeypatch.setattr(demo, "EvalRunner", no_models)
    before = snapshot(user_folder)
    fresh = tmp_path / "new" / "demo"
    for out in (user_folder, fresh) if args else (user_folder,):
        assert main(["demo", "--out", str(out), "--quiet", *args]) == 2
        assert needle in one_line(capsys.readouterr().err, "demo")
    assert snapshot(user_folder) == before
    assert not (tmp_path / "new").exists()  # bad arguments: nothing created


def test_claim_demo_dir_replaces_only_what_its_manifest_proves(tmp_path):
    new = tmp_path / "a" / "b"
    assert demo.claim_demo_dir(demo.demo_folder(new)) == [] and os.listdir(new) == []
    # a folder the demo wrote, where the user later added a file and edited none: demo files go, the user's stays
    ours = demo.demo_folder(tmp_path / "ours")
    for name in demo.DEMO_FILES:
        ours.write_text(name, "old demo output")
    (ours.path / "notes.txt").write_text("keep")
    (tmp_path / "escape.txt").write_text("outside")
    assert demo.claim_demo_dir(ours) == ["notes.txt"]
    assert sorted(os.listdir(ours.path)) == sorted([files.MANIFEST, "notes.txt"])
    assert (ours.path / "notes.txt").read_text() == "keep" and (tmp_path / "escape.txt").read_text() == "outside"
    # a demo file edited since the demo wrote it is not the demo's any more: refused, nothing removed
    ours.write_text("demo.txt", "new demo output")
    ours.write_text("run.json", "{}")
    (ours.path / "demo.txt").write_text("my edits")
    with pytest.raises(ValueError, match=r"holds demo.txt, which `entrgi demo` would replace but did not write"):
        demo.claim_demo_dir(ours)
    assert (ours.path / "run.json").read_text() == "{}" and (ours.path / "demo.txt").read_text() == "my edits"
    # files named like the demo's, without a manifest, are not the demo's: refused, untouched
    named = tmp_path / "named"
    named.mkdir()
    for name in ("demo.json", "demo.txt", "results.jsonl", "run.json"):
        (named / name).write_text("mine")
    before = snapshot(named)
    with pytest.raises(ValueError, match="not written by `entrgi demo`"):
        demo.claim_demo_dir(demo.demo_folder(named))
    assert snapshot(named) == before
    # an eval run folder (its manifest says so) is not the demo's either
    run = files.OwnedFolder(tmp_path / "run", kind="eval")
    run.write_text("run.json", "{}")
    with pytest.raises(ValueError, match="holds the files of `entrgi eval`"):
        demo.claim_demo_dir(demo.demo_folder(run.path))
    assert (run.path / "run.json").read_text() == "{}"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        demo.claim_demo_dir(demo.demo_folder(run.path / "run.json"))


@pytest.mark.slow
def test_demo_reruns_into_its_own_folder(tmp_path):
    out = tmp_path / "demo"
    first = run_cli("demo", "--out", out, "--prompts", "1", "--quiet")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("entrgi demo: 1 sentence beginnings x 4 samples")
    (out / "notes.txt").write_text("keep")
    second = run_cli("demo", "--out", out, "--prompts", "1", "--quiet")
    assert second.returncode == 0, second.stderr
    assert (out / "notes.txt").read_text() == "keep"
    records = (out / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["method"] for r in records) == sorted(demo.DEMO_METHODS)  # replaced, not appended
    listed = json.loads((out / files.MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(set(os.listdir(out)) - {"notes.txt", files.MANIFEST})
    assert {"results.jsonl", "demo.txt", "reward_vs_step.png"} <= set(listed)


# ---- generate --output: checked first, written atomically -------------------------------------------
def test_generate_output_folder_is_refused_before_any_model_work(tmp_path):
    (tmp_path / "outdir").mkdir()
    res = run_cli("generate", "--model", tmp_path / "no-such-model", "--reward", tmp_path / "no-such-rm",
                  "--prompt", "x", "--output", tmp_path / "outdir")
    assert_error(res, "generate", "`--output`", str(tmp_path / "outdir"), "is a folder")


def unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot create files in (a 0555 folder, or /sys when running as root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for cand in (ro, Path("/sys")):
        try:
            (cand / ".probe").touch()
            (cand / ".probe").unlink()
        except OSError:
            return cand
    return None


def test_generate_unwritable_outputs_fail_before_models(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("a regular file")
    base = ["generate", "--model", str(tmp_path / "no-model"), "--reward", str(tmp_path / "no-rm"), "--prompt", "x"]
    assert main([*base, "--output", str(tmp_path / "file.txt" / "sub" / "out.json")]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert "`--output`" in line and f"{str(tmp_path / 'file.txt')!r} is a file, not a folder" in line
    ro = unwritable_folder(tmp_path)
    if ro is not None:
        assert main([*base, "--output", str(ro / "new" / "out.json")]) == 2
        line = one_line(capsys.readouterr().err, "generate")
        assert "`--output`" in line and f"cannot write in {str(ro)!r}" in line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_generate_disk_full_is_one_line_naming_the_file(ckpts):
    res = run_cli("generate", "--model", ckpts / "mlm", "--method", "none", "--prompt", "the cat", "--max-new-tokens",
                  "3", "--steps", "3", "--num-samples", "1", "--quiet", "--output", "/dev/full")
    assert_error(res, "generate", "'/dev/full'", "No space left on device", code=1)


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "new" / "deeper" / "out.json"
    files.write_atomic(target, "first")
    files.write_atomic(target, "second")
    assert target.read_text() == "second" and os.listdir(target.parent) == ["out.json"]

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(OSError) as exc:
        files.write_atomic(target, "third")
    assert target.read_text() == "second" and os.listdir(target.parent) == ["out.json"]  # old file whole, no temp
    code, message = user_error(exc.value)
    assert code == 1 and message.startswith(f"{str(target)!r}: No space left on device")


# ---- up-front checks: device, prompts file, config, run directory -----------------------------------
def test_unknown_device_is_one_line():
    res = run_cli("generate", "--prompt", "x", "--device", "gpu")
    assert_error(res, "generate", "`--device` 'gpu' is not a device", "use cpu, cuda or cuda:N")


def test_device_checks(capsys, tmp_path):
    for bad in ("cuda:x", "cuda:-1", "CUDA"):
        assert main(["generate", "--prompt", "x", "--device", bad]) == 2
        assert f"`--device` {bad!r} is not a device" in one_line(capsys.readouterr().err, "generate")
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    assert main(["generate", "--prompt", "x", "--device", missing]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert f"`--device` {missing!r}" in line and ("not available" in line or "CUDA device(s)" in line)
    assert main(["eval", "--device", "gpu", "--out", str(tmp_path / "run")]) == 2
    assert "`--device` 'gpu'" in one_line(capsys.readouterr().err, "eval")
    assert not (tmp_path / "run").exists()
    cli.check_device("cpu")
    cli.check_device(None)


def test_missing_prompts_file_is_one_line(tmp_path):
    res = run_cli("generate", "--prompts-file", tmp_path / "prompts.txt")
    assert_error(res, "generate", "`--prompts-file`", str(tmp_path / "prompts.txt"), "no such file")


def test_malformed_config_yaml_is_one_line_naming_the_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("methods: [none\ntemperatures: [1.0]\n")
    res = run_cli("eval", "--config", cfg)
    assert_error(res, "eval", "`--config`", str(cfg), "not valid YAML", "line 2")


@pytest.mark.parametrize("text,needles", [
    (None, ["no such file"]),
    ("- none\n- entrgi\n", ["top level must be a mapping", "not a list"]),
    ("just words\n", ["top level must be a mapping", "not a str"]),
    ("sampler: 3\n", ["`sampler` must be a mapping"]),
    ("methodz: [none]\n", ["unknown eval config keys ['methodz']"]),
    ("temperatures: [.nan]\n", ["`temperatures`"]),
])
def test_bad_config_files(tmp_path, capsys, text, needles):
    cfg = tmp_path / "run.yaml"
    if text is not None:
        cfg.write_text(text)
    assert main(["eval", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys.readouterr().err, "eval")
    assert f"`--config` {str(cfg)!r}" in line and all(n in line for n in needles), line
    assert not (tmp_path / "run").exists()


def test_eval_out_under_a_file_fails_before_models(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["eval", "--out", str(tmp_path / "f" / "run"), "--quiet"]) == 2
    assert "`--out`" in one_line(capsys.readouterr().err, "eval")


def test_report_of_a_missing_run_directory():
    res = run_cli("report", "/nonexistent/entrgi-run")
    assert_error(res, "report", "'/nonexistent/entrgi-run' does not exist", "`entrgi eval`")


def test_report_of_a_folder_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    line = one_line(capsys.readouterr().err, "report")
    assert str(tmp_path) in line and "entrgi eval" in line


def test_argparse_mistakes_are_one_line_too():
    res = run_cli("demo", "--prompts", "abc")
    assert_error(res, "demo", "--prompts", "invalid int value: 'abc'", "entrgi demo --help")


# ---- --debug, warnings, interrupts, empty answers ---------------------------------------------------
def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    res = run_cli("--debug", "report", "/nonexistent/entrgi-run")
    assert res.returncode == 1 and "Traceback" in res.stderr and "ValueError: run directory" in res.stderr
    monkeypatch.setenv("ENTRGI_DEBUG", "1")
    with pytest.raises(ValueError, match="does not exist"):
        main(["report", "/nonexistent/entrgi-run"])
    monkeypatch.setenv("ENTRGI_DEBUG", "0")
    assert main(["report", "/nonexistent/entrgi-run"]) == 2


def test_library_warning_is_one_line(ckpts):
    res = run_cli("generate", "--model", ckpts / "mlm", "--reward", ckpts / "rm", "--prompt", "the cat",
                  "--max-new-tokens", "3", "--steps", "3", "--num-samples", "1", "--inner-steps", "0", "--quiet")
    assert res.returncode == 0
    line = one_line(res.stderr, "generate", "warning")
    assert "`inner_steps` = 0: rule 'entrgi' leaves the logits unchanged" in line
    assert "method=entrgi M=0" in res.stdout


def test_empty_answers_get_one_note_not_an_error(ckpts):
    res = run_cli("generate", "--model", ckpts / "eos", "--method", "none", "--prompt", "the cat", "--prompt", "a dog",
                  "--max-new-tokens", "4", "--steps", "4", "--num-samples", "2", "--json", "--quiet")
    assert res.returncode == 0
    data = json.loads(res.stdout)
    assert [s["text"] for g in data["samples"] for s in g] == [""] * 4
    line = one_line(res.stderr, "generate", "note")
    assert "4 of 4 responses are empty" in line and "--min-new-tokens N" in line and "default pair" not in line


def test_min_new_tokens_removes_the_note(ckpts, capsys):
    assert main(["generate", "--model", str(ckpts / "eos"), "--method", "none", "--prompt", "the cat",
                 "--max-new-tokens", "4", "--steps", "4", "--num-samples", "2", "--min-new-tokens", "2", "--json",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    texts = [s["text"] for g in json.loads(captured.out)["samples"] for s in g]
    assert all(len(t.split()) >= 2 for t in texts), texts
    assert "note" not in captured.err


def test_empty_answers_note_text():
    assert cli.empty_answers_note(["a", "b c"], default_pair=True) is None
    note = cli.empty_answers_note(["", " \n", "she was"], default_pair=True)
    assert note.startswith("entrgi generate: note: 2 of 3 responses are empty.") and "\n" not in note
    assert "continues English sentence beginnings" in note and "--min-new-tokens N" in note
    assert "sentence beginnings" not in cli.empty_answers_note([""], default_pair=False)


def test_keyboard_interrupt_is_one_line_exit_130(ckpts, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"the cat {i}\n" for i in range(40)))
    out = tmp_path / "run"
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    full.pop("ENTRGI_DEBUG", None)
    proc = subprocess.Popen([str(ENTRGI), "eval", "--model", str(ckpts / "mlm"), "--reward", str(ckpts / "rm"),
                             "--prompt-sets", f"file:{prompts}", "--methods", "none", "--temperatures", "1.0",
                             "--seeds", *map(str, range(50)), "--max-new-tokens", "4", "--steps", "4",
                             "--num-samples", "1", "--prompts-per-batch", "1", "--no-perplexity", "--out", str(out),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full,
                            # a background job of a non-interactive shell inherits SIGINT ignored, and Python then
                            # installs no KeyboardInterrupt handler: give the child the default disposition
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "results.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # still running: the grid is 2000 prompts long
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == "entrgi eval: interrupted (run the same command again to resume).\n"
    assert len((out / "results.jsonl").read_text().splitlines()) < 2000  # it stopped early


def test_keyboard_interrupt_in_process(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_report", interrupted)
    assert main(["report", "x"]) == 130
    assert capsys.readouterr().err == "entrgi report: interrupted.\n"


# ---- the error map ----------------------------------------------------------------------------------
def _safetensors_error(tmp_path):
    from safetensors.torch import load_file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    try:
        load_file(str(bad))
    except Exception as e:  # noqa: BLE001 - whatever safetensors raises is what we map
        return e
    raise AssertionError("safetensors read garbage")


def _torch_load_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    try:
        torch.load(bad, weights_only=True)
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("torch.load read garbage")


def test_user_error_map(tmp_path):
    try:
        yaml.safe_load("a: [1\nb: 2")
    except yaml.YAMLError as e:
        yaml_exc = e
    try:
        json.loads('{"a": }')
    except json.JSONDecodeError as e:
        json_exc = e
    cases = [
        (ValueError("`steps` must be >= 1,\n got 0"), 2, "`steps` must be >= 1, got 0"),
        (yaml_exc, 2, "invalid YAML: expected ',' or ']', but got ':' at line 2, column 2."),
        (json_exc, 2, "invalid JSON: Expecting value at line 1, column 7."),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"), 2, "'/x/y': No such file or directory"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/out.json"), 1,
         "'/data/out.json': No space left on device; free some disk space or write elsewhere."),
        (OSError(errno.EROFS, "Read-only file system", "/ro/f"), 1, "'/ro/f': Read-only file system; the file system"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/f"), 1, "'/root/f': Permission denied; permission"),
        (RuntimeError("CUDA error: device-side assert\nline two"), 1, "CUDA error: device-side assert line two"),
        (pickle.UnpicklingError("invalid load key"), 1, "cannot read a checkpoint: invalid load key"),
        (_safetensors_error(tmp_path), 1, "cannot read a safetensors checkpoint"),
        (_torch_load_error(tmp_path), 1, ""),
    ]
    for exc, code, start in cases:
        got = user_error(exc)
        assert got is not None and got[0] == code and got[1].startswith(start) and "\n" not in got[1], (exc, got)
    for bug in (TypeError("unsupported operand"), KeyError("x"), AttributeError("y"), ZeroDivisionError()):
        assert user_error(bug) is None  # bugs keep their traceback


def test_unexpected_bugs_keep_their_traceback(monkeypatch):
    def buggy(args):
        raise TypeError("a bug")
    monkeypatch.setattr(cli, "cmd_report", buggy)
    with pytest.raises(TypeError, match="a bug"):
        main(["report", "x"])
