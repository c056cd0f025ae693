"""DiffusionGemma: the adapter (native transformers classes) and its canvas transition inside the common step.

A tiny random ``DiffusionGemmaForBlockDiffusion`` is built from its config classes and saved with
``save_pretrained`` + a word-level tokenizer. Unguided sampling must equal the native ``generate`` token for
token (sampled with the same seed; greedy against the native loop with its draw replaced by the argmax). The family
runs through ``generate``, the step API, ``entrgi eval`` and ``entrgi serve`` like every other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
import transformers
from packaging.specifiers import SpecifierSet
from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationMixin

import entrgi
from entrgi import DiffusionSampler, GuidanceConfig, SamplerConfig, generate, resolve_settings
from entrgi.cli.commands import main
from entrgi.eval import EvalConfig, EvalRunner, read_records
from entrgi.models import detect_family, get_family, load_diffusion_lm
from entrgi.models.diffusion_gemma import CHECKED_TRANSFORMERS, PRIVATE_METHODS, DiffusionGemma
from entrgi.reward.base import left_pad
from entrgi.settings import model_defaults
from tests.support.tiny_checkpoints import write_reward_checkpoint
from tests.support.tiny_models import CHAT_TEMPLATE, TokenPreferenceReward, tiny_mlm, word_tokenizer

CANVAS = 4
PROMPTS = ["the cat sat on the mat", "a dog ran"]  # different lengths: left padding and an attention mask


def write_tiny_diffusion_gemma(folder, *, seed: int = 0, canvas_length: int = CANVAS, max_denoising_steps: int = 6):
    """A random 2-layer DiffusionGemma (MoE text layers, a 1-layer vision tower) with a word tokenizer."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    tok = word_tokenizer()
    V = len(tok)
    text = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, global_head_dim=16, max_position_embeddings=256,
                sliding_window=16, num_experts=2, top_k_experts=1, moe_intermediate_size=32,
                layer_types=["sliding_attention", "full_attention"], pad_token_id=tok.pad_token_id,
                eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64)
    cfg = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                               boi_token_id=V + 1, eoi_token_id=V + 2, image_token_id=V + 3)
    torch.manual_seed(seed)
    module = DiffusionGemmaForBlockDiffusion(cfg)
    module.generation_config = DiffusionGemmaGenerationConfig(
        eos_token_id=[tok.sep_token_id], pad_token_id=tok.pad_token_id, max_denoising_steps=max_denoising_steps)
    module.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_diffusion_gemma(tmp_path_factory.mktemp("diffusion_gemma"))


@pytest.fixture(scope="module")
def model(folder):
    return load_diffusion_lm(folder, device="cpu")


def native(model, prompts, num_samples: int, seed: int, **kwargs) -> list[list[int]]:
    """The native ``generate`` on the left-padded rows (prompt-major), after ``torch.manual_seed(seed)``."""
    ids, attn = left_pad([model.encode_prompt(p) for p in prompts for _ in range(num_samples)],
                         model.pad_token_id, "cpu")
    torch.manual_seed(seed)
    out = model.module.generate(ids, attention_mask=attn, **kwargs)
    return out.sequences[:, ids.shape[1]:].tolist()


def canvas(model, **fields) -> SamplerConfig:
    """The sampler as every entry point resolves it: the model's own defaults (its generation config's denoising
    steps, 6 here), then ``fields``."""
    return resolve_settings(model_defaults=model_defaults(model), overrides={"sampler": fields}).sampler


def ours(model, prompts, cfg: SamplerConfig, reward=None, method: str = "none", callback=None, **guidance):
    out = generate(model, prompts, reward, sampler=cfg, guidance=GuidanceConfig(rule=method, **guidance),
                   progress=False, callback=callback)
    return out, [s.token_ids for group in out.samples for s in group]


