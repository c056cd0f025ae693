"""A hostile but honest user (issue #22), one section per class of what went wrong: data loss, integrity, silent
garbage, hang / unbounded work, tracebacks, unclear errors. Each case failed before the fix; every answer now is
ONE stderr line ``entrgi <verb>: error: ...`` naming the field, file or value, and a non-zero exit (or, for
data the report can still use, a report that names every line it left out)."""

import errno
import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
from support.tiny_checkpoints import write_mlm_and_reward
from support.tiny_models import word_tokenizer

from entrgi.cli.commands import main
from entrgi.eval import records as records_module
from entrgi.eval.records import lock_path, results_lock

try:  # the folder manifest (entrgi.files.OwnedFolder); absent before issue #22
    from entrgi.files import OwnedFolder
except ImportError:
    OwnedFolder = None


def one_line(err: str, verb: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"entrgi {verb}: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_mlm_and_reward(tmp_path_factory.mktemp("pair"))


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("the cat\n")
    return p


def eval_args(mlm, prompts, out, *extra):
    return ["eval", "--model", str(mlm), "--prompt-sets", f"file:{prompts}", "--methods", "none", "--temperatures",
            "1.0", "--seeds", "1", "--max-new-tokens", "3", "--steps", "3", "--num-samples", "1", "--no-perplexity",
            "--no-track-reward", "--judges", "vader", "--out", str(out), "--quiet", *extra]


GEN = ["--max-new-tokens", "3", "--steps", "3", "--num-samples", "2", "--quiet"]
NO_MODEL = ["--model", "/nonexistent/entrgi-model", "--reward", "/nonexistent/entrgi-rm"]


def record(key, seed, top1=1.0, run=None, lr=1.0, **over):
    rec = {"key": key, "prompt_set": "s", "prompt_id": key, "prompt": "x", "method": "best_of_n", "temperature": 1.0,
           "seed": seed, "num_samples": 2, "top1": top1, "avg": top1 - 1, "best_index": 0, "judges": {},
           "distinct": {}, "samples": [], "curves": {}, "rank": 0,
           "compute": {"wall_time_s": 1.0, "dllm_forwards": 4, "rm_forwards": 2, "rm_backwards": 0, "flops": 10}}
    if run is not None:
        rec.update(run=run, config={"guidance": {"method": "best_of_n", "lr": lr}, "sampler": {"top_p": 0.95}})
    rec.update(over)
    return rec


def write_records(folder: Path, recs, name="results.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return path


# ---- data loss: a command deletes or overwrites only what it can prove it wrote ---------------------------
def test_demo_never_wipes_a_folder_of_files_named_like_its_own(tmp_path, capsys, monkeypatch):
    from entrgi.cli import demo
    monkeypatch.setattr(demo, "EvalRunner", lambda *a, **k: pytest.fail("the demo started its run"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "demo.json").write_text('{"my": "settings"}')
    (mine / "results.jsonl").write_text('{"my": "results"}\n')
    before = snapshot(mine)
    assert main(["demo", "--out", str(mine), "--prompts", "1", "--quiet"]) == 2
    line = one_line(capsys.readouterr().err, "demo")
    assert "not written by `entrgi demo`" in line and str(mine) in line
    assert snapshot(mine) == before


def test_a_second_demo_is_refused_before_it_touches_the_first_ones_files(tmp_path, capsys, monkeypatch):
    from entrgi.cli import demo
    monkeypatch.setattr(demo, "EvalRunner", lambda *a, **k: pytest.fail("the second demo started a run"))
    out = tmp_path / "demo"
    names = ("results.jsonl", "run.json", "demo.txt", "demo.json")
    if OwnedFolder is not None:  # what the first demo wrote, as its manifest records it
        first = OwnedFolder(out, kind="demo")
        for name in names:
            first.write_text(name, f"first demo's {name}\n")
    else:
        out.mkdir()
        for name in names:
            (out / name).write_text(f"first demo's {name}\n")
    (out / ".entrgi-demo").write_text(json.dumps({"files": list(names)}))  # the marker of older versions
    # the first demo is still running: a live process of this host holds the run's lock
    lock_path(out / "results.jsonl").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    before = snapshot(out)
    assert main(["demo", "--out", str(out), "--prompts", "1", "--quiet"]) == 2
    assert "is in use" in one_line(capsys.readouterr().err, "demo")
    assert snapshot(out) == before


def test_eval_never_replaces_a_users_report_or_tables(pair, prompts, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("# my report\n")
    (out / "table.md").write_text("| my | table |\n")
    before = snapshot(out)
    assert main(eval_args(pair[0], prompts, out)) == 2
    line = one_line(capsys.readouterr().err, "eval")
    assert "report.md" in line and "table.md" in line and "nothing was changed" in line
    assert snapshot(out) == before


def test_eval_never_cuts_or_appends_to_a_users_results_file(pair, prompts, tmp_path, capsys):
    out = tmp_path / "mine"
    write_records(out, ['{"my": "line"}'])
    with (out / "results.jsonl").open("a") as f:
        f.write('{"my last line": "without a newline"}')
    before = snapshot(out)
    assert main(eval_args(pair[0], prompts, out, "--no-report")) == 2
    assert "results.jsonl" in one_line(capsys.readouterr().err, "eval")
    assert snapshot(out) == before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_generate_output_on_a_full_disk_keeps_the_samples(pair, capsys):
    code = main(["generate", "--model", str(pair[0]), "--method", "none", "--prompt", "the cat", *GEN,
                 "--output", "/dev/full", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    line = one_line(captured.err, "generate")
    assert "'/dev/full'" in line and "No space left on device" in line and "printed on stdout" in line
    assert '"samples"' in captured.out and '"trace"' in captured.out  # the full output, with the traces


def test_a_full_disk_leaves_no_lock_behind(tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    real = os.fdopen

    class Full:
        def __init__(self, fd, *a, **k):
            self.f = real(fd, *a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records_module.os, "fdopen", Full)
    with pytest.raises(OSError, match="No space left"):
        with results_lock(results):
            pass
    monkeypatch.undo()
    assert not lock_path(results).exists()
    with results_lock(results):  # the next run is not blocked
        pass


# ---- integrity: records of different configurations or of a bad form are never mixed in ---------------------
def test_a_rerun_with_another_lr_after_run_json_is_gone_is_refused(pair, prompts, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(eval_args(pair[0], prompts, out, "--no-report", "--lr", "1.0")) == 0
    first = (out / "results.jsonl").read_bytes()
    (out / "run.json").unlink()
    assert main(eval_args(pair[0], prompts, out, "--no-report", "--lr", "0.5")) == 2
    line = one_line(capsys.readouterr().err, "eval")
    assert "another configuration" in line and "guidance.lr: 1.0 vs 0.5" in line and "results.jsonl line 1" in line
    assert (out / "results.jsonl").read_bytes() == first


def test_the_report_refuses_to_average_two_configurations(tmp_path, capsys):
    write_records(tmp_path, [record("a", 1, run="0" * 16, lr=1.0), record("b", 1, run="1" * 16, lr=0.5)])
    assert main(["report", str(tmp_path), "--no-plots"]) == 2
    line = one_line(capsys.readouterr().err, "report")
    assert "2 different configurations" in line and "guidance.lr: 1.0 vs 0.5" in line
    assert not (tmp_path / "report.md").exists()


def test_a_record_with_seed_null_is_left_out_and_named_not_an_extra_seed(tmp_path, capsys):
    write_records(tmp_path, [record("a", 1, 1.0), record("b", 1, 3.0), record("c", None, 100.0)])
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "results.jsonl line 3: invalid record" in err and "`seed`" in err
    rows = [r.split(",") for r in (tmp_path / "table.csv").read_text().splitlines()]
    top1 = next(r for r in rows if r[3] == "top1")
    assert float(top1[4]) == 2.0 and top1[6] == "1"  # the mean of seed 1's records; one seed


# ---- silent garbage: nothing is read as something it is not ------------------------------------------------
def test_out_empty_is_not_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", *NO_MODEL, "--methods", "none", "--out", "", "--quiet"]) == 2
    line = one_line(capsys.readouterr().err, "eval")
    assert "`out`" in line and "empty" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ['"no"', '"false"', "0", "'off'"])
def test_yaml_text_or_numbers_are_not_booleans(tmp_path, capsys, value):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: /nonexistent/entrgi-model\nmethods: [none]\nperplexity: {value}\n")
    assert main(["eval", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys.readouterr().err, "eval")
    assert "`perplexity` must be true or false" in line and str(cfg) in line


def test_a_plugin_calling_sys_exit_0_is_a_failure_not_a_success(tmp_path, capsys):
    plugin = tmp_path / "quits.py"
    plugin.write_text("import sys\nsys.exit(0)\n")
    assert main(["generate", "--plugin", str(plugin), "--prompt", "x", *NO_MODEL]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert "quits.py" in line and "sys.exit(0)" in line


def test_an_infinite_curve_value_is_named_not_silently_dropped(tmp_path, capsys):
    good = record("a", 1, curves={"estimate": [[0.1, 0.2], [0.3, 0.4]]})
    bad = record("b", 2, curves={"estimate": [[0.1, math.inf], [0.3, 0.4]]})
    write_records(tmp_path, [good, bad])
    assert main(["report", str(tmp_path)]) == 0
    warning = capsys.readouterr().err
    assert warning.startswith("entrgi report: warning: 1 data problem(s)") and "line 2: non-finite curve" in warning
    section = (tmp_path / "report.md").read_text().split("## Data problems")[1]
    assert "results.jsonl line 2: non-finite curve value" in section and "estimate: sample 1, step 2 = inf" in section


# ---- hang / unbounded: work beyond the documented limits is refused up front ----------------------------------
@pytest.mark.parametrize("flag,value,needle", [("--steps", 10**12, "`steps` must be <= 65536"),
                                               ("--num-samples", 10**9, "`num_samples` must be <= 1024"),
                                               ("--inner-steps", 10**6, "`inner_steps` must be <= 100")])
def test_unbounded_work_is_refused_before_any_model_loads(capsys, flag, value, needle):
    assert main(["generate", *NO_MODEL, "--prompt", "x", flag, str(value)]) == 2
    assert needle in one_line(capsys.readouterr().err, "generate")


def test_more_steps_than_slots_is_refused(pair, capsys):
    assert main(["generate", "--model", str(pair[0]), "--method", "none", "--prompt", "the cat", "--max-new-tokens",
                 "4", "--steps", "64", "--quiet"]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert "`steps` (64) must be <= `max_new_tokens` (4)" in line


def test_a_vocab_chunk_of_one_is_refused_for_a_real_vocabulary():
    from entrgi import GuidanceConfig
    from entrgi.config import check_vocab_chunk
    check_vocab_chunk(GuidanceConfig(vocab_chunk=4096), 151_936)
    with pytest.raises(ValueError, match=r"`vocab_chunk` = 1 splits the vocabulary of 151936 ids into 151936 chunks"):
        check_vocab_chunk(GuidanceConfig(vocab_chunk=1), 151_936)


# ---- tracebacks: hand-edited files, wrong types, failing user code --------------------------------------------
def test_hand_edited_records_with_wrong_types_are_named_not_a_traceback(tmp_path, capsys):
    write_records(tmp_path, [record("ok", 1), record("m", 1, method=5), record("t", 1, temperature="hot"),
                             record("j", 1, judges=[]), record("n", 1, num_samples="2"), record("s", 1, samples="x"),
                             record("c", 1, curves={"estimate": "up"}), "[1, 2]"])
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "7 data problem(s)" in err
    problems = (tmp_path / "report.md").read_text().split("## Data problems")[1]
    for line, field in ((2, "`method`"), (3, "`temperature`"), (4, "`judges`"), (5, "`num_samples`"),
                        (6, "`samples`"), (7, "`curves`"), (8, "not a record")):
        assert f"results.jsonl line {line}: invalid record" in problems and field in problems


@pytest.mark.parametrize("text,needle", [("out: 5", "`out` must be a non-empty string, got 5 (an integer)"),
                                         ("methods: [1]",
                                          "`methods`: an entry must be a method name or a mapping with a `name`, got 1"),
                                         ("family: 7", "`family` must be a non-empty string or null, got 7"),
                                         ("seeds: [1.5]", "`seeds[0]` must be an integer"),
                                         ("judges: {vader: 1}", "`judges` must be a list"),
                                         ("sampler: {top_pp: 0.9}", "`sampler.top_pp` (the run's sections) is not a "
                                                                    "SamplerConfig field. Did you mean `top_p`?")])
def test_yaml_values_of_the_wrong_type_are_one_line(tmp_path, capsys, text, needle):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: /nonexistent/entrgi-model\nreward: /nonexistent/entrgi-rm\n{text}\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    line = one_line(capsys.readouterr().err, "eval")
    assert needle in line and str(cfg) in line


@pytest.fixture
def raising(tmp_path):
    f = tmp_path / "raises.py"
    f.write_text("def f(prompt, response):\n    return 1 / 0\n")
    return f


def test_a_text_reward_that_raises_is_one_line(pair, raising, capsys):
    assert main(["generate", "--model", str(pair[0]), "--reward", f"text:{raising}:f", "--method", "best_of_n",
                 "--prompt", "the cat", *GEN]) == 1
    line = one_line(capsys.readouterr().err, "generate")
    assert "raised ZeroDivisionError" in line and "raises.py:f" in line


def test_a_judge_that_raises_is_one_line(pair, prompts, raising, tmp_path, capsys):
    args = eval_args(pair[0], prompts, tmp_path / "run", "--no-report")
    args[args.index("vader")] = f"text:{raising}:f"
    assert main(args) == 1
    line = one_line(capsys.readouterr().err, "eval")
    assert "judge 'text:f' failed" in line and "ZeroDivisionError" in line


def corrupt(src: Path, dst: Path, name: str, edit) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / name).read_text())
    edit(data)
    (dst / name).write_text(json.dumps(data))
    return dst


def test_corrupted_checkpoint_configs_are_one_line(pair, tmp_path, capsys):
    bad = corrupt(pair[0], tmp_path / "arch", "config.json", lambda c: c.update(architectures=[1]))
    assert main(["generate", "--model", str(bad), "--method", "none", "--prompt", "x", *GEN]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert str(bad / "config.json") in line and "`architectures[0]` must be a non-empty string" in line
    sharded = tmp_path / "sharded"
    from support.tiny_models import tiny_mlm
    tiny_mlm(word_tokenizer()).module.save_pretrained(sharded / "src", max_shard_size="20KB")
    word_tokenizer().save_pretrained(sharded / "src")
    bad = corrupt(sharded / "src", sharded / "bad", "model.safetensors.index.json",
                  lambda i: i["weight_map"].update({next(iter(i["weight_map"])): 7}))
    assert main(["generate", "--model", str(bad), "--method", "none", "--prompt", "x", *GEN]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert "model.safetensors.index.json" in line and "is 7, not the name of a weight file" in line


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("verb", ["serve", "generate"])
def test_an_unavailable_device_is_one_line_before_any_model_or_socket(verb, capsys):
    extra = ["--prompt", "x"] if verb == "generate" else ["--port", "0"]
    assert main([verb, "--device", "cuda", *extra]) == 2
    line = one_line(capsys.readouterr().err, verb)
    assert "`--device` 'cuda': CUDA is not available" in line and "--device cpu" in line


# ---- unclear errors: each names its cause -----------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [("--lr", "1e300"), ("--temperature", "1e308"), ("--kl-weight", "1e300"),
                                        ("--relaxation-temperature", "1e-300")])
def test_overflowing_values_are_blamed_on_the_flag_not_the_reward_model(capsys, flag, value):
    assert main(["generate", *NO_MODEL, "--prompt", "x", flag, value]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert f"`{flag[2:].replace('-', '_')}` must be" in line and "reward model" not in line


def test_report_of_a_file_says_it_is_a_file(tmp_path, capsys):
    results = write_records(tmp_path, [record("a", 1)])
    assert main(["report", str(results)]) == 2
    line = one_line(capsys.readouterr().err, "report")
    assert "is a file, not a run folder" in line and repr(str(tmp_path)) in line


def test_a_non_utf8_prompt_file_is_named(pair, tmp_path, capsys):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"the cat \xff\xfe\n")
    assert main(eval_args(pair[0], bad, tmp_path / "run", "--no-report")) == 2
    line = one_line(capsys.readouterr().err, "eval")
    assert repr(str(bad)) in line and "not UTF-8" in line


def test_a_folder_given_as_plugin_says_so(tmp_path, capsys):
    assert main(["generate", "--plugin", str(tmp_path), "--prompt", "x", *NO_MODEL]) == 2
    assert "is a folder, not a .py file" in one_line(capsys.readouterr().err, "generate")


def test_an_empty_model_is_not_the_current_folder(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", "", "--prompt", "x"])
    assert exc.value.code == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert "--model" in line and "empty" in line


def test_a_plugin_runs_only_after_the_command_line_parses(tmp_path, capsys):
    ran = tmp_path / "ran"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"open({str(ran)!r}, 'w').close()\n")
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--plugin", str(plugin), "--prompt", "x", "--no-such-flag"])
    assert exc.value.code == 2 and "--no-such-flag" in capsys.readouterr().err
    assert not ran.exists()


def test_a_plugin_raising_system_exit_3_is_reported_as_its_failure(tmp_path, capsys):
    plugin = tmp_path / "exits.py"
    plugin.write_text("raise SystemExit(3)\n")
    assert main(["generate", "--plugin", str(plugin), "--prompt", "x", *NO_MODEL]) == 2
    line = one_line(capsys.readouterr().err, "generate")
    assert "plugin" in line and "exits.py" in line and "sys.exit(3)" in line


def test_an_empty_lock_left_by_an_older_run_does_not_block_forever(tmp_path):
    results = tmp_path / "results.jsonl"
    lock = lock_path(results)
    lock.write_text("")  # what a run that died on a full disk left before the fix
    os.utime(lock, (lock.stat().st_mtime - 60,) * 2)
    with pytest.warns(UserWarning, match="removed an empty lock file"):
        with results_lock(results):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
