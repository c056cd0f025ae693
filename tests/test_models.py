"""Model families on their real layouts: Dream, LLaDA and an HF masked LM written as tiny checkpoints
(real config keys, real weight names, sharded safetensors, tokenizer files, booby-trapped remote-code
files) and loaded back through the public loader; checked against an independent float64 reference,
then run end to end with guidance, from Python and from the CLI."""

import ast
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from conftest import PREFERRED
from safetensors.torch import load_file
from support.tiny_checkpoints import (
    dream_config,
    llada_config,
    save_sharded,
    write_dream_checkpoint,
    write_llada_checkpoint,
    write_reward_checkpoint,
)
from support.tiny_models import CHAT_TEMPLATE, tiny_mlm, word_tokenizer

import entrgi
from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.cli.commands import main
from entrgi.models import Dream, HFMaskedLM, LLaDA, detect_family, load_diffusion_lm
from entrgi.models.dream import qwen2_config
from entrgi.models.llada import checkpoint_name, llama_config, module_name
from entrgi.reward.base import left_pad, position_ids_from
from entrgi.reward.callable import CallableReward
from entrgi.reward.hf import HFRewardModel
from entrgi.sampling.sampler import DiffusionSampler

TRAP = "raise RuntimeError('remote code from the checkpoint was executed')\n"
PROMPTS = ["the cat sat on the mat", "a dog"]
FAMILIES = ("dream", "llada", "mlm")


# ---- checkpoints on disk -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dream_ckpt(tmp_path_factory):
    folder = write_dream_checkpoint(tmp_path_factory.mktemp("dream_ckpt"))
    for f in ("configuration_dream.py", "modeling_dream.py", "tokenization_dream.py", "generation_utils.py"):
        (folder / f).write_text(TRAP)
    return folder


@pytest.fixture(scope="module")
def llada_ckpt(tmp_path_factory):
    folder = write_llada_checkpoint(tmp_path_factory.mktemp("llada_ckpt"))
    for f in ("configuration_llada.py", "modeling_llada.py"):
        (folder / f).write_text(TRAP)
    return folder


