"""A bounded queue of requests, two lanes of workers and a gate that interleaves their batches step by step.

Requests with equal configs (seed included) are batched into one :func:`entrgi.generate` call; every row has
its own random stream, so a request gets the same tokens alone or batched. Unseeded requests share one fresh
seed per batch and never share a batch with the same prompt.

Guided requests (the reward model's gradient at each step) and plain ones queue in separate lanes, each with
one worker thread, so at most two batches are in flight. The :class:`StepGate` lets one of them run model
work at a time and, at every denoising step, hands the turn to the batch that has used the least time: while
both lanes have work each gets half of the time, so a cheap request is not starved behind guided ones.

A batch stops as soon as none of its requests is waited for (disconnects, time limits) or the server stops:
the per-step callback checks it, and so does a forward pre-hook on every module of the served models, so a
long guided step stops within one model call (docs/serving.md).
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
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..guidance.mixing import entropy_weight
from ..sampling.sampler import generate
from .cost import is_canvas
from .engine import Engine
from .schemas import ParsedRequest, RequestError

log = logging.getLogger("entrgi.serve")
_MISSING = object()
#: The scheduler's lanes: unguided work and guided work, one batch each at a time.
LANES = ("plain", "guided")


def state_field(state: Any, name: str) -> Any:
    """One field of the sampler's per-step callback state (an object with attributes, or a dict)."""
    value = getattr(state, name, _MISSING) if not isinstance(state, Mapping) else _MISSING
    return state[name] if value is _MISSING else value


def _row_index(row: Any) -> tuple[int, int]:
    """(prompt index, sample index) of a row of the callback state."""
    if hasattr(row, "prompt_index"):
        return int(row.prompt_index), int(row.sample_index)
    return int(row[0]), int(row[1])


# ---- stopping the work --------------------------------------------------------------------------------
class Aborted(BaseException):
    """Raised inside a batch's model calls once it must stop (a BaseException, so no ``except Exception`` in the
    sampler swallows it)."""


_local = threading.local()


def _check_abort(module: nn.Module, args: Any) -> None:
    """The forward pre-hook: raise :class:`Aborted` when this thread's batch must stop."""
    should_stop = getattr(_local, "should_stop", None)
    if should_stop is not None and should_stop():
        raise Aborted


@contextmanager
def abort_check(should_stop: Callable[[], bool]):
    """Within the block, the served models' forwards in this thread raise :class:`Aborted` once ``should_stop()``."""
    _local.should_stop = should_stop
    try:
        yield
    finally:
        _local.should_stop = None


def install_abort_hooks(*models: Any) -> list:
    """A forward pre-hook on every submodule of ``models`` (the non-modules are skipped); returns the handles."""
    handles = []
    for m in models:
        if isinstance(m, nn.Module):
            handles += [sub.register_forward_pre_hook(_check_abort) for sub in m.modules()]
    return handles


