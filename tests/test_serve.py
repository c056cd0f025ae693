"""`entrgi serve`: the OpenAI client against a real server on 127.0.0.1 (the embedded default pair), results equal to
the library's, alone == batched, streaming, 4xx for every bad field, queue / timeout / disconnect, API key, CLI;
chat with system prompts and history, OpenAI text conventions, presets, lanes, bounded work (issues #22, #24)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from entrgi import GuidanceConfig, SamplerConfig, generate  # noqa: E402
from entrgi.cli.commands import main  # noqa: E402
from entrgi.default_pair import GUIDANCE_DEFAULTS as DEMO_GUIDANCE  # noqa: E402
from entrgi.default_pair import SAMPLER_DEFAULTS as DEMO_SAMPLER
from entrgi.presets import get_preset  # noqa: E402
from entrgi.serve.app import BackgroundServer, create_app  # noqa: E402
from entrgi.serve.cost import estimate_stats  # noqa: E402
from entrgi.serve.engine import DEFAULT_PAIR_ID, ServerLimits, default_pair_engine  # noqa: E402
from entrgi.serve.scheduler import state_field  # noqa: E402
from entrgi.serve.streaming import ChoiceStream, CompletionText  # noqa: E402
from entrgi.settings import resolve_settings  # noqa: E402

MODEL = DEFAULT_PAIR_ID
NONE = {"guidance": {"method": "none"}}  # plain sampling: the cheap requests


@pytest.fixture(scope="module")
def engine():
    return default_pair_engine("cpu", ServerLimits(max_tokens=64, max_queue=8, timeout_s=120))


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine)
    with BackgroundServer(app) as srv:
        srv.scheduler = app.state.scheduler
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(url: str, body, **kw) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + "/v1/completions", content=data, headers={"Content-Type": "application/json"},
                      timeout=kw.pop("timeout", 120), **kw)


def wait_for(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def openai_text(model, prompt_ids, token_ids) -> str:
    """OpenAI's completion text: decode(prompt + completion) minus decode(prompt)."""
    head = model.tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    full = model.tokenizer.decode(list(prompt_ids) + model.response_ids(token_ids), skip_special_tokens=True)
    assert full.startswith(head)
    return full[len(head):]


def sse_events(lines) -> list[tuple[str | None, object]]:
    """(event name, parsed data) of a server-sent event stream, up to [DONE]."""
    out, event, data = [], None, []
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            text = "\n".join(data)
            out.append((event, "[DONE]" if text == "[DONE]" else json.loads(text)))
            event, data = None, []
    return out


# ---- the OpenAI client, equal to the library ---------------------------------------------------------------
def test_openai_client_completions_equal_generate(client, engine):
    r = client.completions.create(model=MODEL, prompt="she was", max_tokens=16, n=2, seed=7,
                                  extra_body={"guidance": {"method": "entrgi"}})
    ref = generate(engine.model, ["she was"], engine.reward, progress=False, trace=False,
                   sampler=SamplerConfig(**{**DEMO_SAMPLER, "num_samples": 2, "seed": 7}),
                   guidance=GuidanceConfig(**{**DEMO_GUIDANCE, "rule": "entrgi"}))
    assert [c.index for c in r.choices] == [0, 1]
    prompt_ids = engine.model.encode_prompt("she was")
    assert [c.text for c in r.choices] == [openai_text(engine.model, prompt_ids, s.token_ids) for s in ref.samples[0]]
    assert [c.text.strip() for c in r.choices] == [s.text for s in ref.samples[0]]
    assert all(c.text.strip() for c in r.choices)
    for c, s in zip(r.choices, ref.samples[0]):
        assert c.model_extra["reward"] == pytest.approx(s.reward, rel=1e-5, abs=1e-5)
        assert c.finish_reason == ("length" if len(engine.model.response_ids(s.token_ids)) == 16 else "stop")
    u = r.usage
    assert u.prompt_tokens == len(engine.model.encode_prompt("she was"))
    assert u.completion_tokens == sum(len(engine.model.response_ids(s.token_ids)) for s in ref.samples[0])
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    extra = u.model_extra
    assert (extra["dllm_forwards"], extra["rm_forwards"], extra["rm_backwards"]) == (
        ref.stats.dllm_forwards, ref.stats.rm_forwards, ref.stats.rm_backwards) == (32, 98, 96)
    info = r.model_extra["entrgi"]
    assert info["seed"] == 7 and info["guidance"]["rule"] == "entrgi" and info["sampler"]["steps"] == 16


def test_models_and_health(client, server):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.model_extra["chat_template"] is False
    assert card.model_extra["context_length"] == 128
    h = health(server.url)
    assert h["status"] == "ok" and h["model"] == MODEL and h["queued"] == 0


def test_chat_uses_the_plain_prompt_without_a_template(client):
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "it was"}], seed=3,
                                          max_tokens=8, extra_body=NONE)
    plain = client.completions.create(model=MODEL, prompt="it was", seed=3, max_tokens=8, extra_body=NONE)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text.lstrip() != ""  # a chat turn has no leading space
    assert chat.model_extra["entrgi"]["chat_template"] is False


