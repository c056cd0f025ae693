"""The ``entrgi`` model of lm-evaluation-harness (entrgi.integrations.lm_eval): the real ``lm_eval`` command on the
local task (tests/lm_eval_tasks) equals ``entrgi generate``, model_args and gen_kwargs are layers of the one settings
resolution (entrgi.settings.resolve_settings), verifier selection and particles equal the Python API, and bad
model_args are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance

from entrgi import GuidanceConfig, SamplerConfig, SearchConfig, generate
from entrgi.cli.commands import build_parser, generate_settings
from entrgi.cli.commands import main as entrgi_main
from entrgi.default_pair import GUIDANCE_DEFAULTS, SAMPLER_DEFAULTS
from entrgi.integrations import lm_eval as integration
from entrgi.integrations.lm_eval import EntrgiLM, check_model_args, gen_kwargs_request, run_settings, settings_layer
from entrgi.reward.reference import ReferenceReward, contains, cut_at_stops
from entrgi.settings import model_defaults, resolve_settings

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tests" / "lm_eval_tasks" / "entrgi_local.yaml"
DOCS = [json.loads(line) for line in (TASK.parent / "entrgi_local.jsonl").read_text().splitlines() if line.strip()]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def requests(docs, gen_kwargs) -> list[Instance]:
    return [Instance("generate_until", d, (d["prompt"], dict(gen_kwargs)), i, ("entrgi_local", i, 1))
            for i, d in enumerate(docs)]


def generate_json(capsys, prompts, *flags) -> dict:
    """``entrgi generate --json`` (in process) on ``prompts``."""
    capsys.readouterr()
    argv = ["generate", *[a for p in prompts for a in ("--prompt", p)], "--json", "--quiet", "--device", "cpu", *flags]
    assert entrgi_main(argv) == 0
    return json.loads(capsys.readouterr().out)


def best_text(group: list[dict]) -> str:
    """The Top@1 sample's text (the first of equal rewards), as ``entrgi generate`` marks it."""
    return max(group, key=lambda s: s["reward"])["text"]


def run_lm_eval(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``lm_eval`` command (a new process, offline, importing this checkout's entrgi)."""
    exe = Path(sys.executable).parent / "lm_eval"
    assert exe.exists(), f"{exe}: lm-eval's command is missing (pip install -e '.[lm-eval]')"
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([str(exe), "--model", "entrgi", *args], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **OFFLINE, "PYTHONPATH": path})


def lm_eval_outputs(out: Path) -> tuple[list[dict], dict]:
    (samples,) = out.rglob("samples_entrgi_local_*.jsonl")
    (results,) = out.rglob("results_*.json")
    rows = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["doc_id"])
    return rows, json.loads(results.read_text())


