"""What a streamed chunk means for a diffusion LM, which fills every response slot at once.

A chunk carries the text that has become final: the decoded run of committed tokens from the
start of the response up to its first still-masked slot (tokens never change once committed). The
last token of that run is held back until the slot after it is committed too (a WordPiece ``##``
piece or a BPE byte can still join it), as are the last characters that could begin a stop string.
The deltas of one choice, concatenated, are exactly the non-streamed text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .schemas import apply_stop


class ChoiceStream:
    """The text already sent for one choice, and the delta each new canvas snapshot releases."""

    def __init__(self, model: Any, stop: tuple[str, ...] = ()):
        self.model = model
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = ""
        self.stopped = False  # a stop string was reached: nothing more is sent

    def update(self, ids: Sequence[int], masked: Sequence[bool]) -> str:
        """The new final text after a step (``ids`` the response slots, ``masked`` still-masked ones)."""
        if self.stopped:
            return ""
        first_masked = next((i for i, m in enumerate(masked) if m), len(ids))
        prefix = list(ids[:first_masked])
        eos = set(self.model.eos_token_ids)
        complete = first_masked == len(ids) or any(t in eos for t in prefix)
        if not complete:
            prefix = prefix[:-1]
        text, stopped = apply_stop(self.model.decode_response(prefix), self.stop)
        if stopped:
            self.stopped = True
        elif not complete and self.hold:
            text = text[:max(0, len(text) - self.hold)]
        return self._advance(text)

    def finish(self, final_text: str) -> str:
        """The rest of the final (stop-cut) text."""
        self.stopped = True
        return self._advance(final_text)

    def _advance(self, text: str) -> str:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent):], text
            return delta
        return ""


class TokenText:
    """Display strings of single token ids (cached), for the canvas events."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        s = self._cache.get(token_id)
        if s is None:
            s = self._cache[token_id] = self.tokenizer.decode([token_id])
        return s


def canvas_choice(snap: dict[str, Any], index: int, token_text: TokenText, eos: tuple[int, ...]) -> dict[str, Any]:
    """One choice of a ``canvas`` event: the response slots' ids and display strings (None = masked), their
    entropy weights (at commit time for committed slots), the mean weight over the slots masked before this
    step, the reward estimate of the predicted completion, and the positions committed at this step."""
    ids = snap["ids"]
    tokens = [None if m else token_text(t) for t, m in zip(ids, snap["masked"])]
    first_eos = next((i for i, (t, m) in enumerate(zip(ids, snap["masked"])) if not m and t in eos), None)
    return {"index": index, "ids": ids, "tokens": tokens, "eos": first_eos,
            "weights": [round(w, 4) for w in snap["weights"]], "mean_weight": snap["mean_weight"],
            "estimate": snap["estimate"], "committed": snap["committed"], "masked": sum(snap["masked"])}
