"""Rewards that are code on text: any Python function of ``(prompt, response)`` as a reward.

:class:`TextReward` wraps a per-item or batched function (sync or ``async``, optionally threaded); scores
come back in input order as finite float32. Never differentiated: it ranks Best-of-N samples, weights
particles and judges results. :func:`load_text_reward` reads the CLI/YAML spelling ``module:function`` or
``path/to/file.py:function`` (docs/rewards.md).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..plugins import import_file, import_module, is_file_spec

BATCHED_ATTR = "entrgi_batched"


class TextRewardError(RuntimeError):
    """The function of a :class:`TextReward` raised; the message names the reward and the item, the cause is
    chained (``entrgi --debug`` shows its traceback)."""


def batched(fn: Callable) -> Callable:
    """Mark ``fn(prompts, responses) -> scores`` as a batched text reward (for :func:`load_text_reward`)."""
    setattr(fn, BATCHED_ATTR, True)
    return fn


def _is_async(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _run_coroutine(coro):
    """``asyncio.run(coro)``, from a helper thread when this thread already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class TextReward:
    """A reward computed on decoded text by a Python function (not differentiable).

    Args:
        fn: ``fn(prompt, response) -> float`` or, batched, ``fn(prompts, responses) -> scores`` (a
            sequence, array or tensor of one score per item); may be ``async def``.
        batched: which of the two ``fn`` is; None = batched when ``fn`` carries the :func:`batched` mark.
        batch_size: items per call of a batched ``fn`` (None = all at once).
        max_workers: calls in flight at once (threads for a plain ``fn``, concurrent awaits for an async
            one); 1 = one after the other.
        name: how results and errors name it (default: the function's name).

    Also a judge (:mod:`entrgi.eval.judges` interface): ``name``, ``on`` and :meth:`score`.
    """

    differentiable = False
    on = "all"

    def __init__(self, fn: Callable, *, batched: bool | None = None, batch_size: int | None = None,
                 max_workers: int = 1, name: str | None = None):
        if isinstance(fn, TextReward) or not callable(fn):
            raise ValueError(f"`fn` must be a function, got {type(fn).__name__}.")
        if inspect.isclass(fn):
            raise ValueError(f"`fn` must be a function, got the class {fn.__name__!r}; pass an instance or a function.")
        if batched is None:
            batched = bool(getattr(fn, BATCHED_ATTR, False))
        if not isinstance(batched, bool):
            raise ValueError(f"`batched` must be True, False or None, got {batched!r}.")
        for key, value, low in (("batch_size", batch_size, 1), ("max_workers", max_workers, 1)):
            if value is None and key == "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{key}` must be an integer >= {low}, got {value!r}.")
        self.fn = fn
        self.batched = batched
        self.batch_size = batch_size
        self.max_workers = max_workers
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.is_async = _is_async(fn)
        self._check_arity()

    def _check_arity(self) -> None:
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):  # builtins without a signature: trust them
            return
        try:
            sig.bind(None, None)
        except TypeError:
            what = "(prompts, responses)" if self.batched else "(prompt, response)"
            raise ValueError(f"text reward {self.name!r} must accept two arguments {what}; its signature is "
                             f"{self.name}{sig}.") from None

    def __repr__(self) -> str:
        kind = "batched" if self.batched else "per-item"
        return f"TextReward({self.name!r}, {kind}, max_workers={self.max_workers})"

    # ---- scoring ----------------------------------------------------------------------------------
    def _value(self, x: Any, index: int) -> float:
        """One returned score as a finite float (item ``index`` names it in errors)."""
        if torch.is_tensor(x) and x.numel() == 1:
            x = x.item()
        elif hasattr(x, "item") and getattr(x, "size", None) == 1:  # numpy scalars / 1-element arrays
            x = x.item()
        if not isinstance(x, numbers.Real):
            raise ValueError(f"text reward {self.name!r} returned {type(x).__name__} {x!r} for item {index}; it "
                             "must return a real number (or bool) per item.")
        v = float(x)
        if not math.isfinite(v):
            raise ValueError(f"text reward {self.name!r} returned {v} for item {index}; scores must be finite.")
        return v

    def _batch_values(self, out: Any, lo: int, n: int) -> list[float]:
        if torch.is_tensor(out):
            out = out.detach().cpu().reshape(-1).tolist() if out.dim() <= 1 else out
        elif hasattr(out, "tolist") and not isinstance(out, (str, bytes)):
            out = out.tolist()
        if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
            raise ValueError(f"batched text reward {self.name!r} returned {type(out).__name__}; it must return a "
                             f"sequence of {n} scores, one per item.")
        if len(out) != n:
            raise ValueError(f"batched text reward {self.name!r} returned {len(out)} scores for {n} items.")
        return [self._value(x, lo + j) for j, x in enumerate(out)]

    def _calls(self, prompts: list[str], responses: list[str], batch_size: int | None):
        """The argument tuples of each call and, per call, the index of its first item."""
        if not self.batched:
            return [((p, r), i) for i, (p, r) in enumerate(zip(prompts, responses))]
        size = batch_size or self.batch_size or max(len(prompts), 1)
        return [((prompts[i:i + size], responses[i:i + size]), i) for i in range(0, len(prompts), size)]

    def _collect(self, results: list[Any], calls, n: int) -> list[float]:
        if not self.batched:
            return [self._value(x, i) for x, (_, i) in zip(results, calls)]
        out: list[float] = []
        for x, (args, lo) in zip(results, calls):
            out += self._batch_values(x, lo, len(args[0]))
        return out

    def _failed(self, error: Exception, index: int) -> TextRewardError:
        what = "the batch starting at item" if self.batched else "item"
        return TextRewardError(f"text reward {self.name!r} raised {type(error).__name__} on {what} {index}: {error}")

    def _call(self, args, index: int) -> Any:
        try:
            return self.fn(*args)
        except Exception as e:  # noqa: BLE001 - user code: any failure is the reward's, named as such
            raise self._failed(e, index) from e

    def _run_sync(self, calls) -> list[Any]:
        if self.max_workers == 1 or len(calls) <= 1:
            return [self._call(args, i) for args, i in calls]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(calls))) as pool:
            return list(pool.map(lambda c: self._call(*c), calls))

    async def _run_async(self, calls) -> list[Any]:
        gate = asyncio.Semaphore(self.max_workers)

        async def one(args, index):
            async with gate:
                try:
                    return await self.fn(*args)
                except Exception as e:  # noqa: BLE001 - as _call
                    raise self._failed(e, index) from e

        return await asyncio.gather(*(one(args, i) for args, i in calls))

    def score_list(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
                   ) -> list[float]:
        """Scores of (prompt, response) pairs, in order, as Python floats."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) differ in length.")
        if not prompts:
            return []
        calls = self._calls(prompts, responses, batch_size)
        results = _run_coroutine(self._run_async(calls)) if self.is_async else self._run_sync(calls)
        return self._collect(list(results), calls, len(prompts))

    def score_texts(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
                    ) -> torch.Tensor:
        """Rewards (B,) float32 on CPU, like :meth:`RewardModel.score_texts`."""
        return torch.tensor(self.score_list(prompts, responses, batch_size), dtype=torch.float32)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The judge interface: one float per (prompt, response)."""
        return self.score_list(prompts, responses)


