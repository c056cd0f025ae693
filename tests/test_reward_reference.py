"""Reference-answer rewards (entrgi.reward.reference): the matches, the per-prompt references and stop strings,
the ``reference:`` spelling, and their use for Best-of-N selection and particle weights."""

from __future__ import annotations

import pytest
import torch

from entrgi import GuidanceConfig, SamplerConfig, SearchConfig, generate, load_reward
from entrgi.reward import ReferenceReward, TextReward, weighted_sum
from entrgi.reward.reference import contains, cut_at_stops, exact, last_number, numeric, reference_rewards


@pytest.mark.parametrize("response, reference, want", [
    ("  The  Answer. ", "the answer", 1.0), ("the answer is", "the answer", 0.0), ("", "", 1.0), ("Yes!", "yes", 1.0)])
def test_exact(response, reference, want):
    assert exact(response, reference) == want


@pytest.mark.parametrize("response, reference, want", [
    ("so she paid $1,234.50 in all.", "#### 1234.5", 1.0),   # GSM8K's reference layout, thousands separators
    ("it is 72.", "72", 1.0), ("first 3, then 72", "72.0", 1.0), ("72 apples, then 3", "72", 0.0),
    ("minus -4", "-4", 1.0), ("no number here", "5", 0.0), ("5", "no number", 0.0), (".5 of it", "0.5", 1.0)])
def test_numeric_compares_the_last_numbers(response, reference, want):
    assert numeric(response, reference) == want


def test_last_number():
    assert last_number("a 1,000 b 2.5 c") == 2.5 and last_number("none") is None and last_number("-7") == -7.0


@pytest.mark.parametrize("response, reference, want", [
    ("she was very happy", "happy", 1.0), ("she was unhappy", "happy", 0.0), ("Very, very HAPPY.", "happy.", 1.0),
    ("a good friend", "good friend", 1.0), ("anything", "", 0.0)])
def test_contains_whole_words(response, reference, want):
    assert contains(response, reference) == want


@pytest.mark.parametrize("text, stops", [
    ("abc", ["c", "bc"]), ("abc", ["bc", "c"]), ("one. two, three", [",", "."]), ("x", []), ("a\n\nb", ["", "\n\n"]),
    ("no stop", ["zzz"])])
def test_cut_at_stops_is_lm_evals_rule(text, stops):
    utils = pytest.importorskip("lm_eval.models.utils")
    assert cut_at_stops(text, stops) == utils.postprocess_generated_text(text, stops, None)


def test_references_are_looked_up_by_prompt_and_responses_cut_first():
    r = ReferenceReward("contains")
    assert isinstance(r, TextReward) and not r.differentiable and r.name == "reference:contains"
    r.set_references({"p": "happy", "q": "sad"}, {"p": ["."]})
    # "happy" after the stop does not count for p; q has no stops
    assert r.score_list(["p", "p", "q"], ["so happy", "fine. happy", "fine. sad"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="no reference answer for prompt 'z'"):
        r.score_list(["z"], ["x"])
    r.set_references({"z": "x"})  # replaces the previous ones
    with pytest.raises(ValueError, match="no reference answer for prompt 'p'"):
        r.score_list(["p"], ["happy"])
    with pytest.raises(ValueError, match="must be a string"):
        r.set_references({"p": 3})


def test_the_reference_spelling(tmp_path):
    assert isinstance(load_reward("reference:numeric"), ReferenceReward)
    with pytest.raises(ValueError, match="reference:exact, reference:numeric, reference:contains"):
        load_reward("reference:nummeric")
    with pytest.raises(ValueError, match="gradient checkpointing"):
        load_reward("reference:exact", gradient_checkpointing=True)
    f = tmp_path / "m.py"
    f.write_text("def starts(response, reference):\n    return float(response.startswith(reference))\n")
    custom = load_reward(f"reference:{f}:starts")
    custom.set_references({"p": "ab"})
    assert custom.name == f"reference:{f}:starts" and custom.score_list(["p", "p"], ["abc", "cab"]) == [1.0, 0.0]
    both = load_reward("1*reference:exact+0.5*reference:contains")
    found = reference_rewards(both)
    assert [r.name for r in found] == ["reference:exact", "reference:contains"]
    for r in found:
        r.set_references({"p": "yes"})
    assert both.score_list(["p", "p"], ["yes", "yes it is"]) == [1.5, 0.5]
    assert reference_rewards(TextReward(lambda p, r: 1.0)) == [] and reference_rewards(None) == []


def test_it_picks_best_of_n_and_weighs_particles(mlm, tok):
    """A reference reward as the sampler's reward: Best-of-N's scores are its matches on the decoded samples, and
    as the particles' potential it changes which particles survive (against the same seed without it)."""
    prompts = ["the cat", "a dog"]
    sampler = SamplerConfig(max_new_tokens=6, steps=6, num_samples=4, seed=5)
    none = GuidanceConfig(rule="none")
    plain = generate(mlm, prompts, None, sampler=sampler, guidance=none, progress=False)
    words = [plain.samples[i][2].text.split()[0] for i in range(2)]  # a word sample 2 of each prompt starts with
    r = ReferenceReward("contains")
    r.set_references(dict(zip(prompts, words)))
    bon = generate(mlm, prompts, r, sampler=sampler, guidance=none, search="best_of_n", progress=False)
    for i, g in enumerate(bon.samples):
        assert [s.text for s in g] == [s.text for s in plain.samples[i]]  # same samples (text rewards never guide)
        assert [s.reward for s in g] == [contains(s.text, words[i]) for s in g]
        assert contains(bon.best(i).text, words[i]) == 1.0
    parts = SearchConfig(strategy="particles", resample_every=1, lam=5.0, potential="value")
    weighed = generate(mlm, prompts, r, sampler=sampler, guidance=none, search=parts, progress=False)
    unweighed = generate(mlm, prompts, r, sampler=sampler, guidance=none,
                         search=SearchConfig(strategy="particles", lam=0.0), progress=False)
    assert [s.text for g in unweighed.samples for s in g] == [s.text for g in plain.samples for s in g]
    assert [s.text for g in weighed.samples for s in g] != [s.text for g in plain.samples for s in g]
    assert torch.tensor([s.reward for g in weighed.samples for s in g]).mean() > \
        torch.tensor([s.reward for g in bon.samples for s in g]).mean()  # resampling kept the matching particles


def test_a_reference_reward_cannot_guide(mlm):
    from entrgi.pair import check_differentiable
    with pytest.raises(ValueError, match="scores decoded text only"):
        check_differentiable(ReferenceReward(), "reference:exact", "method 'entrgi'")
    assert weighted_sum([ReferenceReward(), ReferenceReward("numeric")], [1.0, 1.0]).differentiable is False