def test_best_of_returns_the_highest_rewards(client):
    all4 = client.completions.create(model=MODEL, prompt="he said", n=4, seed=11, max_tokens=8, extra_body=NONE)
    best = client.completions.create(model=MODEL, prompt="he said", n=2, best_of=4, seed=11, max_tokens=8,
                                     extra_body=NONE)
    ranked = sorted(all4.choices, key=lambda c: -c.model_extra["reward"])[:2]
    assert [c.text for c in best.choices] == [c.text for c in ranked]
    assert [c.index for c in best.choices] == [0, 1]
    assert best.usage.model_extra["dllm_forwards"] == all4.usage.model_extra["dllm_forwards"]  # K = 4 generated


def test_prompt_list_choices_are_prompt_major(client):
    kw = dict(model=MODEL, n=2, seed=4, max_tokens=6, extra_body=NONE)
    both = client.completions.create(prompt=["she was", "he was"], **kw)
    one = [client.completions.create(prompt=p, **kw) for p in ("she was", "he was")]
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert [c.text for c in both.choices] == [c.text for r in one for c in r.choices]
    assert both.usage.prompt_tokens == one[0].usage.prompt_tokens + one[1].usage.prompt_tokens


# ---- bad input: 4xx naming the field, and the server keeps serving ------------------------------------------------
def test_negative_temperature_is_400_then_the_next_request_succeeds(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="she was", temperature=-1)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "temperature" and "`temperature` must be >= 0.0, got -1" in e.value.body["message"]
    # seeded: an unseeded 4-slot sample is sometimes empty (EOS drawn first; the text is cut at the first EOS)
    r = client.completions.create(model=MODEL, prompt="she was", max_tokens=4, seed=4, extra_body=NONE)
    assert r.choices[0].text


GOOD = {"model": MODEL, "prompt": "she was", "max_tokens": 4}
BAD = [
    ({"top_p": 0}, "top_p", "(0.0, 1.0]"),
    ({"n": 0}, "n", "[1, 16]"),
    ({"n": 17}, "n", "[1, 16]"),
    ({"n": 2, "best_of": 1}, "best_of", "[2, 16]"),
    ({"max_tokens": 0}, "max_tokens", "[1, 64]"),
    ({"max_tokens": 65}, "max_tokens", "server's cap"),
    ({"max_tokens": 4.0}, "max_tokens", "integer"),
    ({"seed": -1}, "seed", "[0, "),
    ({"seed": True}, "seed", "integer"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "1 to 4"),
    ({"stop": ""}, "stop", "non-empty"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"guidance": {"lr": 0}}, "guidance.lr", "> 0.0"),
    ({"guidance": {"method": "magic"}}, "guidance.method", "'entrgi'"),
    ({"guidance": {"inner_steps": 1000}}, "guidance.inner_steps", "[0, 32]"),
    ({"guidance": {"entropy_temperature": -1}}, "guidance.entropy_temperature", ">= 0.0"),
    ({"guidance": {"bogus": 1}}, "guidance.bogus", "allowed: method, preset, rule, rule_params"),
    ({"guidance": {"rule": "magic"}}, "guidance.rule", "'entrgi'"),
    ({"guidance": {"method": "entrgi", "rule": "aps"}}, "guidance.method", "disagree"),
    ({"search": {"strategy": "magic"}}, "search.strategy", "'particles'"),
    ({"search": {"resample_every": 0}}, "search.resample_every", ">= 1"),
    ({"search": {"potential_reward": "text:os:getcwd"}}, "search.potential_reward", "server"),
    ({"guidance": {"compile": True}}, "guidance.compile", "server"),
    ({"guidance": "entrgi"}, "guidance", "object"),
    ({"temperature": 0, "guidance": {"method": "entrgi"}}, "guidance.relaxation_temperature", "> 0"),
    ({"sampler": {"steps": 0}}, "sampler.steps", ">= 1"),
    ({"sampler": {"steps": 5000}}, "sampler.steps", "[1, 1024]"),
    ({"sampler": {"remasking": "sideways"}}, "sampler.remasking", "'entropy'"),
    ({"sampler": {"block_length": 3}}, "max_tokens", "`sampler.block_length` (3)"),
    ({"sampler": {"temperature": 1.0}}, "sampler.temperature", "standard field `temperature`"),
    ({"sampler": {"batch_size": 2}}, "sampler.batch_size", "server"),
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": [1, 2]}, "prompt", "token-id"),
    ({"prompt": None}, "prompt", "required"),
    ({"prompt": ["a"] * 17}, "prompt", "at most 16"),
    ({"prompt": "word " * 200}, "prompt", "context of 128 tokens"),
    ({"prompt": ["ok", ""]}, "prompt[1]", "non-empty"),
    ({"logprobs": 3}, "logprobs", "not supported"),
    ({"echo": "yes"}, "echo", "true or false"),
    ({"response_format": {"type": "json_object"}}, "response_format", "cannot constrain"),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format", "JSON"),
    ({"response_format": "text"}, "response_format", '{"type": "text"}'),
    ({"guidance": {"preset": "turbo"}}, "guidance.preset", "'fast'"),
    ({"guidance": {"vocab_chunk": 1}}, "guidance.vocab_chunk", ">= 1024"),
    ({"sampler": {"steps": 8}}, "sampler.steps", "at most `max_tokens` (4)"),
    ({"n": 16, "max_tokens": 64, "guidance": {"inner_steps": 32}}, "n", "GFLOP"),
    ({"temprature": 1}, "temprature", "unrecognized"),
    ({"stream": True, "n": 1, "best_of": 2}, "best_of", "cannot be streamed"),
    ({"canvas_events": True}, "canvas_events", "stream"),
    ({"n": 8, "prompt": ["a b"] * 9}, "n", "72 rows"),
    ({"n": 2, "best_of": 16, "prompt": ["a b"] * 5}, "best_of", "80 rows"),
]


