"""Text rewards: per-item / batched / threaded / async calls give the loop's scores in order; the
``module:function`` and ``file.py:function`` spellings load, and fail with one clear ValueError each."""

import asyncio
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from entrgi.reward.text import TextReward, batched, load_text_reward

PROMPTS = [f"prompt {i}" for i in range(10)]
RESPONSES = ["the sun was red", "", "good dog", "a very happy day and then night", "sad", "x y", "it was",
             "big small", "one two three four five six", "rain"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "constraint_rewards.py"


def item_score(prompt: str, response: str) -> float:
    """Depends on both arguments and on the position of the item (through the prompt)."""
    return len(response.split()) * 1.5 - 0.25 * int(prompt.split()[1]) + (0.125 if "happy" in response else 0.0)


LOOP = torch.tensor([item_score(p, r) for p, r in zip(PROMPTS, RESPONSES)], dtype=torch.float32)


def test_per_item_batched_threaded_and_async_equal_the_loop():
    calls = []

    def batch_fn(prompts, responses):
        calls.append(len(prompts))
        return np.array([item_score(p, r) for p, r in zip(prompts, responses)])

    async def async_item(p, r):
        await asyncio.sleep(0.001 * (10 - int(p.split()[1])))  # later items finish first
        return item_score(p, r)

    @batched
    async def async_batch(prompts, responses):
        await asyncio.sleep(0.001 * len(prompts))
        return torch.tensor([item_score(p, r) for p, r in zip(prompts, responses)])

    rewards = [TextReward(item_score), TextReward(item_score, max_workers=4),
               TextReward(batch_fn, batched=True, batch_size=3), TextReward(batch_fn, batched=True, batch_size=4,
                                                                          max_workers=3),
               TextReward(async_item, max_workers=5), TextReward(async_batch, batch_size=3, max_workers=2)]
    for r in rewards:
        out = r.score_texts(PROMPTS, RESPONSES)
        assert out.dtype == torch.float32 and out.shape == (10,)
        assert torch.equal(out, LOOP), r
    assert calls == [3, 3, 3, 1, 4, 4, 2]  # chunks of batch_size, every item once
    assert TextReward(batch_fn, batched=True).score_texts(PROMPTS, RESPONSES, batch_size=5).tolist() == LOOP.tolist()
    assert TextReward(item_score).score_texts([], []).shape == (0,)


def test_threads_and_awaits_really_overlap():
    barrier = threading.Barrier(4, timeout=5)

    def waits_for_three_others(p, r):  # deadlocks (BrokenBarrierError) unless four calls run at once
        barrier.wait()
        return item_score(p, r)

    assert TextReward(waits_for_three_others, max_workers=4).score_texts(PROMPTS[:8], RESPONSES[:8]).tolist() == \
        LOOP[:8].tolist()
    live, peak = [0], [0]

    async def counted(p, r):
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        await asyncio.sleep(0.05)
        live[0] -= 1
        return 1.0

    TextReward(counted, max_workers=3).score_texts(PROMPTS, RESPONSES)
    assert peak[0] == 3  # bounded by max_workers, and reached
    t0 = time.perf_counter()
    TextReward(counted, max_workers=10).score_texts(PROMPTS, RESPONSES)
    assert time.perf_counter() - t0 < 0.3  # ten 50 ms awaits at once, not 0.5 s one after the other


def test_async_reward_inside_a_running_event_loop():
    async def item(p, r):
        return item_score(p, r)

    async def caller():  # e.g. a notebook: score_texts is called while a loop runs
        return TextReward(item).score_texts(PROMPTS, RESPONSES)

    assert torch.equal(asyncio.run(caller()), LOOP)


def test_values_are_checked_and_converted():
    flags = TextReward(lambda p, r: "sun" in r).score_texts(PROMPTS[:2], RESPONSES[:2])
    assert flags.tolist() == [1.0, 0.0]  # bools count as 0 / 1
    assert TextReward(lambda p, r: np.float32(2.5)).score_list(["a"], ["b"]) == [2.5]
    assert TextReward(lambda p, r: torch.tensor([3.0])).score_list(["a"], ["b"]) == [3.0]
    with pytest.raises(ValueError, match=r"'bad' returned nan for item 1; scores must be finite"):
        TextReward(lambda p, r: float("nan") if r == "" else 1.0, name="bad").score_texts(PROMPTS[:2], RESPONSES[:2])
    with pytest.raises(ValueError, match="returned inf"):
        TextReward(lambda p, r: float("inf")).score_texts(["a"], ["b"])
    with pytest.raises(ValueError, match="returned str 'high' for item 0"):
        TextReward(lambda p, r: "high").score_texts(["a"], ["b"])
    with pytest.raises(ValueError, match="returned 1 scores for 2 items"):
        TextReward(lambda ps, rs: [1.0], batched=True).score_texts(["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="must return a sequence"):
        TextReward(lambda ps, rs: 1.0, batched=True).score_texts(["a"], ["c"])
    with pytest.raises(ValueError, match="differ in length"):
        TextReward(item_score).score_texts(["a"], [])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"must accept two arguments \(prompt, response\)"):
        TextReward(lambda response: 1.0)
    with pytest.raises(ValueError, match="`fn` must be a function"):
        TextReward(3)
    with pytest.raises(ValueError, match="`max_workers` must be an integer >= 1"):
        TextReward(item_score, max_workers=0)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        TextReward(item_score, batch_size=0)


def test_judge_interface():
    judge = TextReward(item_score, name="length")
    assert (judge.name, judge.on, judge.differentiable) == ("length", "all", False)
    scores = judge.score(PROMPTS, RESPONSES)
    assert isinstance(scores, list) and scores == LOOP.tolist()


# ---- the `module:function` spelling ---------------------------------------------------------------------
@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        from entrgi.reward.text import TextReward, batched

        def per_item(prompt, response):
            return float(len(response))

        @batched
        def many(prompts, responses):
            return [float(len(r)) for r in responses]

        class Holder:
            @staticmethod
            def nested(prompt, response):
                return 2.0

        ready = TextReward(per_item, name="ready-made")
        NOT_CALLABLE = 42
    """))
    (tmp_path / "broken_dep.py").write_text("import a_package_that_is_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_loads_module_and_file_spellings(user_module):
    r = load_text_reward("my_rewards:per_item")
    assert (r.name, r.batched) == ("my_rewards:per_item", False)
    assert r.score_list(["p"], ["abcd"]) == [4.0]
    many = load_text_reward("my_rewards:many", batch_size=2)
    assert many.batched and many.score_list(["p"] * 3, ["a", "bb", "ccc"]) == [1.0, 2.0, 3.0]
    assert load_text_reward("my_rewards:Holder.nested").score_list(["p"], ["r"]) == [2.0]
    assert load_text_reward("my_rewards:ready").name == "ready-made"  # a TextReward is returned as it is
    by_file = load_text_reward(f"{user_module / 'my_rewards.py'}:per_item", max_workers=2)
    assert by_file.max_workers == 2 and by_file.score_list(["p"], ["xyz"]) == [3.0]


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:fn", r"text reward 'no_such_module_xyz:fn': no module named 'no_such_module_xyz'"),
    ("my_rewards:missing", r"text reward 'my_rewards:missing': 'my_rewards' has no attribute 'missing'"),
    ("my_rewards:Holder.gone", r"'my_rewards:Holder' has no attribute 'gone'"),
    ("my_rewards:NOT_CALLABLE", r"text reward 'my_rewards:NOT_CALLABLE': 'NOT_CALLABLE' is a int \(42\), not a "
                                "function"),
    ("my_rewards:Holder", r"'Holder' is the class 'Holder', not a function"),
    ("my_rewards", r"text reward 'my_rewards': expected 'module:function' or 'path/to/file.py:function'"),
    ("my_rewards:", r"expected 'module:function'"),
    ("my rewards:fn", r"'my rewards' is neither a module name nor a .py file"),
    ("broken_dep:fn", r"text reward 'broken_dep:fn': importing 'broken_dep' failed: No module named "
                      "'a_package_that_is_not_installed_xyz'"),
    ("nowhere/rewards.py:fn", r"text reward 'nowhere/rewards.py:fn': file 'nowhere/rewards.py' not found"),
])
def test_loader_errors_name_the_spelling(user_module, spec, message):
    with pytest.raises(ValueError, match=message):
        load_text_reward(spec)


def test_ready_text_reward_takes_no_options(user_module):
    with pytest.raises(ValueError, match="already a TextReward; it takes no options"):
        load_text_reward("my_rewards:ready", max_workers=3)


def test_example_constraint_rewards_load_and_score():
    mention = load_text_reward(f"{EXAMPLES}:mentions_positive_word")
    short = load_text_reward(f"{EXAMPLES}:fewer_than_12_words")
    both = load_text_reward(f"{EXAMPLES}:both_constraints")
    budget = load_text_reward(f"{EXAMPLES}:word_budget")
    assert both.batched and budget.batched and not mention.batched
    responses = ["she was very happy that day.", "unhappy and goodness, she said",
                 "one two three four five six seven eight nine ten eleven twelve thirteen", "Happy"]
    prompts = ["she was"] * 4
    assert mention.score_list(prompts, responses) == [1.0, 0.0, 0.0, 1.0]  # whole words, any case
    assert short.score_list(prompts, responses) == [1.0, 1.0, 0.0, 1.0]
    assert both.score_list(prompts, responses) == [2.0, 1.0, 0.0, 2.0]
    assert budget.score_list(prompts, responses) == [0.0, 0.0, -2.0, 0.0]
