"""A block-wise DLLM KV cache for semi-autoregressive decoding (Fast-dLLM's "prefix" and "dual" caches).

With blocks, only the current block's slots change during its steps; the prompt and the finished blocks
(and, until their turn, the later blocks, still all masks) stay fixed. So at the **first** step of a block
the whole canvas runs as usual, and every layer's keys/values are kept (:class:`BlockKVCache`); the later
steps of the block run only a *query window* against them:

- ``prefix``: the window is [block start − shift, N): the current block and everything after it; the
  prompt's and finished blocks' keys/values are reused;
- ``dual``: the window is [block start − shift, block end): the keys/values after the block are reused too.

``shift`` is 1 for Dream (logits at slot i come from hidden state i − 1, so the block's first slot needs
the previous position's hidden state, which is recomputed with the window) and 0 for LLaDA. Positions
are the canvas's own position ids, padding keys stay masked. The window's fresh keys/values are written
into the cache in place; the rest go stale as the block's tokens change, which makes this an
**approximation** (the first step of every block is exact). The logits of slots whose source hidden state
is outside the window (committed slots; with ``dual`` the later blocks' slots) are the ones of the block's
first step. The cache belongs to one canvas tensor (the sampler's ``batch.x``, held by a weak reference);
other inputs run uncached, and when a token outside the window or the attention mask changed (e.g. the
particle sampler resampled rows) the next forward rebuilds it.

:func:`token_agreement` / :func:`kv_cache_agreement` measure how far the approximation moves greedy samples.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..config import KV_CACHE_MODES  # ("none", "prefix", "dual"): SamplerConfig.kv_cache

__all__ = ["KV_CACHE_MODES", "BlockKVCache", "WindowLayer", "kv_cache_agreement", "token_agreement"]


class WindowLayer(DynamicLayer):
    """One decoder layer's keys/values (B, h_kv, N, d_h) over the whole canvas.

    The first ``update`` (the block's full forward) stores the states it is given; every later one writes
    the query window's fresh states into positions ``window`` = (a, b) and returns the whole sequence's."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, window: tuple[int, int] | None = None,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized or window is None:
            self.keys, self.values = key_states, value_states
            self.device = key_states.device
            self.is_initialized = True
            return key_states, value_states
        a, b = window
        self.keys[:, :, a:b] = key_states
        self.values[:, :, a:b] = value_states
        return self.keys, self.values


class BlockKVCache(Cache):
    """The keys/values of one block of one canvas (see the module docstring).

    Args:
        mode: ``prefix`` or ``dual``.
        canvas: the (B, N) id tensor the sampler updates in place (held by a weak reference; when it is
            freed, so are the cached tensors).
        start, end: the block's positions [start, end) in the canvas.
        shift: 1 when logits are right-shifted (Dream), else 0.
    """

    def __init__(self, mode: str, canvas: torch.Tensor, start: int, end: int, shift: int):
        if mode not in KV_CACHE_MODES[1:]:
            raise ValueError(f"`kv_cache` must be one of {list(KV_CACHE_MODES[1:])} for a block cache, got {mode!r}.")
        N = canvas.shape[-1]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= N):
            raise ValueError(f"block [{start}, {end}) is not a non-empty range of the canvas' {N} positions.")
        super().__init__(layer_class_to_replicate=WindowLayer)
        self.mode, self.start, self.end, self.shift = mode, start, end, int(shift)
        #: the query window [a, b) of the cached steps
        self.window = (max(start - self.shift, 0), end if mode == "dual" else N)
        self.canvas = weakref.ref(canvas, self._canvas_freed)
        self.recording = True  # the next forward stores every layer's keys/values
        self.built = False
        self._snapshot: tuple[torch.Tensor, ...] | None = None
        self.logits: torch.Tensor | None = None  # (B, N − response start, V) of the block's first step
        self.full_forwards = 0  # forwards that (re)built the cache
        self.cached_forwards = 0  # forwards that ran only the window
        self.query_tokens = 0  # positions the last forward ran, per row
        self.logit_slots = 0  # response slots the output layer ran on in the last forward, per row

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(WindowLayer())
        return self.layers[layer_idx].update(key_states, value_states, None if self.recording else self.window)

    # ---- validity ---------------------------------------------------------------------------------
    def _outside(self, t: torch.Tensor) -> torch.Tensor:
        a, b = self.window
        return torch.cat([t[:, :a], t[:, b:]], 1)

    def _key(self, input_ids, attention_mask, position_ids) -> tuple[torch.Tensor, ...]:
        parts = [self._outside(input_ids)]
        parts += [t for t in (attention_mask, position_ids) if t is not None]
        return tuple(parts)

    def owns(self, input_ids: torch.Tensor) -> bool:
        """True when ``input_ids`` is this cache's canvas (the same tensor object)."""
        return self.canvas() is input_ids

    def usable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               position_ids: torch.Tensor | None) -> bool:
        """Built, and nothing outside the window changed since (tokens, attention mask, position ids)."""
        if not self.built or self._snapshot is None:
            return False
        key = self._key(input_ids, attention_mask, position_ids)
        return len(key) == len(self._snapshot) and all(
            k.shape == s.shape and torch.equal(k, s) for k, s in zip(key, self._snapshot))

    def begin_recording(self) -> None:
        """Drop the keys/values: the next forward stores them again (a full forward)."""
        self.layers, self.built, self.recording, self.logits, self._snapshot = [], False, True, None, None

    def finish_recording(self, input_ids, attention_mask, position_ids, logits: torch.Tensor) -> None:
        """After the full forward: remember what the keys/values were computed from, and its logits."""
        self._snapshot = tuple(t.clone() for t in self._key(input_ids, attention_mask, position_ids))
        self.logits = logits.detach().clone()
        self.recording, self.built = False, True
        self.full_forwards += 1

    def _canvas_freed(self, _ref) -> None:
        self.layers, self.built, self.logits, self._snapshot = [], False, None, None