@pytest.fixture(scope="module")
def mlm_ckpt(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("mlm_ckpt")
    tiny_mlm(tok, seed=3).module.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen3_rm_ckpt(tmp_path_factory, qwen3_dir):
    """A Skywork-Reward-V2-shaped classifier (tiny) with the real Qwen3 tokenizer."""
    return write_reward_checkpoint(tmp_path_factory.mktemp("qwen3_rm"), transformers.AutoTokenizer.from_pretrained(
        qwen3_dir), seed=1)


@pytest.fixture(scope="module")
def word_rm_ckpt(tmp_path_factory):
    return write_reward_checkpoint(tmp_path_factory.mktemp("word_rm"), word_tokenizer(chat_template=CHAT_TEMPLATE),
                                   seed=2)


@pytest.fixture(scope="module")
def models(dream_ckpt, llada_ckpt, mlm_ckpt):
    return {"dream": load_diffusion_lm(dream_ckpt), "llada": load_diffusion_lm(llada_ckpt),
            "mlm": load_diffusion_lm(mlm_ckpt)}


@pytest.fixture(scope="module")
def rewards(qwen3_rm_ckpt, word_rm_ckpt):
    qwen3 = HFRewardModel.from_pretrained(qwen3_rm_ckpt)
    word = HFRewardModel.from_pretrained(word_rm_ckpt)
    return {"dream": qwen3, "llada": word, "mlm": word}


def canvas(model, prompts, L=5):
    """The sampler's layout: left-padded prompts, L mask slots, position ids that skip padding."""
    ids, attn = left_pad([model.encode_prompt(p) for p in prompts], model.pad_token_id, "cpu")
    B, P = ids.shape
    x = torch.cat([ids, torch.full((B, L), model.mask_token_id)], 1)
    attn = torch.cat([attn, torch.ones(B, L, dtype=torch.long)], 1)
    return x, attn, position_ids_from(attn), P


# ---- detection and loading ---------------------------------------------------------------------------
def test_family_is_detected_from_config_json(dream_ckpt, llada_ckpt, mlm_ckpt, models):
    assert [detect_family(p) for p in (dream_ckpt, llada_ckpt, mlm_ckpt)] == ["dream", "llada", "hf_mlm"]
    assert detect_family({"model_type": "dream"}) == "dream"
    assert (type(models["dream"]), type(models["llada"]), type(models["mlm"])) == (Dream, LLaDA, HFMaskedLM)
    with pytest.raises(ValueError, match="Cannot tell the model family"):
        detect_family({"model_type": "mystery", "architectures": ["MysteryModel"]})
    with pytest.raises(ValueError, match="does not implement"):
        detect_family({"model_type": "mystery_mlm", "architectures": ["MysteryForMaskedLM"]})


def test_special_ids_follow_each_family(models):
    dream, llada = models["dream"], models["llada"]
    assert (dream.mask_token_id, dream.pad_token_id, dream.eos_token_ids) == (151666, 151643, (151643, 151645))
    assert dream.logit_width == 152064 and dream.shift_logits and not llada.shift_logits
    assert dream.invalid_token_ids == (151665, 151666, *range(151667, 152064))  # <|beginoftext|>, mask, padded rows
    v = llada.tokenizer.get_vocab()
    assert llada.mask_token_id == v["<|mdm_mask|>"] and llada.pad_token_id == v["<|endoftext|>"]
    assert set(llada.eos_token_ids) == {v["<|endoftext|>"], v["<|eot_id|>"]}
    assert llada.invalid_token_ids == (v["<|mdm_mask|>"], *range(len(llada.tokenizer), llada.logit_width))
    assert dream.tokenizer("Hello world")["input_ids"] == [9707, 1879]  # DreamTokenizer's documented example
    with pytest.raises(ValueError, match="do not belong"):  # config.json and tokenizer must agree on the mask
        Dream.from_module(dream.module, dream.tokenizer, {"mask_token_id": 151665})
    # each family formats prompts with its own chat template
    assert dream.tokenizer.decode(dream.encode_prompt("hi")) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert llada.tokenizer.convert_ids_to_tokens(llada.encode_prompt("a dog")) == [
        "<|startoftext|>", "<|start_header_id|>", "user", "<|end_header_id|>", "a", "dog", "<|eot_id|>",
        "<|start_header_id|>", "assistant", "<|end_header_id|>"]


def _guard_remote_code(monkeypatch):
    """Fail when remote code is enabled or even considered (transformers' own calls pass None); record Auto* loads."""
    calls = []
    for name in ("AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification",
                 "AutoTokenizer"):
        cls = getattr(transformers, name)

        def guarded(*args, _orig=cls.from_pretrained, _name=name, **kwargs):
            assert not kwargs.get("trust_remote_code"), f"{_name}.from_pretrained was asked to run remote code"
            calls.append((_name, str(args[0])))
            return _orig(*args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", guarded)
    from transformers.models.auto import auto_factory, configuration_auto, tokenization_auto
    for mod in (auto_factory, configuration_auto, tokenization_auto):
        def resolve(trust, model_name, has_local_code, has_remote_code, *a, _orig=mod.resolve_trust_remote_code, **k):
            assert not has_remote_code, f"remote code was considered for {model_name}"
            return _orig(trust, model_name, has_local_code, has_remote_code, *a, **k)
        monkeypatch.setattr(mod, "resolve_trust_remote_code", resolve)
    return calls


def test_loading_never_runs_or_asks_for_remote_code(monkeypatch, dream_ckpt, llada_ckpt, mlm_ckpt, qwen3_rm_ckpt):
    calls = _guard_remote_code(monkeypatch)
    for folder in (dream_ckpt, llada_ckpt, mlm_ckpt):
        load_diffusion_lm(folder)  # the *.py files in the Dream/LLaDA folders raise if imported
    HFRewardModel.from_pretrained(qwen3_rm_ckpt)
    # Dream/LLaDA folders (model_type unknown to transformers, auto_map present) never reach an Auto* class
    assert not [c for c in calls if str(dream_ckpt) in c[1] or str(llada_ckpt) in c[1]]
    assert ("AutoModelForMaskedLM", str(mlm_ckpt)) in calls  # the guard was active (native classes pass it)


def test_every_transformers_load_refuses_remote_code_explicitly():
    """Each ``from_pretrained`` of a transformers class in the package passes ``trust_remote_code=False`` (so a
    checkpoint with remote code is an error, never an interactive prompt), and no other value is ever written."""
    src = Path(entrgi.__file__).parent
    loads, bad = [], []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        values = re.findall(r"trust_remote_code\s*=\s*([^,)\s]+)", text)
        if text.count("trust_remote_code") != len(values) or set(values) - {"False"}:
            bad.append(path.name)  # a bare mention, or a value other than False
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained" and isinstance(node.func.value, ast.Name)
                    and re.search(r"Auto|Config|[Tt]okenizer", node.func.value.id)):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("trust_remote_code"), ast.Constant) and kw["trust_remote_code"].value is False
                loads.append((f"{path.name}:{node.lineno}", ok))
    assert bad == []
    assert len(loads) >= 8  # AutoTokenizer, Auto*Model, BertConfig and tokenizer-class loads (the walker works)
    assert [where for where, ok in loads if not ok] == []