# ---- the adapter -------------------------------------------------------------------------------------
def test_loads_with_family_mask_and_eos(folder, model):
    tok = model.tokenizer
    assert detect_family(folder) == "diffusion_gemma" and get_family("diffusion_gemma") is DiffusionGemma
    assert isinstance(model, DiffusionGemma) and model.family == "diffusion_gemma"
    assert type(model.module).__name__ == "DiffusionGemmaForBlockDiffusion"  # the native class, no remote code
    assert model.eos_token_ids == (tok.sep_token_id,) == tuple(model.generation_config.eos_token_id)
    assert model.mask_token_id == tok.mask_token_id  # in the vocabulary, never used by the uniform-noise canvas
    assert model.pad_token_id == tok.pad_token_id
    assert model.logit_width == len(tok) == model.module.config.text_config.vocab_size
    assert model.canvas_length == CANVAS and model.transition == "canvas"
    assert model_defaults(model)["sampler"]["steps"] == 6 == model_defaults(str(folder))["sampler"]["steps"]
    emb = model.get_input_embeddings()  # the encoder's, tied to the decoder's (and to the output layer)
    assert emb.weight.data_ptr() == model.module.model.decoder.embed_tokens.weight.data_ptr()
    assert model.encode_prompt("the cat") == [tok.cls_token_id, *tok.convert_tokens_to_ids(["the", "cat"])]


def test_forward_is_the_first_denoising_step(model):
    """``forward(prompt ⧺ canvas)`` = the decoder logits of the sampler's first step (its first random canvas)."""
    seen = []
    hook = model.module.register_forward_hook(lambda mod, args, kwargs_out: seen.append(kwargs_out.logits.clone()))
    try:
        ours(model, ["the cat sat"], canvas(model, max_new_tokens=CANVAS, seed=5, steps=2))
    finally:
        hook.remove()
    prompt = torch.tensor([model.encode_prompt("the cat sat")])
    torch.manual_seed(5)
    start = torch.randint(0, model.logit_width, (1, CANVAS))  # the native loop's first random call
    x = torch.cat([prompt, start], 1)
    attn = torch.ones_like(x)
    logits = model(x, attn, torch.arange(x.shape[1])[None])
    assert len(seen) == 2 and logits.shape == (1, CANVAS, model.logit_width)
    torch.testing.assert_close(logits, seen[0], atol=1e-5, rtol=1e-5)


# ---- unguided = native --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["default", "stopping", "batches", "eos"])
def test_unguided_equals_native_generate_sampled(model, case):
    cfg = canvas(model, max_new_tokens=3 * CANVAS - 1, num_samples=2, seed=11)  # 3 canvases, the last one whole
    native_kw: dict = dict(max_new_tokens=cfg.max_new_tokens)
    if case == "stopping":  # adaptive stopping fires: finished rows are frozen while the others run
        cfg = dataclasses.replace(cfg, stability_threshold=0, confidence_threshold=3.5, entropy_bound=0.5,
                                  t_min=0.1, t_max=0.3)
        native_kw.update(stability_threshold=0, confidence_threshold=3.5, t_min=0.1, t_max=0.3)
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig
        native_kw["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=0.5)
    gc = model.module.generation_config
    saved = gc.eos_token_id
    if case == "eos":  # many EOS ids: rows finish at different canvases, tokens after the EOS become pad
        gc.eos_token_id = list(range(5, 30))
    rng = torch.get_rng_state()
    try:
        if case == "batches":  # two native batches, one after the other, continuing the random stream
            cfg = dataclasses.replace(cfg, batch_size=2)
            torch.manual_seed(cfg.seed)
            want = []
            for p in PROMPTS:
                ids, attn = left_pad([model.encode_prompt(p)] * 2, model.pad_token_id, "cpu")
                seqs = model.module.generate(ids, attention_mask=attn, **native_kw).sequences
                want += seqs[:, ids.shape[1]:].tolist()
        else:
            want = native(model, PROMPTS, 2, cfg.seed, **native_kw)
        torch.set_rng_state(rng)
        out, got = ours(model, PROMPTS, cfg)
        assert torch.equal(torch.get_rng_state(), rng)  # the global stream is left as it was
    finally:
        gc.eos_token_id = saved
    assert got == want
    assert len({tuple(t) for t in got}) == 4  # the rows differ: a real comparison
    if case == "eos":
        assert any(model.pad_token_id in t for t in got)
    steps = [len(s.trace) for g in out.samples for s in g]
    if case == "stopping":
        assert min(steps) < 3 * 6 and len(set(steps)) > 1, steps  # rows stopped early, at different steps
    if case == "default":
        assert steps == [3 * 6] * 4 and out.stats.dllm_forwards == 4 * (3 + 3 * 6)
        n_prompt = max(len(model.encode_prompt(p)) for p in PROMPTS)
        assert out.stats.dllm_tokens == 4 * (n_prompt + 2 * CANVAS) + 4 * CANVAS * 3 * 6


def test_unguided_greedy_equals_native_with_argmax_draws(model, monkeypatch):
    cfg = canvas(model, max_new_tokens=2 * CANVAS, num_samples=2, seed=3, temperature=0.0)
    _, sampled = ours(model, PROMPTS, dataclasses.replace(cfg, temperature=0.7))
    _, got = ours(model, PROMPTS, cfg)
    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples: probs.argmax(-1, keepdim=True))
    want = native(model, PROMPTS, 2, cfg.seed, max_new_tokens=cfg.max_new_tokens)
    assert got == want and got != sampled