class StepGate:
    """One batch at a time runs model work; at each step the waiting batch that has used the least time goes
    next (a newcomer starts at the least time used so far)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._used: dict[object, float] = {}
        self._holder: object | None = None
        self._since = 0.0

    def enter(self, who: object) -> None:
        with self._cond:
            self._used[who] = min(self._used.values(), default=0.0)
            self._wait_turn(who)

    def switch(self, who: object) -> None:
        """Between two steps: let a batch that has used less time run first."""
        with self._cond:
            self._release(who)
            self._wait_turn(who)

    def leave(self, who: object) -> None:
        with self._cond:
            if self._holder is who:
                self._release(who)
            self._used.pop(who, None)
            self._cond.notify_all()

    def _release(self, who: object) -> None:
        self._used[who] += time.monotonic() - self._since
        self._holder = None
        self._cond.notify_all()

    def _wait_turn(self, who: object) -> None:
        while self._holder is not None or min(self._used, key=self._used.__getitem__) is not who:
            self._cond.wait()
        self._holder, self._since = who, time.monotonic()


# ---- jobs ---------------------------------------------------------------------------------------------
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
    deadline: float = math.inf  # the time limit: its batch stops once every request in it is past its own
    cancelled: bool = False
    weights: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (prompt, sample) -> per slot

    @property
    def key(self) -> tuple:
        sampler = self.req.sampler if self.req.seeded else dataclasses.replace(self.req.sampler, seed=0)
        return sampler, self.req.guidance, self.req.search, self.req.seeded, self.req.canvas_events

    @property
    def rows(self) -> int:
        return self.req.rows

    @property
    def lane(self) -> str:
        return self.req.lane

    def waited_for(self, now: float) -> bool:
        return not self.cancelled and now < self.deadline

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
    if fut.done():
        return
    if error is None:
        fut.set_result(value)
        return
    fut.set_exception(error)
    fut.exception()  # retrieved: a request nobody waits for any more must not log "never retrieved"


# ---- the scheduler -------------------------------------------------------------------------------------
class Scheduler:
    """The queue (at most ``limits.max_queue`` waiting requests), one worker per lane and the step gate."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.limits = engine.limits
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: dict[str, list[Job]] = {lane: [] for lane in LANES}
        self._held = False
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._hooks: list = []
        self.gate = StepGate()
        self._batch_s = 1.0  # running mean of a batch's wall time (for Retry-After)
        self.counters = {"requests": 0, "completed": 0, "batches": 0, "rejected": 0, "cancelled": 0,
                         "timeouts": 0, "aborted_batches": 0, "failed": 0}

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stopping = False
        self._hooks = install_abort_hooks(self.engine.model, self.engine.reward)
        self._threads = [threading.Thread(target=self._work, args=(lane,), name=f"entrgi-serve-{lane}", daemon=True)
                         for lane in LANES]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.finish(None, RequestError("the server is shutting down.", status=503, type="server_error"))
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def hold(self) -> None:
        """Stop taking new batches (the running ones finish); requests keep queueing. For maintenance/tests."""
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
        job.deadline = job.submitted + self.limits.timeout_s
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
        a running batch stops at once when none of its requests is waited for."""
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
            lanes = {lane: {"queued": sum(j.lane == lane for j in self._waiting), "running": len(self._running[lane])}
                     for lane in LANES}
            return {"queued": len(self._waiting), "running": sum(len(r) for r in self._running.values()),
                    "held": self._held, "batching": self.limits.batching, "max_queue": self.limits.max_queue,
                    "lanes": lanes, **self.counters}

    # ---- the workers ---------------------------------------------------------------------------------
    def _take(self, lane: str) -> list[Job]:
        """Wait for work in ``lane``, then take its oldest request and the compatible ones queued after it."""
        def ready() -> bool:
            return self._stopping or (not self._held and any(j.lane == lane for j in self._waiting))

        with self._cond:
            self._cond.wait_for(ready)
            if self._stopping:
                return []
        if self.limits.batching and self.limits.batch_wait_s > 0:
            time.sleep(self.limits.batch_wait_s)  # let simultaneous requests arrive
        with self._cond:
            mine = [j for j in self._waiting if j.lane == lane]
            if self._stopping or self._held or not mine:
                return []
            first = mine[0]
            self._waiting.remove(first)
            jobs, rows, prompts = [first], first.rows, set(first.req.prompt_ids)
            if self.limits.batching:
                for job in mine[1:]:
                    if job.key != first.key or rows + job.rows > self.limits.max_batch_rows:
                        continue
                    if not first.req.seeded and prompts & set(job.req.prompt_ids):
                        continue  # same prompt, same fresh seed: would repeat the text
                    jobs.append(job)
                    rows += job.rows
                    prompts.update(job.req.prompt_ids)
                    self._waiting.remove(job)
            self._running[lane] = jobs
        return jobs

    def _work(self, lane: str) -> None:
        while True:
            jobs = self._take(lane)
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
                    self._running[lane] = []

    def _should_stop(self, jobs: list[Job]) -> Callable[[], bool]:
        def should_stop() -> bool:
            now = time.monotonic()
            return self._stopping or not any(j.waited_for(now) for j in jobs)
        return should_stop

    def _run(self, jobs: list[Job]) -> None:
        start = time.monotonic()
        req0 = jobs[0].req
        seed = req0.sampler.seed if req0.seeded else secrets.randbits(63)
        sampler = dataclasses.replace(req0.sampler, seed=seed)
        prompts = [p for j in jobs for p in j.req.prompts]
        owner: list[tuple[Job, int]] = [(j, i) for j in jobs for i in range(len(j.req.prompts))]
        should_stop = self._should_stop(jobs)
        for j in jobs:
            j.mark_started()
        engine = self.engine
        turn = object()
        try:
            with abort_check(should_stop):
                self.gate.enter(turn)
                try:
                    if should_stop():
                        raise Aborted
                    out = generate(engine.model, prompts, engine.reward, sampler=sampler, guidance=req0.guidance,
                                   search=req0.search,
                                   progress=False, trace=False, track_reward=req0.canvas_events,
                                   callback=self._callback(jobs, owner, turn, should_stop))
                finally:
                    self.gate.leave(turn)
        except Aborted:
            self._aborted(jobs)
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
        self._finished(jobs, out, seed, start)

    def _aborted(self, jobs: list[Job]) -> None:
        with self._cond:
            self.counters["aborted_batches"] += 1
        for j in jobs:  # cancelled or past their time limit, unless the server is stopping
            if self._stopping:
                error = RequestError("the server is shutting down.", status=503, type="server_error")
            elif j.cancelled:
                error = RequestError("the request was cancelled.", status=499)
            else:
                error = RequestError("the request was stopped at its time limit.", status=504, type="timeout",
                                     code="timeout")
            j.finish(None, error)

    def _finished(self, jobs: list[Job], out: Any, seed: int, start: float) -> None:
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
            self.counters["completed"] += sum(not j.cancelled for j in jobs)
            self._batch_s = 0.8 * self._batch_s + 0.2 * run_s

    def _callback(self, jobs: list[Job], owner: list[tuple[Job, int]], turn: object,
                  should_stop: Callable[[], bool]):
        """The per-step callback: send canvas snapshots to streamed requests, let the other lane take a turn,
        stop when nobody waits."""
        # a canvas model (DiffusionGemma) has no masked slots to release progressively: its text comes at the end
        streamed = [j for j in jobs if j.events is not None] if not is_canvas(self.engine.model) else []
        canvas = any(j.req.canvas_events for j in jobs)
        mask_id = self.engine.model.mask_token_id
        temperature = jobs[0].req.entropy_temperature

        def callback(step: int, state: Any) -> None:
            if should_stop():
                raise Aborted
            if any(not j.cancelled for j in streamed):
                self._post_step(step, state, owner, streamed, canvas, mask_id, temperature)
            self.gate.switch(turn)
            if should_stop():
                raise Aborted

        return callback

    @staticmethod
    def _post_step(step: int, state: Any, owner: list[tuple[Job, int]], streamed: list[Job], canvas: bool,
                   mask_id: int, temperature: float) -> None:
        """One step's snapshot of each streamed request's rows."""
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
