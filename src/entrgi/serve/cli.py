"""``entrgi serve``: load one DLLM + RM pair (default: the embedded pair) and serve it over HTTP."""

from __future__ import annotations

import argparse
import errno
import os
import socket

from ..dtypes import DTYPES

API_KEY_ENV = "ENTRGI_API_KEY"


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``entrgi`` command's subparsers."""
    from ..presets import list_presets
    from .engine import AUTO_BUDGET_FACTOR, ServerLimits

    d = ServerLimits()
    s = subparsers.add_parser("serve", help="OpenAI-compatible guided-generation server with a live page "
                                            "(default: the embedded pair, offline).")
    g = s.add_argument_group("models (default: the embedded default pair)")
    g.add_argument("--model", help="Diffusion LM: hub id or local folder.")
    g.add_argument("--family", help="Model family adapter (default: detected from the config).")
    g.add_argument("--reward", help="Reward model (HF sequence classifier); without it only unguided sampling is served.")
    g.add_argument("--reward-template", default="auto", choices=["auto", "chat", "plain", "response"])
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available).")
    g.add_argument("--dtype", default=None, choices=list(DTYPES), help="Weights dtype (default: the checkpoint's).")
    g.add_argument("--served-model-name", help="The `model` clients pass (default: --model, or "
                                               "entrgi-default-pair).")
    r = s.add_argument_group("defaults of a request (its own `guidance` / `sampler` fields override them)")
    r.add_argument("--preset", default=None,
                   help=f"Start every request from this preset ({', '.join(list_presets())} or a plugin's); a "
                        "request's `guidance.preset` replaces it.")
    r.add_argument("--method", default=None, help="Default method: a guidance rule (entrgi, aps, expectation...), none, "
                                                  "particles... (default: entrgi with a reward model, none without).")
    r.add_argument("--stream-block-length", type=int, default=4,
                   help="Streamed requests without `sampler.block_length` decode in blocks of about this many tokens "
                        "(text arrives block by block); 0 = no blocks (default: %(default)s).")
    n = s.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1, this machine only).")
    n.add_argument("--port", type=int, default=8000)
    n.add_argument("--api-key", default=None, help=f"Require `Authorization: Bearer KEY` on every route but /health "
                                                   f"(default: ${API_KEY_ENV} if set).")
    n.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="Allow browser pages from ORIGIN (e.g. http://localhost:3000) to call the API; repeatable; "
                        "'*' for any. Off by default.")
    n.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    q = s.add_argument_group("queue and limits")
    q.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="Waiting requests before 429 (default: %(default)s).")
    q.add_argument("--max-batch-rows", type=int, default=d.max_batch_rows,
                   help="Rows (prompt x sample) per sampler batch and per request (default: %(default)s).")
    q.add_argument("--no-batching", action="store_true", help="Run one request per sampler batch.")
    q.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_s * 1000,
                   help="Wait for compatible requests after the first (default: %(default)s).")
    q.add_argument("--timeout", type=float, default=d.timeout_s, help="Seconds before a request answers 504 and "
                                                                      "its work stops (default: %(default)s).")
    q.add_argument("--max-request-gflops", default="auto",
                   help="Refuse (400) a request whose estimated work (the cost count, docs/performance.md) exceeds "
                        f"this many GFLOP; auto = {AUTO_BUDGET_FACTOR}x the server's default request; off = no "
                        "budget (default: %(default)s).")
    q.add_argument("--max-inner-steps", type=int, default=d.max_inner_steps,
                   help="Cap on guidance.inner_steps (default: %(default)s).")
    q.add_argument("--min-vocab-chunk", type=int, default=d.min_vocab_chunk,
                   help="Smallest guidance.vocab_chunk (default: %(default)s).")
    q.add_argument("--max-tokens", type=int, default=d.max_tokens, help="Cap on max_tokens (default: %(default)s).")
    q.add_argument("--max-steps", type=int, default=d.max_steps, help="Cap on sampler.steps (default: %(default)s).")
    q.add_argument("--max-samples", type=int, default=d.max_samples, help="Cap on n / best_of (default: %(default)s).")
    q.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="Larger bodies answer 413.")
    s.set_defaults(func=cmd_serve)
    return s


