"""A text reward (code on strings) drives Best-of-N through ``generate`` and serves as an eval judge
(``text:path/to/file.py:function``); its score is the function's value on the decoded text."""

from pathlib import Path

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.eval.judges import load_judge
from entrgi.reward.text import TextReward

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "constraint_rewards.py"


def n_words(prompt: str, response: str) -> float:
    return float(len(response.split()))


def test_best_of_n_with_a_text_reward_scores_decoded_text(mlm):
    reward = TextReward(n_words)
    sampler = SamplerConfig(max_new_tokens=6, steps=6, num_samples=4, seed=3)
    out = generate(mlm, ["the cat", "a dog"], reward, sampler=sampler, guidance=GuidanceConfig(rule="none"), search="best_of_n",
                   progress=False)
    for i, group in enumerate(out.samples):
        assert [s.reward for s in group] == [float(len(s.text.split())) for s in group]
        assert out.best(i).reward == max(s.reward for s in group)
    plain = generate(mlm, ["the cat", "a dog"], None, sampler=sampler, guidance=GuidanceConfig(rule="none"),
                     progress=False)
    assert [[s.text for s in g] for g in plain.samples] == [[s.text for s in g] for g in out.samples]
    assert out.stats.rm_forward_tokens == 0 and out.stats.flops == plain.stats.flops  # code costs no model FLOPs


def test_text_judge_from_a_file_spelling():
    judge = load_judge(f"text:{EXAMPLES}:mentions_positive_word")
    assert judge.name == "text:mentions_positive_word"
    assert judge.score(["she was", "she was"], ["very happy today", "at the door"]) == [1.0, 0.0]
