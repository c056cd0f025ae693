"""Requests and responses of the OpenAI-compatible endpoints.

A request body is checked field by field before anything is queued; every mistake raises
:class:`RequestError` (HTTP 4xx, OpenAI's error shape) naming the field (``param``) and the allowed
values. The standard fields map onto :class:`~entrgi.SamplerConfig`: ``max_tokens`` -> L
(``max_new_tokens``), ``temperature``, ``top_p``, ``seed``, ``n`` / ``best_of`` -> K (``num_samples``);
the extra body fields ``sampler`` and ``guidance`` carry the other :class:`~entrgi.SamplerConfig` /
:class:`~entrgi.GuidanceConfig` fields under their own names, validated by those classes, and
``guidance.preset`` names a preset. :func:`request_settings` is where the layers meet. Chat ``messages``
become a :class:`~entrgi.conversation.Conversation`. Before a request is queued its work is estimated
(:mod:`.cost`) and refused beyond the server's budget.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import GuidanceConfig, SamplerConfig, SearchConfig
from ..conversation import Conversation, Message, Prompt
from ..settings import RunSettings, resolve_settings
from .cost import is_canvas, request_gflops
from .engine import Engine, needs_reward

#: Sampler fields set through standard OpenAI fields (or by the server), not through ``sampler``.
SAMPLER_FROM_STANDARD = {"max_new_tokens": "max_tokens", "num_samples": "n` / `best_of", "temperature": "temperature",
                         "top_p": "top_p", "seed": "seed", "batch_size": None}
SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerConfig) if f.name not in SAMPLER_FROM_STANDARD)
#: ``compile`` changes the shared reward model for every request: a server setting, not a request field.
GUIDANCE_FIELDS = ("method", "preset", *(f.name for f in dataclasses.fields(GuidanceConfig) if f.name != "compile"))
#: ``potential_reward`` loads code (a text reward's module): a server setting, not a request field.
SEARCH_FIELDS = tuple(f.name for f in dataclasses.fields(SearchConfig) if f.name != "potential_reward")
_SAMPLER_NAMES = {f.name for f in dataclasses.fields(SamplerConfig)}
_SEARCH_NAMES = {f.name for f in dataclasses.fields(SearchConfig)}

COMMON_FIELDS = ("model", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options",
                 "guidance", "sampler", "search", "canvas_events", "response_format")
COMPLETION_FIELDS = (*COMMON_FIELDS, "prompt", "best_of", "echo")
CHAT_FIELDS = (*COMMON_FIELDS, "messages", "max_completion_tokens")
#: Accepted and ignored (they do not change what is generated).
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier")
#: OpenAI fields this server does not implement: accepted only at their "off" value.
UNSUPPORTED_FIELDS = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "suffix": (None, ""),
                      "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
                      "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
                      "function_call": (None, "none"), "parallel_tool_calls": (None, False, True),
                      "modalities": (None, ["text"]), "prediction": (None,), "audio": (None,),
                      "reasoning_effort": (None,)}
#: Chat roles (OpenAI's ``developer`` is a system message) and the message keys read (``name`` is ignored).
CHAT_ROLES = ("system", "developer", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name")
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
    prompts: tuple[Prompt, ...]  # completions: the strings; chat: one Conversation
    prompt_ids: tuple[tuple[int, ...], ...]  # the DLLM's prompt ids, per prompt
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
    echo: bool = False  # completions: the prompt before each choice's text
    gflops: float = 0.0  # the estimated work (:mod:`.cost`)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.sampler.num_samples

    @property
    def best_of(self) -> int:
        return self.sampler.num_samples

    @property
    def prompt_tokens(self) -> tuple[int, ...]:
        return tuple(len(p) for p in self.prompt_ids)

    @property
    def lane(self) -> str:
        """``guided`` (the reward model runs while sampling: guidance, or a search that weighs or ranks by it) or
        ``plain`` (the scheduler's lanes)."""
        return "guided" if self.guidance.guided or self.search.needs_reward else "plain"


# ---- settings ------------------------------------------------------------------------------------
def request_settings(engine: Engine, server: Mapping[str, Any], sampler: Mapping[str, Any],
                     guidance: Mapping[str, Any], search: Mapping[str, Any] | None = None) -> RunSettings:
    """A request's settings through :func:`entrgi.resolve_settings`, the resolution of every entry point: the
    model's layer is the server's defaults with ``server`` over them (L, T = L, stream blocks); the config layer
    is the server's ``--preset`` / ``--method``; the request's fields (``sampler``: the standard fields and the
    ``sampler`` object; ``guidance``, with its ``method`` / ``preset`` spellings; ``search``) override both.
    Raises the configs' ``ValueError``."""
    guidance = dict(guidance)
    request: dict[str, Any] = {"sampler": dict(sampler), "guidance": guidance, "search": dict(search or {})}
    if "preset" in guidance:
        request["preset"] = guidance.pop("preset")
    return resolve_settings(model_defaults=engine.model_layer(**server), config=engine.config_layer,
                            overrides=request, config_source="the server's --preset / --method",
                            overrides_source="the request")


def stream_block_length(length: int, target: int, steps: Any = None) -> int | None:
    """Blocks for a streamed request: the block length L / b nearest ``target`` over the block counts b that
    divide L (and an explicit integer ``steps``); None when that is one block."""
    counts = [b for b in range(1, length + 1) if length % b == 0 and (not isinstance(steps, int) or steps % b == 0)]
    best = min(counts, key=lambda b: (abs(length / b - target), b))
    return None if best == 1 else length // best


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


def check_depth(value: Any, limit: int) -> None:
    """A 400 when a parsed JSON body nests deeper than ``limit`` (checked without recursion)."""
    level: list[tuple[Any, int]] = [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise RequestError(f"the request body nests deeper than {limit} levels.", code="body_too_deep")
            level.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))


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


