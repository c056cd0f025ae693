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

:func:`entrgi.sampling.agreement.kv_cache_agreement` measures how far the approximation moves greedy samples.
"""

from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..config import KV_CACHE_MODES  # ("none", "prefix", "dual"): SamplerConfig.kv_cache

__all__ = ["KV_CACHE_MODES", "BlockKVCache", "WindowLayer"]


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