# ---- the real command ----------------------------------------------------------------------------------
def test_the_lm_eval_command_on_the_default_pair_equals_entrgi_generate(tmp_path, capsys):
    """``lm_eval --model entrgi`` (the installed entry point, a new process) on the local task given by path: the
    task's function registers the model; 3 documents in batches of 2; the gen_kwargs set L and the stop strings."""
    gen = {"max_gen_toks": 8, "until": [","]}
    proc = run_lm_eval(["--model_args", "method=entrgi,num_samples=2,inner_steps=1,seed=3", "--tasks", str(TASK),
                        "--limit", "3", "--batch_size", "2", "--gen_kwargs", json.dumps(gen),
                        "--output_path", str(tmp_path / "out"), "--log_samples"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, results = lm_eval_outputs(tmp_path / "out")
    docs = DOCS[:3]
    assert [r["doc"] for r in rows] == docs
    ref = generate_json(capsys, [d["prompt"] for d in docs], "--method", "entrgi", "--num-samples", "2",
                        "--inner-steps", "1", "--seed", "3", "--max-new-tokens", "8", "--steps", "8")
    full = [best_text(g) for g in ref["samples"]]
    want = [cut_at_stops(t, [","]) for t in full]
    assert [r["resps"] for r in rows] == [[[w]] for w in want]
    assert want != full  # some response was cut at the stop string
    score = sum(contains(w, d["answer"]) for w, d in zip(want, docs)) / len(docs)
    assert results["results"]["entrgi_local"]["reference_contains,none"] == pytest.approx(score)
    info = results["config"]["entrgi"]  # the resolved RunSettings.to_dict() before the requests' layer
    assert info["pretrained"] is None and info["method"] == "entrgi" and info["preset"] is None
    assert (info["guidance"], info["search"]) == (ref["guidance"], ref["search"])
    assert {**info["sampler"], "max_new_tokens": 8, "steps": 8} == ref["sampler"]  # requests set L; T = L


@pytest.mark.slow  # lm-eval's command indexes its ~10k built-in task files first (15-40 s)
def test_the_entrgi_lm_eval_command_reports_a_bad_model_arg_in_one_line(monkeypatch, capsys):
    """``entrgi-lm-eval`` (lm-eval's CLI with the model registered): a misspelt argument is one line naming it."""
    monkeypatch.setattr(sys, "argv", ["entrgi-lm-eval", "--model", "entrgi", "--model_args", "inner_stepz=2",
                                      "--tasks", str(TASK), "--limit", "1"])
    assert integration.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("entrgi lm-eval: error: entrgi model_args: unknown argument `inner_stepz`. Did you mean: "
                       "inner_steps, inner_tol? Arguments: see docs/evaluation.md.")


@pytest.mark.slow  # a second command: a new process that imports lm-eval and entrgi and indexes lm-eval's tasks
def test_the_lm_eval_command_reports_a_bad_model_arg(tmp_path):
    proc = run_lm_eval(["--model_args", "preset=slow", "--tasks", str(TASK)], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == ("ValueError: entrgi model_args: `preset`: Unknown preset 'slow'. "
                                                    "Available: ['fast'].")


# ---- model_args -> settings ------------------------------------------------------------------------------
@pytest.mark.parametrize("args, names", [
    ({"inner_stepz": 2}, ["`inner_stepz`", "Did you mean: inner_steps"]),
    ({"batch_size": "auto"}, ["`batch_size`"]),
    ({"inner_steps": -1}, ["`inner_steps`"]),
    ({"num_samples": 0}, ["`num_samples`"]),
    ({"method": "entrgu"}, ["`method`", "Did you mean: entrgi?"]),
    ({"method": "particles", "lam": -1.0}, ["`lam`"]),
    ({"preset": "slow"}, ["`preset`", "Unknown preset 'slow'"]),
    ({"search": "beam"}, ["`strategy`", "`search.strategy` from model_args"]),
    ({"method": "particles", "rule": "entrgi"}, ["`method` 'particles' and guidance.rule", "disagree"]),
    ({"remasking": "entropyy"}, ["`remasking`", "Did you mean: entropy"]),
    ({"max_new_tokens": 10, "block_length": 4}, ["`max_new_tokens` (10) must be a multiple of `block_length` (4)"]),
    ({"sampling_from": "tasks"}, ["`sampling_from`"]),
    ({"dtype": "float8"}, ["`dtype`"]),
    ({"reward": "some/rm"}, ["`reward` needs `pretrained`"]),
    ({"pretrained": "some/dllm"}, ["`reward` is required with `pretrained` for method 'entrgi'"]),
    ({"pretrained": "some/dllm", "reward": "reference:exact", "method": "best_of_n"}, ["`reference_field`"]),
    ({"text_reward": "reference:nope", "reference_field": "answer"}, ["`text_reward`", "reference:exact"]),
    ({"reference_field": "answer"}, ["`reference_field`", "neither `reward`, `text_reward` nor"]),
    ({"use_chat_template": "yes"}, ["`use_chat_template`"]),
])
def test_bad_model_args_are_one_line_naming_the_argument(args, names):
    """Refused before any model is loaded (``some/dllm`` does not exist)."""
    with pytest.raises(ValueError) as err:
        EntrgiLM(**args)
    message = str(err.value)
    assert "\n" not in message and message.startswith("entrgi model_args: ")
    assert all(n in message for n in names), message


def generate_resolution(*flags: str, model=None):
    """What ``entrgi generate FLAGS`` resolves (its flags parsed, its :func:`generate_settings`)."""
    return generate_settings(build_parser().parse_args(["generate", "--prompt", "x", *flags]), model)


def test_model_args_are_a_layer_of_the_one_resolution():
    """model_args become the ``model_args`` layer of :func:`entrgi.settings.resolve_settings` over the model's
    defaults: the same settings as ``entrgi generate`` with the same fields, for every spelling."""
    assert settings_layer({"preset": "fast", "lr": 2.0, "search": "particles", "lam": 2.0, "temperature": 0.5,
                           "pretrained": "x", "batch_size": 3}) == {
        "sampler": {"temperature": 0.5}, "guidance": {"lr": 2.0}, "search": {"strategy": "particles", "lam": 2.0},
        "preset": "fast"}
    same = [({}, []),
            ({"preset": "fast", "lr": 2.0, "temperature": 0.5}, ["--preset", "fast", "--lr", "2.0", "--temperature",
                                                                 "0.5"]),
            ({"method": "best_of_n", "num_samples": 3, "seed": 7}, ["--method", "best_of_n", "--num-samples", "3",
                                                                    "--seed", "7"]),
            ({"method": None}, ["--method", "none"]),  # lm-eval reads `method=none` as None
            ({"rule": "aps", "search": "particles", "resample_every": 2, "potential": "value"},
             ["--rule", "aps", "--search", "particles", "--resample-every", "2", "--potential", "value"]),
            ({"max_new_tokens": 32, "block_length": 8, "steps": 8}, ["--max-new-tokens", "32", "--block-length", "8",
                                                                    "--steps", "8"])]
    for args, flags in same:
        assert run_settings(check_model_args(args)) == generate_resolution(*flags), args
    # eval's spellings, which `entrgi generate --method` does not take, expand as in entrgi.settings.method_fields
    p = run_settings(check_model_args({"method": "particles", "lam": 2.0}))
    assert (p.guidance.rule, p.search) == ("none", SearchConfig(strategy="particles", lam=2.0))
    pe = run_settings(check_model_args({"method": "particles_entrgi"}))
    assert (pe.guidance.rule, pe.search.strategy) == ("entrgi", "particles")
    assert pe == resolve_settings(model_defaults=model_defaults(None), overrides={"method": "particles_entrgi"})
    # without `pretrained`: the embedded pair's own layer; with one, the loaded model's (none before loading)
    assert run_settings(check_model_args({})).sampler == SamplerConfig(**SAMPLER_DEFAULTS)
    assert run_settings(check_model_args({})).guidance == GuidanceConfig(**GUIDANCE_DEFAULTS)
    paper = run_settings(check_model_args({"pretrained": "x", "reward": "y"}))
    assert (paper.sampler, paper.guidance, paper.search) == (SamplerConfig(), GuidanceConfig(), SearchConfig())


def test_a_requests_length_resolves_as_entrgi_generate():
    """gen_kwargs are the layer above model_args: ``max_gen_toks`` is ``max_new_tokens``. With the preset ``fast``,
    max_gen_toks 16 gives the steps that ``resolve_settings`` (and ``entrgi generate --max-new-tokens 16``) give:
    the preset's T = L/4 of the request's L; ``steps`` in model_args wins; otherwise the model's own T follows the
    final L (``fit_model_defaults``: T = L here), exactly as for ``entrgi generate``."""
    lm = EntrgiLM.__new__(EntrgiLM)  # the settings of a loaded default pair, without loading it
    lm.args, lm.defaults = check_model_args({"preset": "fast"}), model_defaults(None)
    lm.settings = run_settings(lm.args, defaults=lm.defaults)
    fields, _ = gen_kwargs_request({"max_gen_toks": 16, "until": ["."]}, "model")
    got = lm.request_settings(fields)
    want = resolve_settings(model_defaults=model_defaults(None), overrides={"preset": "fast",
                                                                            "sampler": {"max_new_tokens": 16}})
    assert got == want == generate_resolution("--preset", "fast", "--max-new-tokens", "16")
    assert got.sampler.steps == 4 and got.sampler.max_new_tokens == 16 and got.preset == "fast"
    assert lm.request_settings({"max_new_tokens": 64}).sampler.steps == 16
    assert lm.request_settings({}) is lm.settings

    def steps(args, request):
        lm.args = check_model_args(args)
        lm.settings = run_settings(lm.args, defaults=lm.defaults)
        return lm.request_settings(request).sampler.steps

    assert steps({"steps": 10, "preset": "fast"}, {"max_new_tokens": 64}) == 10
    assert steps({}, {"max_new_tokens": 64}) == 64  # the embedded pair's T = L
    assert steps({"max_new_tokens": 32}, {"max_new_tokens": 64}) == 64  # the model's own T follows the final L
    assert steps({"max_new_tokens": 32, "steps": 16}, {"max_new_tokens": 64}) == 16
    assert steps({"block_length": 4}, {"max_new_tokens": 8}) == 8
    with pytest.raises(ValueError, match=r"`max_new_tokens` \(10\) must be a multiple of `block_length` \(4\).*"
                                         r"the request's gen_kwargs"):
        steps({"block_length": 4}, {"max_new_tokens": 10})
    assert lm.request_settings({"temperature": 0.9}).sampler.temperature == 0.9


def test_gen_kwargs_map_onto_the_sampler():
    assert gen_kwargs_request({"until": "\n\n", "max_new_tokens": 5, "max_gen_toks": 7}, "model") == (
        {"max_new_tokens": 7}, ["\n\n"])  # max_gen_toks first, as lm-eval
    assert gen_kwargs_request({"max_tokens": 3}, "model") == ({"max_new_tokens": 3}, [])
    task = {"until": ["Q:", "."], "do_sample": False, "temperature": 0.8, "top_p": 0.5}
    assert gen_kwargs_request(task, "model") == ({}, ["Q:", "."])  # the sampler's own τ / top-p
    assert gen_kwargs_request(task, "task") == ({"temperature": 0.0, "top_p": 0.5}, ["Q:", "."])
    assert gen_kwargs_request({"do_sample": True, "temperature": 0.8, "top_k": 5}, "task")[0] == {
        "temperature": 0.8, "top_k": 5}
    with pytest.raises(ValueError, match="`until`"):
        gen_kwargs_request({"until": [1]}, "model")


# ---- generate_until on the default pair -----------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_lm():
    return EntrgiLM(method="none", num_samples=2, seed=4, device="cpu")


def test_batches_order_repeats_and_lengths_do_not_change_a_result(plain_lm):
    """Results come back in request order and do not depend on the batch; requests of two lengths (their T = L) and
    lm-eval's repeats (one Instance twice, the second with seed + 1) equal the Python API's Top@1, cut at the stop."""
    reqs = requests(DOCS[:3], {"until": ["."], "max_gen_toks": 6})
    reqs[1].arguments = (DOCS[1]["prompt"], {"until": ["."], "max_gen_toks": 4})
    batch = [reqs[0], reqs[1], reqs[2], reqs[0]]
    plain_lm.batch_size = 3  # requests 0 and 2 share a call; each API call below runs one prompt
    together = plain_lm.generate_until(batch, disable_tqdm=True)

    def api(prompts, length, seed):
        sampler = SamplerConfig(**{**SAMPLER_DEFAULTS, "max_new_tokens": length, "steps": length, "num_samples": 2,
                                   "seed": seed})
        out = generate(plain_lm.dllm, prompts, plain_lm.reward, sampler=sampler,
                       guidance=GuidanceConfig(**{**GUIDANCE_DEFAULTS, "rule": "none"}), progress=False)
        return [cut_at_stops(out.best(i).text, ["."]) for i in range(len(prompts))]

    p = [d["prompt"] for d in DOCS[:3]]
    assert together == [*api([p[0]], 6, 4), *api([p[1]], 4, 4), *api([p[2]], 6, 4), *api([p[0]], 6, 5)]
    assert together[0] != together[3]  # the repeat is a new sample


def test_loglikelihood_is_refused_with_a_reason(plain_lm):
    with pytest.raises(NotImplementedError, match="generate_until tasks"):
        plain_lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="perplexity"):
        plain_lm.loglikelihood_rolling([])


def test_verifier_selection_and_weighted_particles_equal_the_python_api():
    """``text_reward=reference:contains``: the returned response is the first of the K samples whose text before
    the stop string contains the document's word (each document's word is taken from a sample the RM does not
    pick); with ``method=particles`` the same reward weighs the particles. A document without the field is named."""
    stops, k, gen = ["."], 4, {"until": ["."], "max_gen_toks": 8}
    common = {"num_samples": k, "seed": 1, "text_reward": "reference:contains", "reference_field": "answer",
              "device": "cpu", "batch_size": 2}
    bon = EntrgiLM(method="best_of_n", **common)
    prompts = [d["prompt"] for d in DOCS[:3]]
    sampler = SamplerConfig(**{**SAMPLER_DEFAULTS, "max_new_tokens": 8, "steps": 8, "num_samples": k, "seed": 1})
    guidance = GuidanceConfig(**{**GUIDANCE_DEFAULTS, "rule": "none"})
    assert (bon.settings.sampler, bon.settings.guidance) == (SamplerConfig(**{**sampler.to_dict(), "max_new_tokens": 16,
                                                                             "steps": 16}), guidance)
    out = generate(bon.dllm, prompts, bon.reward, sampler=sampler, guidance=guidance, search="best_of_n",
                   progress=False)
    texts = [[cut_at_stops(s.text, stops) for s in g] for g in out.samples]
    by_rm = [cut_at_stops(out.best(i).text, stops) for i in range(len(prompts))]
    words = [next(w for t in group for w in t.split() if w.isalpha() and not contains(best, w))
             for group, best in zip(texts, by_rm)]
    docs = [{"id": i, "prompt": p, "answer": w} for i, (p, w) in enumerate(zip(prompts, words))]
    got = bon.generate_until(requests(docs, gen), disable_tqdm=True)
    picks = [max(range(k), key=lambda j: contains(t[j], w)) for t, w in zip(texts, words)]
    assert got == [t[j] for t, j in zip(texts, picks)]
    assert all(contains(g, w) for g, w in zip(got, words)) and got != by_rm
    with pytest.raises(ValueError, match=r"`reference_field` 'answer'.*doc 0.*\['id', 'prompt'\]"):
        bon.generate_until(requests([{"id": 0, "prompt": "she was"}], gen), disable_tqdm=True)

    pf = EntrgiLM(method="particles", resample_every=2, lam=3.0, **common)
    got = pf.generate_until(requests(docs, gen), disable_tqdm=True)
    verifier = ReferenceReward("contains")
    verifier.set_references(dict(zip(prompts, words)), {p: stops for p in prompts})
    assert pf.settings.search == SearchConfig(strategy="particles", resample_every=2, lam=3.0)
    out = generate(pf.dllm, prompts, pf.reward, sampler=sampler, guidance=guidance,
                   search=SearchConfig(strategy="particles", resample_every=2, lam=3.0), progress=False,
                   potential_reward=verifier)
    texts = [[cut_at_stops(s.text, stops) for s in g] for g in out.samples]
    assert got == [t[max(range(k), key=lambda j: contains(t[j], w))] for t, w in zip(texts, words)]


# ---- a tiny Dream checkpoint (the real Qwen tokenizer) with a Skywork-shaped reward ----------------------------
@pytest.fixture(scope="module")
def dream_pair(tmp_path_factory, qwen3_dir):
    from support.tiny_checkpoints import write_dream_checkpoint, write_reward_checkpoint
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("lm_eval_dream")
    dream = write_dream_checkpoint(root / "dream", shards=1)
    rm = write_reward_checkpoint(root / "rm", AutoTokenizer.from_pretrained(qwen3_dir), seed=1)
    return dream, rm


def test_lm_eval_on_a_tiny_dream_equals_the_python_api(dream_pair, monkeypatch):
    """lm-eval's Python entry point (``simple_evaluate``) on the local task by name (``include_path``): Dream with
    its chat template and Best-of-N by the reward checkpoint equals :func:`entrgi.generate` (guided, against
    ``entrgi generate``: the slow test below, through the command)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    dream, rm = dream_pair
    lm = EntrgiLM(pretrained=str(dream), reward=str(rm), method="best_of_n", num_samples=2, seed=2, device="cpu")
    assert lm.dllm.use_chat_template and lm.settings.sampler.steps == 128  # the paper's T = L = 128
    res = lm_eval.simple_evaluate(model=lm, tasks=["entrgi_local"], limit=2, batch_size=2, log_samples=True,
                                  task_manager=TaskManager(include_path=str(TASK.parent), include_defaults=False),
                                  gen_kwargs={"max_gen_toks": 4})
    rows = sorted(res["samples"]["entrgi_local"], key=lambda r: r["doc_id"])
    info = res["config"]["entrgi"]  # the resolved RunSettings.to_dict(), with the loaded Dream's own defaults
    assert {k: info[k] for k in ("preset", "sampler", "guidance", "search")} == lm.settings.to_dict()
    assert lm.settings == resolve_settings(model_defaults=model_defaults(lm.dllm), config={"method": "best_of_n",
                                           "sampler": {"num_samples": 2, "seed": 2}})
    sampler = SamplerConfig(max_new_tokens=4, steps=4, num_samples=2, seed=2)
    out = generate(lm.dllm, [d["prompt"] for d in DOCS[:2]], lm.reward, sampler=sampler,
                   guidance=GuidanceConfig(rule="none"), search="best_of_n", progress=False)
    assert [r["resps"] for r in rows] == [[[cut_at_stops(out.best(i).text, ["."])]] for i in range(2)]


@pytest.mark.slow  # a second command, and guidance over Dream's 152k-id vocabulary
def test_the_lm_eval_command_on_a_tiny_dream(dream_pair, tmp_path, capsys):
    dream, rm = dream_pair
    proc = run_lm_eval(["--model_args", f"pretrained={dream},reward={rm},method=entrgi,num_samples=2,inner_steps=1",
                        "--tasks", str(TASK), "--limit", "2", "--gen_kwargs", '{"max_gen_toks": 6}',
                        "--output_path", str(tmp_path / "out"), "--log_samples"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, _ = lm_eval_outputs(tmp_path / "out")  # EntRGi-guided, the paper's settings but L = T = 6, K = 2, M = 1
    ref = generate_json(capsys, [d["prompt"] for d in DOCS[:2]], "--model", str(dream), "--reward", str(rm),
                        "--method", "entrgi", "--num-samples", "2", "--inner-steps", "1", "--max-new-tokens", "6",
                        "--steps", "6")
    assert [r["resps"] for r in rows] == [[[cut_at_stops(best_text(g), ["."])]] for g in ref["samples"]]
