"""A bounded queue of requests and one worker thread that runs them in sampler batches.

Requests with equal configs (seed included) are batched into one :func:`entrgi.generate` call; every row has
its own random stream, so a request gets the same tokens alone or batched. Unseeded requests share one fresh
seed per batch and never share a batch with the same prompt. Batches whose requests have all gone stop at
the next denoising step (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..guidance.mixing import entropy_weight
from ..sampling.sampler import generate
from .engine import Engine
from .schemas import ParsedRequest, RequestError

log = logging.getLogger("entrgi.serve")
_MISSING = object()


def state_field(state: Any, name: str) -> Any:
    """One field of the sampler's per-step callback state (an object with attributes, or a dict)."""
    value = getattr(state, name, _MISSING) if not isinstance(state, Mapping) else _MISSING
    return state[name] if value is _MISSING else value


def _row_index(row: Any) -> tuple[int, int]:
    """(prompt index, sample index) of a row of the callback state."""
    if hasattr(row, "prompt_index"):
        return int(row.prompt_index), int(row.sample_index)
    return int(row[0]), int(row[1])


class _Abort(Exception):
    """Raised from the callback to stop a batch nobody waits for any more."""


@dataclass
class JobResult:
    """What a request gets back: its samples (``samples[i][k]``, prompt i of the request) and bookkeeping."""

    samples: list[list[Any]]
    seed: int
    usage: dict[str, int]  # this request's share of the batch's model calls (rows)
    batch_requests: int
    batch_rows: int
    queue_s: float
    run_s: float


@dataclass(eq=False)
class Job:
    """One request in the scheduler. The worker thread reports to the request's event loop."""

    req: ParsedRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    started: asyncio.Future
    events: asyncio.Queue | None  # ("step", snapshot) ... ("end", None): streamed requests only
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    weights: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (prompt, sample) -> per slot

    @property
    def key(self) -> tuple:
        sampler = self.req.sampler if self.req.seeded else dataclasses.replace(self.req.sampler, seed=0)
        return sampler, self.req.guidance, self.req.search, self.req.seeded, self.req.canvas_events

    @property
    def rows(self) -> int:
        return self.req.rows

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening
            pass

    def post(self, item: tuple[str, Any]) -> None:
        if self.events is not None:
            self._call(self.events.put_nowait, item)

    def mark_started(self) -> None:
        self._call(_resolve, self.started, True, None)

    def finish(self, result: JobResult | None, error: BaseException | None = None) -> None:
        def done() -> None:
            _resolve(self.started, True, None)
            _resolve(self.future, result, error)
            if self.events is not None:
                self.events.put_nowait(("end", None))
        self._call(done)