@pytest.mark.parametrize("change,param,text", BAD, ids=[b[1] + ":" + json.dumps(b[0])[:30] for b in BAD])
def test_bad_field_is_400_naming_it(server, change, param, text):
    r = post(server.url, {**GOOD, **change})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert f"`{param}`" in err["message"] and text in err["message"], err["message"]


@pytest.mark.parametrize("raw,param,text", [
    ('{"model": "%s", "prompt": "a", "temperature": 1e999}' % MODEL, "temperature", "finite"),
    ('{"model": "%s", "prompt": "a", "guidance": {"lr": NaN}}' % MODEL, "guidance.lr", "finite"),
    ('{"model": "%s", "prompt": ' % MODEL, None, "not valid JSON"),
    ('["she was"]', None, "JSON object"),
    ("", None, "empty"),
])
def test_malformed_bodies_are_400(server, raw, param, text):
    r = post(server.url, raw)
    assert r.status_code == 400 and r.json()["error"]["param"] == param and text in r.json()["error"]["message"]


def test_unknown_model_route_and_method_are_4xx_and_the_server_keeps_serving(server, client):
    r = post(server.url, {**GOOD, "model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(server.url + "/v1/nowhere").status_code == 404
    assert httpx.get(server.url + "/v1/completions").status_code == 405
    assert "error" in httpx.get(server.url + "/v1/completions").json()
    assert health(server.url)["failed"] == 0
    assert client.completions.create(model=MODEL, prompt="at last", max_tokens=4, extra_body=NONE).choices[0].text


# ---- batching does not change results ---------------------------------------------------------------------------
def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    out: list = [None] * len(bodies)

    def one(i):
        out[i] = post(url, bodies[i])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return out, threads


def test_same_seed_alone_equals_batched_with_three_others(server):
    prompts = ["she was", "it is a truth universally acknowledged", "he", "mr. darcy said that"]
    body = {"model": MODEL, "max_tokens": 8, "n": 1, "seed": 1234, "guidance": {"method": "entrgi"}}
    sched = server.scheduler
    sched.hold()
    try:
        out, threads = _concurrently(server.url, [{**body, "prompt": p} for p in prompts])
        wait_for(lambda: health(server.url)["queued"] == 4)
    finally:
        sched.release()
    for t in threads:
        t.join(120)
    batched = [r.json() for r in out]
    assert all(b["entrgi"]["batch_requests"] == 4 and b["entrgi"]["batch_rows"] == 4 for b in batched)
    alone = post(server.url, {**body, "prompt": "she was"}).json()
    assert alone["entrgi"]["batch_requests"] == 1
    assert [c["text"] for c in alone["choices"]] == [c["text"] for c in batched[0]["choices"]]
    assert [c["reward"] for c in alone["choices"]] == pytest.approx([c["reward"] for c in batched[0]["choices"]],
                                                                    rel=1e-5, abs=1e-5)
    assert alone["usage"] == batched[0]["usage"]  # a request's share of the batch = its own cost
    assert len({c["text"] for b in batched for c in b["choices"]}) == 4


def test_unseeded_requests_with_the_same_prompt_are_not_batched_together(server):
    body = {"model": MODEL, "max_tokens": 4, **NONE}
    sched = server.scheduler
    sched.hold()
    try:
        out, threads = _concurrently(server.url, [{**body, "prompt": p} for p in ("she was", "she was", "he was")])
        wait_for(lambda: health(server.url)["queued"] == 3)
    finally:
        sched.release()
    for t in threads:
        t.join(60)
    info = [r.json()["entrgi"] for r in out]
    assert sorted(i["batch_requests"] for i in info) == [1, 2, 2]
    assert info[0]["seed"] != info[1]["seed"] and not any(i["seeded"] for i in info)


# ---- streaming ------------------------------------------------------------------------------------------------
def test_stream_deltas_concatenate_to_the_non_streamed_text(client):
    kw = dict(model=MODEL, prompt="the weather was", max_tokens=16, n=2, seed=21,
              extra_body={**NONE, "sampler": {"block_length": None}})  # no blocks: slots commit in any order
    full = client.completions.create(**kw)
    texts, reasons, usage = ["", ""], [None, None], None
    for chunk in client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if not chunk.choices:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
                assert c.model_extra["reward"] == pytest.approx(full.choices[c.index].model_extra["reward"], abs=1e-5)
    assert texts == [c.text for c in full.choices] and reasons == [c.finish_reason for c in full.choices]
    assert usage.completion_tokens == full.usage.completion_tokens and usage.model_extra["dllm_forwards"] == 32
    # a stop string: the stream ends before it, like the non-streamed text
    words = full.choices[0].text.split()
    stop = " " + words[len(words) // 2]
    cut = full.choices[0].text[:full.choices[0].text.find(stop)]
    stopped = client.completions.create(**{**kw, "n": 1}, stop=[stop])
    assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(**{**kw, "n": 1}, stop=[stop],
                                                                           stream=True) if c.choices)
    assert streamed == cut


def test_chat_stream_chunks(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "she was"}],
                                                 seed=2, max_tokens=8, stream=True, extra_body=NONE))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    # a stream decodes in blocks of 4 by default (L = 8: two blocks); the same blocks give the same text unstreamed
    full = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "she was"}], seed=2,
                                          max_tokens=8, extra_body={**NONE, "sampler": {"block_length": 4}})
    assert text == full.choices[0].message.content and chunks[-1].choices[0].finish_reason is not None


