"""Rewards that check a response against the reference answer of its prompt (verifier-style selection).

:class:`ReferenceReward` is a :class:`~entrgi.reward.text.TextReward` whose score is ``match(response,
reference)``. The references are per prompt and change with every batch: whoever runs the sampler sets them
with :meth:`ReferenceReward.set_references` (prompt -> reference answer, and optionally prompt -> stop
strings that cut the response first, as lm-eval cuts generations) before it generates. The lm-eval model
(:mod:`entrgi.integrations.lm_eval`) does this from each request's document. Like any text reward it ranks
Best-of-N samples and weighs particles; it never guides.

Spelling (``--reward``, eval ``reward:`` / ``text_reward:``, lm-eval ``reward=`` / ``text_reward=``):
``reference:exact``, ``reference:numeric``, ``reference:contains``, or ``reference:MODULE:FUNCTION`` /
``reference:FILE.py:FUNCTION`` for your own ``match(response, reference) -> float``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from .text import TextReward, load_callable

_PUNCT = ".,;:!?\"'"
_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def normalize(text: str) -> str:
    """Lower-cased (casefold), whitespace runs made one space, outer whitespace and punctuation stripped."""
    return " ".join(text.casefold().split()).strip(_PUNCT + " ")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (``1,234.5`` -> 1234.5, ``-3`` -> -3.0), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def exact(response: str, reference: str) -> float:
    """1.0 when the two are equal after :func:`normalize`, else 0.0."""
    return float(normalize(response) == normalize(reference))


def numeric(response: str, reference: str) -> float:
    """1.0 when the last number of the response equals the last number of the reference (GSM8K's
    ``#### 72`` style; ``72``, ``72.0`` and ``72.`` agree; relative tolerance 1e-9), else 0.0."""
    got, want = last_number(response), last_number(reference)
    return float(got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12))


def contains(response: str, reference: str) -> float:
    """1.0 when the normalised reference occurs in the normalised response as whole words, else 0.0."""
    ref = normalize(reference)
    if not ref:
        return 0.0
    return float(re.search(rf"(?<!\w){re.escape(ref)}(?!\w)", normalize(response)) is not None)


#: The built-in ``match(response, reference)`` functions by name.
MATCHES: dict[str, Callable[[str, str], float]] = {"exact": exact, "numeric": numeric, "contains": contains}


def cut_at_stops(text: str, stops: Iterable[str]) -> str:
    """``text`` before its stop strings, as lm-eval cuts a generation: for each stop in turn (empty ones
    skipped), keep what comes before its first occurrence."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


class ReferenceReward(TextReward):
    """``match(response, reference)`` of each (prompt, response), the reference looked up by prompt.

    Args:
        match: a name of :data:`MATCHES` (``exact``, ``numeric``, ``contains``) or a function
            ``(response, reference) -> float``.
        name: how results and errors name it (default ``reference:<match>``).

    Scoring a prompt with no reference set is a ``ValueError``; call :meth:`set_references` first.
    """

    def __init__(self, match: str | Callable[[str, str], float] = "exact", *, name: str | None = None):
        if isinstance(match, str):
            if match not in MATCHES:
                raise ValueError(f"reference match {match!r}: expected one of {list(MATCHES)} or a function "
                                 "(response, reference) -> float.")
            label, fn = match, MATCHES[match]
        elif callable(match):
            label, fn = getattr(match, "__name__", type(match).__name__), match
        else:
            raise ValueError(f"`match` must be a name of {list(MATCHES)} or a function, got {type(match).__name__}.")
        super().__init__(self._score, batched=False, name=name or f"reference:{label}")
        self.match = fn
        self.references: dict[str, str] = {}
        self.stops: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"ReferenceReward({self.name!r}, {len(self.references)} references)"

    def set_references(self, references: Mapping[str, str],
                       stops: Mapping[str, Sequence[str]] | None = None) -> None:
        """Use ``references[prompt]`` as the reference answer of ``prompt`` from now on (replacing the previous
        ones), and cut each response at ``stops[prompt]`` (:func:`cut_at_stops`) before matching."""
        for prompt, ref in references.items():
            if not isinstance(ref, str):
                raise ValueError(f"reference answer of prompt {prompt!r:.60} must be a string, got "
                                 f"{type(ref).__name__} {ref!r:.40}.")
        self.references = dict(references)
        self.stops = {p: tuple(s) for p, s in (stops or {}).items()}

    def score_list(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
                   ) -> list[float]:
        """As :meth:`TextReward.score_list`; a ``ValueError`` first when a prompt has no reference answer (a
        set-up mistake, not a failure of the match function)."""
        missing = next((p for p in prompts if p not in self.references), None)
        if missing is not None:
            raise ValueError(f"reward {self.name!r} has no reference answer for prompt {missing!r:.60}: set them "
                             "with set_references({prompt: reference}) before generating (the lm-eval model does it "
                             "from `reference_field`).")
        return super().score_list(prompts, responses, batch_size)

    def _score(self, prompt: str, response: str) -> float:
        return self.match(cut_at_stops(response, self.stops.get(prompt, ())), self.references[prompt])


def reference_rewards(reward) -> list[ReferenceReward]:
    """The :class:`ReferenceReward` objects in ``reward``: itself, or the members of a weighted sum (nested)."""
    if isinstance(reward, ReferenceReward):
        return [reward]
    found: list[ReferenceReward] = []
    for member in getattr(reward, "members", None) or ():
        found += reference_rewards(getattr(member, "reward", member))
    return found


def load_reference_reward(target: str) -> ReferenceReward:
    """The reward of ``reference:TARGET``: a built-in match name, or ``MODULE:FUNCTION`` / ``FILE.py:FUNCTION``."""
    if ":" not in target:
        if target not in MATCHES:
            raise ValueError(f"reward 'reference:{target}': expected one of "
                             f"{', '.join('reference:' + m for m in MATCHES)}, or reference:MODULE:FUNCTION.")
        return ReferenceReward(target)
    fn = load_callable(target)
    if not callable(fn):
        raise ValueError(f"reward 'reference:{target}': {target.rsplit(':', 1)[1]!r} is not a function "
                         "(response, reference) -> float.")
    return ReferenceReward(fn, name=f"reference:{target}")


__all__ = ["MATCHES", "ReferenceReward", "contains", "cut_at_stops", "exact", "last_number", "load_reference_reward",
           "normalize", "numeric", "reference_rewards"]
