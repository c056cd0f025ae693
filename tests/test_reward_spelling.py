"""Weighted-sum reward spellings: ``W1*SPEC1+W2*SPEC2`` on the command line and in YAML (and its list form)."""

from pathlib import Path

import pytest
import torch
from support.tiny_models import CHAT_TEMPLATE, tiny_qwen3_reward, word_tokenizer, write_tiny_qwen3_lm

from entrgi.pair import load_pair
from entrgi.reward import CompositeReward, CompositeTextReward, HFRewardModel, LikelihoodReward, load_reward
from entrgi.reward.registry import COMPOSITE_KIND, composite_spec, split_composite_spec, split_reward_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "constraint_rewards.py"


@pytest.mark.parametrize("spec,terms", [
    ("0.7*runs/rm+0.3*likelihood:Qwen/Qwen3-0.6B", [(0.7, "runs/rm"), (0.3, "likelihood:Qwen/Qwen3-0.6B")]),
    (" 1 * a - 0.5 * text:m.py:f ", [(1.0, "a"), (-0.5, "text:m.py:f")]),
    ("1e-3*a+2.*b-.25*c", [(0.001, "a"), (2.0, "b"), (-0.25, "c")]),
    ("-1*hf:my-rm-2", [(-1.0, "hf:my-rm-2")]),
    ("2*org/model-0.6B", [(2.0, "org/model-0.6B")]),  # '-0.6B' is no term: no '*' after the number
    ("1*a+b", [(1.0, "a+b")]),  # every term needs a weight, so '+b' belongs to the spelling 'a+b'
])
def test_weighted_sum_spellings(spec, terms):
    assert split_composite_spec(spec) == terms
    assert split_reward_spec(spec) == (COMPOSITE_KIND, spec.strip())


@pytest.mark.parametrize("spec", ["runs/rm", "likelihood:x", "text:m:f", "a*b"])
def test_other_spellings_are_not_sums(spec):
    assert split_composite_spec(spec) is None


def test_weighted_sum_errors(tmp_path):
    with pytest.raises(ValueError, match="names no reward"):
        split_composite_spec("0.5*")
    with pytest.raises(ValueError, match="Unknown reward kind 'foo'"):
        split_reward_spec("0.5*a+0.5*foo:b")
    odd = tmp_path / "2*rm"
    odd.mkdir()
    assert split_reward_spec(str(odd)) == ("hf", str(odd))  # an existing folder is a folder
    with pytest.raises(ValueError, match="gradient checkpointing .* not to 'weighted-sum' rewards"):
        load_reward(f"1*text:{EXAMPLE}:word_budget", gradient_checkpointing=True)
    with pytest.raises(ValueError, match="`--reward` needs `--model`"):
        load_pair(None, f"1*text:{EXAMPLE}:word_budget")


def test_the_list_form_round_trips():
    assert composite_spec([{"spec": "a", "weight": 0.7}, {"spec": "likelihood:b", "weight": -0.3}, "c"]) == \
        "0.7*a-0.3*likelihood:b+1.0*c"
    for bad, why in (([], "non-empty list"), ([{"spec": "a", "w": 1}], "expected"),
                     ([{"spec": "a", "weight": float("nan")}], "finite"), ([{"spec": "1*a+2*b"}], "weighted sum")):
        with pytest.raises(ValueError, match=why):
            composite_spec(bad)


def test_a_sum_of_text_rewards_scores_texts():
    spec = f"0.5*text:{EXAMPLE}:mentions_positive_word-2*text:{EXAMPLE}:word_budget"
    reward = load_reward(spec)
    assert isinstance(reward, CompositeTextReward)
    responses = ["very happy today", " ".join(["word"] * 14)]
    # word_budget: −(words beyond 11): 0 and −3; mentions: 1 and 0
    assert reward.score_texts(["she was"] * 2, responses).tolist() == [0.5, 6.0]


def test_a_sum_of_an_hf_classifier_and_a_likelihood_reward_is_differentiable(tmp_path):
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    rm = tiny_qwen3_reward(tok, seed=3)
    rm.model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    write_tiny_qwen3_lm(tok, tmp_path / "lm")
    spec = f"0.7*{tmp_path / 'rm'}+0.3*likelihood:{tmp_path / 'lm'}"
    reward = load_reward(spec, dtype=torch.float64, template="plain", gradient_checkpointing=True)
    assert isinstance(reward, CompositeReward) and reward.weights == (0.7, 0.3)
    assert isinstance(reward.members[0], HFRewardModel) and isinstance(reward.members[1], LikelihoodReward)
    assert reward.members[0].model.is_activation_checkpointing  # the HF member only
    prompts, responses = ["the cat", "a dog"], ["sat on the mat", "ran"]
    want = 0.7 * reward.members[0].score_texts(prompts, responses) + 0.3 * reward.members[1].score_texts(
        prompts, responses)
    torch.testing.assert_close(reward.score_texts(prompts, responses), want.float())
    assert reward.names == (str(tmp_path / "rm"), f"likelihood:{tmp_path / 'lm'}")