# ---- agreement -------------------------------------------------------------------------------------
def _token_rows(x) -> list[list[int]]:
    if hasattr(x, "samples"):  # a GenerationOutput
        return [list(s.token_ids) for group in x.samples for s in group]
    if isinstance(x, torch.Tensor):
        return [list(map(int, r)) for r in x.reshape(-1, x.shape[-1]).tolist()]
    return [list(map(int, r)) for r in x]


def token_agreement(a, b) -> float:
    """Share of response slots holding the same token in ``a`` and ``b`` (two ``GenerationOutput`` of the same
    prompts and samples, (B, L) tensors, or lists of token lists), in [0, 1]."""
    ra, rb = _token_rows(a), _token_rows(b)
    if len(ra) != len(rb) or any(len(x) != len(y) for x, y in zip(ra, rb)):
        raise ValueError(f"token_agreement needs the same rows and lengths, got {len(ra)} and {len(rb)} rows of "
                         f"lengths {sorted({len(x) for x in ra})} / {sorted({len(y) for y in rb})}.")
    total = sum(len(x) for x in ra)
    if total == 0:
        raise ValueError("token_agreement of empty generations.")
    return sum(int(u == v) for x, y in zip(ra, rb) for u, v in zip(x, y)) / total


def kv_cache_agreement(model, prompts: str | Sequence[str], sampler=None,
                       modes: Sequence[str] = ("prefix", "dual")) -> dict[str, float]:
    """Greedy token agreement of the cached samplers with the uncached one: ``{mode: agreement}``.

    Runs ``sampler`` (a :class:`~entrgi.config.SamplerConfig`; default: the model's recommended one) with
    ``temperature`` 0 (greedy draws), no guidance, once with ``kv_cache='none'`` and once per mode."""
    import dataclasses

    from ..config import GuidanceConfig
    from ..sampling.sampler import generate

    sampler = sampler or model.recommended_sampler()
    sampler = dataclasses.replace(sampler, temperature=0.0, kv_cache="none")
    g = GuidanceConfig(method="none")
    run = lambda cfg: generate(model, prompts, sampler=cfg, guidance=g, progress=False, trace=False)  # noqa: E731
    ref = run(sampler)
    return {m: token_agreement(ref, run(dataclasses.replace(sampler, kv_cache=m))) for m in modes}