# ---- guidance -----------------------------------------------------------------------------------------
def test_guidance_raises_a_token_reward_and_counts_its_cost(model):
    rm = TokenPreferenceReward(model.tokenizer, ["happy"])
    cfg = canvas(model, max_new_tokens=2 * CANVAS, num_samples=2, seed=0)
    seen = []

    def spy(step, out):  # the common step's output: the open slots, the prior and the guided logits
        if out.guide is not None:
            seen.append((out.masked.clone(), out.logits.clone(), out.guided_logits.clone()))

    plain, _ = ours(model, PROMPTS, cfg, rm, "none", callback=spy)
    assert not seen
    guided, _ = ours(model, PROMPTS, cfg, rm, "entrgi", callback=spy, inner_steps=3, lr=0.5)
    assert sum(guided.avg()) / 2 > sum(plain.avg()) / 2 + 3  # 8 slots; none ≈ 0 "happy", guided most
    # only the slots not accepted at the previous step are optimised; the accepted ones keep their logits
    traces = [s.trace for g in guided.samples for s in g]
    n = len(traces[0])
    assert all(len(tr) == n for tr in traces)  # no adaptive stop here: every row runs every step
    guided_steps = [i for i in range(n) if any(tr[i].guided for tr in traces)]
    assert len(guided_steps) == len(seen) > n // 2
    for i, (masked, prior, after) in zip(guided_steps, seen):
        torch.testing.assert_close(after[~masked], prior[~masked], atol=0, rtol=0)
        assert not torch.equal(after[masked], prior[masked])
        for b, tr in enumerate(traces):
            t, before = tr[i], tr[i - 1] if i else None
            expected = torch.ones(CANVAS, dtype=torch.bool)
            if before is not None and before.block == t.block:
                expected[before.committed] = False
            assert torch.equal(masked[b], expected) and t.masked == int(expected.sum())
            assert t.guided == bool(expected.any())
    stats, B, M = guided.stats, 4, 3
    assert stats.rm_backwards == B * M * len(seen)
    assert stats.rm_forwards == B * M * len(seen) + B  # the inner steps + the final re-score
    assert guided.observer_stats.rm_forwards == B * len(seen)  # the trace's evaluation, counted apart
    assert stats.dllm_forwards == plain.stats.dllm_forwards  # guidance adds no DLLM forward
    assert all(len(t.rewards) == M + 1 and len(t.grad_norms) == M for tr in traces for t in tr if t.guided)


def test_the_step_api_is_the_loop_of_generate(model):
    rm = TokenPreferenceReward(model.tokenizer, ["happy"])
    cfg, g = canvas(model, max_new_tokens=2 * CANVAS, num_samples=2, seed=4), GuidanceConfig(lr=0.5)
    ref, want = ours(model, PROMPTS, cfg, rm, "entrgi", lr=0.5)
    sampler = DiffusionSampler(model, rm)
    state = sampler.start(PROMPTS, cfg, g)
    blocks = []
    while not state.done:
        out = sampler.step(state)
        blocks.append(out.block)
        assert out.logits.shape == (4, CANVAS, model.logit_width) and out.window.stop - out.window.start == CANVAS
    assert state.transition.tokens(state) == want
    assert blocks == sorted(blocks) and set(blocks) == {0, 1} and len(blocks) == 2 * 6


