"""Requests and responses of the OpenAI-compatible endpoints.

A request body is checked field by field before anything is queued; every mistake raises
:class:`RequestError` (HTTP 4xx, OpenAI's error shape) naming the field (``param``) and the allowed
values. The standard fields map onto :class:`~entrgi.SamplerConfig`: ``max_tokens`` -> L
(``max_new_tokens``), ``temperature``, ``top_p``, ``seed``, ``n`` / ``best_of`` -> K (``num_samples``);
the extra body fields ``sampler`` and ``guidance`` carry the other :class:`~entrgi.SamplerConfig` /
:class:`~entrgi.GuidanceConfig` fields under their own names, validated by those classes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from ..config import GuidanceConfig, SamplerConfig, SearchConfig
from ..settings import method_fields
from .engine import Engine

#: Sampler fields set through standard OpenAI fields (or by the server), not through ``sampler``.
SAMPLER_FROM_STANDARD = {"max_new_tokens": "max_tokens", "num_samples": "n` / `best_of", "temperature": "temperature",
                         "top_p": "top_p", "seed": "seed", "batch_size": None}
SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerConfig) if f.name not in SAMPLER_FROM_STANDARD)
#: ``compile`` changes the shared reward model for every request: a server setting, not a request field.
GUIDANCE_FIELDS = (*(f.name for f in dataclasses.fields(GuidanceConfig) if f.name != "compile"), "method")

COMMON_FIELDS = ("model", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options",
                 "guidance", "sampler", "canvas_events")
COMPLETION_FIELDS = (*COMMON_FIELDS, "prompt", "best_of")
CHAT_FIELDS = (*COMMON_FIELDS, "messages", "max_completion_tokens")
#: Accepted and ignored (they do not change what is generated).
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier")
#: OpenAI fields this server does not implement: accepted only at their "off" value.
UNSUPPORTED_FIELDS = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
                      "suffix": (None, ""), "logit_bias": (None, {}), "presence_penalty": (None, 0),
                      "frequency_penalty": (None, 0), "tools": (None, []), "tool_choice": (None, "none"),
                      "functions": (None, []), "function_call": (None, "none"), "response_format": (None,),
                      "parallel_tool_calls": (None, False, True), "modalities": (None, ["text"]),
                      "prediction": (None,), "audio": (None,), "reasoning_effort": (None,)}
MAX_STOP = 4


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI-style JSON error."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, *,
                 type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request: what to sample and how to answer."""

    chat: bool
    prompts: tuple[str, ...]
    prompt_tokens: tuple[int, ...]  # per prompt
    sampler: SamplerConfig  # num_samples = K = best_of (or n); seed = the request's (0 when unseeded)
    guidance: GuidanceConfig
    n: int  # choices returned per prompt
    search: SearchConfig
    seeded: bool
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    canvas_events: bool
    entropy_temperature: float  # of the per-slot weights shown by the canvas events

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.sampler.num_samples

    @property
    def best_of(self) -> int:
        return self.sampler.num_samples


# ---- field checks -------------------------------------------------------------------------------
def _int(name: str, value: Any, low: int, high: int | None = None, hint: str = "") -> int:
    rng = f"[{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise RequestError(f"`{name}` must be an integer in {rng}{hint}, got {value!r}.", name)
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"`{name}` must be true or false, got {value!r}.", name)
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"`{name}` must be a non-empty string, got {value!r}.", name)
    return value


def check_finite(value: Any, path: str = "") -> None:
    """Every number in a parsed JSON body must be finite (``1e999``, ``NaN`` and ``Infinity`` are not)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"`{path or 'body'}` must be a finite number, got {value!r}.", path or None)
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]")


def _config_error(err: ValueError, prefix: str = "", rename: dict[str, str] | None = None) -> RequestError:
    """A config's ``ValueError`` as a 400 naming the request fields (``guidance.lr``, ``temperature``...)."""
    names = list(dict.fromkeys(re.findall(r"`([a-z_]+)`", str(err))))
    params = {n: (rename or {}).get(n) or f"{prefix}{n}" for n in names}
    msg = re.sub(r"`([a-z_]+)`", lambda m: f"`{params.get(m.group(1), m.group(1))}`", str(err))
    return RequestError(msg, params[names[0]] if names else (prefix.rstrip(".") or None))


def _sub_dict(body: dict[str, Any], name: str, allowed: tuple[str, ...],
              standard: dict[str, str | None] | None = None) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"`{name}` must be an object of {name} settings, got {value!r}.", name)
    for key in value:
        if standard and key in standard:
            std = standard[key]
            where = f"the standard field `{std}`" if std else "the server (not a request field)"
            raise RequestError(f"`{name}.{key}` is set through {where}.", f"{name}.{key}")
        if key not in allowed:
            raise RequestError(f"unknown field `{name}.{key}`; allowed: {', '.join(allowed)}.", f"{name}.{key}")
    return value


