"""The evaluation layer: prompts, metrics, judges, the resumable runner, sharding and the report."""

import ast
import dataclasses
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from eval_worker import config, runner, write_prompts

from entrgi.eval import EvalConfig, Shard, distinct_n, load_prompt_set, mean_sem, read_records, write_report
from entrgi.eval.judges import VaderJudge, weighted_digit_score
from entrgi.eval.metrics import pseudo_perplexity
from entrgi.eval.prompts import PromptSet
from entrgi.eval.records import cut_torn_tail, load_results, lock_path, results_lock
from entrgi.eval.runner import check_run_dir, matched_n, per_prompt
from entrgi.sampling.outputs import ComputeStats

WORKER = Path(__file__).with_name("eval_worker.py")
VOLATILE = ("compute", "observer_compute", "rank")  # timing, per-batch shares and worker id differ between runs


def worker_path() -> str:
    """PYTHONPATH of a worker process: the tests' folder, then this process's own PYTHONPATH (its entrgi)."""
    return os.pathsep.join([str(WORKER.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def same(a, b, path="record"):
    """Equal structures; floats to 1e-4 (worker processes use other thread counts, so reductions differ
    in the last bits), everything else (keys, texts, token ids, counts) exactly."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def stable(records):
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in records), key=lambda r: r["key"])


# ---- prompts ----------------------------------------------------------------------------------

def test_shipped_prompt_sets():
    for name in ("continuations", "instructions"):
        ps = load_prompt_set(name)
        assert len(ps.prompts) >= 24 and all(p.text and not p.text.startswith("#") for p in ps.prompts)
        assert len({p.id for p in ps.prompts}) == len(ps.prompts)


def test_paper_subsampling_matches_datasets_shuffle():
    datasets = pytest.importorskip("datasets")
    texts = [f"prompt {i}" for i in range(50)]
    ps = PromptSet("x", tuple(__import__("entrgi.eval.prompts", fromlist=["_prompt"])._prompt(i, t)
                              for i, t in enumerate(texts)))
    for seed in (1, 2, 3):
        ref = datasets.Dataset.from_dict({"prompt": texts}).shuffle(seed=seed)["prompt"][:10]
        assert [p.text for p in ps.subsample(10, "paper", seed)] == list(ref)
    a, b = ps.subsample(10, "fixed", 1), ps.subsample(10, "fixed", 2)
    assert a == b and [p.text for p in ps.subsample(5, "none", 9)] == texts[:5]


def test_local_prompt_files(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"q": "hello there"}\n{"q": "second one"}\n')
    (tmp_path / "p.csv").write_text("q,other\nfirst,x\nsecond,y\n")
    assert [p.text for p in load_prompt_set(f"file:{tmp_path / 'p.jsonl'}:q").prompts] == ["hello there", "second one"]
    assert [p.text for p in load_prompt_set(f"file:{tmp_path / 'p.csv'}:q").prompts] == ["first", "second"]
    with pytest.raises(ValueError, match="field 'nope'"):
        load_prompt_set(f"file:{tmp_path / 'p.jsonl'}:nope")
    with pytest.raises(ValueError, match="unknown prompt source"):
        load_prompt_set("mmlu")


# ---- metrics and judges -----------------------------------------------------------------------

def test_mean_sem_is_the_standard_error_over_seeds():
    vals = [1.0, 2.0, 4.0]
    m, s = mean_sem(vals)
    assert m == pytest.approx(statistics.fmean(vals))
    assert s == pytest.approx(statistics.stdev(vals) / math.sqrt(3))
    assert math.isnan(mean_sem([3.0])[1])


def test_distinct_n():
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["x x x x"], 1) == pytest.approx(1 / 4)


def test_pseudo_perplexity_matches_a_brute_force_computation(mlm):
    prompt = "the cat"
    ids = [9, 10, 11, mlm.tokenizer.sep_token_id, 0, 0]
    got = pseudo_perplexity(mlm, prompt, [ids])[0]
    p_ids = mlm.encode_prompt(prompt)
    invalid = mlm.invalid_mask()
    logps = []
    for j in range(3):
        x = torch.tensor([p_ids + ids])
        x[0, len(p_ids) + j] = mlm.mask_token_id
        with torch.no_grad():
            logits = mlm.module(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, len(p_ids) + j]
        logps.append(float(logits.masked_fill(invalid, float("-inf")).log_softmax(-1)[ids[j]]))
    assert got == pytest.approx(math.exp(-sum(logps) / 3), rel=1e-5)


def test_vader_judge_orders_sentiment():
    pos, neg = VaderJudge().score(["", ""], ["what a wonderful happy day", "a terrible sad awful day"])
    assert pos > 0.5 and neg < -0.5


class FakeTok:
    def decode(self, ids):
        return {0: "3", 1: "5", 2: "x", 3: "9"}[ids[0]]


def test_lmunit_weighted_digit_score():
    logp = torch.log(torch.tensor([0.5, 0.3, 0.1, 0.1]))
    texts = ['{"', '{"score', '{"score": ']
    score = weighted_digit_score(texts, [torch.zeros(4), torch.zeros(4), logp], FakeTok())
    assert score == pytest.approx((0.5 * 3 + 0.3 * 5) / 0.8)  # '9' is outside 0-6, 'x' is not a digit
    assert weighted_digit_score(["no score here"], [logp], FakeTok()) == 0.0


# ---- the runner -------------------------------------------------------------------------------

def test_config_validation():
    with pytest.raises(ValueError, match="`methods`"):
        EvalConfig(methods=("entrgi", "dps"))
    with pytest.raises(ValueError, match="`sampler.temperature` is set by the grid"):
        EvalConfig(sampler={"temperature": 0.3})
    with pytest.raises(ValueError, match="top_p"):
        EvalConfig(sampler={"top_p": 2.0})
    with pytest.raises(ValueError, match=r"`guidance.learning_rate` \(the run's sections\) is not a GuidanceConfig field"):
        EvalConfig(guidance={"learning_rate": 1.0})
    with pytest.raises(ValueError, match="unknown eval config keys"):
        EvalConfig.from_dict({"method": "entrgi"})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    out = d / "run"
    runner(config(out, write_prompts(d))).run()
    return out


def test_run_writes_one_record_per_prompt_and_cell(full_run):
    records = read_records(full_run)
    assert len(records) == 2 * 2 * 2 * 4  # methods x temperatures x seeds x prompts
    r = records[0]
    assert len(r["samples"]) == 2 and r["top1"] >= r["avg"]
    assert set(r["judges"]) == {"vader"} and set(r["distinct"]) == {"1", "2"}
    assert len(r["curves"]["estimate"][0]) == 6 and r["ppl"]["top1"] > 1
    guided = [x for x in records if x["method"] == "entrgi"]
    assert all(x["compute"]["rm_backwards"] > 0 for x in guided)
    # every ComputeStats field, per prompt (new fields flow into the records by themselves)
    assert all(set(x["compute"]) == {f.name for f in dataclasses.fields(ComputeStats)} for x in records)
    # paper subsampling: each seed its own subset
    by_seed = {s: {x["prompt_id"] for x in records if x["seed"] == s} for s in (1, 2)}
    assert by_seed[1] != by_seed[2]


def test_report_writes_the_paper_table_csv_and_plots(full_run):
    report = write_report(full_run)
    text = (full_run / "table.md").read_text()
    assert "| τ | method |" in text and "EntRGi" in text and "BoN" in text and "Top@1" in text and "Avg@2" in text
    rows = (full_run / "table.csv").read_text().splitlines()
    assert rows[0] == "prompt_set,temperature,method,metric,mean,sem,seeds" and len(rows) > 8
    for png in ("reward_vs_step.png", "entropy_weight_vs_step.png", "bars.png"):
        assert (full_run / png).stat().st_size > 5000
    assert "Diversity" in report.read_text()


def test_rerun_skips_done_work_and_changed_config_is_refused(full_run):
    before = read_records(full_run)
    runner(config(full_run, write_prompts(full_run.parent))).run()  # nothing left to do
    assert len(read_records(full_run)) == len(before)
    # spelling out a default (top_p, lr's default optimizer) is the same configuration: nothing to redo
    runner(config(full_run, write_prompts(full_run.parent), sampler={"max_new_tokens": 6, "steps": 6,
                                                                      "num_samples": 2, "top_p": 0.95},
                  guidance={"lr": 1.0, "optimizer": "adam"}, particles={"lam": 1.0})).run()
    assert len(read_records(full_run)) == len(before)
    with pytest.raises(ValueError, match=r"different configuration \(differs in \['sampler'\]\)"):
        runner(config(full_run, write_prompts(full_run.parent), sampler={"max_new_tokens": 5, "steps": 5,
                                                                          "num_samples": 2})).run()
    # growing the grid is allowed and only adds the new cells
    runner(config(full_run, write_prompts(full_run.parent), seeds=(1, 2, 3))).run()
    assert len(read_records(full_run)) == len(before) + 2 * 2 * 4


def test_killed_run_resumes_to_the_uninterrupted_result(full_run, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": worker_path()}
    proc = subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the worker finished before it could be killed"
    # a second process on the same folder while the worker runs (here: paused) is refused, naming the owner
    proc.send_signal(signal.SIGSTOP)
    try:
        lines_before = results.read_bytes()
        with pytest.raises(ValueError, match=rf"is in use: `entrgi eval` pid {proc.pid} on host "
                                             rf"'{socket.gethostname()}'.*\.lock-results\.jsonl"):
            runner(config(out, write_prompts(tmp_path))).run()
        assert results.read_bytes() == lines_before  # it wrote nothing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    n_killed = len(read_records(out))
    assert 5 <= n_killed < 32
    with results.open("a") as f:
        f.write('{"key": "torn')  # a line cut in the middle by the kill
    # the dead worker's lock is stale: taken over; the torn fragment is cut away before appending
    with pytest.warns(UserWarning, match=rf"took over the stale lock of pid {proc.pid}"):
        runner(config(out, write_prompts(tmp_path))).run()
    assert not lock_path(results).exists()
    raw = results.read_bytes()
    assert raw.endswith(b"\n")
    keys = [json.loads(line)["key"] for line in raw.decode().splitlines()]  # every line a whole record
    assert len(keys) == len(set(keys)) == 32 and load_results(out).problems == []
    same(stable(read_records(out)), stable(read_records(full_run)[:32]))


def test_two_worker_processes_give_the_single_process_result(full_run, tmp_path):
    out = tmp_path / "sharded"
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out)],
                              env={**os.environ, "PYTHONPATH": worker_path(), "RANK": str(r), "WORLD_SIZE": "2"})
             for r in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert sorted(p.name for p in out.glob("results*.jsonl")) == ["results.rank0-of-2.jsonl",
                                                                   "results.rank1-of-2.jsonl"]
    same(stable(read_records(out)), stable(read_records(full_run)[:32]))
    assert {r["rank"] for r in read_records(out)} == {0, 1}


def test_in_process_shards_partition_the_prompts(tmp_path):
    cfg = config(tmp_path / "s", write_prompts(tmp_path), methods=("best_of_n",), temperatures=(1.0,), seeds=(1,))
    for rank in range(3):
        runner(cfg, Shard(rank, 3)).run()
    records = read_records(tmp_path / "s")
    assert len(records) == 4 and len({r["prompt_id"] for r in records}) == 4


def test_compute_matched_best_of_n_particles_and_sized_methods(tmp_path):
    cfg = config(tmp_path / "m", write_prompts(tmp_path), temperatures=(1.0,), seeds=(1,), n_prompts=2,
                 methods=("best_of_n", "entrgi", "particles", "best_of_n@3", "best_of_n_matched"),
                 particles={"resample_every": 2, "lam": 2.0})
    runner(cfg).run()
    records = read_records(tmp_path / "m")
    assert {r["num_samples"] for r in records if r["method"] == "best_of_n@3"} == {3}
    assert {r["method"] for r in records} == set(cfg.methods)
    matched = [r for r in records if r["method"] == "best_of_n_matched"]
    fixed = json.loads((tmp_path / "m" / "matched_n.json").read_text())
    n = list(fixed.values())[0]
    plain = [r for r in records if r["method"] != "best_of_n_matched"]
    assert n == matched_n(plain, records[0]["prompt_set"], 1.0, 2)  # from the FLOP estimates of the records
    assert n >= 2 and all(r["num_samples"] == n == len(r["samples"]) for r in matched)
    table = (write_report(tmp_path / "m").parent / "table.md").read_text()
    assert "BoN (compute-matched)" in table and "BoN (N=3)" in table and "Particles" in table
    assert (tmp_path / "m" / "reward_vs_compute.png").exists()
    with pytest.raises(ValueError, match="positive integer"):
        EvalConfig(methods=("best_of_n@0",))


@pytest.mark.parametrize("name", ["default-pair", "particles", "paper-dream"])
def test_shipped_configs_are_valid(name):
    cfg = EvalConfig.from_yaml(Path(__file__).parent.parent / "configs" / f"{name}.yaml")
    assert cfg.methods and cfg.seeds and cfg.out.startswith("runs/")


# ---- integrity: locking, torn lines, corrupted records, identities, shards, matched compute ---------

def test_results_lock_refuses_live_owners_takes_stale_ones_and_is_released(tmp_path):
    results = tmp_path / "results.jsonl"
    lock = lock_path(results)
    assert lock.name == ".lock-results.jsonl"
    with results_lock(results):
        owner = json.loads(lock.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(ValueError, match=rf"{tmp_path.name}.*in use.*pid {os.getpid()} on host .*"
                                             "Wait for it to finish or use another `out`"):
            with results_lock(results):
                pass
    assert not lock.exists()
    with pytest.raises(RuntimeError):  # released on exceptions too
        with results_lock(results):
            raise RuntimeError("boom")
    assert not lock.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"stale lock of pid {dead.pid}"):
        with results_lock(results):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists() and not list(tmp_path.glob(".lock-*"))
    lock.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere"}))  # another host: cannot be checked
    with pytest.raises(ValueError, match=f"pid {dead.pid} on host 'elsewhere' \\(another host"):
        with results_lock(results):
            pass
    assert json.loads(lock.read_text())["host"] == "elsewhere"  # not ours to remove


def test_runner_releases_its_lock_when_a_batch_fails(tmp_path, monkeypatch):
    cfg = config(tmp_path / "f", write_prompts(tmp_path), methods=("best_of_n",), temperatures=(1.0,), seeds=(1,))
    r = runner(cfg)
    monkeypatch.setattr(r, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("model crashed")))
    with pytest.raises(RuntimeError, match="model crashed"):
        r.run()
    assert not lock_path(tmp_path / "f" / "results.jsonl").exists()


def test_cut_torn_tail(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert cut_torn_tail(f) == 6 and f.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert cut_torn_tail(f) == 0 and f.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    f.write_bytes(b"x" * 70000)  # no newline at all (longer than one backwards read)
    assert cut_torn_tail(f) == 70000 and f.read_bytes() == b""
    assert cut_torn_tail(tmp_path / "missing.jsonl") == 0


def hand_record(key, seed, top1, pid="p0"):
    return {"key": key, "prompt_set": "s", "prompt_id": pid, "prompt": "x", "method": "best_of_n",
            "temperature": 1.0, "seed": seed, "num_samples": 2, "top1": top1, "avg": top1 - 1, "best_index": 0,
            "judges": {}, "distinct": {}, "samples": [], "curves": {}, "rank": 0,  # records of older versions:
            "compute": {"wall_time_s": 1.0, "dllm_forwards": 4, "rm_forwards": 2, "rm_backwards": 0}}  # no flops


def test_report_lists_corrupted_duplicate_non_finite_and_torn_lines(tmp_path):
    lines = [json.dumps(hand_record("a", 1, 1.0)), json.dumps(hand_record("b", 1, 3.0)),
             '{"key": "c", "prom',  # corrupted in the middle
             json.dumps(hand_record("a", 1, 100.0)),  # a duplicate key (two writers): kept once
             json.dumps(hand_record("c", 2, math.nan)), json.dumps(hand_record("d", 2, 5.0))]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + '\n{"key": "e')  # + a torn last line
    with pytest.warns(UserWarning, match=r"4 data problem\(s\) in .*results.jsonl line 3: corrupted line"):
        report = write_report(tmp_path, plots=False).read_text()
    section = report.split("## Data problems")[1]
    for line, kind in ((3, "corrupted line"), (4, "duplicate key"), (5, "non-finite metric"), (7, "torn last line")):
        assert f"results.jsonl line {line}: {kind}" in section
    assert "top1=nan" in section and "avg=nan" in section and "4 data problem(s)" in report
    rows = {(r[2], r[3]): r for r in (ln.split(",") for ln in (tmp_path / "table.csv").read_text().splitlines())}
    per_seed = [statistics.fmean([1.0, 3.0]), 5.0]  # seed 2 without the NaN record; the duplicate not counted
    assert float(rows[("best_of_n", "top1")][4]) == pytest.approx(statistics.fmean(per_seed))
    assert float(rows[("best_of_n", "top1")][5]) == pytest.approx(statistics.stdev(per_seed) / math.sqrt(2))
    assert [r["key"] for r in read_records(tmp_path)] == ["a", "b", "c", "d"]
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:2]) + "\n")  # a clean file: no section, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "Data problems" not in write_report(tmp_path, plots=False).read_text()


def test_identity_compares_resolved_values(tmp_path):
    a, b = EvalConfig(sampler={}), EvalConfig(sampler={"top_p": 0.95}, guidance={"lr": 1.0})
    assert a.identity() == b.identity() and a.identity_hash() == b.identity_hash()  # the default pair's lr is 1.0
    assert a.identity()["sampler"]["top_p"] == 0.95 and "temperature" not in a.identity()["sampler"]
    assert EvalConfig(sampler={"top_p": 0.9}).identity_hash() != a.identity_hash()
    cfg = EvalConfig(out=str(tmp_path), sampler={"steps": 8, "max_new_tokens": 8})
    stored = check_run_dir(cfg, tmp_path)
    same = EvalConfig(out=str(tmp_path), sampler={"steps": 8, "max_new_tokens": 8, "top_p": 0.95})
    assert check_run_dir(same, tmp_path) == stored == cfg.identity_hash()
    with pytest.raises(ValueError, match=r"differs in \['sampler'\]\): sampler.top_p: 0.9 here, 0.95 in the run"):
        check_run_dir(EvalConfig(out=str(tmp_path), sampler={"steps": 8, "max_new_tokens": 8, "top_p": 0.9}),
                      tmp_path)


@pytest.mark.parametrize("env, message", [({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
                                          ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK='2'"),
                                          ({"RANK": "1"}, "RANK='1' and WORLD_SIZE='1'"),
                                          ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK='-1'"),
                                          ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'")])
def test_shard_from_env_validates(monkeypatch, env, message):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=f"{message}.*0 <= RANK < WORLD_SIZE"):
        Shard.from_env()


def test_shard_from_env_reads_valid_positions(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Shard.from_env() == Shard(0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert Shard.from_env() == Shard(1, 3)
    with pytest.raises(ValueError, match="0 <= rank < world"):
        Shard(3, 3)


def cost_record(method, flops, wall, t=1.0):
    return {"method": method, "prompt_set": "s", "temperature": t,
            "compute": {"flops": flops, "wall_time_s": wall, "dllm_forwards": 1, "rm_forwards": 1, "rm_backwards": 1}}


def test_matched_n_is_set_by_flops_not_wall_time():
    recs = [cost_record("best_of_n", 100.0, 1.0), cost_record("best_of_n", 140.0, 9.0),  # mean 120
            cost_record("entrgi", 600.0, 2.0), cost_record("aps", 840.0, 50.0),  # costliest: aps, 840
            cost_record("entrgi", 10**9, 1.0, t=0.5)]  # another τ: not counted
    assert matched_n(recs, "s", 1.0, 4) == round(4 * 840 / 120) == 28
    for r in recs:  # a loaded machine: every wall time x 30, then only BoN's: N does not move
        r["compute"]["wall_time_s"] *= 30
    assert matched_n(recs, "s", 1.0, 4) == 28
    recs[0]["compute"]["wall_time_s"] = recs[1]["compute"]["wall_time_s"] = 1e-3
    assert matched_n(recs, "s", 1.0, 4) == 28
    assert matched_n([cost_record("none", 300.0, 1.0), cost_record("entrgi", 200.0, 5.0)], "s", 1.0, 4) == 4
    old = [cost_record("best_of_n", 100.0, 1.0), cost_record("entrgi", 300.0, 1.0)]
    del old[1]["compute"]["flops"]
    with pytest.raises(ValueError, match="`entrgi` records .* no finite `compute.flops`.*`matched_bon_n`"):
        matched_n(old, "s", 1.0, 4)


def test_per_prompt_divides_every_compute_field():
    stats = ComputeStats(dllm_forwards=6, rm_forwards=4, rm_backwards=2, wall_time_s=3.0)
    for f in dataclasses.fields(ComputeStats):
        if f.name not in ("dllm_forwards", "rm_forwards", "rm_backwards", "wall_time_s"):
            setattr(stats, f.name, 10)
    got = per_prompt(stats, 2)
    assert got == {k: v / 2 for k, v in dataclasses.asdict(stats).items()}


def test_plots_and_report_share_a_module_instead_of_importing_each_other():
    root = Path(__file__).parent.parent / "src" / "entrgi" / "eval"
    for name in ("plots.py", "report.py", "tables.py"):
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not (name == "plots.py" and node.module.endswith("report")), "plots imports report"
                assert not (name == "tables.py" and node.module.split(".")[-1] in ("report", "plots"))
                assert not any(a.name.startswith("_") for a in node.names), (name, node.module)
