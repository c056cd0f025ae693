"""Constraint rewards on text for the default pair (Austen sentence continuations, e.g. ``"she was"``).

Each is a plain function usable as a :class:`entrgi.reward.TextReward`, from Python or spelled
``examples/constraint_rewards.py:<name>`` on the command line / in YAML:

- ``mentions_positive_word``: 1.0 when the response uses a word from :data:`POSITIVE_WORDS`, else 0.0.
- ``fewer_than_12_words``: 1.0 when the response has fewer than 12 words, else 0.0.
- ``word_budget``: batched, −(words over 12) per response, a graded version for particle weights.
- ``both_constraints``: batched, the two 0/1 constraints added (2.0 = both hold).

:func:`mentions_any` and :func:`fewer_than` build others. ``python examples/constraint_rewards.py`` samples 8
continuations per demo prompt from the default DLLM and prints how often one plain sample and the
Best-of-8 pick by ``both_constraints`` satisfy each constraint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from entrgi.reward.text import batched

#: Words whose mention counts (the default pair writes lower-cased Austen prose).
POSITIVE_WORDS = ("happy", "happiness", "pleasure", "pleased", "delight", "delighted", "good", "kind", "love",
                  "glad", "agreeable", "charming", "cheerful", "fine")

_WORD = re.compile(r"[a-z']+")


def words_of(text: str) -> list[str]:
    """Lower-cased words (letters and apostrophes) of ``text``."""
    return _WORD.findall(text.lower())


def mentions_any(words: Iterable[str]) -> Callable[[str, str], float]:
    """A reward: 1.0 when the response contains one of ``words`` as a whole word (case-insensitive), else 0.0."""
    wanted = frozenset(w.lower() for w in words)
    if not wanted:
        raise ValueError("`words` must hold at least one word.")

    def mentions(prompt: str, response: str) -> float:
        return float(any(w in wanted for w in words_of(response)))

    mentions.__name__ = f"mentions_any_of_{len(wanted)}"
    return mentions


def fewer_than(n: int) -> Callable[[str, str], float]:
    """A reward: 1.0 when the response has fewer than ``n`` words, else 0.0."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1, got {n!r}.")

    def short(prompt: str, response: str) -> float:
        return float(len(words_of(response)) < n)

    short.__name__ = f"fewer_than_{n}_words"
    return short


mentions_positive_word = mentions_any(POSITIVE_WORDS)
fewer_than_12_words = fewer_than(12)


@batched
def word_budget(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """−(number of words beyond 11) per response: 0 for responses of fewer than 12 words."""
    return [-float(max(0, len(words_of(r)) - 11)) for r in responses]


@batched
def both_constraints(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """``mentions_positive_word + fewer_than_12_words`` per response (0, 1 or 2)."""
    return [mentions_positive_word(p, r) + fewer_than_12_words(p, r) for p, r in zip(prompts, responses)]


def main(k: int = 8) -> None:
    """Best-of-``k`` by ``both_constraints`` vs one plain sample, on the first six of the default pair's sentence beginnings.

    Best-of-N is plain sampling, then the best of a prompt's ``k`` samples by the reward; sample 0 of the
    same run is what plain sampling with one sample gives (its random stream does not depend on ``k``)."""
    import torch

    from entrgi import GuidanceConfig, SamplerConfig, generate
    from entrgi.default_pair import load_default_pair
    from entrgi.eval.prompts import load_prompt_set
    from entrgi.reward.text import TextReward

    torch.set_num_threads(2)
    dllm, _ = load_default_pair()
    reward = TextReward(both_constraints)
    prompts = [p.text for p in load_prompt_set("continuations").prompts[:6]]
    out = generate(dllm, prompts, None, progress=False, trace=False,
                   sampler=SamplerConfig(max_new_tokens=20, steps=20, num_samples=k, temperature=0.8, seed=0),
                   guidance=GuidanceConfig(rule="none"))
    chosen = {"plain (sample 0)": [], f"best-of-{k}": []}
    for group in out.samples:
        scores = reward.score_list([s.prompt for s in group], [s.text for s in group])
        chosen["plain (sample 0)"].append(group[0])
        chosen[f"best-of-{k}"].append(group[max(range(len(group)), key=scores.__getitem__)])
    for name, picked in chosen.items():
        mention = sum(mentions_positive_word(s.prompt, s.text) for s in picked) / len(picked)
        short = sum(fewer_than_12_words(s.prompt, s.text) for s in picked) / len(picked)
        print(f"{name:>17}: mentions a positive word {mention:.0%}, fewer than 12 words {short:.0%}")
        for s in picked[:3]:
            print(f"{'':>19}{s.prompt} | {s.text}")


if __name__ == "__main__":
    main()