# ---- the `module:function` spelling -----------------------------------------------------------------
SPELLING = "'module:function' or 'path/to/file.py:function'"


def split_spec(spec: str) -> tuple[str, str, bool]:
    """``(module or file, attribute path, is_file)`` of ``module:function`` / ``path/to/file.py:function``."""
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise ValueError(f"text reward {spec!r}: expected {SPELLING}.")
    where, attr = spec.rsplit(":", 1)
    where, attr = where.strip(), attr.strip()
    if not where or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ValueError(f"text reward {spec!r}: expected {SPELLING} (a module or .py file, a colon, then the "
                         "name of a function in it).")
    is_file = is_file_spec(where)
    if not is_file and not all(part.isidentifier() for part in where.split(".")):
        raise ValueError(f"text reward {spec!r}: {where!r} is neither a module name nor a .py file; expected "
                         f"{SPELLING}.")
    return where, attr, is_file


def _import_file(spec: str, where: str):
    return import_file(where, f"text reward {spec!r}")


def _import_module(spec: str, where: str):
    return import_module(where, f"text reward {spec!r}", "check the spelling and that it is installed or on "
                                                         "PYTHONPATH, or give a file: 'path/to/file.py:function'")


def load_callable(spec: str) -> Any:
    """The object named by ``module:function`` or ``path/to/file.py:function`` (``ValueError`` naming the
    spelling when the module, file or attribute is missing)."""
    where, attr, is_file = split_spec(spec)
    obj = _import_file(spec, where) if is_file else _import_module(spec, where)
    done: list[str] = []
    for part in attr.split("."):
        owner = f"{where}:{'.'.join(done)}" if done else where
        if not hasattr(obj, part):
            raise ValueError(f"text reward {spec!r}: {owner!r} has no attribute {part!r}.")
        obj = getattr(obj, part)
        done.append(part)
    return obj


def load_text_reward(spec: str, **kwargs) -> TextReward:
    """A :class:`TextReward` from ``module:function`` or ``path/to/file.py:function``.

    The named object may be a function (``kwargs`` go to :class:`TextReward`) or a ready
    :class:`TextReward` (then no ``kwargs``)."""
    obj = load_callable(spec)
    if isinstance(obj, TextReward):
        if kwargs:
            raise ValueError(f"text reward {spec!r} is already a TextReward; it takes no options "
                             f"({', '.join(sorted(kwargs))}).")
        return obj
    if inspect.isclass(obj) or not callable(obj):
        what = f"the class {obj.__name__!r}" if inspect.isclass(obj) else f"a {type(obj).__name__} ({obj!r:.40})"
        raise ValueError(f"text reward {spec!r}: {spec.rsplit(':', 1)[1]!r} is {what}, not a function; point the "
                         "spelling at a function (prompt, response) -> float or a TextReward.")
    kwargs.setdefault("name", spec)
    return TextReward(obj, **kwargs)


__all__ = ["TextReward", "TextRewardError", "batched", "load_callable", "load_text_reward", "split_spec"]