def test_cli_entrgi_raises_the_reward_over_none(folder, tmp_path):
    rm = write_reward_checkpoint(tmp_path / "rm", word_tokenizer(chat_template=CHAT_TEMPLATE))
    means = {}
    for method in ("none", "entrgi"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["generate", "--model", str(folder), "--reward", str(rm), "--method", method,
                         "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "8", "--num-samples",
                         "2", "--seed", "0", "--inner-steps", "5", "--lr", "1.0", "--steps", "4",
                         "--device", "cpu", "--json", "--quiet"])
        assert code == 0
        out = json.loads(buf.getvalue())
        assert out["sampler"]["steps"] == 4 and out["guidance"]["rule"] == method
        rewards = [s["reward"] for g in out["samples"] for s in g]
        means[method] = sum(rewards) / len(rewards)
        assert (out["stats"]["rm_backwards"] > 0) == (method == "entrgi")
    assert means["entrgi"] > means["none"] + 0.5, means


# ---- options that do not apply ------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, field", [
    (SamplerConfig(kv_cache="prefix"), "kv_cache"),
    (SamplerConfig(block_length=4, steps=32), "block_length"),
    (SamplerConfig(parallel_threshold=0.9), "parallel_threshold"),
    (SamplerConfig(remasking="maskgit_plus"), "remasking"),
    (SamplerConfig(top_p=0.5), "top_p"),
    (SamplerConfig(min_new_tokens=2), "min_new_tokens"),
    (SamplerConfig(temperature=0.3), "temperature"),
])
def test_options_that_do_not_apply_raise(model, sampler, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        generate(model, "the cat", sampler=sampler, guidance=GuidanceConfig(rule="none"), progress=False)


def test_other_misuses_raise(model):
    rm = TokenPreferenceReward(model.tokenizer, ["happy"])
    cfg = canvas(model, max_new_tokens=4)
    with pytest.raises(ValueError, match="`guide_every`"):
        generate(model, "the cat", rm, sampler=cfg, guidance=GuidanceConfig(guide_every=2), progress=False)
    with pytest.raises(ValueError, match="`track_reward`"):
        generate(model, "the cat", rm, sampler=cfg, track_reward=True, progress=False)
    with pytest.raises(ValueError, match="search 'particles' does not apply"):
        generate(model, "the cat", rm, sampler=cfg, search="particles", progress=False)
    with pytest.raises(ValueError, match="`reward` is required"):
        generate(model, "the cat", sampler=cfg, progress=False)
    for bad in (dict(t_min=0.5, t_max=0.4), dict(entropy_bound=0.0), dict(stability_threshold=-1),
                dict(confidence_threshold=float("nan"))):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`|`t_max`"):
            SamplerConfig(**bad)
    with pytest.raises(ValueError, match="`t_min` applies to canvas .* only"):  # a canvas field, a masked DLLM
        generate(tiny_mlm(), "the cat", sampler=SamplerConfig(t_min=0.1), guidance=GuidanceConfig(rule="none"),
                 progress=False)


def test_the_private_seam_is_checked_on_this_transformers():
    """The adapter's seam (NativeCanvasLoop) is the one place transformers' private generation methods are called;
    they exist on the version range it names, which the installed transformers is in."""
    assert transformers.__version__ in SpecifierSet(",".join(CHECKED_TRANSFORMERS))
    assert all(callable(getattr(DiffusionGemmaGenerationMixin, name, None)) for name in PRIVATE_METHODS)
    package = Path(entrgi.__file__).parent
    calls = [f for f in package.rglob("*.py") if f.name != "diffusion_gemma.py"
             and any(f".{name}(" in f.read_text() for name in PRIVATE_METHODS)]
    assert not calls, calls  # nowhere else
    seam = (package / "models" / "diffusion_gemma.py").read_text()
    assert all(f".{name}(" in seam for name in PRIVATE_METHODS)  # the list is the seam's calls


def test_eval_runs_diffusion_gemma_from_yaml(folder, tmp_path):
    rm = write_reward_checkpoint(tmp_path / "rm", word_tokenizer(chat_template=CHAT_TEMPLATE))
    cfg = EvalConfig.from_dict({"out": str(tmp_path / "run"), "model": str(folder), "reward": str(rm),
                                "prompt_sets": ["continuations"], "n_prompts": 2, "subsample": "fixed",
                                "methods": ["none", "entrgi"], "temperatures": [0.7], "seeds": [0],
                                "sampler": {"max_new_tokens": CANVAS, "num_samples": 2}, "guidance": {"lr": 1.0},
                                "perplexity": False, "track_reward": False, "judges": ["vader"]})
    EvalRunner(cfg, progress=False).run()
    recs = read_records(tmp_path / "run")
    assert sorted({r["method"] for r in recs}) == ["entrgi", "none"] and len(recs) == 4
    steps = {r["settings"]["sampler"]["steps"] for r in recs}
    assert steps == {6}  # the checkpoint's own max_denoising_steps: the model's layer of the settings
    assert all(r["compute"]["dllm_forwards"] > 0 for r in recs)
    assert sum(r["compute"]["rm_backwards"] for r in recs if r["method"] == "entrgi") > 0


def test_cli_refuses_an_option_that_does_not_apply(folder, capsys):
    code = main(["generate", "--model", str(folder), "--method", "none", "--prompt", "the cat", "--remasking",
                 "random", "--device", "cpu", "--quiet"])
    assert code == 2
    assert "`remasking` = 'random' (default 'entropy'): does not apply to the canvas sampler" in capsys.readouterr().err


def test_cli_prints_a_canvas_run(folder, capsys):
    code = main(["generate", "--model", str(folder), "--method", "none", "--prompt", "the cat", "--max-new-tokens",
                 "4", "--steps", "2", "--t-min", "0.2", "--t-max", "0.5", "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "method=none" in out and "T=2" in out and "prompt 0: 'the cat'" in out


# ---- entrgi serve ------------------------------------------------------------------------------------
def test_serve_answers_through_the_openai_client(folder, tmp_path):
    """The server runs the canvas family like any other: plain and guided requests through the unmodified ``openai``
    client, its own steps per canvas (not T = L), answers cut to ``max_tokens``, equal to the library's tokens,
    streaming that delivers the final text, and a 400 for what canvases do not have."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from entrgi.serve.app import BackgroundServer, create_app
    from entrgi.serve.engine import ServerLimits, load_engine
    from entrgi.serve.streaming import CompletionText

    rm = write_reward_checkpoint(tmp_path / "rm", word_tokenizer(chat_template=CHAT_TEMPLATE))
    engine = load_engine(str(folder), str(rm), device="cpu", limits=ServerLimits(max_tokens=16, timeout_s=120))
    assert engine.defaults().sampler.steps == 6  # the checkpoint's own denoising steps per canvas
    with BackgroundServer(create_app(engine)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        out = {}
        for rule in ("none", "entrgi"):
            r = client.completions.create(model=engine.model_id, prompt=PROMPTS[0], max_tokens=6, seed=3,
                                          extra_body={"guidance": {"rule": rule, "inner_steps": 3, "lr": 1.0}})
            out[rule] = r
            assert r.usage.completion_tokens <= 6 and r.choices[0].finish_reason in ("stop", "length")
        assert out["entrgi"].usage.rm_backwards > 0 and out["none"].usage.rm_backwards == 0
        settings = resolve_settings(model_defaults=model_defaults(engine.model),
                                    overrides={"sampler": {"max_new_tokens": 6, "num_samples": 1, "seed": 3},
                                               "guidance": {"rule": "none"}})
        lib = generate(engine.model, [PROMPTS[0]], engine.reward, sampler=settings.sampler,
                       guidance=settings.guidance, progress=False)
        ids = lib.samples[0][0].token_ids
        assert len(ids) % 4 == 0  # whole canvases of C = 4 slots (up to 8); the server answers with the first 6
        text_of = CompletionText(engine.model, tuple(engine.model.encode_prompt(PROMPTS[0])), False)
        assert out["none"].choices[0].text == text_of(ids[:6])
        chunks = list(client.completions.create(model=engine.model_id, prompt=PROMPTS[0], max_tokens=6, seed=3,
                                                stream=True, extra_body={"guidance": {"rule": "none"}}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == out["none"].choices[0].text
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=engine.model_id, prompt=PROMPTS[0], max_tokens=6, stream=True,
                                      extra_body={"canvas_events": True})
        assert "canvas_events" in str(err.value)
