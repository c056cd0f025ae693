"""Errors raised while sampling, besides the ``ValueError`` of a configuration mistake.

:class:`NonFiniteError` says that the reward model returned NaN / ±inf (a reward, or the gradient of the
guided logits φ through it). Sampling stops there: one such value would turn every guided sample into the
same garbage, and a NaN score would make Best-of-N pick at random.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _ids(xs: Sequence) -> str:
    return ", ".join(str(x) for x in xs)


class NonFiniteError(ValueError):
    """The reward model returned a non-finite reward or gradient.

    Attributes (``None`` where unknown): ``what`` ("reward" or "gradient"), ``where`` (the stage, e.g.
    "inner step 2 of 3"), ``method``, ``rows`` (batch rows, 0-based), ``values`` (the bad rewards),
    ``step`` / ``steps`` (the denoising step, 0-based as ``StepTrace.step``, and the number of steps),
    ``samples`` ((prompt, sample) indices of ``rows``).
    """

    def __init__(self, what: str, where: str, *, method: str, rows: Sequence[int],
                 values: Sequence[float] | None = None, step: int | None = None, steps: int | None = None,
                 samples: Sequence[tuple[int, int]] | None = None):
        self.what, self.where, self.method = what, where, method
        self.rows, self.values = list(rows), None if values is None else list(values)
        self.step, self.steps, self.samples = step, steps, None if samples is None else list(samples)
        super().__init__(self._message())

    def _message(self) -> str:
        if self.samples is not None:
            who = f"(prompt, sample) {_ids(self.samples)}"
        else:
            who = f"rows [{_ids(self.rows)}] of the batch"
        if self.what == "reward":
            vals = "" if self.values is None else f" ({_ids(self.values)})"
            head = f"the reward model returned a non-finite reward{vals} for {who}"
        else:
            head = f"the reward model returned a non-finite gradient of the guided logits φ for {who}"
        at = f"denoising step {self.step + 1} of {self.steps}, " if self.step is not None else ""
        return (f"{head} at {at}{self.where} (method {self.method!r}); check the reward model or function: "
                "its weights, inputs and arithmetic must give finite values.")

    def located(self, step: int, steps: int, samples: Sequence[tuple[int, int]]) -> NonFiniteError:
        """The same error with the denoising step and the (prompt, sample) of each batch row filled in."""
        return NonFiniteError(self.what, self.where, method=self.method, rows=self.rows, values=self.values,
                              step=step, steps=steps, samples=[samples[r] for r in self.rows])


def check_rewards(rewards: torch.Tensor, where: str, method: str,
                  samples: Sequence[tuple[int, int]] | None = None, step: int | None = None,
                  steps: int | None = None) -> None:
    """Raise :class:`NonFiniteError` unless every reward of ``rewards`` (B,) is finite (one ``isfinite``);
    ``samples``: the (prompt, sample) of each row, ``step`` / ``steps``: the denoising step, if known."""
    ok = torch.isfinite(rewards)
    if bool(ok.all()):
        return
    bad = (~ok).nonzero().flatten().tolist()
    vals = rewards.detach().flatten()[bad].tolist()
    raise NonFiniteError("reward", where, method=method, rows=bad, values=vals, step=step, steps=steps,
                         samples=None if samples is None else [samples[b] for b in bad])