def parse_budget(value: str) -> float | None:
    """``--max-request-gflops``: auto (None), off (inf) or a positive number of GFLOP."""
    if value == "auto":
        return None
    if value == "off":
        return float("inf")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"`--max-request-gflops` must be auto, off or a number of GFLOP, got {value!r}.") from None


def limits_from_args(args: argparse.Namespace):
    from .engine import ServerLimits

    fields = {"max_queue": args.max_queue, "max_batch_rows": args.max_batch_rows, "batching": not args.no_batching,
              "batch_wait_s": args.batch_wait_ms / 1000, "timeout_s": args.timeout, "max_tokens": args.max_tokens,
              "max_steps": args.max_steps, "max_samples": args.max_samples, "max_body_bytes": args.max_body_bytes,
              "max_request_gflops": parse_budget(args.max_request_gflops), "max_inner_steps": args.max_inner_steps,
              "min_vocab_chunk": args.min_vocab_chunk}
    try:
        return ServerLimits(**fields)
    except ValueError as e:  # name the flag, not the field
        msg = str(e)
        for name in fields:
            flag = {"batching": "--no-batching", "batch_wait_s": "--batch-wait-ms",
                    "timeout_s": "--timeout"}.get(name, "--" + name.replace("_", "-"))
            msg = msg.replace(f"`{name}`", f"`{flag}`")
        raise ValueError(msg) from None


def request_defaults_from_args(args: argparse.Namespace) -> dict:
    """``--preset``, ``--method`` and ``--stream-block-length`` as :func:`~entrgi.serve.engine.load_engine`'s
    keywords (checked before any model loads)."""
    from ..presets import get_preset
    from ..settings import method_fields

    if args.method is not None:
        try:
            method_fields(args.method)
        except ValueError as e:
            raise ValueError(str(e).replace("`method`", "`--method`")) from None
    if args.preset is not None:
        try:
            get_preset(args.preset)
        except ValueError as e:
            raise ValueError(f"`--preset`: {e}") from None
    if args.stream_block_length < 0:
        raise ValueError(f"`--stream-block-length` must be >= 0 (0 = no blocks), got {args.stream_block_length}.")
    return {"preset": args.preset, "method": args.method, "stream_block_length": args.stream_block_length or None}


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model is loaded: a busy port is one clear error."""
    if not 0 <= port <= 65535:
        raise ValueError(f"`--port` must be in [0, 65535], got {port}.")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is already in use: pick another with `--port`.") from None
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}): check `--host` / `--port`.") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ValueError(f"the server needs the `serve` extra ({e.name} is missing): "
                         "pip install 'entrgi[serve]'.") from None
    import torch

    from ..config import method_name
    from ..pair import check_device
    from .app import create_app
    from .engine import load_engine

    limits = limits_from_args(args)
    defaults = request_defaults_from_args(args)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and not api_key.strip():
        raise ValueError("`--api-key` is empty: give a key, or leave it out for no key.")
    check_device(args.device)  # one line for a device this machine lacks, before the socket or any model
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model is not None and args.reward is None:
        print("entrgi serve: no --reward: serving unguided sampling only (guidance rule 'none').")
    sock = bind_socket(args.host, args.port)
    try:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        engine = load_engine(args.model, args.reward, family=args.family, reward_template=args.reward_template,
                             device=device, dtype=dtype, served_model_name=args.served_model_name, limits=limits,
                             **defaults)
        app = create_app(engine, api_key=api_key, cors_origins=args.cors_origin)
        host = f"[{args.host}]" if ":" in args.host else args.host
        settings = engine.defaults()
        print(f"entrgi serve: {engine.model_id} on http://{host}:{sock.getsockname()[1]}  (page: /, API: /v1, "
              f"key: {'required' if api_key else 'none'})\n"
              f"entrgi serve: default request: method {method_name(settings.guidance, settings.search)}, preset "
              f"{engine.preset or 'none'}, L = {settings.sampler.max_new_tokens}, T = {settings.sampler.steps}; "
              f"budget {engine.budget_gflops:,.0f} GFLOP per request", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
