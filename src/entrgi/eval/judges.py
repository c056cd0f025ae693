"""Held-out judges behind one interface: they score decoded text and are never differentiated.

- ``vader``: the VADER sentiment compound score in [−1, 1] (the default pair's independent judge).
- ``rm:PATH_OR_ID``: a different reward model than the one that guided (any HF sequence classifier).
- ``lmunit:PATH_OR_ID``: an LMUnit-style judge (e.g. ``ContextualAI/LMUnit-qwen2.5-72b``) loaded with
  transformers: the paper's five unit tests, each scored as the probability-weighted digit after
  ``"score":`` in the judge's greedy answer, averaged; applied to the Top@1 response only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

#: The five unit tests of the paper's LMUnit evaluation.
UNIT_TESTS = (
    "Does the response directly and effectively address the user's request?",
    "Is the information in the response correct and reliable?",
    "Is the response well-structured, clear, and fluent?",
    "Does the response appropriately address the full scope of the question?",
    "Is the response free from harmful, biased, or inappropriate content?",
)


class Judge:
    """Scores (prompt, response) pairs. ``on`` = which samples of a prompt it scores: ``all`` or ``top1``."""

    name = "judge"
    on = "all"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        raise NotImplementedError


class VaderJudge(Judge):
    """VADER compound sentiment of ``prompt + " " + response`` (what the default RM also reads)."""

    name = "vader"

    def __init__(self, with_prompt: bool = True):
        self.with_prompt = with_prompt

    def score(self, prompts, responses):
        from ..default_pair import vader_compound  # the one VADER wiring (the pair's labels are VADER's too)

        return vader_compound([f"{p} {r}" if self.with_prompt else r for p, r in zip(prompts, responses)])


class RewardModelJudge(Judge):
    """A held-out reward model re-scoring decoded text."""

    def __init__(self, reward_model, name: str = "held_out_rm"):
        self.rm = reward_model
        self.name = name

    def score(self, prompts, responses):
        return self.rm.score_texts(list(prompts), list(responses)).tolist()


def weighted_digit_score(step_texts: Sequence[str], step_logprobs: Sequence[torch.Tensor], tokenizer,
                         top_k: int = 20, digits: str = "0123456") -> float:
    """LMUnit's reading of a generated answer: at the first step whose preceding text ends with
    ``"score":``, the probability-weighted mean of the digit tokens among the top-k log-probs.

    ``step_texts[t]`` is the decoded text generated before step t; ``step_logprobs[t]`` (V,) the
    log-probabilities at step t. Returns 0.0 when no score is found (as the lmunit library)."""
    for text, logp in zip(step_texts, step_logprobs):
        if re.search(r'"score"\s*:\s*$', text):
            top = torch.topk(logp.float(), min(top_k, logp.shape[-1]))
            num = den = 0.0
            for lp, tid in zip(top.values.tolist(), top.indices.tolist()):
                tok = tokenizer.decode([tid]).strip()
                if len(tok) == 1 and tok in digits:
                    p = float(torch.tensor(lp).exp())
                    num += p * int(tok)
                    den += p
            return num / den if den > 0 else 0.0
    return 0.0


class LMUnitJudge(Judge):
    """An LMUnit-style generative judge through transformers (large: off by default)."""

    name = "lmunit"
    on = "top1"

    def __init__(self, name_or_path: str, *, dtype=torch.bfloat16, device_map: str | None = "auto",
                 unit_tests: Sequence[str] = UNIT_TESTS, max_new_tokens: int = 10, model=None, tokenizer=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        self.model = model or AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, device_map=device_map,
                                                                  trust_remote_code=False)
        self.model.eval()
        self.unit_tests = tuple(unit_tests)
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def score_unit(self, query: str, response: str, unit_test: str) -> float:
        text = f"Query: {query}\n\nResponse: {response}\n\nUnit Test: {unit_test}"
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)["input_ids"]
        ids = ids.to(self.model.device)
        out = self.model.generate(ids, max_new_tokens=self.max_new_tokens, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True)
        gen = out.sequences[0, ids.shape[1]:].tolist()
        texts = [self.tokenizer.decode(gen[:t]) for t in range(len(out.scores))]
        logps = [s[0].log_softmax(-1) for s in out.scores]
        return weighted_digit_score(texts, logps, self.tokenizer)

    def score(self, prompts, responses):
        return [sum(self.score_unit(p, r, u) for u in self.unit_tests) / len(self.unit_tests)
                for p, r in zip(prompts, responses)]


class JudgeError(RuntimeError):
    """A judge failed (its code raised, or it returned something else than one number per response)."""


def run_judge(judge, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """``judge.score(prompts, responses)`` checked: one real number (or None) per response, in order. A judge that
    raises or returns anything else is a :class:`JudgeError` naming the judge (the cause chained, ``--debug``)."""
    name = getattr(judge, "name", type(judge).__name__)
    try:
        scores = judge.score(list(prompts), list(responses))
        scores = scores.tolist() if hasattr(scores, "tolist") else list(scores)
    except JudgeError:
        raise
    except Exception as e:  # noqa: BLE001 - a judge is user code as often as not
        raise JudgeError(f"judge {name!r} failed: {type(e).__name__}: {e}") from e
    if len(scores) != len(responses):
        raise JudgeError(f"judge {name!r} returned {len(scores)} scores for {len(responses)} responses.")
    for i, v in enumerate(scores):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise JudgeError(f"judge {name!r} returned {type(v).__name__} {v!r:.40} for response {i}; a judge returns "
                             "one number per response.")
    return [None if v is None else float(v) for v in scores]


def load_judge(spec: str, *, device: str | None = None, dtype=None) -> Judge:
    """``vader`` | ``rm:PATH_OR_ID`` | ``lmunit:PATH_OR_ID`` | ``text:MODULE:FUNCTION`` (any Python function of
    (prompt, response), :class:`~entrgi.reward.text.TextReward`; ``text:path/to/file.py:function`` too)."""
    if spec == "vader":
        return VaderJudge()
    kind, _, target = spec.partition(":")
    if kind == "rm" and target:
        from ..reward.hf import HFRewardModel
        return RewardModelJudge(HFRewardModel.from_pretrained(target, dtype=dtype, device=device),
                                name=f"rm:{target.rstrip('/').split('/')[-1]}")
    if kind == "lmunit" and target:
        return LMUnitJudge(target, dtype=dtype or torch.bfloat16)
    if kind == "text" and target:
        from ..reward.text import load_text_reward
        judge = load_text_reward(target)
        judge.name = f"text:{target.rpartition(':')[2]}"  # the function, not the path (judge names are columns)
        return judge
    raise ValueError(f"unknown judge {spec!r}: use 'vader', 'rm:PATH_OR_ID', 'lmunit:PATH_OR_ID' or "
                     "'text:MODULE:FUNCTION'.")
