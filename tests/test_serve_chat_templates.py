"""`entrgi serve` on a tiny Dream checkpoint with the real Qwen tokenizer and chat template, and a tiny Qwen3 reward
model (Skywork-Reward-V2's class and tokenizer): chat with a system prompt and history is rendered by each model's
own template, token for token, and the reward reads the whole conversation; completion text of a byte-level BPE
tokenizer keeps its leading space (issue #24)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

from support.tiny_checkpoints import write_dream_checkpoint, write_reward_checkpoint  # noqa: E402

from entrgi import GuidanceConfig, SamplerConfig, generate  # noqa: E402
from entrgi.serve.app import BackgroundServer, create_app  # noqa: E402
from entrgi.serve.engine import ServerLimits, load_engine  # noqa: E402

HISTORY = [{"role": "system", "content": "You are terse."},
           {"role": "user", "content": "Hi there"},
           {"role": "assistant", "content": "Hello!"},
           {"role": "user", "content": "Tell me about the weather"}]
#: Qwen2.5's chat format (Dream's) of HISTORY, with the generation prompt, as the tokenizer must render it
DREAM_PROMPT = ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nTell me about the weather<|im_end|>\n"
                "<|im_start|>assistant\n")
NONE = {"guidance": {"method": "none"}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen3_dir):
    root = tmp_path_factory.mktemp("serve_dream")
    dream = write_dream_checkpoint(root / "dream", shards=1)
    rm = write_reward_checkpoint(root / "rm", transformers.AutoTokenizer.from_pretrained(qwen3_dir), seed=1)
    return dream, rm


@pytest.fixture(scope="module")
def engine(folders):
    dream, rm = folders
    return load_engine(str(dream), str(rm), limits=ServerLimits(max_tokens=16))


@pytest.fixture(scope="module")
def client(engine):
    with BackgroundServer(create_app(engine)) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_history_is_rendered_by_each_models_own_template(client, engine, folders):
    model_id = engine.model_id
    r = client.chat.completions.create(model=model_id, messages=HISTORY, max_tokens=4, seed=3, extra_body=NONE)
    assert r.model_extra["entrgi"]["chat_template"] is True
    tok = engine.model.tokenizer
    expected = tok(DREAM_PROMPT, add_special_tokens=False)["input_ids"]
    assert r.model_extra["entrgi"]["prompt_token_ids"] == [expected]  # token for token
    assert r.usage.prompt_tokens == len(expected)
    # the reward: the classifier on the whole conversation as the RM's own (Qwen3) template renders it
    text = r.choices[0].message.content.strip()
    rm_tok = transformers.AutoTokenizer.from_pretrained(folders[1])
    rm = transformers.AutoModelForSequenceClassification.from_pretrained(folders[1]).eval()

    @torch.no_grad()
    def score(messages) -> float:
        rendered = rm_tok.apply_chat_template([*messages, {"role": "assistant", "content": text}], tokenize=False)
        return float(rm(**rm_tok(rendered, return_tensors="pt")).logits[0, 0])

    whole = score(HISTORY)
    assert r.choices[0].model_extra["reward"] == pytest.approx(whole, abs=1e-3)
    assert whole != pytest.approx(score(HISTORY[-1:]), abs=1e-3)  # not the last user turn alone
    guided = client.chat.completions.create(model=model_id, messages=HISTORY, max_tokens=4, seed=3,
                                            extra_body={"guidance": {"method": "entrgi", "inner_steps": 1}})
    assert guided.usage.model_extra["rm_backwards"] == 4


def test_byte_level_bpe_completion_text_keeps_its_leading_space(client, engine):
    model = engine.model
    model.use_chat_template = False  # a plain continuation: "prompt + text" is the decoded sequence
    try:
        r = client.completions.create(model=engine.model_id, prompt="The weather was", max_tokens=6, n=2, seed=11,
                                      extra_body=NONE)
        ref = generate(model, ["The weather was"], engine.reward, progress=False, trace=False,
                       sampler=SamplerConfig(**{**engine.sampler.to_dict(), "max_new_tokens": 6, "steps": 6,
                                                "num_samples": 2, "seed": 11}),
                       guidance=GuidanceConfig(rule="none"))
    finally:
        model.use_chat_template = True
    prompt_ids = r.model_extra["entrgi"]["prompt_token_ids"][0]
    for c, s in zip(r.choices, ref.samples[0]):
        full = model.tokenizer.decode(prompt_ids + model.response_ids(s.token_ids), skip_special_tokens=True)
        assert "The weather was" + c.text == full
        first = model.tokenizer.decode(model.response_ids(s.token_ids)[:1])
        assert c.text[:1].isspace() == first[:1].isspace()  # a leading space is kept, never added
