"""The reward wrapper: template prefix/suffix, embeds path == discrete path, padding and pooling; loading a
reward checkpoint refuses what is not one (missing/broken folders, DLLMs, causal/masked LMs) at once."""

import builtins
import json
import os
import subprocess
import sys

import pytest
import torch
from support.tiny_checkpoints import (
    dream_config,
    write_dream_tokenizer,
    write_llada_checkpoint,
    write_reward_checkpoint,
)
from support.tiny_models import CHAT_TEMPLATE, TokenPreferenceReward, tiny_qwen3_reward, word_tokenizer

from entrgi.reward.base import RewardBatch
from entrgi.reward.hf import HFRewardModel

PROMPTS = ["the cat sat on the mat", "a dog", "it was a very happy day and then it was night"]
RESPONSES = ["the sun was red", "good dog ran quickly under the big tree", "sad"]


@pytest.fixture(scope="module")
def rm():
    return tiny_qwen3_reward(word_tokenizer(chat_template=CHAT_TEMPLATE), seed=1)


def test_context_splits_the_chat_template_at_the_response(rm):
    ctx = rm.context("the cat")
    text = rm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "good dog"}], tokenize=False)
    ids = rm.tokenizer(text)["input_ids"]  # the standard recipe: the whole rendered text, specials added
    resp = rm.tokenizer("good dog", add_special_tokens=False)["input_ids"]
    assert ids == [*ctx.prefix_ids, *resp, *ctx.suffix_ids]
    assert rm.context("the cat") is ctx  # cached per prompt


def hard_slots(rm, responses, L):
    """RM embeddings of the tokenised responses in L slots; slots past the response are masked out."""
    table = rm.embedding_table()
    ids = torch.zeros(len(responses), L, dtype=torch.long)
    attn = torch.zeros(len(responses), L, dtype=torch.bool)
    for b, r in enumerate(responses):
        t = rm.tokenizer(r, add_special_tokens=False)["input_ids"]
        ids[b, :len(t)] = torch.tensor(t)
        attn[b, :len(t)] = True
    return table[ids], attn


def test_embeds_path_equals_discrete_text_path_on_a_padded_batch(rm):
    L = 10
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn = hard_slots(rm, RESPONSES, L)
    with torch.no_grad():
        from_embeds = batch.score(embeds, attn)
    from_text = rm.score_texts(PROMPTS, RESPONSES)
    torch.testing.assert_close(from_embeds, from_text, atol=1e-5, rtol=1e-5)
    # and each row alone (no padding) gives the same value
    single = torch.cat([rm.score_texts([p], [r]) for p, r in zip(PROMPTS, RESPONSES)])
    torch.testing.assert_close(from_text, single, atol=1e-5, rtol=1e-5)
    assert from_text.std() > 0  # a reward with spread: the comparison is not vacuous


def test_masked_out_slots_neither_count_nor_shift_positions(rm):
    """Garbage in masked-out slots (after EOS) must not change the score."""
    L = 12
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn = hard_slots(rm, RESPONSES, L)
    noisy = torch.where(attn.unsqueeze(-1), embeds, torch.randn_like(embeds) * 5)
    with torch.no_grad():
        torch.testing.assert_close(batch.score(embeds, attn), batch.score(noisy, attn))


def test_inputs_layout_left_pads_and_ends_every_row_with_its_suffix(rm):
    L = 4
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn, pos = batch.inputs(torch.zeros(3, L, rm.embedding_table().shape[1]),
                                     torch.ones(3, L, dtype=torch.bool))
    suffix = rm.context(PROMPTS[0]).suffix_ids
    table = rm.embedding_table()
    for b in range(3):
        torch.testing.assert_close(embeds[b, -len(suffix):], table[list(suffix)])
        n = int(attn[b].sum())
        assert attn[b, -n:].all() and not attn[b, :-n].any()  # left padding
        assert pos[b, -1] == n - 1


def test_gradient_reaches_the_response_embeddings_only(rm):
    L = 9
    batch = RewardBatch(rm, [rm.context(p) for p in PROMPTS], L)
    embeds, attn = hard_slots(rm, RESPONSES, L)
    embeds = embeds.clone().requires_grad_(True)
    batch.score(embeds, attn).sum().backward()
    assert embeds.grad[attn].abs().sum() > 0
    assert embeds.grad[~attn].abs().sum() == 0
    assert not any(p.requires_grad for p in rm.parameters())


def test_plain_and_response_templates():
    tok = word_tokenizer()
    pref = TokenPreferenceReward(tok, ["happy", "sun"], template="plain")
    assert pref.template == "plain"
    ids = pref.text_ids("the cat", "happy sun")
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "happy", "sun", "[SEP]"]
    resp = TokenPreferenceReward(tok, ["happy"], template="response")
    assert tok.convert_ids_to_tokens(resp.text_ids("the cat", "happy")) == ["[CLS]", "happy", "[SEP]"]
    assert pref.score_texts(["the cat", "a"], ["happy sun sun", "sad"]).tolist() == [3.0, 0.0]