def _resolve(fut: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if not fut.done():
        fut.set_exception(error) if error is not None else fut.set_result(value)


class Scheduler:
    """The queue (at most ``limits.max_queue`` waiting requests) and its worker thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.limits = engine.limits
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._held = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch_s = 1.0  # running mean of a batch's wall time (for Retry-After)
        self.counters = {"requests": 0, "completed": 0, "batches": 0, "rejected": 0, "cancelled": 0,
                         "timeouts": 0, "aborted_batches": 0, "failed": 0}

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="entrgi-serve-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.finish(None, RequestError("the server is shutting down.", status=503, type="server_error"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def hold(self) -> None:
        """Stop taking new batches (the running one finishes); requests keep queueing. For maintenance/tests."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    # ---- requests ----------------------------------------------------------------------------------
    def submit(self, req: ParsedRequest) -> Job:
        """Queue a request (call from the event loop). A full queue raises a 429 :class:`RequestError`."""
        loop = asyncio.get_running_loop()
        job = Job(req, loop, loop.create_future(), loop.create_future(), asyncio.Queue() if req.stream else None)
        with self._cond:
            if self._stopping:
                raise RequestError("the server is shutting down.", status=503, type="server_error")
            if len(self._waiting) >= self.limits.max_queue:
                self.counters["rejected"] += 1
                wait = max(1, math.ceil(self._batch_s))  # about when the running batch ends
                raise RequestError(f"the queue is full ({self.limits.max_queue} requests waiting); retry after "
                                   f"{wait} s.", status=429, type="rate_limit_error", code="queue_full",
                                   headers={"Retry-After": str(wait)})
            self._waiting.append(job)
            self.counters["requests"] += 1
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """The request is no longer waited for (``reason``: cancelled or timeouts): free its queue slot;
        a running batch stops at its next step once none of its requests is waited for."""
        with self._cond:
            if job.cancelled or job.future.done():
                return
            job.cancelled = True
            self.counters[reason] += 1
            try:
                self._waiting.remove(job)
            except ValueError:
                pass
        job.finish(None, RequestError("the request was cancelled.", status=499))

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"queued": len(self._waiting), "running": len(self._running), "held": self._held,
                    "batching": self.limits.batching, "max_queue": self.limits.max_queue, **self.counters}

    # ---- the worker --------------------------------------------------------------------------------
    def _take(self) -> list[Job]:
        """Wait for work, then take the oldest request and the compatible ones queued after it."""
        with self._cond:
            while not self._stopping and (self._held or not self._waiting):
                self._cond.wait()
            if self._stopping:
                return []
        if self.limits.batching and self.limits.batch_wait_s > 0:
            time.sleep(self.limits.batch_wait_s)  # let simultaneous requests arrive
        with self._cond:
            if self._stopping or self._held or not self._waiting:
                return []
            first = self._waiting.popleft()
            jobs, rows, prompts = [first], first.rows, set(first.req.prompts)
            if self.limits.batching:
                key = first.key
                for job in list(self._waiting):
                    if job.key != key or rows + job.rows > self.limits.max_batch_rows:
                        continue
                    if not first.req.seeded and prompts & set(job.req.prompts):
                        continue  # same prompt, same fresh seed: would repeat the text
                    jobs.append(job)
                    rows += job.rows
                    prompts.update(job.req.prompts)
                    self._waiting.remove(job)
            self._running = jobs
        return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                with self._cond:
                    if self._stopping:
                        return
                continue
            try:
                self._run(jobs)
            except Exception:  # never let the worker die
                log.exception("batch failed")
            finally:
                with self._cond:
                    self._running = []

    def _run(self, jobs: list[Job]) -> None:
        start = time.monotonic()
        req0 = jobs[0].req
        seed = req0.sampler.seed if req0.seeded else secrets.randbits(63)
        sampler = dataclasses.replace(req0.sampler, seed=seed)
        prompts = [p for j in jobs for p in j.req.prompts]
        owner: list[tuple[Job, int]] = [(j, i) for j in jobs for i in range(len(j.req.prompts))]
        for j in jobs:
            j.mark_started()
        engine = self.engine
        try:
            out = generate(engine.model, prompts, engine.reward, sampler=sampler, guidance=req0.guidance,
                           search=req0.search,
                           progress=False, trace=False, track_reward=req0.canvas_events,
                           callback=self._callback(jobs, owner))
        except _Abort:
            with self._cond:
                self.counters["aborted_batches"] += 1
            for j in jobs:  # (all cancelled, unless the server is stopping)
                j.finish(None, RequestError("the server is shutting down.", status=503, type="server_error"))
            return
        except ValueError as e:  # a mistake the request checks did not catch: still the client's, a 400
            if len(jobs) > 1:  # find whose: run them one by one
                for j in jobs:
                    self._run([j])
                return
            jobs[0].finish(None, RequestError(str(e)))
            return
        except Exception as e:
            log.exception("generate failed")
            with self._cond:
                self.counters["failed"] += len(jobs)
            for j in jobs:
                j.finish(None, RequestError(f"internal error: {type(e).__name__}: {e}", status=500,
                                            type="server_error"))
            return
        run_s = time.monotonic() - start
        total = sum(j.rows for j in jobs)
        stats = out.stats
        lo = 0
        for j in jobs:
            n_p = len(j.req.prompts)
            share = {k: int(round(getattr(stats, k) * j.rows / total))
                     for k in ("dllm_forwards", "rm_forwards", "rm_backwards")}
            j.finish(JobResult(out.samples[lo:lo + n_p], seed, share, len(jobs), total, start - j.submitted, run_s))
            lo += n_p
        with self._cond:
            self.counters["batches"] += 1
            self.counters["completed"] += len(jobs)
            self._batch_s = 0.8 * self._batch_s + 0.2 * run_s

    def _callback(self, jobs: list[Job], owner: list[tuple[Job, int]]):
        """The per-step callback: stop an abandoned batch; send canvas snapshots to streamed requests."""
        streamed = [j for j in jobs if j.events is not None]
        canvas = any(j.req.canvas_events for j in jobs)
        mask_id = self.engine.model.mask_token_id
        temperature = jobs[0].req.entropy_temperature

        def callback(step: int, state: Any) -> None:
            if self._stopping or all(j.cancelled for j in jobs):
                raise _Abort
            if not any(not j.cancelled for j in streamed):
                return
            x, P = state_field(state, "x"), int(state_field(state, "prompt_length"))
            resp = x[:, P:].tolist()
            before = state_field(state, "masked").tolist()
            committed = state_field(state, "committed").tolist()
            estimate = state_field(state, "estimate")
            estimate = estimate.tolist() if estimate is not None else None
            w = entropy_weight(state_field(state, "logits"), temperature).tolist() if canvas else None
            per_job: dict[int, list[dict[str, Any]]] = {}
            for b, row in enumerate(state_field(state, "rows")):
                pi, k = _row_index(row)
                job, local = owner[pi]
                if job.events is None or job.cancelled or k >= job.req.n:
                    continue
                snap: dict[str, Any] = {"prompt": local, "sample": k, "ids": resp[b],
                                        "masked": [t == mask_id for t in resp[b]],
                                        "committed": [i for i, c in enumerate(committed[b]) if c]}
                if job.req.canvas_events:
                    frozen = job.weights.setdefault((local, k), [0.0] * len(resp[b]))
                    slots = [i for i, m in enumerate(before[b]) if m]
                    for i in slots:
                        frozen[i] = float(w[b][i])
                    snap["weights"] = list(frozen)
                    snap["mean_weight"] = (sum(w[b][i] for i in slots) / len(slots)) if slots else None
                    snap["estimate"] = None if estimate is None else float(estimate[b])
                per_job.setdefault(id(job), []).append(snap)
            for job in streamed:
                if id(job) in per_job:
                    job.post(("step", {"step": step, "rows": per_job[id(job)]}))

        return callback