def _prompts(body: dict[str, Any], engine: Engine, chat: bool) -> list[str]:
    max_prompts = engine.limits.max_prompts
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError("`messages` is required: a list with one user message.", "messages")
        roles = [m.get("role") if isinstance(m, dict) else None for m in msgs]
        if roles != ["user"]:
            raise RequestError(
                "`messages` must hold exactly one message, of role 'user' (the DLLM's sampler takes one prompt; "
                f"system and earlier turns are not supported), got roles {roles}.", "messages")
        content = msgs[0].get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError("`messages[0].content` parts must all be of type 'text'.", "messages[0].content")
            content = "".join(p["text"] for p in content)
        return [_text("messages[0].content", content)]
    if "prompt" not in body or body["prompt"] is None:
        raise RequestError("`prompt` is required: a string or a list of strings.", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return [_text("prompt", prompt)]
    if not isinstance(prompt, list) or not prompt:
        raise RequestError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}.", "prompt")
    if len(prompt) > max_prompts:
        raise RequestError(f"`prompt` holds {len(prompt)} prompts; this server takes at most {max_prompts} per "
                           "request.", "prompt")
    if not all(isinstance(p, str) for p in prompt):
        raise RequestError("`prompt` must be strings (token-id prompts are not supported).", "prompt")
    return [_text(f"prompt[{i}]", p) for i, p in enumerate(prompt)]


