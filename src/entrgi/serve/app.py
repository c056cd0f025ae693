"""The FastAPI app: OpenAI-compatible endpoints, health, the live page, and a server in a thread.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``
(``/v1/models/{id}``), ``GET /health`` and the page at ``/``. With an API key every route but
``/health`` and the page (static HTML; it asks for the key and sends it as a header, never in a URL)
needs ``Authorization: Bearer <key>``. ``cors_origins`` adds CORS headers for those origins (none by
default). Every refused request answers an OpenAI-style ``{"error": {...}}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..version import __version__
from .engine import Engine
from .scheduler import Job, JobResult, Scheduler
from .schemas import (
    ParsedRequest,
    RequestError,
    apply_stop,
    choice_payload,
    chunk_choice,
    chunk_payload,
    finish_reason,
    new_id,
    parse_request,
    response_payload,
)
from .streaming import ChoiceStream, CompletionText, TokenText, canvas_choice, rescored_differently

log = logging.getLogger("entrgi.serve")
PAGE = Path(__file__).resolve().parent / "static" / "index.html"


def _error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def read_json(request: Request, limit: int) -> Any:
    """The parsed JSON body; 413 past ``limit`` bytes (checked while reading), 400 if it is not JSON."""
    declared = request.headers.get("content-length")
    too_big = RequestError(f"the request body is larger than the server's limit of {limit} bytes.", status=413,
                           code="body_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise too_big
    if not buf.strip():
        raise RequestError("the request body is empty: send a JSON object.")
    try:
        return json.loads(buf)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}.") from None
    except RecursionError:
        raise RequestError("the request body nests too deeply to parse.", code="body_too_deep") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _ClientGone(Exception):
    pass


def create_app(engine: Engine, scheduler: Scheduler | None = None, api_key: str | None = None,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """The server's ASGI app around a loaded :class:`~entrgi.serve.engine.Engine`; ``cors_origins``: the
    browser origins allowed to call the API from their pages (``--cors-origin``; none by default)."""
    sched = scheduler or Scheduler(engine)
    limits = engine.limits
    token_text = TokenText(engine.model.tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sched.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, sched.stop)

    app = FastAPI(title="entrgi serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine, app.state.scheduler = engine, sched
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)

    def auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else None
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError("missing or wrong API key: send `Authorization: Bearer <key>`.", status=401,
                               code="invalid_api_key")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found" if err.status_code == 404 else None
        msg = f"no route {request.method} {request.url.path}" if err.status_code in (404, 405) else str(err.detail)
        return _error_response(RequestError(msg, status=err.status_code, code=kind))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error")
        return _error_response(RequestError(f"internal error: {type(err).__name__}", status=500, type="server_error"))

    secured = [Depends(auth)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model_id, **sched.status()}

    @app.get("/v1/models", dependencies=secured)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [engine.model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=secured)
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_id:
            raise RequestError(f"the model `{model_id}` does not exist: this server serves `{engine.model_id}`.",
                               "model", 404, code="model_not_found")
        return engine.model_card()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:  # static, no secrets: behind a key it asks for the key itself
        return HTMLResponse(PAGE.read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})

    @app.post("/v1/completions", dependencies=secured)
    async def completions(request: Request):
        return await _handle(request, chat=False)

    @app.post("/v1/chat/completions", dependencies=secured)
    async def chat_completions(request: Request):
        return await _handle(request, chat=True)

    async def _handle(request: Request, chat: bool):
        req = parse_request(await read_json(request, limits.max_body_bytes), engine, chat=chat)
        job = sched.submit(req)
        deadline = job.deadline
        try:
            if req.stream:  # answer only once it runs, so that a queue timeout is still a 504
                await _wait(request, job, job.started, deadline)
                return StreamingResponse(_stream(job, deadline), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            result = await _wait(request, job, job.future, deadline)
        except _ClientGone:
            return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled"}}, 499)
        return JSONResponse(_response(req, result))

    async def _wait(request: Request, job: Job, target: asyncio.Future, deadline: float) -> Any:
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({target, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if target in done:
                return target.result()
            if gone in done:
                sched.cancel(job, "cancelled")
                raise _ClientGone
            sched.cancel(job, "timeouts")
            raise _timeout()
        finally:
            gone.cancel()

    def _timeout() -> RequestError:
        return RequestError(f"the request did not finish within the server's limit of {limits.timeout_s:g} s "
                            "(queue + sampling): ask for fewer tokens, samples or steps, or retry later.",
                            status=504, type="timeout", code="timeout")

    def _texts(req: ParsedRequest) -> list[CompletionText]:
        return [CompletionText(engine.model, ids, req.chat) for ids in req.prompt_ids]

    def _choices(req: ParsedRequest, result: JobResult, echo: bool) -> tuple[list[dict[str, Any]], list[Any], int]:
        """The choices (text, finish reason, reward), the samples they show, and the completion tokens."""
        choices, shown, completion_tokens = [], [], 0
        L = req.sampler.max_new_tokens
        for i, (group, text_of) in enumerate(zip(result.samples, _texts(req))):
            # a canvas model returns whole canvases: the answer is its first L slots (the reward scored them all)
            lengths = {id(s): len(engine.model.response_ids(s.token_ids[:L])) for s in group}
            completion_tokens += sum(lengths.values())
            picked = group
            if req.best_of > req.n and all(s.reward is not None for s in group):
                picked = sorted(group, key=lambda s: -s.reward)[:req.n]
            for j, s in enumerate(picked[:req.n]):
                text, stopped = apply_stop(text_of(s.token_ids[:L]), req.stop)
                if echo:
                    text = req.prompts[i] + text
                choices.append(choice_payload(req, i * req.n + j, text, finish_reason(lengths[id(s)], L, stopped),
                                              s.reward))
                shown.append(s)
        return choices, shown, completion_tokens

    def _usage(req: ParsedRequest, result: JobResult, completion_tokens: int) -> dict[str, Any]:
        prompt_tokens = sum(req.prompt_tokens)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens, **result.usage}

    def _info(req: ParsedRequest, result: JobResult) -> dict[str, Any]:
        return {"seed": result.seed, "seeded": req.seeded, "sampler": {**req.sampler.to_dict(), "seed": result.seed},
                "guidance": req.guidance.to_dict(), "search": req.search.to_dict(),
                "batch_requests": result.batch_requests,
                "batch_rows": result.batch_rows, "queue_s": round(result.queue_s, 4),
                "run_s": round(result.run_s, 4), "chat_template": engine.chat_template, "lane": req.lane,
                "estimated_gflops": round(req.gflops, 3), "prompt_token_ids": [list(p) for p in req.prompt_ids]}

    def _response(req: ParsedRequest, result: JobResult) -> dict[str, Any]:
        choices, _, completion_tokens = _choices(req, result, req.echo)
        return response_payload(req, engine, new_id(req.chat), choices, _usage(req, result, completion_tokens),
                                _info(req, result))

    async def _stream(job: Job, deadline: float):
        req, rid, created = job.req, new_id(job.req.chat), int(time.time())
        n = req.n
        texts = _texts(req)
        streams = {(i, k): ChoiceStream(texts[i], req.stop) for i in range(len(req.prompts)) for k in range(n)}

        def sse(payload: dict[str, Any], event: str | None = None) -> str:
            head = f"event: {event}\n" if event else ""
            return f"{head}data: {json.dumps(payload, separators=(',', ':'))}\n\n"

        finished = False
        try:
            if req.chat:
                yield sse(chunk_payload(req, engine, rid, created, [chunk_choice(req, i * n + k, "", first=True)
                                                                    for (i, k) in streams]))
            elif req.echo:
                yield sse(chunk_payload(req, engine, rid, created, [chunk_choice(req, i * n + k, req.prompts[i])
                                                                    for (i, k) in streams]))
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    kind, data = await asyncio.wait_for(job.events.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    sched.cancel(job, "timeouts")
                    yield sse(_timeout().body())
                    break
                if kind == "step":
                    deltas = []
                    for snap in data["rows"]:
                        delta = streams[(snap["prompt"], snap["sample"])].update(snap["ids"], snap["masked"])
                        if delta:
                            deltas.append(chunk_choice(req, snap["prompt"] * n + snap["sample"], delta))
                    if deltas:
                        yield sse(chunk_payload(req, engine, rid, created, deltas))
                    if req.canvas_events:
                        eos = engine.model.eos_token_ids
                        yield sse({"step": data["step"], "steps": req.sampler.steps, "choices": [
                            canvas_choice(s, s["prompt"] * n + s["sample"], token_text, eos) for s in data["rows"]]},
                            event="canvas")
                    continue
                try:  # "end"
                    result = job.future.result()
                except RequestError as e:
                    yield sse(e.body())
                    break
                choices, shown, completion_tokens = _choices(req, result, False)
                final = []
                for c, s in zip(choices, shown):
                    i, k = divmod(c["index"], n)
                    text = c["message"]["content"] if req.chat else c["text"]
                    out = chunk_choice(req, c["index"], streams[(i, k)].finish(text), c["finish_reason"], c["reward"])
                    if req.canvas_events:  # why the final reward may differ from the last step's estimate
                        out["rescored_tokens_differ"] = rescored_differently(engine.model, engine.reward,
                                                                             req.prompts[i], s.token_ids, s.text)
                    final.append(out)
                yield sse(chunk_payload(req, engine, rid, created, final))
                if req.include_usage:
                    usage = _usage(req, result, completion_tokens)
                    yield sse({**chunk_payload(req, engine, rid, created, [], usage), "entrgi": _info(req, result)})
                finished = True
                break
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                sched.cancel(job, "cancelled")

    return app


class BackgroundServer:
    """``with BackgroundServer(app) as srv:`` runs uvicorn on ``srv.url`` (127.0.0.1, a free port by default)
    in a thread, until the block ends. For tests, scripts and notebooks."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app, self.host = app, host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        end = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()