def test_a_hub_id_is_downloaded_then_loaded_like_a_folder(monkeypatch, dream_ckpt):
    import huggingface_hub
    seen = {}

    def snapshot_download(repo_id, **kw):
        seen["snapshot"] = (repo_id, kw["allow_patterns"])
        return str(dream_ckpt)

    def hf_hub_download(repo_id, filename, **kw):
        seen["config"] = (repo_id, filename)
        return str(dream_ckpt / filename)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    model = load_diffusion_lm("Dream-org/Dream-v0-Instruct-7B")
    assert isinstance(model, Dream)
    assert seen["config"] == ("Dream-org/Dream-v0-Instruct-7B", "config.json")
    repo, patterns = seen["snapshot"]
    assert repo == "Dream-org/Dream-v0-Instruct-7B" and "*.safetensors" in patterns and "*.py" not in patterns


def test_loading_is_strict_about_names_and_shapes(tmp_path, llada_ckpt):
    sd = {}
    for f in sorted(llada_ckpt.glob("*.safetensors")):
        sd.update(load_file(f))

    def attempt(state):
        folder = tmp_path / f"ckpt{len(list(tmp_path.iterdir()))}"
        shutil.copytree(llada_ckpt, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
        save_sharded(folder, state, shards=1)
        return LLaDA.from_pretrained(folder)

    assert isinstance(attempt(sd), LLaDA)  # the single-file layout loads too
    with pytest.raises(ValueError, match=r"missing from the checkpoint \(1\): \['model.layers.1.mlp.up_proj.weight'\]"):
        attempt({k: v for k, v in sd.items() if k != "model.transformer.blocks.1.up_proj.weight"})
    with pytest.raises(ValueError, match=r"unexpected in the checkpoint \(1\): \['model.transformer.blocks.0.att_proj"):
        attempt({**sd, "model.transformer.blocks.0.att_proj.weight": torch.zeros(96, 32)})
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): \['model.transformer.ln_f.weight -> model.norm"):
        attempt({**sd, "model.transformer.ln_f.weight": torch.ones(31)})


def test_llada_names_map_both_ways():
    cfg = llada_config(40, n_layers=2)
    from support.tiny_checkpoints import llada_state_dict
    names = list(llada_state_dict(cfg))
    assert all(checkpoint_name(module_name(n)) == n for n in names)
    assert module_name("model.transformer.blocks.3.ff_proj.weight") == "model.layers.3.mlp.gate_proj.weight"
    assert module_name("model.transformer.blocks.3.ff_out.weight") == "model.layers.3.mlp.down_proj.weight"
    assert module_name("model.transformer.ff_out.weight") == "lm_head.weight"
    assert module_name("model.transformer.blocks.0.att_proj.weight") is None


def test_unsupported_architecture_options_are_named():
    with pytest.raises(ValueError, match="block_type"):
        llama_config({**llada_config(40), "block_type": "sequential"})
    with pytest.raises(ValueError, match=r"lacks the keys \['d_model'\]"):
        llama_config({k: v for k, v in llada_config(40).items() if k != "d_model"})
    with pytest.raises(ValueError, match="use_sliding_window"):
        qwen2_config({**dream_config(), "use_sliding_window": True})
    cfg = qwen2_config(dream_config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                    num_attention_heads=28, num_key_value_heads=4))
    assert (cfg.rope_parameters["rope_theta"], cfg.num_key_value_heads, cfg.rms_norm_eps) == (1e6, 4, 1e-6)


@pytest.mark.parametrize("name,device_map", [("llada", None), ("llada", {"": "cpu"}), ("llada", "auto"),
                                             ("dream", None)])
def test_bfloat16_and_device_map(name, device_map, dream_ckpt, llada_ckpt, models):
    folder = {"dream": dream_ckpt, "llada": llada_ckpt}[name]
    model = load_diffusion_lm(folder, dtype=torch.bfloat16, device="cpu" if device_map is None else None,
                              device_map=device_map)
    assert {p.dtype for p in model.module.parameters()} == {torch.bfloat16}
    x, attn, pos, P = canvas(model, PROMPTS)
    got = model.response_logits(x, attn, pos, P).float()
    ref = models[name].response_logits(x, attn, pos, P)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().mean() < 0.05 * ref.abs().mean()


