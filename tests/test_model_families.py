"""Family members beyond the tested Dream-v0-Instruct / LLaDA-8B-Instruct (Dream-v0-Base, DiffuCoder,
Dream-Coder, LLaDA-8B-Base, LLaDA-1.5, LLaDA-MoE): tiny random checkpoints built from each member's
config.json values (tests/fixtures/family_configs, with their sources) at the real vocabulary sizes,
special ids and RoPE settings, loaded through the public loader and run for a few tokens."""

import json
import math

import pytest
import torch
from support.tiny_checkpoints import (
    family_fixture,
    family_members,
    member_config,
    write_member_checkpoint,
)

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.models import Dream, LLaDA, detect_family, load_diffusion_lm
from entrgi.models.dream import qwen2_config
from entrgi.models.llada import llama_config

TRAP = "raise RuntimeError('remote code from the checkpoint was executed')\n"
MOE = "llada_moe_7b_a1b_instruct"
DENSE = [m for m in family_members() if m != MOE]

#: What each member must load as, written out by hand (not derived from the adapters' code).
#: eos: config.json's eos_token_id, the turn end (<|im_end|> 151645 / <|eot_id|> 126348) and, for the
#: DiffuCoder members tuned with it, <|dlm_pad|> (151667 in the test tokenizer; its real id was not found).
EXPECTED = {
    "dream_v0_base_7b": dict(cls=Dream, mask=151666, eos={151643, 151645}, pad=151643, width=152064,
                             max_length=131072, theta=1e6, chat=True),
    "diffucoder_7b_base": dict(cls=Dream, mask=151666, eos={151643, 151645}, pad=151643, width=152064,
                               max_length=131072, theta=1e6, chat=True),
    "diffucoder_7b_instruct": dict(cls=Dream, mask=151666, eos={151643, 151645, 151667}, pad=151643, width=152064,
                                   max_length=131072, theta=1e6, chat=True),
    "diffucoder_7b_cpgrpo": dict(cls=Dream, mask=151666, eos={151643, 151645, 151667}, pad=151643, width=152064,
                                 max_length=131072, theta=1e6, chat=True),
    "dream_coder_v0_instruct_7b": dict(cls=Dream, mask=151666, eos={151643, 151645}, pad=151643, width=152064,
                                       max_length=32768, theta=1e6, chat=True),
    "llada_8b_base": dict(cls=LLaDA, mask=126336, eos={126081, 126348}, pad=126081, width=126464, max_length=4096,
                          theta=5e5, chat=False),
    "llada_1_5": dict(cls=LLaDA, mask=126336, eos={126081, 126348}, pad=126081, width=126464, max_length=4096,
                      theta=5e5, chat=True),
}
MASK_TOKEN = {Dream: "<|mask|>", LLaDA: "<|mdm_mask|>"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for name in family_members():
        folder = write_member_checkpoint(tmp_path_factory.mktemp(name), name, shards=1)
        for f in ("configuration_dream.py", "modeling_dream.py", "tokenization_dream.py", "configuration_llada.py",
                  "modeling_llada.py", "configuration_lladamoe.py", "modeling_lladamoe.py"):
            (folder / f).write_text(TRAP)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def models(folders):
    return {name: load_diffusion_lm(folders[name]) for name in DENSE}


def test_every_member_has_an_expectation_and_sourced_fixture():
    assert sorted(EXPECTED) == sorted(DENSE) and MOE in family_members()
    for name in family_members():
        fx = family_fixture(name)
        assert fx["_member"].count("/") == 1 and fx["_source"] and all(isinstance(v, str) and v
                                                                      for v in fx["_source"].values())
        real = member_config(name, tiny=False)
        assert real["vocab_size"] > 100_000 and "rope_theta" in real  # the real vocabulary and RoPE base


@pytest.mark.parametrize("name", DENSE)
def test_member_loads_with_its_family_ids_and_rope(name, folders, models):
    exp, model, real = EXPECTED[name], models[name], member_config(name, tiny=False)
    assert detect_family(folders[name]) == exp["cls"].family and type(model) is exp["cls"]
    assert model.mask_token_id == exp["mask"] == real["mask_token_id"]
    assert model.tokenizer.convert_ids_to_tokens(exp["mask"]) == MASK_TOKEN[exp["cls"]]
    assert set(model.eos_token_ids) == exp["eos"] and model.pad_token_id == exp["pad"]
    assert model.logit_width == exp["width"] == real["vocab_size"] and model.max_length == exp["max_length"]
    assert model.shift_logits is (exp["cls"] is Dream) and model.use_chat_template is exp["chat"]
    invalid = set(model.invalid_token_ids)
    assert exp["mask"] in invalid and set(range(len(model.tokenizer), exp["width"])) <= invalid
    assert not invalid & exp["eos"]
    # RoPE: θ from config.json, no scaling; the rotary frequencies are θ^(-2i/d) for head size d
    cfg = model.module.config
    assert cfg.rope_parameters["rope_type"] == "default" and cfg.rope_parameters["rope_theta"] == exp["theta"]
    d = cfg.hidden_size // cfg.num_attention_heads
    ref = torch.tensor([exp["theta"] ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    torch.testing.assert_close(model.module.model.rotary_emb.inv_freq.double(), ref, rtol=1e-6, atol=0)


def test_dream_coder_bos_is_never_a_response_token(models):
    model = models["dream_coder_v0_instruct_7b"]
    assert member_config("dream_coder_v0_instruct_7b")["bos_token_id"] == 151665
    assert model.tokenizer.convert_ids_to_tokens(151665) == "<|beginoftext|>" and 151665 in model.invalid_token_ids


def test_diffucoder_reads_its_chat_template_file(folders, models):
    assert (folders["diffucoder_7b_instruct"] / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((folders["diffucoder_7b_instruct"] / "tokenizer_config.json").read_text())
    model = models["diffucoder_7b_instruct"]
    text = model.tokenizer.decode(model.encode_prompt("hi"))
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def sampler_for(name):
    if EXPECTED[name]["cls"] is LLaDA:
        return LLaDA.recommended_sampler(max_new_tokens=4, steps=2, block_length=2, num_samples=1, seed=3)
    # top_p = 1: a full sort of 152k logits per slot is slow on CPU and not what is tested here
    return SamplerConfig(max_new_tokens=4, steps=2, num_samples=1, temperature=0.7, top_p=1.0, seed=3)


@pytest.mark.parametrize("name", DENSE)
def test_member_generates_a_few_tokens(name, models):
    model, sampler = models[name], sampler_for(name)
    runs = [generate(model, ["hello"], None, sampler=sampler, guidance=GuidanceConfig(rule="none"),
                     progress=False, trace=False) for _ in range(2)]
    samples = [s for g in runs[0].samples for s in g]
    assert len(samples) == 1
    for s in samples:
        assert len(s.token_ids) == 4 and not set(s.token_ids) & set(model.invalid_token_ids)
        assert all(0 <= t < model.logit_width for t in s.token_ids)
    assert [s.token_ids for g in runs[1].samples for s in g] == [s.token_ids for s in samples]  # seeded


def test_a_tied_output_layer_is_read_from_the_embedding(tmp_path):
    dream = load_diffusion_lm(write_member_checkpoint(tmp_path / "d", "dream_v0_base_7b", shards=1,
                                                      tie_word_embeddings=True))
    llada = load_diffusion_lm(write_member_checkpoint(tmp_path / "l", "llada_1_5", shards=1, weight_tying=True))
    for m in (dream, llada):
        assert m.module.lm_head.weight.data_ptr() == m.module.model.embed_tokens.weight.data_ptr()
        assert m.module.lm_head.weight.shape[0] == m.logit_width


# ---- LLaDA-MoE: refused at load time, with one error naming it -----------------------------------------
MOE_ERROR = r"LLaDA-MoE is not supported \(model_type='{}'.*dense LLaDA checkpoint"


@pytest.mark.parametrize("model_type", ["llada", "lladamoe"])  # the hub's, and the dllm trainer's rewrite
def test_llada_moe_is_refused_at_load_time(model_type, folders, tmp_path):
    folder = folders[MOE]
    if model_type != "llada":
        folder = tmp_path / "moe"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**member_config(MOE), "model_type": model_type}))
    assert detect_family(folder) == "llada"
    with pytest.raises(ValueError, match=MOE_ERROR.format(model_type)) as e:
        load_diffusion_lm(folder)
    assert str(folder / "config.json") in str(e.value) and "num_experts=64" in str(e.value)


@pytest.mark.parametrize("marker", [{"architectures": ["LLaDAMoEModel"]}, {"num_experts": 8},
                                    {"model_type": "llada_moe"}])
def test_any_moe_marker_on_a_llada_config_is_refused(marker):
    dense = member_config("llada_1_5")
    llama_config(dense)  # the dense config itself is fine
    with pytest.raises(ValueError, match="LLaDA-MoE is not supported"):
        llama_config({**dense, **marker})


def test_dream_multimodal_rope_is_refused():
    cfg = member_config("diffucoder_7b_instruct")
    assert cfg["use_mrope"] is False and qwen2_config(cfg).rope_parameters["rope_theta"] == 1e6
    with pytest.raises(ValueError, match="use_mrope"):
        qwen2_config({**cfg, "use_mrope": True})


def test_fixture_rope_values_are_finite_positive():
    for name in family_members():
        theta = member_config(name)["rope_theta"]
        assert isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 0