def parse_request(body: Any, engine: Engine, *, chat: bool) -> ParsedRequest:
    """Validate a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions`` body."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")
    check_finite(body)
    limits = engine.limits
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for key in body:
        if key in UNSUPPORTED_FIELDS:
            if body[key] not in UNSUPPORTED_FIELDS[key]:
                raise RequestError(f"`{key}` is not supported by this server (masked diffusion sampling); "
                                   "leave it unset.", key)
        elif key not in allowed and key not in IGNORED_FIELDS:
            raise RequestError(f"unrecognized request argument `{key}`; supported: {', '.join(allowed)}.", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("`model` is required (see GET /v1/models).", "model")
    if model != engine.model_id:
        raise RequestError(f"the model `{model}` does not exist: this server serves `{engine.model_id}`.", "model",
                           404, code="model_not_found")
    prompts = _prompts(body, engine, chat)

    n = 1 if body.get("n") is None else _int("n", body["n"], 1, limits.max_samples)
    best_of = n
    if not chat and body.get("best_of") is not None:
        best_of = _int("best_of", body["best_of"], n, limits.max_samples, hint=" (at least `n`)")
    length_field = "max_tokens"
    length = body.get("max_tokens")
    if chat and body.get("max_completion_tokens") is not None:
        if length is not None and length != body["max_completion_tokens"]:
            raise RequestError("`max_tokens` and `max_completion_tokens` differ: give one.", "max_completion_tokens")
        length, length_field = body["max_completion_tokens"], "max_completion_tokens"
    if length is None:
        length = min(engine.sampler.max_new_tokens, limits.max_tokens)
    _int(length_field, length, 1, limits.max_tokens, hint=" (the server's cap)")

    seeded = body.get("seed") is not None
    seed = _int("seed", body["seed"], 0, 2 ** 63 - 1) if seeded else 0
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (_text("stop", stop),)
    elif isinstance(stop, list) and 1 <= len(stop) <= MAX_STOP:
        stops = tuple(_text(f"stop[{i}]", s) for i, s in enumerate(stop))
    else:
        raise RequestError(f"`stop` must be a string or a list of 1 to {MAX_STOP} strings, got {stop!r}.", "stop")
    stream = False if body.get("stream") is None else _bool("stream", body["stream"])
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not stream:
            raise RequestError("`stream_options` is only allowed with `stream`: true.", "stream_options")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
            raise RequestError("`stream_options` must be an object with only `include_usage`.", "stream_options")
        if opts.get("include_usage") is not None:
            include_usage = _bool("stream_options.include_usage", opts["include_usage"])
    canvas = False if body.get("canvas_events") is None else _bool("canvas_events", body["canvas_events"])
    if canvas and not stream:
        raise RequestError("`canvas_events` needs `stream`: true (they are server-sent events).", "canvas_events")
    if stream and best_of > n:
        raise RequestError("`best_of` > `n` cannot be streamed (the best are known only at the end).", "best_of")

    # ---- sampler: the standard fields, then the `sampler` object --------------------------------------
    extra_s = _sub_dict(body, "sampler", SAMPLER_FIELDS, SAMPLER_FROM_STANDARD)
    if "steps" in extra_s and isinstance(extra_s["steps"], int) and extra_s["steps"] > limits.max_steps:
        raise RequestError(f"`sampler.steps` must be an integer in [1, {limits.max_steps}] (the server's cap), "
                           f"got {extra_s['steps']}.", "sampler.steps")
    changes: dict[str, Any] = {"max_new_tokens": length, "num_samples": best_of, "seed": seed, "batch_size": None,
                               "steps": length, **extra_s}  # default T = L: one token per step
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            changes[name] = body[name]
    rename = {"max_new_tokens": length_field, "num_samples": "best_of" if best_of != n else "n",
              "temperature": "temperature", "top_p": "top_p", "seed": "seed"}
    try:
        sampler = dataclasses.replace(engine.sampler, **changes)
    except ValueError as e:
        raise _config_error(e, "sampler.", rename) from None
    except TypeError as e:  # a wrong type where the config compares numbers
        raise RequestError(f"`sampler`: {e}", "sampler") from None

    # ---- guidance --------------------------------------------------------------------------------------
    extra_g = _sub_dict(body, "guidance", GUIDANCE_FIELDS, {"compile": None})
    inner = extra_g.get("inner_steps")
    if isinstance(inner, int) and not isinstance(inner, bool) and inner > limits.max_inner_steps:
        raise RequestError(f"`guidance.inner_steps` must be an integer in [0, {limits.max_inner_steps}] (the "
                           f"server's cap), got {inner}.", "guidance.inner_steps")
    search = SearchConfig()
    if "method" in extra_g:  # the paper's names for a rule and a search (entrgi.settings)
        try:
            spelled = method_fields(extra_g.pop("method"))
        except ValueError as e:
            raise _config_error(e, "guidance.") from None
        extra_g = {**spelled["guidance"], **extra_g}
        search = SearchConfig(**spelled["search"])
    try:
        guidance = dataclasses.replace(engine.guidance, **extra_g)
    except ValueError as e:
        raise _config_error(e, "guidance.") from None
    except TypeError as e:
        raise RequestError(f"`guidance`: {e}", "guidance") from None
    if (guidance.rule != "none" or search.needs_reward) and engine.reward is None:
        raise RequestError(f"`guidance.rule` {guidance.rule!r} needs a reward model; this server has none "
                           "(only 'none' is served).", "guidance.rule")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolved = guidance.resolve(sampler)
    except ValueError as e:
        raise _config_error(e, "guidance.", {"temperature": "temperature"}) from None

    # ---- prompts against the context and the batch size --------------------------------------------------
    counts = []
    where = "messages[0].content" if chat else "prompt"
    for i, p in enumerate(prompts):
        ids = engine.model.encode_prompt(p)
        counts.append(len(ids))
        limit = engine.context_length
        if limit is not None and len(ids) + length > limit:
            name = where if chat or len(prompts) == 1 else f"prompt[{i}]"
            raise RequestError(f"`{name}` is {len(ids)} tokens; with `{length_field}` = {length} that exceeds the "
                               f"model's context of {limit} tokens: shorten it or lower `{length_field}`.", name)
    rows = len(prompts) * best_of
    if rows > limits.max_batch_rows:
        k = "best_of" if best_of != n else "n"
        raise RequestError(f"`{k}` = {best_of} samples x {len(prompts)} prompts = {rows} rows; this server runs at "
                           f"most {limits.max_batch_rows} per request: lower `{k}` or send fewer prompts.", k)
    return ParsedRequest(chat, tuple(prompts), tuple(counts), sampler, guidance, n, search, seeded, stops, stream,
                         include_usage, canvas, float(resolved.entropy_temperature))


# ---- responses ----------------------------------------------------------------------------------
def apply_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def finish_reason(response_tokens: int, max_tokens: int, stopped: bool) -> str:
    """``stop`` when a stop string or EOS ended the response before L tokens, else ``length``."""
    return "stop" if stopped or response_tokens < max_tokens else "length"


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def choice_payload(req: ParsedRequest, index: int, text: str, reason: str, reward: float | None) -> dict[str, Any]:
    if req.chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason, "reward": reward}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason, "reward": reward}


def response_payload(req: ParsedRequest, engine: Engine, rid: str, choices: list[dict[str, Any]],
                     usage: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion" if req.chat else "text_completion", "created": int(time.time()),
            "model": engine.model_id, "system_fingerprint": "entrgi", "choices": choices, "usage": usage,
            "entrgi": info}


def chunk_payload(req: ParsedRequest, engine: Engine, rid: str, created: int, choices: list[dict[str, Any]],
                  usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"id": rid, "object": "chat.completion.chunk" if req.chat else "text_completion", "created": created,
           "model": engine.model_id, "system_fingerprint": "entrgi", "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def chunk_choice(req: ParsedRequest, index: int, text: str, reason: str | None = None,
                 reward: float | None = None, first: bool = False) -> dict[str, Any]:
    if req.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        out = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    else:
        out = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
    if reason is not None:
        out["reward"] = reward
    return out