@pytest.mark.parametrize("name", ["dream", "llada"])
def test_eager_attention_gives_the_sdpa_logits(name, dream_ckpt, llada_ckpt, models):
    model = load_diffusion_lm({"dream": dream_ckpt, "llada": llada_ckpt}[name], attn_implementation="eager")
    assert model.module.config._attn_implementation == "eager"
    x, attn, pos, P = canvas(model, PROMPTS)  # row 1 is padded: the eager path gets an additive mask
    with torch.no_grad():
        torch.testing.assert_close(model.response_logits(x, attn, pos, P),
                                   models[name].response_logits(x, attn, pos, P), atol=1e-5, rtol=1e-5)


def test_recommended_sampler_settings():
    llada = LLaDA.recommended_sampler()
    assert (llada.block_length, llada.schedule, llada.remasking, llada.sampling, llada.temperature) == (
        32, "uniform", "low_confidence", "gumbel", 0.0)
    dream = Dream.recommended_sampler(num_samples=2)
    assert (dream.max_new_tokens, dream.steps, dream.temperature, dream.top_p, dream.remasking, dream.schedule,
            dream.num_samples) == (128, 128, 0.7, 0.95, "entropy", "linear", 2)


# ---- the forward pass --------------------------------------------------------------------------------
REF_NAMES = {
    "dream": dict(embed="model.embed_tokens.weight", norm="model.norm.weight", head="lm_head.weight",
                  layer="model.layers.{i}.", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                  o="self_attn.o_proj", gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj",
                  attn_norm="input_layernorm", mlp_norm="post_attention_layernorm"),
    "llada": dict(embed="model.transformer.wte.weight", norm="model.transformer.ln_f.weight",
                  head="model.transformer.ff_out.weight", layer="model.transformer.blocks.{i}.", q="q_proj",
                  k="k_proj", v="v_proj", o="attn_out", gate="ff_proj", up="up_proj", down="ff_out",
                  attn_norm="attn_norm", mlp_norm="ff_norm"),
}


