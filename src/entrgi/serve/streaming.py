"""A choice's text as OpenAI clients expect it, and what a streamed chunk means for a diffusion LM.

:class:`CompletionText`: the text of a completion is decode(prompt + completion) minus decode(prompt), so it
keeps its leading space (``"she was" + " not careful"``) for WordPiece and byte-level BPE tokenizers alike;
a chat message drops leading whitespace (it is a turn of its own).

:class:`ChoiceStream`: a chunk carries the text that has become final: the run of committed tokens from the
start of the response up to its first still-masked slot (tokens never change once committed), sent as soon
as it grows. The last token of that run is held back until the slot after it is committed too (a WordPiece
``##`` piece or a BPE byte can still join it), as are the last characters that could begin a stop string.
Nothing sent is ever retracted: the deltas of one choice, concatenated, are exactly the non-streamed text.

:class:`TokenText` and :func:`canvas_choice`: the per-slot display of the canvas events, as words (a
``##house`` piece is shown as ``house`` joined to the slot before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from .schemas import apply_stop


class CompletionText:
    """The text of response ids after a prompt: decode(prompt + response) minus decode(prompt)."""

    def __init__(self, model: Any, prompt_ids: Sequence[int], chat: bool = False):
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.chat = chat
        self.head = self._decode(self.prompt_ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.model.tokenizer.decode(list(ids), skip_special_tokens=True)

    def __call__(self, response_ids: Sequence[int]) -> str:
        """The text of ``response_ids`` (cut at the first EOS)."""
        ids = self.model.response_ids(response_ids)
        full = self._decode(self.prompt_ids + ids)
        text = full[len(self.head):] if full.startswith(self.head) else self._decode(ids)
        return text.lstrip() if self.chat else text


class ChoiceStream:
    """The text already sent for one choice, and the delta each new canvas snapshot releases."""

    def __init__(self, text: CompletionText, stop: tuple[str, ...] = ()):
        self.text = text
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
        eos = set(self.text.model.eos_token_ids)
        complete = first_masked == len(ids) or any(t in eos for t in prefix)
        if not complete:
            prefix = prefix[:-1]
        text, stopped = apply_stop(self.text(prefix), self.stop)
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
    """Display pieces of response slots for the canvas events: each slot's text and whether it continues the
    word of the slot before it (decoded in pairs, so WordPiece ``##`` pieces, BPE pieces without a leading
    space and punctuation join as the decoded text joins them)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.pair = lru_cache(maxsize=1 << 16)(self._pair)
        self.alone = lru_cache(maxsize=1 << 14)(self._alone)
        probe = tokenizer(" the", add_special_tokens=False)["input_ids"]
        self.spaced = bool(probe) and tokenizer.decode(probe[:1])[:1].isspace()  # BPE: words start with a space

    def _alone(self, token_id: int) -> tuple[str, bool]:
        s = self.tokenizer.decode([token_id])
        if s.startswith("##"):
            return s[2:], True
        return (s.strip() or s), self.spaced and not s[:1].isspace()

    def _pair(self, before: int, token_id: int) -> tuple[str, bool]:
        head = self.tokenizer.decode([before])
        both = self.tokenizer.decode([before, token_id])
        if not both.startswith(head):
            return self._alone(token_id)
        rest = both[len(head):]
        return (rest.strip() or rest), not rest[:1].isspace()

    def pieces(self, ids: Sequence[int], masked: Sequence[bool]) -> tuple[list[str | None], list[bool]]:
        """(text per slot, None where masked; True where a slot joins the word before it)."""
        texts: list[str | None] = []
        joins: list[bool] = []
        for i, (t, m) in enumerate(zip(ids, masked)):
            if m:
                texts.append(None)
                joins.append(False)
                continue
            text, join = self.pair(ids[i - 1], t) if i and not masked[i - 1] else self.alone(t)
            texts.append(text)
            joins.append(bool(i) and join)
        return texts, joins


def canvas_choice(snap: dict[str, Any], index: int, token_text: TokenText, eos: tuple[int, ...]) -> dict[str, Any]:
    """One choice of a ``canvas`` event: the response slots' ids, their display text (None = masked) and whether
    each joins the word before it, their entropy weights (at commit time for committed slots), the mean weight
    over the slots masked before this step, the reward estimate of the predicted completion, and the positions
    committed at this step."""
    ids, masked = snap["ids"], snap["masked"]
    texts, joins = token_text.pieces(ids, masked)
    first_eos = next((i for i, (t, m) in enumerate(zip(ids, masked)) if not m and t in eos), None)
    return {"index": index, "ids": ids, "tokens": texts, "join": joins, "eos": first_eos,
            "weights": [round(w, 4) for w in snap["weights"]], "mean_weight": snap["mean_weight"],
            "estimate": snap["estimate"], "committed": snap["committed"], "masked": sum(masked)}


def rescored_differently(model: Any, reward: Any, prompt: Any, token_ids: Sequence[int], text: str) -> bool:
    """Whether the final reward reads other reward-model tokens than the per-step estimates did: the estimates
    score the sampled tokens (mapped to the RM's vocabulary by token string), the final reward scores the
    decoded text, re-tokenised (e.g. ``wood ##house`` decodes to ``woodhouse``, which may tokenise otherwise)."""
    if reward is None or not hasattr(reward, "text_ids"):
        return False
    ctx = reward.context(prompt)
    ids = reward.text_ids(prompt, text)
    retokenised = list(ids[len(ctx.prefix_ids):len(ids) - len(ctx.suffix_ids)])
    pieces = model.tokenizer.convert_ids_to_tokens(model.response_ids(token_ids))
    return retokenised != list(reward.tokenizer.convert_tokens_to_ids(pieces))
