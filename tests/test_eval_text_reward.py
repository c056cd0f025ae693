"""`entrgi eval` with a text reward: it picks Best-of-N's Top@1 and weighs particles (hybrid with the RM's
gradients for particles_entrgi); records keep the RM's scores; the field is part of the run identity."""

import json
from pathlib import Path

import pytest
from eval_worker import config, runner, write_prompts
from support.tiny_models import CHAT_TEMPLATE, tiny_mlm, word_tokenizer

from entrgi.cli.commands import read_eval_config
from entrgi.eval import EvalConfig, EvalRunner, VaderJudge, read_records
from entrgi.eval.runner import check_run_dir
from entrgi.reward.text import TextReward

ROOT = Path(__file__).resolve().parent.parent


def n_chars(prompt, response):
    return float(len(response))


def reward_file(tmp_path) -> str:
    path = tmp_path / "chars.py"
    path.write_text("def n_chars(prompt, response):\n    return float(len(response))\n")
    return f"text:{path}:n_chars"


def small_cfg(tmp_path, out="run", **kw):
    base = dict(methods=("best_of_n", "particles", "particles_entrgi"), temperatures=(1.0,), seeds=(1,), n_prompts=2,
                track_reward=False, particles={"resample_every": 2, "lam": 1.0}, perplexity=False,
                sampler={"max_new_tokens": 4, "steps": 4, "num_samples": 2})
    base.update(kw)
    return config(tmp_path / out, write_prompts(tmp_path), **base)


def test_the_text_reward_picks_top1_and_records_keep_the_rm_scores(tmp_path):
    spec = reward_file(tmp_path)
    cfg = small_cfg(tmp_path, text_reward=spec, n_prompts=1)
    r = runner(cfg)
    r.run()
    assert r.text_reward.name == spec.split(":", 1)[1]
    recs = read_records(Path(cfg.out))
    assert {x["method"] for x in recs} == {"best_of_n", "particles", "particles_entrgi"} and len(recs) == 3
    for rec in recs:
        texts = [s["text"] for s in rec["samples"]]
        sel = [n_chars(rec["prompt"], t) for t in texts]
        assert [s["selection"] for s in rec["samples"]] == sel
        assert rec["best_index"] == max(range(len(sel)), key=sel.__getitem__)
        assert rec["selection"] == {"reward": spec, "top1": max(sel), "avg": sum(sel) / len(sel)}
        rm = r.reward.score_texts([rec["prompt"]] * len(texts), texts).tolist()
        assert [s["reward"] for s in rec["samples"]] == pytest.approx(rm, abs=1e-6)
        assert rec["top1"] == rec["samples"][rec["best_index"]]["reward"]
    # Best-of-N's samples do not depend on the text reward (only the pick does)
    plain = small_cfg(tmp_path, out="plain", methods=("best_of_n",), n_prompts=1)
    runner(plain).run()
    by_prompt = {x["prompt"]: x for x in read_records(Path(plain.out))}
    for rec in (x for x in recs if x["method"] == "best_of_n"):
        assert [s["text"] for s in rec["samples"]] == [s["text"] for s in by_prompt[rec["prompt"]]["samples"]]
        assert "selection" not in by_prompt[rec["prompt"]]


def test_the_text_reward_is_in_the_identity(tmp_path):
    spec = reward_file(tmp_path)
    a, b = small_cfg(tmp_path), small_cfg(tmp_path, text_reward=spec)
    assert a.identity()["text_reward"] is None and b.identity()["text_reward"] == spec
    assert a.identity_hash() != b.identity_hash()
    check_run_dir(a, Path(a.out))
    with pytest.raises(ValueError, match="text_reward"):
        check_run_dir(b, Path(a.out))
    pc = small_cfg(tmp_path, particles={"potential_reward": spec}).identity()["search"]
    assert pc["potential_reward"] == spec
    with pytest.raises(ValueError, match="`text_reward`.*Unknown reward kind"):
        small_cfg(tmp_path, text_reward="txt:a:b")


def test_a_text_reward_as_the_reward_runs_best_of_n_and_particles_without_a_reward_model(tmp_path):
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    cfg = small_cfg(tmp_path, methods=("best_of_n", "particles"))
    text = TextReward(n_chars)
    r = EvalRunner(cfg, model=tiny_mlm(tok, seed=0), reward=text, judges=[VaderJudge()], progress=False)
    r.run()
    for rec in read_records(Path(cfg.out)):
        rewards = [s["reward"] for s in rec["samples"]]
        assert rewards == [n_chars(rec["prompt"], s["text"]) for s in rec["samples"]]
        assert rec["top1"] == max(rewards) and "selection" not in rec
    bad = small_cfg(tmp_path, out="bad", methods=("particles_entrgi",))
    with pytest.raises(ValueError, match="scores decoded text only"):
        EvalRunner(bad, model=tiny_mlm(tok, seed=0), reward=text, judges=[], progress=False).run()


def test_the_yaml_example_and_the_weighted_sum_list_spelling():
    data = read_eval_config(str(ROOT / "configs" / "text-reward.yaml"))
    cfg = EvalConfig(**data)
    assert cfg.text_reward.endswith("constraint_rewards.py:both_constraints") and cfg.model is None
    assert "particles_entrgi" in cfg.methods
    listed = EvalConfig(model="some/dllm", reward=[{"spec": "some/rm", "weight": 0.7},
                                                   {"spec": "likelihood:some/lm", "weight": 0.3}])
    assert listed.reward == "0.7*some/rm+0.3*likelihood:some/lm"
    assert json.loads(json.dumps(listed.identity()))["reward"] == listed.reward
    with pytest.raises(ValueError, match="`reward`: reward term 1"):
        EvalConfig(model="some/dllm", reward=[{"spec": "a"}, {"spec": "b", "weight": "x"}])