def test_canvas_events_follow_the_denoising(server, engine):
    body = {**GOOD, "max_tokens": 10, "seed": 5, "stream": True, "canvas_events": True,
            "guidance": {"method": "entrgi"}, "sampler": {"block_length": None}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert events[-1] == (None, "[DONE]")
    canvas = [d["choices"][0] for e, d in events if e == "canvas"]
    assert [d["step"] for e, d in events if e == "canvas"] == list(range(10))
    masked = [c["masked"] for c in canvas]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0
    committed = [p for c in canvas for p in c["committed"]]
    assert sorted(committed) == list(range(10))  # every slot committed exactly once
    done: set[int] = set()
    for c in canvas:
        done.update(c["committed"])
        assert {i for i, t in enumerate(c["tokens"]) if t is not None} == done  # committed tokens never change
        assert all(0.0 <= w <= 1.0 for w in c["weights"]) and isinstance(c["estimate"], float)
    first = canvas[0]
    assert first["mean_weight"] == pytest.approx(sum(first["weights"]) / 10, abs=1e-3)  # all 10 slots were masked
    final = [d for e, d in events if e is None and d != "[DONE]" and d["choices"] and d["choices"][0]["finish_reason"]]
    text = "".join(d["choices"][0]["text"] for e, d in events if e is None and d != "[DONE]" and d["choices"])
    assert engine.model.decode_response(canvas[-1]["ids"]) == text.strip()
    assert "".join(canvas[-1]["tokens"]).replace(" ", "") == text.replace(" ", "")  # words, no "##" pieces
    assert isinstance(final[-1]["choices"][0]["reward"], float)
    once = post(server.url, {**body, "stream": False, "canvas_events": False}).json()
    assert once["choices"][0]["text"] == text  # the reward estimate per step does not change the sample


def test_choice_stream_releases_only_final_text(engine):
    """Committing a real sample's tokens in a random order: the deltas concatenate to the final text, and a
    stop string is never crossed."""
    import random

    model = engine.model
    ids = model.encode_prompt("she was very happy, and the weather was fine; mr. knightley said it was so.")[1:17]
    text_of = CompletionText(model, model.encode_prompt("emma"))
    final = text_of(ids)
    assert final.startswith(" she was")
    for seed in range(5):
        for stop in ((), (" weather",)):
            order = list(range(16))
            random.Random(seed).shuffle(order)
            stream, masked, sent = ChoiceStream(text_of, stop), [True] * 16, ""
            for pos in order:
                masked[pos] = False
                sent += stream.update(ids, masked)
                assert " weather" not in sent or not stop
            want = final[:final.find(stop[0])] if stop else final
            assert sent + stream.finish(want) == want


def test_state_field_reads_dicts_and_objects():
    assert state_field({"x": 1, "rows": [2]}, "rows") == [2]
    assert state_field(SimpleNamespace(x=1, estimate=None), "estimate") is None


# ---- queue, time limit, disconnect ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(engine):
    """A server with a one-request queue, a 2 s time limit and a 4 kB body limit."""
    eng = dataclasses.replace(engine, limits=ServerLimits(max_tokens=64, max_queue=1, timeout_s=2.0,
                                                          max_body_bytes=4096))
    app = create_app(eng)
    with BackgroundServer(app) as srv:
        srv.scheduler = app.state.scheduler
        yield srv


def test_full_queue_is_429_with_retry_after(small):
    small.scheduler.hold()
    try:
        out, threads = _concurrently(small.url, [{**GOOD, **NONE}])
        wait_for(lambda: health(small.url)["queued"] == 1)
        r = post(small.url, {**GOOD, **NONE})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
    finally:
        small.scheduler.release()
    threads[0].join(30)
    assert out[0].status_code == 200


def test_time_limit_is_504_and_frees_the_slot(small):
    small.scheduler.hold()
    try:
        start = time.monotonic()
        r = post(small.url, {**GOOD, **NONE})
        assert r.status_code == 504 and 1.9 < time.monotonic() - start < 10
        assert r.json()["error"]["code"] == "timeout"
        h = health(small.url)
        assert h["queued"] == 0 and h["timeouts"] == 1
    finally:
        small.scheduler.release()
    assert post(small.url, {**GOOD, **NONE}).status_code == 200


def test_body_over_the_limit_is_413(small):
    r = post(small.url, {**GOOD, "prompt": "x " * 3000})
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]


