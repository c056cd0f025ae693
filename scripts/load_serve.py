"""Load checks of `entrgi serve` on loopback: batching on/off, unguided latency under a guided load, time to first text.

Every mode starts the server in-process on the embedded default pair (127.0.0.1, a free port; or loads an already
running one with --url), sends the shipped sentence beginnings with one seed and the demo's settings (L = T = 16,
n = 1), and stops itself after --duration seconds or --max-requests requests. It fails unless every request sent got
an HTTP answer and none answered 5xx (a 429 is retried after its Retry-After, counted).

- ``--mode batching`` (default): --clients concurrent clients, batching on and off; p50 / p95 latency, samples per
  second, and the same text for a (prompt, seed) in both modes.
- ``--mode mixed``: --clients unguided clients (method none) alone, then the same clients while --guided-clients
  clients send EntRGi requests; p50 / p95 latency of each kind. Run it against another checkout's code (for
  "before") with ``PYTHONPATH=/that/checkout/src``: it uses only the serve API both have.
- ``--mode ttft``: one request at a time, unguided and EntRGi, non-streamed, streamed with the server's default
  and streamed without blocks (``sampler.block_length: null``); time to the first text and to the end.

    .venv/bin/python scripts/load_serve.py --clients 8 --duration 30 [--method entrgi] [--json out.json]
    .venv/bin/python scripts/load_serve.py --mode mixed --clients 4 --guided-clients 4 --duration 60 --threads 1
    .venv/bin/python scripts/load_serve.py --mode ttft --prompts 8 --threads 1
    .venv/bin/python scripts/load_serve.py --url http://127.0.0.1:8000 ...   # an already running server
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from importlib import resources

import httpx


def prompts() -> list[str]:
    text = (resources.files("entrgi.data") / "prompts" / "continuations.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run_load(url: str, model: str, args: argparse.Namespace, method: str | None = None, clients: int | None = None,
             end: float | None = None) -> dict:
    """``clients`` threads (default ``args.clients``), each sending ``method`` requests until ``end`` (default
    ``args.duration`` s from now) or ``args.max_requests`` in all."""
    method = method or args.method
    clients = clients or args.clients
    pool = prompts()
    lock = threading.Lock()
    state = {"next": 0, "sent": 0, "answered": 0, "ok": 0, "status_4xx": 0, "status_5xx": 0, "retried_429": 0,
             "transport_errors": 0, "samples": 0, "latency": [], "batch_requests": [], "texts": {}}
    end = end or time.monotonic() + args.duration

    def body(prompt: str) -> dict:
        return {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "n": args.n, "seed": args.seed,
                "guidance": {"method": method}}

    def client() -> None:
        with httpx.Client(timeout=args.request_timeout) as http:
            while time.monotonic() < end:
                with lock:
                    if state["sent"] >= args.max_requests:
                        return
                    prompt = pool[state["next"] % len(pool)]
                    state["next"] += 1
                    state["sent"] += 1
                t0 = time.monotonic()
                for _attempt in range(20):  # bounded retries of 429
                    try:
                        r = http.post(url + "/v1/completions", json=body(prompt))
                    except httpx.TransportError:
                        with lock:
                            state["transport_errors"] += 1
                        break
                    if r.status_code == 429:
                        with lock:
                            state["retried_429"] += 1
                        time.sleep(min(5.0, float(r.headers.get("Retry-After", "1"))))
                        continue
                    lat = time.monotonic() - t0
                    with lock:
                        state["answered"] += 1
                        if r.status_code >= 500:
                            state["status_5xx"] += 1
                        elif r.status_code >= 400:
                            state["status_4xx"] += 1
                        else:
                            data = r.json()
                            state["ok"] += 1
                            state["latency"].append(lat)
                            state["samples"] += len(data["choices"])
                            state["batch_requests"].append(data["entrgi"]["batch_requests"])
                            state["texts"][prompt] = [c["text"] for c in data["choices"]]
                    break

    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()) + args.request_timeout + 30)
    wall = time.monotonic() - start
    lat = state["latency"]
    return {"method": method, "clients": clients, "wall_s": round(wall, 2), "sent": state["sent"],
            "answered": state["answered"], "ok": state["ok"], "lost": state["sent"] - state["answered"],
            "status_4xx": state["status_4xx"], "status_5xx": state["status_5xx"], "retried_429": state["retried_429"],
            "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
            "samples_per_s": round(state["samples"] / wall, 3),
            "mean_batch_requests": round(statistics.fmean(state["batch_requests"]), 2) if lat else None,
            "texts": state["texts"]}


def run_mixed(url: str, model: str, args: argparse.Namespace) -> dict[str, dict]:
    """Unguided clients alone, then the same unguided clients alongside guided ones (the same duration each)."""
    out = {"unguided alone": run_load(url, model, args, "none")}
    end = time.monotonic() + args.duration
    results: dict[str, dict] = {}
    guided = threading.Thread(target=lambda: results.update(
        guided=run_load(url, model, args, args.guided_method, args.guided_clients, end)), daemon=True)
    guided.start()
    time.sleep(min(2.0, args.duration / 10))  # the guided load is running when the unguided clients start
    results["unguided"] = run_load(url, model, args, "none", end=end)
    guided.join(args.duration + args.request_timeout + 60)
    out["unguided under guided load"] = results["unguided"]
    out[f"{args.guided_method} (the guided load)"] = results.get("guided") or {"method": args.guided_method, "lost": -1}
    return out


def sse_timing(http: httpx.Client, url: str, body: dict) -> tuple[float, float, str]:
    """(seconds to the first non-empty text, seconds to the end, the text) of one request (streamed or not)."""
    t0 = time.monotonic()
    if not body.get("stream"):
        r = http.post(url + "/v1/completions", json=body)
        r.raise_for_status()
        dt = time.monotonic() - t0
        return dt, dt, r.json()["choices"][0]["text"]
    first, text = None, ""
    with http.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            for c in json.loads(line[5:]).get("choices", []):
                if c.get("text"):
                    text += c["text"]
                    first = first if first is not None else time.monotonic() - t0
    end = time.monotonic() - t0
    return (first if first is not None else end), end, text


def run_ttft(url: str, model: str, args: argparse.Namespace) -> list[dict]:
    """Time to first text vs total, one request at a time, per method and streaming mode."""
    modes = {"not streamed": {}, "streamed (server default)": {"stream": True},
             "streamed, no blocks": {"stream": True, "sampler": {"block_length": None}}}
    rows = []
    with httpx.Client(timeout=args.request_timeout) as http:
        for method in ("none", args.guided_method):
            for name, extra in modes.items():
                first, total = [], []
                for prompt in prompts()[:args.prompts]:
                    body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "seed": args.seed,
                            "guidance": {"method": method}, **extra}
                    f, t, _ = sse_timing(http, url, body)
                    first.append(f)
                    total.append(t)
                ratio = statistics.median([f / t for f, t in zip(first, total)])
                rows.append({"method": method, "mode": name, "requests": len(total),
                             "ttft_p50_s": round(statistics.median(first), 3),
                             "total_p50_s": round(statistics.median(total), 3), "ttft_over_total_p50": round(ratio, 2)})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def load_table(results: dict[str, dict]) -> str:
    head = ("| run | method | clients | requests ok | lost | 5xx | 429 retried | p50 latency (s) | p95 latency (s) | "
            "samples/s | requests per batch |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {m} | {r['method']} | {r['clients']} | {r['ok']} | {r['lost']} | {r['status_5xx']} | "
            f"{r['retried_429']} | {r['p50_s']} | {r['p95_s']} | {r['samples_per_s']} | {r['mean_batch_requests']} |"
            for m, r in results.items()]
    return "\n".join([head, *rows])


def ttft_table(rows: list[dict]) -> str:
    head = ("| method | request | requests | time to first text, p50 (s) | total, p50 (s) | first / total (p50) |\n"
            "|---|---|---|---|---|---|")
    lines = [f"| {r['method']} | {r['mode']} | {r['requests']} | {r['ttft_p50_s']} | {r['total_p50_s']} | "
             f"{r['ttft_over_total_p50']} |" for r in rows]
    return "\n".join([head, *lines])


@contextmanager
def local_server(args: argparse.Namespace, batching: bool = True):
    """The default pair on 127.0.0.1 in this process: ``(url, model id)``."""
    from entrgi.serve.app import BackgroundServer, create_app
    from entrgi.serve.engine import ServerLimits, default_pair_engine

    engine = default_pair_engine("cpu", ServerLimits(max_queue=max(64, 2 * args.clients), timeout_s=args.request_timeout,
                                                     batching=batching))
    with BackgroundServer(create_app(engine)) as srv:
        httpx.post(srv.url + "/v1/completions", timeout=args.request_timeout, json={  # warm-up
            "model": engine.model_id, "prompt": "she was", "max_tokens": args.max_tokens})
        yield srv.url, engine.model_id


@contextmanager
def remote_server(url: str, model: str | None):
    """An already running server: ``(url, model id)`` (its first model unless given)."""
    url = url.rstrip("/")
    yield url, model or httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def failures_of(results: dict[str, dict]) -> list[str]:
    return [f"{m}: {r['lost']} lost, {r.get('status_5xx')} 5xx, {r.get('status_4xx')} other 4xx"
            for m, r in results.items() if r["lost"] or r.get("status_5xx") or r.get("status_4xx") or not r.get("ok")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["batching", "mixed", "ttft"], default="batching")
    p.add_argument("--url", help="Load an already running server instead of starting one.")
    p.add_argument("--model", default=None, help="`model` to send with --url (default: the server's first).")
    p.add_argument("--clients", type=int, default=8, help="Concurrent clients (mixed: the unguided ones).")
    p.add_argument("--guided-clients", type=int, default=4, help="mixed: clients sending guided requests.")
    p.add_argument("--guided-method", default="entrgi", help="mixed / ttft: the guided method (default: entrgi).")
    p.add_argument("--duration", type=float, default=30.0, help="Seconds each run sends requests.")
    p.add_argument("--max-requests", type=int, default=500, help="Requests per run at most.")
    p.add_argument("--prompts", type=int, default=8, help="ttft: prompts per method and mode.")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="entrgi", help="batching: guidance.method of every request.")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the in-process server.")
    p.add_argument("--json", help="Write the results (with the texts) to this file.")
    args = p.parse_args(argv)
    if min(args.clients, args.guided_clients, args.max_requests, args.prompts) < 1 or args.duration <= 0:
        p.error("--clients, --guided-clients, --duration, --max-requests and --prompts must be positive")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", file=sys.stderr)

    def server(batching: bool = True):
        return remote_server(args.url, args.model) if args.url else local_server(args, batching)

    failures: list[str] = []
    if args.mode == "ttft":
        with server() as (url, model):
            rows = run_ttft(url, model, args)
        print(ttft_table(rows))
        out: object = rows
    elif args.mode == "mixed":
        with server() as (url, model):
            results = run_mixed(url, model, args)
        print(load_table(results))
        failures = failures_of(results)
        out = results
    else:
        results = {}
        for mode, batching in ((("server", True),) if args.url else (("batching on", True), ("batching off", False))):
            with server(batching) as (url, model):
                results[mode] = run_load(url, model, args)
            print(f"{mode}: {json.dumps({k: v for k, v in results[mode].items() if k != 'texts'})}", file=sys.stderr)
        print(load_table(results))
        failures = failures_of(results)
        if len(results) == 2:
            on, off = results["batching on"]["texts"], results["batching off"]["texts"]
            differ = [q for q in set(on) & set(off) if on[q] != off[q]]
            print(f"\nsame (prompt, seed) -> same text with and without batching: "
                  f"{len(set(on) & set(off)) - len(differ)} / {len(set(on) & set(off))} prompts")
            if differ:
                failures.append(f"texts differ between the modes for {differ[:3]}")
            gain = results["batching on"]["samples_per_s"] / max(1e-9, results["batching off"]["samples_per_s"])
            print(f"throughput gain of batching: {gain:.2f}x")
        out = results
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
