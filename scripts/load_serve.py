"""Load check of `entrgi serve`: N concurrent clients on loopback for a bounded time, batching on and off.

Starts the server in-process on the embedded default pair (127.0.0.1, a free port), once with batching
and once without, and sends each the same stream of requests (the shipped sentence beginnings, one
seed, the demo's settings). Reports p50 / p95 latency and samples per second per mode, and asserts
that no request was lost (every request sent got an HTTP answer), none answered 5xx, and that a
(prompt, seed) got the same text in both modes. A 429 is retried after its Retry-After (counted).

    .venv/bin/python scripts/load_serve.py --clients 8 --duration 30 [--method entrgi] [--json out.json]
    .venv/bin/python scripts/load_serve.py --url http://127.0.0.1:8000 ...   # an already running server, one mode
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time
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


def run_load(url: str, model: str, args: argparse.Namespace) -> dict:
    """``args.clients`` threads, each sending requests until ``args.duration`` s or ``args.max_requests`` in all."""
    pool = prompts()
    lock = threading.Lock()
    state = {"next": 0, "sent": 0, "answered": 0, "ok": 0, "status_4xx": 0, "status_5xx": 0, "retried_429": 0,
             "transport_errors": 0, "samples": 0, "latency": [], "batch_requests": [], "texts": {}}
    end = time.monotonic() + args.duration

    def body(prompt: str) -> dict:
        return {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "n": args.n, "seed": args.seed,
                "guidance": {"method": args.method}}

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
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + args.request_timeout + 30)
    wall = time.monotonic() - start
    lat = state["latency"]
    return {"clients": args.clients, "wall_s": round(wall, 2), "sent": state["sent"], "answered": state["answered"],
            "ok": state["ok"], "lost": state["sent"] - state["answered"], "status_4xx": state["status_4xx"],
            "status_5xx": state["status_5xx"], "retried_429": state["retried_429"],
            "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
            "samples_per_s": round(state["samples"] / wall, 3),
            "mean_batch_requests": round(statistics.fmean(state["batch_requests"]), 2) if lat else None,
            "texts": state["texts"]}


def table(results: dict[str, dict]) -> str:
    head = ("| mode | clients | requests ok | lost | 5xx | 429 retried | p50 latency (s) | p95 latency (s) | "
            "samples/s | requests per batch |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {m} | {r['clients']} | {r['ok']} | {r['lost']} | {r['status_5xx']} | {r['retried_429']} | "
            f"{r['p50_s']} | {r['p95_s']} | {r['samples_per_s']} | {r['mean_batch_requests']} |"
            for m, r in results.items()]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="Load an already running server (one mode) instead of starting two.")
    p.add_argument("--model", default=None, help="`model` to send with --url (default: the server's first).")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0, help="Seconds each mode sends requests.")
    p.add_argument("--max-requests", type=int, default=500, help="Requests per mode at most.")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="entrgi", help="guidance.method of every request (default: entrgi).")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the in-process server.")
    p.add_argument("--json", help="Write the results (with the texts) to this file.")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1:
        p.error("--clients, --duration and --max-requests must be positive")

    results: dict[str, dict] = {}
    if args.url:
        model = args.model or httpx.get(args.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        results["server"] = run_load(args.url.rstrip("/"), model, args)
    else:
        import torch

        from entrgi.serve.app import BackgroundServer, create_app
        from entrgi.serve.engine import ServerLimits, default_pair_engine

        if args.threads:
            torch.set_num_threads(args.threads)
        base = default_pair_engine("cpu", ServerLimits(max_queue=max(64, 2 * args.clients),
                                                       timeout_s=args.request_timeout))
        for mode, batching in (("batching on", True), ("batching off", False)):
            engine = dataclasses.replace(base, limits=dataclasses.replace(base.limits, batching=batching))
            with BackgroundServer(create_app(engine)) as srv:
                httpx.post(srv.url + "/v1/completions", timeout=120, json={  # warm-up
                    "model": engine.model_id, "prompt": "she was", "max_tokens": args.max_tokens})
                results[mode] = run_load(srv.url, engine.model_id, args)
                print(f"{mode}: {json.dumps({k: v for k, v in results[mode].items() if k != 'texts'})}",
                      file=sys.stderr)
    print(table(results))
    failures = [f"{m}: {r['lost']} lost, {r['status_5xx']} 5xx, {r['status_4xx']} other 4xx"
                for m, r in results.items() if r["lost"] or r["status_5xx"] or r["status_4xx"] or not r["ok"]]
    if len(results) == 2:
        on, off = results["batching on"]["texts"], results["batching off"]["texts"]
        differ = [p for p in set(on) & set(off) if on[p] != off[p]]
        print(f"\nsame (prompt, seed) -> same text with and without batching: {len(set(on) & set(off)) - len(differ)}"
              f" / {len(set(on) & set(off))} prompts")
        if differ:
            failures.append(f"texts differ between the modes for {differ[:3]}")
        gain = results["batching on"]["samples_per_s"] / max(1e-9, results["batching off"]["samples_per_s"])
        print(f"throughput gain of batching: {gain:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