def _settings_error(err: ValueError, rename: dict[str, str]) -> RequestError:
    """A resolution's ``ValueError`` as a 400 naming the request fields (``guidance.lr``, ``temperature``...)."""
    def param(name: str) -> str:
        section, _, field = name.rpartition(".")
        if field in rename and section in ("", "sampler"):
            return rename[field]
        if section:
            return name
        if field in ("preset", "method"):
            return "guidance." + field
        return ("sampler." if field in _SAMPLER_NAMES else "search." if field in _SEARCH_NAMES else
                "guidance.") + field

    text = re.sub(r" \(`[a-z_.]+` from the request\)$", "", str(err))  # the param names it already
    names = list(dict.fromkeys(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", text)))
    msg = re.sub(r"`([a-z_]+(?:\.[a-z_]+)?)`", lambda m: f"`{param(m.group(1))}`", text)
    return RequestError(msg, param(names[0]) if names else None)


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
    return dict(value)


def _content(name: str, content: Any) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if isinstance(content, list):
        if not content or not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                  for p in content):
            raise RequestError(f"`{name}` parts must all be of type 'text'.", name)
        content = "".join(p["text"] for p in content)
    return _text(name, content)


def parse_messages(body: dict[str, Any], max_messages: int) -> Conversation:
    """The chat ``messages``: system / developer, user and assistant turns, the last one the user's."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("`messages` is required: a non-empty list of {role, content} messages.", "messages")
    if len(msgs) > max_messages:
        raise RequestError(f"`messages` holds {len(msgs)} messages; this server takes at most {max_messages}.",
                           "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"`{where}` must be an object with `role` and `content`, got {m!r}.", where)
        for key in m:
            if key not in MESSAGE_KEYS:
                raise RequestError(f"`{where}.{key}` is not supported (messages take {', '.join(MESSAGE_KEYS)}).",
                                   f"{where}.{key}")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise RequestError(f"`{where}.role` must be one of {list(CHAT_ROLES)}, got {role!r}.", f"{where}.role")
        out.append(Message("system" if role == "developer" else role, _content(f"{where}.content", m.get("content"))))
    if out[-1].role != "user":
        last = f"messages[{len(out) - 1}].role"
        raise RequestError(f"`{last}` must be 'user': the response is the assistant's next turn, got "
                           f"{out[-1].role!r}.", last)
    return Conversation(tuple(out))


def _prompts(body: dict[str, Any], engine: Engine, chat: bool) -> list[Prompt]:
    if chat:
        return [parse_messages(body, engine.limits.max_messages)]
    max_prompts = engine.limits.max_prompts
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


def _check_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key in UNSUPPORTED_FIELDS:
            if body[key] not in UNSUPPORTED_FIELDS[key]:
                raise RequestError(f"`{key}` is not supported by this server (masked diffusion sampling); "
                                   "leave it unset.", key)
        elif key not in allowed and key not in IGNORED_FIELDS:
            raise RequestError(f"unrecognized request argument `{key}`; supported: {', '.join(allowed)}.", key)
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise RequestError(f"`response_format` must be an object like {{\"type\": \"text\"}}, got {fmt!r}.",
                           "response_format")
    if fmt["type"] != "text":
        raise RequestError(f"`response_format` type {fmt['type']!r} is not supported: this server cannot constrain "
                           "masked diffusion sampling to JSON. Only {\"type\": \"text\"} (the default) is.",
                           "response_format", code="unsupported_response_format")
    if set(fmt) != {"type"}:
        raise RequestError(f"`response_format` of type 'text' takes no other keys, got {sorted(fmt)}.",
                           "response_format")


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (_text("stop", stop),)
    if isinstance(stop, list) and 1 <= len(stop) <= MAX_STOP:
        return tuple(_text(f"stop[{i}]", s) for i, s in enumerate(stop))
    raise RequestError(f"`stop` must be a string or a list of 1 to {MAX_STOP} strings, got {stop!r}.", "stop")


def _check_limits(engine: Engine, sampler: SamplerConfig, guidance: GuidanceConfig, length_field: str) -> None:
    """The server's caps on the resolved configs (a preset's values included)."""
    limits = engine.limits
    if is_canvas(engine.model) and sampler.steps > limits.max_steps:
        raise RequestError(f"`sampler.steps` must be an integer in [1, {limits.max_steps}] (the server's cap on "
                           f"denoising steps per canvas), got {sampler.steps}.", "sampler.steps")
    if not is_canvas(engine.model) and sampler.steps > min(limits.max_steps, sampler.max_new_tokens):
        raise RequestError(f"`sampler.steps` must be an integer in [1, {limits.max_steps}] (the server's cap) and at "
                           f"most `{length_field}` ({sampler.max_new_tokens}): each step commits at least one slot, "
                           f"got {sampler.steps}.", "sampler.steps")
    if guidance.inner_steps > limits.max_inner_steps:
        raise RequestError(f"`guidance.inner_steps` must be an integer in [0, {limits.max_inner_steps}] (the "
                           f"server's cap), got {guidance.inner_steps}.", "guidance.inner_steps")
    if guidance.vocab_chunk is not None and guidance.vocab_chunk < limits.min_vocab_chunk:
        raise RequestError(f"`guidance.vocab_chunk` must be null or an integer >= {limits.min_vocab_chunk} (the "
                           f"server's floor: smaller chunks loop over the vocabulary in Python), got "
                           f"{guidance.vocab_chunk}.", "guidance.vocab_chunk")


def _check_budget(engine: Engine, gflops: float, culprit: str, shape: str) -> None:
    """A 400 naming ``culprit`` (the field to lower first) when the estimated work exceeds the server's budget."""
    budget = engine.budget_gflops
    if gflops > budget:
        raise RequestError(
            f"this request needs an estimated {gflops:,.0f} GFLOP ({shape}); the server's budget is {budget:,.0f} "
            "GFLOP per request (--max-request-gflops): lower `n` / `best_of`, `max_tokens`, `sampler.steps` or "
            "`guidance.inner_steps`, or send fewer prompts.", culprit, code="over_budget")