def test_disconnect_cancels_a_queued_request(small):
    before = health(small.url)["cancelled"]
    small.scheduler.hold()
    try:
        with pytest.raises(httpx.ReadTimeout):
            post(small.url, {**GOOD, **NONE}, timeout=0.5)
        wait_for(lambda: health(small.url)["cancelled"] == before + 1 and health(small.url)["queued"] == 0)
    finally:
        small.scheduler.release()


def test_disconnect_stops_a_running_batch(server):
    before = health(server.url)
    body = {**GOOD, "max_tokens": 64, "sampler": {"steps": 64}, "stream": True, "canvas_events": True,
            "guidance": {"method": "entrgi"}}
    start = time.monotonic()
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("event: canvas"):
                break  # first step seen: leave
    wait_for(lambda: health(server.url)["aborted_batches"] == before["aborted_batches"] + 1, timeout=30)
    wait_for(lambda: health(server.url)["running"] == 0)
    assert time.monotonic() - start < 20  # far less than the 64 steps would take


# ---- API key ---------------------------------------------------------------------------------------------------
def test_api_key_on_every_route_but_health(engine):
    app = create_app(engine, api_key="sekrit")
    with BackgroundServer(app) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        for path in ("/v1/models", "/v1/models/" + MODEL):
            assert httpx.get(srv.url + path).status_code == 401
            assert httpx.get(srv.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert httpx.get(srv.url + path, headers={"Authorization": "Bearer sekrit"}).status_code == 200
        page = httpx.get(srv.url + "/")  # the page itself is public: it asks for the key
        assert page.status_code == 200 and 'id="api-key"' in page.text
        assert httpx.get(srv.url + "/v1/models?api_key=sekrit").status_code == 401  # never from a URL
        assert post(srv.url, {**GOOD, **NONE}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekrit", max_retries=0)
        assert ok.completions.create(model=MODEL, prompt="she was", max_tokens=4, seed=4,
                                     extra_body=NONE).choices[0].text


# ---- the command ------------------------------------------------------------------------------------------------
def test_serve_cli_errors_are_one_line(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "entrgi serve: error: `--port` must be in [0, 65535], got 70000."
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is already in use" in err
    assert main(["serve", "--reward", "some/rm"]) == 2
    assert "`--reward` needs `--model`" in capsys.readouterr().err
    assert main(["serve", "--max-queue", "0"]) == 2
    assert "`--max-queue` must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--method", "magic"]) == 2
    assert "`--method` must be one of" in capsys.readouterr().err
    assert main(["serve", "--max-request-gflops", "lots"]) == 2
    assert "`--max-request-gflops` must be auto, off or a number" in capsys.readouterr().err
    assert main(["serve", "--preset", "turbo"]) == 2  # free text: a plugin's presets register after parsing
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--preset`" in err and "Unknown preset 'turbo'" in err and "'fast'" in err


def test_entrgi_serve_starts_offline_on_the_default_pair():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "entrgi.cli", "serve", "--port", str(port), "--log-level",
                             "warning", "--preset", "fast", "--method", "entrgi", "--cors-origin", "http://app.test"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "entrgi serve did not come up"
            time.sleep(0.2)
        page = httpx.get(url + "/").text
        assert 'id="guided"' in page and 'id="unguided"' in page
        r = httpx.post(url + "/v1/completions", json={**GOOD, **NONE}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        card = httpx.get(url + "/v1/models", headers={"Origin": "http://app.test"})
        assert card.json()["data"][0]["preset"] == "fast" and card.json()["data"][0]["default_guidance"]["lr"] == 3.0
        assert card.headers["access-control-allow-origin"] == "http://app.test"
    finally:
        proc.terminate()
        proc.wait(30)


# ---- #24.1 chat as frontends send it -----------------------------------------------------------------------------
HISTORY = [{"role": "system", "content": "You write about the weather."},
           {"role": "user", "content": "how was the day?"},
           {"role": "assistant", "content": "it was fine."},
           {"role": "user", "content": "and the evening"}]
#: The default pair has no chat template: the documented plain-text fallback
HISTORY_TEXT = ("System: You write about the weather.\nUser: how was the day?\nAssistant: it was fine.\n"
                "User: and the evening\nAssistant:")


def test_chat_with_a_system_prompt_and_history_reads_the_whole_conversation(client, engine):
    r = client.chat.completions.create(model=MODEL, messages=HISTORY, seed=5, max_tokens=8, extra_body=NONE)
    tok = engine.model.tokenizer
    expected = [tok.cls_token_id, *tok(HISTORY_TEXT, add_special_tokens=False)["input_ids"]]
    assert r.model_extra["entrgi"]["prompt_token_ids"] == [expected]  # token for token
    assert r.usage.prompt_tokens == len(expected)
    content = r.choices[0].message.content
    assert content and not content[0].isspace()
    # the reward model scores the conversation as its (plain) template lays it out, not the last turn alone
    whole = engine.reward.score_texts([HISTORY_TEXT], [content]).item()
    assert r.choices[0].model_extra["reward"] == pytest.approx(whole, abs=1e-4)
    assert whole != pytest.approx(engine.reward.score_texts(["and the evening"], [content]).item(), abs=1e-3)
    guided = client.chat.completions.create(model=MODEL, messages=HISTORY, seed=5, max_tokens=4,
                                            extra_body={"guidance": {"method": "entrgi", "inner_steps": 1}})
    assert guided.choices[0].finish_reason in ("stop", "length") and guided.usage.model_extra["rm_backwards"] == 4


def test_conversation_prompts_in_the_library(engine, tok, mlm):
    """A lone user message renders as the str prompt does; longer conversations by the template or the fallback."""
    from entrgi.conversation import Conversation

    one = Conversation.of([{"role": "user", "content": "she was"}])
    assert engine.model.encode_prompt(one) == engine.model.encode_prompt("she was")
    assert engine.reward.context(one) == engine.reward.context("she was")
    whole = Conversation.of(HISTORY)
    assert whole.plain_text() == HISTORY_TEXT and str(whole) == HISTORY_TEXT
    templated = mlm  # the tiny word-level MLM: its tokenizer has a chat template
    templated.use_chat_template, before = True, templated.use_chat_template
    try:
        assert templated.encode_prompt(Conversation.of([{"role": "user", "content": "a dog"}])) == \
            templated.encode_prompt("a dog")
        ids = templated.encode_prompt(whole)
        text = tok.apply_chat_template(whole.as_dicts(), add_generation_prompt=True, tokenize=False)
        assert text.startswith("<|im_start|> system You write") and text.endswith("<|im_start|> assistant ")
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
    finally:
        templated.use_chat_template = before
    for bad in ([], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                [{"role": "tool", "content": "a"}]):
        with pytest.raises(ValueError):
            Conversation.of(bad)


CHAT_BAD = [
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "messages[1].role", "'user'"),
    ([{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}], "messages[0].role", "'system'"),
    ([{"role": "user", "content": "hi", "tool_calls": []}], "messages[0].tool_calls", "not supported"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content", "text"),
    ([{"role": "system", "content": ""}, {"role": "user", "content": "hi"}], "messages[0].content", "non-empty"),
    ([{"role": "user", "content": "hi"}] * 65, "messages", "at most 64"),
    ([], "messages", "non-empty list"),
]


@pytest.mark.parametrize("messages,param,text", CHAT_BAD, ids=[b[1] for b in CHAT_BAD])
def test_bad_messages_are_400_naming_them(server, messages, param, text):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": messages}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and f"`{param}`" in err["message"] and text in err["message"], err["message"]


# ---- #24.2 progressive streaming ---------------------------------------------------------------------------------
def test_a_stream_arrives_block_by_block_by_default(client):
    kw = dict(model=MODEL, prompt="the weather was", max_tokens=16, seed=8)
    deltas, info = [], None
    for chunk in client.completions.create(**kw, stream=True, stream_options={"include_usage": True},
                                           extra_body=NONE):
        if not chunk.choices:
            info = chunk.model_extra["entrgi"]
        for c in chunk.choices:
            deltas.append((c.text, c.finish_reason))
    assert info["sampler"]["block_length"] == 4  # the documented streaming default: blocks of 4 tokens
    early = [t for t, reason in deltas if t and reason is None]
    assert len(early) >= 3  # text arrived step by step, not all at the end
    same = client.completions.create(**kw, extra_body={**NONE, "sampler": {"block_length": 4}})
    assert "".join(t for t, _ in deltas) == same.choices[0].text  # nothing sent was retracted
    blocks = [c for c in client.completions.create(**kw, stream=True, stream_options={"include_usage": True},
                                                   extra_body={**NONE, "sampler": {"block_length": 8}})]
    assert blocks[-1].model_extra["entrgi"]["sampler"]["block_length"] == 8  # a request may ask for its own


# ---- #24.3 OpenAI text conventions -------------------------------------------------------------------------------
def test_completion_text_keeps_its_leading_space_for_wordpiece_and_byte_level_bpe(engine, dream_dir):
    from transformers import AutoTokenizer

    bpe = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(dream_dir), response_ids=lambda ids: list(ids))
    for model in (engine.model, bpe):
        tok = model.tokenizer
        prompt = tok("she was", add_special_tokens=False)["input_ids"]
        completion = tok(" not careful at woodhouses", add_special_tokens=False)["input_ids"]
        assert CompletionText(model, prompt)(completion) == " not careful at woodhouses"
        assert CompletionText(model, prompt, chat=True)(completion) == "not careful at woodhouses"
    wordpiece = engine.model.tokenizer.tokenize(" not careful at woodhouses")
    assert wordpiece[-2:] == ["wood", "##houses"]  # WordPiece pieces join into one word


def test_echo_and_response_format(client):
    kw = dict(model=MODEL, prompt="she was", max_tokens=8, seed=12)
    plain = client.completions.create(**kw, extra_body=NONE).choices[0].text
    assert plain.startswith(" ")  # "she was" + text is the decoded sequence
    echoed = client.completions.create(**kw, echo=True, extra_body={**NONE, "response_format": {"type": "text"}})
    assert echoed.choices[0].text == "she was" + plain
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        **kw, echo=True, stream=True, extra_body={**NONE, "sampler": {"block_length": None}}) if c.choices)
    assert streamed == "she was" + plain
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "she was"}], seed=12,
                                          max_tokens=8, response_format={"type": "text"}, extra_body=NONE)
    assert chat.choices[0].message.content == plain.lstrip()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "she was"}],
                                       response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format" and "JSON" in e.value.body["message"]


def test_models_never_advertise_more_tokens_than_the_context_and_cors_is_opt_in(engine, server):
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(server.url + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers  # off by default
    eng = dataclasses.replace(engine, limits=ServerLimits(max_tokens=256))
    with BackgroundServer(create_app(eng, cors_origins=["http://localhost:3000", "http://app.test"])) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        (card,) = c.models.list().data
        shortest = len(engine.model.encode_prompt("a"))  # [CLS] a
        assert card.model_extra["max_tokens"] == 128 - shortest == 126
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt="a", max_tokens=127)
        assert e.value.body["param"] == "max_tokens"
        ok = httpx.options(srv.url + "/v1/chat/completions", headers=preflight)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        other = httpx.options(srv.url + "/v1/chat/completions", headers={**preflight, "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers
        got = httpx.get(srv.url + "/v1/models", headers={"Origin": "http://app.test"})
        assert got.headers["access-control-allow-origin"] == "http://app.test"


# ---- #24.4 presets and the server's default ------------------------------------------------------------------------
def test_presets_per_request_with_explicit_fields_overriding(client, engine):
    kw = dict(model=MODEL, prompt="she was", max_tokens=8, seed=3)
    r = client.completions.create(**kw, extra_body={"guidance": {"preset": "fast"}})
    info = r.model_extra["entrgi"]
    fast = get_preset("fast")
    assert {k: info["guidance"][k] for k in fast.guidance} == dict(fast.guidance)
    assert info["sampler"]["steps"] == 2 and info["sampler"]["parallel_threshold"] == 0.9  # T = L/4
    lib = resolve_settings(model_defaults={"sampler": {**DEMO_SAMPLER, "num_samples": 1, "max_new_tokens": 8,
                                                       "steps": 8}, "guidance": DEMO_GUIDANCE},
                           overrides={"preset": "fast", "sampler": {"seed": 3}})
    ref = generate(engine.model, ["she was"], engine.reward, sampler=lib.sampler, guidance=lib.guidance,
                   search=lib.search, progress=False, trace=False)
    assert r.choices[0].text.strip() == ref.samples[0][0].text  # what the library gives with the preset
    mine = client.completions.create(**kw, extra_body={"guidance": {"preset": "fast", "inner_steps": 2, "lr": 0.5},
                                                       "sampler": {"steps": 4}}).model_extra["entrgi"]
    assert (mine["guidance"]["inner_steps"], mine["guidance"]["lr"], mine["guidance"]["guide_every"],
            mine["sampler"]["steps"]) == (2, 0.5, 2, 4)


def test_the_server_default_preset_and_method(engine):
    plain_default = dataclasses.replace(engine, method="none")
    fast_default = dataclasses.replace(engine, preset="fast")
    with BackgroundServer(create_app(plain_default)) as a, BackgroundServer(create_app(fast_default)) as b:
        ca, cb = (openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60) for s in (a, b))
        r = ca.completions.create(model=MODEL, prompt="she was", max_tokens=4, seed=1)  # no extra body at all
        assert r.model_extra["entrgi"]["guidance"]["rule"] == "none" and r.usage.model_extra["rm_backwards"] == 0
        assert ca.models.list().data[0].model_extra["default_guidance"]["rule"] == "none"
        card = cb.models.list().data[0].model_extra
        assert card["preset"] == "fast" and card["default_guidance"]["inner_steps"] == 5
        info = cb.completions.create(model=MODEL, prompt="she was", max_tokens=8, seed=1).model_extra["entrgi"]
        assert info["guidance"]["guide_every"] == 2 and info["sampler"]["steps"] == 2


# ---- #24.5 guided work does not block plain work -----------------------------------------------------------------
def test_plain_requests_are_not_starved_by_guided_work(server):
    guided = {"model": MODEL, "prompt": "she was", "max_tokens": 8, "seed": 1,
              "guidance": {"method": "entrgi", "inner_steps": 4}}
    plain = {"model": MODEL, "prompt": "he was", "max_tokens": 4, "seed": 1, **NONE}
    finished: list[str] = []
    out: dict[str, httpx.Response] = {}

    def send(name: str, body: dict) -> None:
        out[name] = post(server.url, body)
        finished.append(name)

    server.scheduler.hold()
    try:
        threads = [threading.Thread(target=send, args=("guided", guided))]
        threads[0].start()
        wait_for(lambda: health(server.url)["queued"] == 1)  # the guided request is first in the queue
        threads.append(threading.Thread(target=send, args=("plain", plain)))
        threads[1].start()
        wait_for(lambda: health(server.url)["lanes"]["plain"]["queued"] == 1)
    finally:
        server.scheduler.release()
    for t in threads:
        t.join(120)
    assert finished == ["plain", "guided"]  # interleaved step by step, the cheap request ends first
    assert {k: r.json()["entrgi"]["lane"] for k, r in out.items()} == {"guided": "guided", "plain": "plain"}


# ---- #24.6 cancelled requests -------------------------------------------------------------------------------------
def test_cancelled_requests_are_counted_apart_and_log_nothing(server, client, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    body = {"model": MODEL, "prompt": "she was", "max_tokens": 8, "seed": 9, "sampler": {"block_length": 4},
            "guidance": {"method": "entrgi", "inner_steps": 1}}
    before = health(server.url)
    out: list = []
    server.scheduler.hold()
    try:
        kept = threading.Thread(target=lambda: out.append(post(server.url, body)))
        kept.start()
        wait_for(lambda: health(server.url)["queued"] == 1)

        def leave() -> None:  # the same settings, streamed: batched with the first; gone once it starts
            stream = client.completions.create(model=MODEL, prompt="he was", max_tokens=8, seed=9, stream=True,
                                               extra_body={"sampler": {"block_length": 4},
                                                           "guidance": {"method": "entrgi", "inner_steps": 1}})
            stream.close()
        left = threading.Thread(target=leave)
        left.start()
        wait_for(lambda: health(server.url)["queued"] == 2)
    finally:
        server.scheduler.release()
    left.join(60)
    kept.join(120)
    assert out[0].status_code == 200 and out[0].json()["entrgi"]["batch_requests"] == 2
    wait_for(lambda: health(server.url)["cancelled"] == before["cancelled"] + 1)
    after = health(server.url)
    assert after["completed"] == before["completed"] + 1  # the one that was answered, not the cancelled one
    gc.collect()
    assert "never retrieved" not in caplog.text


# ---- #22 bounded work -----------------------------------------------------------------------------------------------
def test_the_cost_estimate_bounds_the_count(engine):
    prompts = ["she was", "it is a truth universally acknowledged"]
    lengths = [len(engine.model.encode_prompt(p)) for p in prompts]
    for method in ("none", "entrgi"):
        sampler = SamplerConfig(**{**DEMO_SAMPLER, "num_samples": 1, "max_new_tokens": 6, "steps": 6})
        guidance = GuidanceConfig(**{**DEMO_GUIDANCE, "rule": method})
        out = generate(engine.model, prompts, engine.reward, sampler=sampler, guidance=guidance, progress=False,
                       trace=False)
        est = estimate_stats(engine, prompts, lengths, sampler, guidance)
        assert (est.dllm_tokens, est.dllm_logit_tokens) == (out.stats.dllm_tokens, out.stats.dllm_logit_tokens)
        assert out.stats.flops <= est.flops <= 1.3 * out.stats.flops  # an upper bound, and a close one


def test_a_request_over_the_budget_is_refused_before_it_runs(engine):
    eng = dataclasses.replace(engine, limits=ServerLimits(max_tokens=64, max_request_gflops=50.0))
    with BackgroundServer(create_app(eng)) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert c.models.list().data[0].model_extra["max_request_gflops"] == 50.0
        with pytest.raises(openai.BadRequestError) as e:  # EntRGi M = 3, L = 16: about 90 GFLOP
            c.completions.create(model=MODEL, prompt="she was", max_tokens=16, n=2)
        err = e.value.body
        assert err["code"] == "over_budget" and err["param"] == "n" and "50 GFLOP" in err["message"]
        assert health(srv.url)["requests"] == 0  # refused before it was queued
        ok = c.completions.create(model=MODEL, prompt="she was", max_tokens=16, extra_body=NONE)
        assert 0 < ok.model_extra["entrgi"]["estimated_gflops"] <= 50


def test_the_time_limit_stops_the_work_itself(engine):
    """One guided step of 4 x 64 slots with M = 32 inner steps (no budget) takes tens of seconds; the 2 s limit
    answers 504 and the worker is free again at the next model call, not at the end of the step."""
    eng = dataclasses.replace(engine, limits=ServerLimits(max_tokens=64, timeout_s=2.0, max_request_gflops=math.inf))
    app = create_app(eng)
    with BackgroundServer(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as e:
            c.completions.create(model=MODEL, prompt="she was", max_tokens=64, n=4,
                                 extra_body={"guidance": {"method": "entrgi", "inner_steps": 32}})
        assert e.value.status_code == 504
        wait_for(lambda: health(srv.url)["running"] == 0, timeout=30)
        h = health(srv.url)
        assert h["aborted_batches"] == 1 and h["timeouts"] == 1 and h["completed"] == 0
        assert c.completions.create(model=MODEL, prompt="she was", max_tokens=4, seed=4,
                                    extra_body=NONE).choices[0].text


@pytest.mark.parametrize("raw", ["[" * 100_000, '{"a": ' * 100_000, '{"model": "x", "prompt": ' + "[" * 40 + "]" * 40 + "}"],
                         ids=["list-100k", "object-100k", "prompt-40"])
def test_deeply_nested_bodies_are_400_and_the_server_keeps_serving(server, client, raw):
    r = post(server.url, raw)
    assert r.status_code == 400 and "nest" in r.json()["error"]["message"]
    assert health(server.url)["failed"] == 0
    assert client.completions.create(model=MODEL, prompt="at last", max_tokens=4, seed=4,
                                     extra_body=NONE).choices[0].text