def reference_logits(sd, n, *, layers, heads, kv_heads, eps, theta, ids, attn, pos, causal=False):
    """Unshifted logits from the raw checkpoint tensors, written out in float64: pre-norm RMSNorm blocks,
    GQA attention with RoPE (rotate-half, inv_freq = θ^(−2i/d)), padding keys masked, SwiGLU MLP."""
    W = {k: v.double() for k, v in sd.items()}

    def lin(x, name):
        return x @ W[name + ".weight"].T + W.get(name + ".bias", 0.0)

    def rms(x, name, eps=eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * W[name]

    def rope(t):  # (B, H, N, hd)
        hd = t.shape[-1]
        ang = pos[:, None, :, None].double() * theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        return t * cos + torch.cat([-t[..., hd // 2:], t[..., :hd // 2]], -1) * sin

    x = W[n["embed"]][ids]  # (B, N, d)
    B, N, d = x.shape
    hd = d // heads
    allowed = attn.bool()[:, None, None, :]  # keys: (B, 1, 1, N)
    if causal:
        allowed = allowed & torch.ones(N, N, dtype=torch.bool).tril()
    for i in range(layers):
        p = n["layer"].format(i=i)
        h = rms(x, p + n["attn_norm"] + ".weight")
        q = lin(h, p + n["q"]).view(B, N, heads, hd).transpose(1, 2)
        k = lin(h, p + n["k"]).view(B, N, kv_heads, hd).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
        v = lin(h, p + n["v"]).view(B, N, kv_heads, hd).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
        scores = (rope(q) @ rope(k).transpose(-1, -2) / hd ** 0.5).masked_fill(~allowed, float("-inf"))
        x = x + lin((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, d), p + n["o"])
        h = rms(x, p + n["mlp_norm"] + ".weight")
        x = x + lin(torch.nn.functional.silu(lin(h, p + n["gate"])) * lin(h, p + n["up"]), p + n["down"])
    return rms(x, n["norm"]) @ W[n["head"]].T


def _reference_setup(name, folder):
    raw = json.loads((folder / "config.json").read_text())
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(f))
    if name == "dream":
        dims = dict(layers=raw["num_hidden_layers"], heads=raw["num_attention_heads"],
                    kv_heads=raw["num_key_value_heads"], eps=raw["rms_norm_eps"], theta=raw["rope_theta"])
    else:
        dims = dict(layers=raw["n_layers"], heads=raw["n_heads"], kv_heads=raw["n_kv_heads"], eps=raw["rms_norm_eps"],
                    theta=raw["rope_theta"])
    return sd, dims


@pytest.mark.parametrize("name", ["dream", "llada"])
def test_forward_matches_an_independent_reference(name, models, dream_ckpt, llada_ckpt):
    model = models[name]
    sd, dims = _reference_setup(name, {"dream": dream_ckpt, "llada": llada_ckpt}[name])
    x, attn, pos, _ = canvas(model, ["it was a very big day and the sun", "the cat"])
    assert attn[1, 0] == 0  # row 1 is left-padded
    with torch.no_grad():
        got = model.module(x, attn, pos).double()  # (B, N, V) unshifted
    real = attn.bool()

    def ref(**over):
        return reference_logits(sd, REF_NAMES[name], ids=x, attn=attn, pos=pos, **{**dims, **over})[real]
    torch.testing.assert_close(got[real], ref(), atol=2e-4, rtol=2e-4)
    # the comparison would catch a causal mask or RoPE with the transformers default θ
    assert not torch.allclose(got[real], ref(causal=True), atol=1e-2)
    assert not torch.allclose(got[real], ref(theta=10000.0), atol=1e-2)


def test_dream_logits_are_right_shifted(models):
    dream = models["dream"]
    x, attn, pos, _ = canvas(dream, PROMPTS)
    with torch.no_grad():
        own = dream.module(x, attn, pos)  # position i from hidden state i
        shifted = dream(x, attn, pos)
    torch.testing.assert_close(shifted[:, 1:], own[:, :-1])  # position i from hidden state i − 1
    torch.testing.assert_close(shifted[:, 0], own[:, 0])
    assert not torch.allclose(shifted[:, 1:], own[:, 1:], atol=1e-3)
    llada = models["llada"]
    x, attn, pos, _ = canvas(llada, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(llada(x, attn, pos), llada.module(x, attn, pos))


@pytest.mark.parametrize("name", FAMILIES)
def test_response_logits_equal_slicing_the_full_logits(name, models):
    model = models[name]
    x, attn, pos, P = canvas(model, PROMPTS)
    with torch.no_grad():
        sliced = model.response_logits(x, attn, pos, P)
        full = model(x, attn, pos)
    assert sliced.shape == (2, x.shape[1] - P, model.logit_width)
    torch.testing.assert_close(sliced, full[:, P:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["dream", "llada"])
def test_a_later_token_changes_every_earlier_position(name, models):
    model = models[name]
    x, attn, pos, _ = canvas(model, PROMPTS[:1])
    y = x.clone()
    y[0, -1] = model.eos_token_ids[0]  # the last slot: mask -> EOS
    with torch.no_grad():
        change = (model.module(x, attn, pos) - model.module(y, attn, pos)).abs().amax(-1)[0]  # (N,)
    assert (change[:-1] > 1e-4).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_left_padding_does_not_change_a_rows_logits(name, models):
    model = models[name]
    short, long = "a dog", "it was a very big day and the sun was happy"
    x, attn, pos, P = canvas(model, [short])
    xb, attnb, posb, Pb = canvas(model, [long, short])
    assert attnb[1, 0] == 0
    with torch.no_grad():
        alone = model.response_logits(x, attn, pos, P)[0]
        batched = model.response_logits(xb, attnb, posb, Pb)[1]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


# ---- guided generation -------------------------------------------------------------------------------
def record(store):
    def cb(step, state):
        store.append((step, {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}))
    return cb


def settings(name):
    if name == "llada":
        return (LLaDA.recommended_sampler(max_new_tokens=8, block_length=4, steps=4, num_samples=2),
                GuidanceConfig(rule="entrgi", inner_steps=2, relaxation_temperature=1.0))
    # top_p = 1: a full sort of Dream's 152k logits per slot costs seconds on CPU (not what is tested here)
    return (SamplerConfig(max_new_tokens=4, steps=4, num_samples=2, top_p=1.0),
            GuidanceConfig(rule="entrgi", inner_steps=2))


@pytest.mark.parametrize("name", FAMILIES)
def test_guided_generation_end_to_end(name, models, rewards):
    model, reward = models[name], rewards[name]
    sampler, guidance = settings(name)
    prompts = PROMPTS[:1] if name == "dream" else PROMPTS  # Dream's 152k-wide steps are the slow ones on CPU
    out = generate(model, prompts, reward, sampler=sampler, guidance=guidance, progress=False)
    samples = [s for g in out.samples for s in g]
    assert len(samples) == 2 * len(prompts)
    for s in samples:
        assert model.mask_token_id not in s.token_ids and len(s.token_ids) == sampler.max_new_tokens
        assert s.reward is not None and torch.isfinite(torch.tensor(s.reward))
        assert any(g > 0 for t in s.trace for g in t.grad_norms)  # the RM gradient reached the logits


def test_dream_meets_the_skywork_tokenizer_through_the_real_bridge(models, rewards):
    report = DiffusionSampler(models["dream"], rewards["dream"]).bridge.report
    assert report.mapped == report.same_id == 151665  # all BPE tokens and shared specials, at their own ids
    assert report.excluded_ids == [151665, 151666, *range(151667, 152064)] and report.unmapped_ids == []


def test_llada_commits_only_inside_the_current_block(models, rewards):
    model = models["llada"]
    sampler, guidance = settings("llada")
    states = []
    generate(model, PROMPTS, rewards["llada"], sampler=sampler, guidance=guidance, progress=False,
             callback=record(states))
    per_block = sampler.steps // sampler.num_blocks
    assert [s for s, _ in states] == list(range(sampler.steps))
    for step, st in states:
        blk = step // per_block
        lo, hi = blk * sampler.block_length, (blk + 1) * sampler.block_length
        committed = st["committed"].nonzero()[:, 1]
        assert ((committed >= lo) & (committed < hi)).all()
        resp = st["x"][:, st["prompt_length"]:]
        assert (resp[:, :lo] != model.mask_token_id).all()  # earlier blocks are complete
        assert (resp[:, hi:] == model.mask_token_id).all()  # later blocks untouched
    assert (states[-1][1]["x"][:, states[-1][1]["prompt_length"]:] != model.mask_token_id).all()


@pytest.mark.parametrize("name", ["dream", "llada"])
def test_cli_generate(name, dream_ckpt, llada_ckpt, qwen3_rm_ckpt, word_rm_ckpt, capsys):
    model, reward = {"dream": (dream_ckpt, qwen3_rm_ckpt), "llada": (llada_ckpt, word_rm_ckpt)}[name]
    extra = (["--block-length", "3", "--schedule", "uniform", "--remasking", "low_confidence", "--sampling", "gumbel",
              "--temperature", "0", "--relaxation-temperature", "1.0"] if name == "llada" else [])
    rc = main(["generate", "--model", str(model), "--reward", str(reward), "--prompt", "the cat sat",
               "--max-new-tokens", "6", "--steps", "6", "--num-samples", "2", "--inner-steps", "1", "--json",
               "--top-p", "1.0", "--quiet", *extra])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    (group,) = out["samples"]
    assert len(group) == 2 and all(isinstance(s["text"], str) and s["reward"] is not None for s in group)
    assert out["sampler"]["max_new_tokens"] == 6 and out["guidance"]["rule"] == "entrgi"


# ---- reward side -------------------------------------------------------------------------------------
def test_callable_reward_behaves_like_the_equivalent_reward_model(mlm, pref_reward, tok):
    def count_preferred(embeds, attention_mask, position_ids):
        return (embeds[..., 0] * attention_mask.to(embeds.dtype)).sum(-1)
    reward = CallableReward(count_preferred, pref_reward.table, tok, template="response")
    sampler = SamplerConfig(max_new_tokens=6, steps=6, num_samples=2)
    guidance = GuidanceConfig(rule="entrgi", inner_steps=2, lr=2.0)
    a = generate(mlm, PROMPTS, reward, sampler=sampler, guidance=guidance, progress=False)
    b = generate(mlm, PROMPTS, pref_reward, sampler=sampler, guidance=guidance, progress=False)
    assert [s.token_ids for g in a.samples for s in g] == [s.token_ids for g in b.samples for s in g]
    assert [s.reward for g in a.samples for s in g] == [s.reward for g in b.samples for s in g]
    preferred = set(tok.convert_tokens_to_ids(list(PREFERRED)))
    assert sum(t in preferred for g in a.samples for s in g for t in s.token_ids) > 4  # guidance worked


def test_callable_reward_validates_its_inputs(tok):
    table = torch.randn(len(tok), 4)
    with pytest.raises(ValueError, match="rows"):
        CallableReward(lambda e, m, p: e.sum((1, 2)), table[:-1], tok)
    bad = CallableReward(lambda e, m, p: e.sum(-1), table, tok)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        bad.forward_embeds(torch.randn(2, 3, 4), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long))
    module = torch.nn.Linear(4, 1)
    good = CallableReward(lambda e, m, p: module(e).squeeze(-1).sum(-1), table, tok)
    embeds = torch.randn(2, 3, 4, requires_grad=True)
    good.forward_embeds(embeds, torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long)).sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_reward_model_device_map(word_rm_ckpt):
    plain = HFRewardModel.from_pretrained(word_rm_ckpt)
    mapped = HFRewardModel.from_pretrained(word_rm_ckpt, device_map={"": "cpu"}, dtype=torch.float32)
    texts = ["the cat sat", "a good day"]
    torch.testing.assert_close(mapped.score_texts(PROMPTS, texts), plain.score_texts(PROMPTS, texts))


def test_masked_lm_takes_the_same_loading_options(mlm_ckpt):
    model = load_diffusion_lm(mlm_ckpt, attn_implementation="eager", revision=None)
    assert model.module.config._attn_implementation == "eager"


# ---- refusing a broken checkpoint --------------------------------------------------------------------
def inv_freq_of(theta, head_dim, factor=1.0):
    """RoPE's inverse frequencies θ^(−2i/d) (float64 reference)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)) / factor


def variant(src, dst, config=None, drop=()):
    """``src`` with its files symlinked into ``dst`` (none of ``drop``) and, when given, another config.json."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in drop and not (config is not None and f.name == "config.json"):
            os.symlink(f, dst / f.name)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def config_only(folder, config):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("layout", ["legacy", "parameters"])
def test_rope_base_is_read_from_both_config_layouts(layout, tmp_path, dream_ckpt, models):
    dream_folder = write_dream_checkpoint(tmp_path / "dream", shards=1, rope_layout=layout)
    llada_folder = write_llada_checkpoint(tmp_path / "llada", shards=1, rope_theta=1e6, rope_layout=layout)
    for folder in (dream_folder, llada_folder):
        raw = json.loads((folder / "config.json").read_text())
        assert ("rope_theta" in raw) == (layout == "legacy") and ("rope_parameters" in raw) == (layout != "legacy")
    dream, llada = load_diffusion_lm(dream_folder), load_diffusion_lm(llada_folder)
    for model in (dream, llada):
        cfg = model.module.config
        hd = cfg.hidden_size // cfg.num_attention_heads
        inv = model.module.model.rotary_emb.inv_freq.double()
        torch.testing.assert_close(inv, inv_freq_of(1e6, hd), rtol=1e-6, atol=0)
        assert not torch.allclose(inv, inv_freq_of(1e4, hd))  # the old fallback differs
    x, attn, pos, P = canvas(dream, PROMPTS)  # same seed as the legacy fixture: the same logits
    with torch.no_grad():
        torch.testing.assert_close(dream.response_logits(x, attn, pos, P),
                                   models["dream"].response_logits(x, attn, pos, P), atol=1e-5, rtol=1e-5)


def test_dream_linear_rope_scaling_divides_the_frequencies(tmp_path, dream_ckpt):
    raw = json.loads((dream_ckpt / "config.json").read_text())
    raw["rope_scaling"] = {"type": "linear", "factor": 4.0}
    model = load_diffusion_lm(variant(dream_ckpt, tmp_path / "linear", raw))
    hd = model.module.config.hidden_size // model.module.config.num_attention_heads
    torch.testing.assert_close(model.module.model.rotary_emb.inv_freq.double(), inv_freq_of(1e6, hd, 4.0),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("family,kind,rope", [
    ("dream", "yarn", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}),
    ("dream", "dynamic", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}),
    ("llada", "linear", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}}),
    ("llada", "llama3", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
])
def test_an_unimplemented_rope_type_is_refused(family, kind, rope, tmp_path):
    base = dream_config() if family == "dream" else llada_config(40)
    raw = {k: v for k, v in base.items() if k not in ("rope_theta", "rope_scaling")} | rope
    folder = config_only(tmp_path / family, raw)
    supported = "default, linear" if family == "dream" else "default"
    with pytest.raises(ValueError) as e:
        load_diffusion_lm(folder)
    msg = str(e.value)
    assert str(folder / "config.json") in msg and f"rope type {kind!r}" in msg and f"(supported: {supported})" in msg


@pytest.mark.parametrize("rope,match", [
    ({"rope_theta": 1e6, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "conflict"),
    ({"rope_theta": math.inf}, "finite positive"),
    ({"rope_theta": math.nan}, "finite positive"),
    ({"rope_theta": -1.0}, "finite positive"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
])
def test_bad_rope_values_are_refused(rope, match, tmp_path):
    raw = {k: v for k, v in dream_config().items() if k not in ("rope_theta", "rope_scaling")} | rope
    with pytest.raises(ValueError, match=match):
        load_diffusion_lm(config_only(tmp_path / "dream", raw))


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


@pytest.mark.parametrize("keep", [(), ("tokenizer_config.json",)])
def test_a_dream_folder_without_its_tokenizer_is_refused(keep, tmp_path, dream_ckpt):
    folder = variant(dream_ckpt, tmp_path / "no_tok", drop=[f for f in TOKENIZER_FILES if f not in keep])
    msg = refused(folder)
    assert f"`{folder}` has no usable tokenizer" in msg
    assert f"tokenizer files found: {list(keep) or 'none'}" in msg and "missing: a vocabulary file" in msg


def test_a_tokenizer_far_smaller_than_the_embedding_is_refused(tmp_path, dream_ckpt):
    folder = variant(dream_ckpt, tmp_path / "word_tok", drop=TOKENIZER_FILES)
    word = word_tokenizer()
    word.save_pretrained(folder)  # a real tokenizer, but not this model's
    with pytest.raises(ValueError, match=rf"has no usable tokenizer: it has {len(word)} tokens for the model's "
                                         r"152,064 embedding rows"):
        load_diffusion_lm(folder)


def test_a_tokenizer_that_encodes_english_to_nothing_is_refused(tmp_path):
    from entrgi.hub import PROBE_TEXT, check_tokenizer
    empty = tmp_path / "empty_bpe"
    empty.mkdir()
    bpe = transformers.Qwen2Tokenizer.from_pretrained(empty)  # what a Dream folder without vocab files gave
    assert bpe(PROBE_TEXT)["input_ids"] == []
    with pytest.raises(ValueError, match=r"encodes 'Hello, how are you\?' to no tokens"):
        check_tokenizer(bpe, empty)
    check_tokenizer(word_tokenizer(), empty, embedding_rows=60)  # a real tokenizer passes


def test_cli_refuses_a_dream_folder_without_tokenizer(tmp_path, dream_ckpt, capsys):
    folder = variant(dream_ckpt, tmp_path / "no_tok", drop=TOKENIZER_FILES)
    rc = main(["generate", "--model", str(folder), "--method", "none", "--prompt", "hi", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert err.startswith("entrgi generate: error: ") and str(folder) in err and "tokenizer" in err


MISSING_PATHS = ["./no/such/entrgi-ckpt", "../no-such-entrgi-ckpt", "~/no-such-entrgi-ckpt", "a/b/c",
                 "/no/such/entrgi-ckpt", "my model"]


@pytest.mark.parametrize("path", MISSING_PATHS)
@pytest.mark.parametrize("family", [None, "hf_mlm", "dream"])
def test_a_missing_local_folder_is_named(path, family):
    msg = refused(path, family=family)
    assert f"the local folder `{path}` does not exist" in msg and "Repo id" not in msg


def refused(path, **kwargs) -> str:
    """The message of the ValueError that loading ``path`` raises."""
    with pytest.raises(ValueError) as e:
        load_diffusion_lm(path, **kwargs)
    return str(e.value)


def test_empty_configless_and_file_paths_are_named(tmp_path, llada_ckpt):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"`{empty}` is not a checkpoint folder: it has no config.json (the folder is empty)" in refused(empty)
    no_config = variant(llada_ckpt, tmp_path / "no_config", drop=["config.json"])
    msg = refused(no_config)
    assert f"`{no_config}` is not a checkpoint folder: it has no config.json (found [" in msg
    assert "'model.safetensors.index.json'" in msg
    assert "is a file, not a checkpoint folder" in refused(llada_ckpt / "config.json")
    bad_json = config_only(tmp_path / "bad_json", {})
    (bad_json / "config.json").write_text('{"model_type": "llada", ')
    assert f"`{bad_json / 'config.json'}` is not valid JSON" in refused(bad_json)


def test_missing_truncated_and_absent_weights_are_named(tmp_path, llada_ckpt):
    weights = [f.name for f in llada_ckpt.iterdir() if "safetensors" in f.name]
    no_weights = variant(llada_ckpt, tmp_path / "no_weights", drop=weights)
    assert f"`{no_weights}` has no weights: no model.safetensors(.index.json)" in refused(no_weights)
    shards = sorted(f.name for f in llada_ckpt.glob("*.safetensors"))
    lost_shard = variant(llada_ckpt, tmp_path / "lost_shard", drop=shards[-1:])
    assert f"weight file `{lost_shard / shards[-1]}` is missing" in refused(lost_shard)
    sd = {}
    for f in shards:
        sd.update(load_file(llada_ckpt / f))
    folder = variant(llada_ckpt, tmp_path / "single", drop=weights)
    save_sharded(folder, sd, shards=1)
    assert isinstance(load_diffusion_lm(folder), LLaDA)  # complete, it loads
    data = (folder / "model.safetensors").read_bytes()
    for n in (len(data) - 1, len(data) // 2, 18, 4):  # the data cut short, then the header
        (folder / "model.safetensors").write_bytes(data[:n])
        assert f"weight file `{folder / 'model.safetensors'}` is truncated or corrupt ({n:,} bytes" in refused(folder)


def test_a_hub_id_that_cannot_be_fetched_is_a_value_error(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*a, **k):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError, match=r"cannot fetch config.json of the hub id `org/name` "
                                         r"\(LocalEntryNotFoundError: cannot find"):
        load_diffusion_lm("org/name")