def parse_request(body: Any, engine: Engine, *, chat: bool) -> ParsedRequest:
    """Validate a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions`` body."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")
    check_depth(body, engine.limits.max_json_depth)
    check_finite(body)
    limits = engine.limits
    _check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
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
        length = engine.default_max_tokens
    _int(length_field, length, 1, engine.max_tokens, hint=" (the server's cap, within the model's context)")

    seeded = body.get("seed") is not None
    seed = _int("seed", body["seed"], 0, 2 ** 63 - 1) if seeded else 0
    stops = _stops(body.get("stop"))
    stream = False if body.get("stream") is None else _bool("stream", body["stream"])
    echo = False if body.get("echo") is None else _bool("echo", body["echo"])
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

    # ---- settings: the server's defaults for this request < presets < the request's fields -------------
    extra_s = _sub_dict(body, "sampler", SAMPLER_FIELDS, SAMPLER_FROM_STANDARD)
    extra_g = _sub_dict(body, "guidance", GUIDANCE_FIELDS, {"compile": None})
    extra_search = _sub_dict(body, "search", SEARCH_FIELDS, {"potential_reward": None})
    inner = extra_g.get("inner_steps")
    if isinstance(inner, int) and not isinstance(inner, bool) and inner > limits.max_inner_steps:
        raise RequestError(f"`guidance.inner_steps` must be an integer in [0, {limits.max_inner_steps}] (the "
                           f"server's cap), got {inner}.", "guidance.inner_steps")
    standard: dict[str, Any] = {"max_new_tokens": length, "num_samples": best_of, "seed": seed}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            standard[name] = body[name]
    canvas_model = is_canvas(engine.model)
    if canvas_model and canvas:
        raise RequestError(f"`canvas_events` are not available for {type(engine.model).__name__}: its canvas "
                           "sampler has no masked slots to show (leave it unset).", "canvas_events")
    # default T = L (one token per step); a canvas model keeps its own steps per canvas
    server: dict[str, Any] = {"max_new_tokens": length} if canvas_model else {"max_new_tokens": length, "steps": length}
    if (stream and not canvas_model and "block_length" not in extra_s and engine.sampler.block_length is None
            and engine.stream_block_length):
        server["block_length"] = stream_block_length(length, engine.stream_block_length, extra_s.get("steps"))
    rename = {"max_new_tokens": length_field, "num_samples": "best_of" if best_of != n else "n",
              "temperature": "temperature", "top_p": "top_p", "seed": "seed"}
    try:
        settings = request_settings(engine, server, {**standard, **extra_s}, extra_g, extra_search)
    except ValueError as e:
        raise _settings_error(e, rename) from None
    except TypeError as e:  # a wrong type where the config compares numbers
        raise RequestError(f"`sampler` / `guidance` / `search`: {e}", "sampler") from None
    sampler, guidance, search = settings.sampler, settings.guidance, settings.search
    _check_limits(engine, sampler, guidance, length_field)
    if needs_reward(settings) and engine.reward is None:
        field = "guidance.rule" if guidance.rule != "none" else "search.strategy"
        raise RequestError(f"`{field}` {guidance.rule if guidance.rule != 'none' else search.strategy!r} needs a "
                           "reward model; this server has none (only unguided sampling is served).", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolved = guidance.resolve(sampler)
    except ValueError as e:
        raise _settings_error(e, {"temperature": "temperature"}) from None

    # ---- prompts against the context, the batch size and the budget ----------------------------------------
    ids = []
    where = "messages" if chat else "prompt"
    for i, p in enumerate(prompts):
        ids.append(tuple(engine.model.encode_prompt(p)))
        limit = engine.context_length
        if limit is not None and len(ids[-1]) + length > limit:
            name = where if chat or len(prompts) == 1 else f"prompt[{i}]"
            raise RequestError(f"`{name}` is {len(ids[-1])} tokens; with `{length_field}` = {length} that exceeds "
                               f"the model's context of {limit} tokens: shorten it or lower `{length_field}`.", name)
    rows = len(prompts) * best_of
    if rows > limits.max_batch_rows:
        k = "best_of" if best_of != n else "n"
        raise RequestError(f"`{k}` = {best_of} samples x {len(prompts)} prompts = {rows} rows; this server runs at "
                           f"most {limits.max_batch_rows} per request: lower `{k}` or send fewer prompts.", k)
    gflops = request_gflops(engine, prompts, [len(x) for x in ids], sampler, guidance, track_reward=canvas,
                            search=search)
    culprit = ("best_of" if best_of > n else "n" if n > 1 else
               "guidance.inner_steps" if guidance.guided and "inner_steps" in extra_g else
               "sampler.steps" if "steps" in extra_s else length_field)
    M = guidance.inner_steps if guidance.guided else 0
    _check_budget(engine, gflops, culprit, f"{rows} rows x T = {sampler.steps} steps of L = {length} slots, M = {M}")
    return ParsedRequest(chat, tuple(prompts), tuple(ids), sampler, guidance, n, search, seeded, stops, stream,
                         include_usage, canvas, float(resolved.entropy_temperature), echo, gflops)


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