def test_score_texts_validates_lengths(rm):
    with pytest.raises(ValueError, match="prompts"):
        rm.score_texts(["a"], ["b", "c"])


def test_unknown_template_is_named():
    with pytest.raises(ValueError, match="template"):
        TokenPreferenceReward(word_tokenizer(), ["sun"], template="fancy")


# ---- loading: never garbage, never a prompt ----------------------------------------------------------
@pytest.fixture(scope="module")
def rm_ckpt(tmp_path_factory):
    return write_reward_checkpoint(tmp_path_factory.mktemp("rm"), word_tokenizer(chat_template=CHAT_TEMPLATE), seed=2)


@pytest.fixture
def no_stdin(monkeypatch):
    """Any interactive question (transformers' remote-code prompt) fails the test instead of waiting."""
    def ask(*a, **k):
        raise AssertionError("the loader asked a question on stdin")
    monkeypatch.setattr(builtins, "input", ask)


def copy_without(src, dst, drop=()):
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in drop:
            os.symlink(f, dst / f.name)
    return dst


def rm_refused(path) -> str:
    with pytest.raises(ValueError) as e:
        HFRewardModel.from_pretrained(path)
    return str(e.value)


def test_the_reward_checkpoint_loads_and_scores(rm_ckpt):
    rm = HFRewardModel.from_pretrained(rm_ckpt)
    assert torch.isfinite(rm.score_texts(PROMPTS, RESPONSES)).all()


@pytest.mark.parametrize("path", ["./no/such/rm", "~/no-such-entrgi-rm", "/no/such/rm", "a/b/c", "my rm"])
def test_a_missing_reward_folder_is_named(path):
    msg = rm_refused(path)
    assert f"the local folder `{path}` does not exist" in msg and "Repo id" not in msg


def test_an_empty_configless_or_truncated_reward_folder_is_named(tmp_path, rm_ckpt):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"`{empty}` is not a checkpoint folder: it has no config.json (the folder is empty)" in rm_refused(empty)
    no_config = copy_without(rm_ckpt, tmp_path / "no_config", drop=["config.json"])
    assert "has no config.json (found [" in rm_refused(no_config) and "'model.safetensors'" in rm_refused(no_config)
    no_weights = copy_without(rm_ckpt, tmp_path / "no_weights", drop=["model.safetensors"])
    assert f"`{no_weights}` has no weights" in rm_refused(no_weights)
    cut = copy_without(rm_ckpt, tmp_path / "cut", drop=["model.safetensors"])
    data = (rm_ckpt / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) // 2])
    assert (f"weight file `{cut / 'model.safetensors'}` is truncated or corrupt ({len(data) // 2:,} bytes"
            in rm_refused(cut))
    no_tok = copy_without(rm_ckpt, tmp_path / "no_tok", drop=["tokenizer.json", "tokenizer_config.json"])
    assert f"`{no_tok}` has no usable tokenizer" in rm_refused(no_tok)


def test_a_dllm_folder_is_not_a_reward_model(tmp_path, no_stdin):
    llada = write_llada_checkpoint(tmp_path / "llada", shards=1)
    assert "is not a sequence classifier (architectures: ['LLaDAModelLM'], model_type: 'llada')" in rm_refused(llada)
    dream = tmp_path / "dream"  # Dream's config (auto_map: remote code) and its hub tokenizer layout
    write_dream_tokenizer(dream)
    (dream / "config.json").write_text(json.dumps(dream_config(hidden_size=8, num_attention_heads=2)))
    assert "is not a sequence classifier (architectures: ['DreamModel']" in rm_refused(dream)
    # a classifier whose class is remote code: refused too, never a trust_remote_code question
    remote = {**dream_config(), "architectures": ["DreamForSequenceClassification"]}
    (dream / "config.json").write_text(json.dumps(remote))
    assert "model_type 'Dream', which transformers does not implement" in rm_refused(dream)


@pytest.mark.parametrize("arch", ["causal", "masked"])
def test_a_causal_or_masked_lm_is_not_a_reward_model(arch, tmp_path, no_stdin):
    from transformers import BertConfig, BertForMaskedLM, Qwen3Config, Qwen3ForCausalLM
    tok = word_tokenizer()
    if arch == "causal":
        model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                             intermediate_size=32))
    else:
        model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    name = type(model).__name__
    assert f"is not a sequence classifier (architectures: ['{name}']" in rm_refused(tmp_path)


def test_cli_refuses_a_dllm_as_reward_without_reading_stdin(tmp_path):
    """In a child process with stdin closed: one error line, exit 2, at once."""
    llada = write_llada_checkpoint(tmp_path / "llada", shards=1)
    cmd = [sys.executable, "-m", "entrgi.cli", "generate", "--model", str(llada), "--reward", str(llada),
           "--prompt", "a dog", "--max-new-tokens", "2", "--steps", "2", "--num-samples", "1", "--quiet"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("entrgi generate: error: ") and "is not a sequence classifier" in err[0]
