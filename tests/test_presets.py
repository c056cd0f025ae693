"""Named presets (entrgi.presets): ``--preset fast`` on ``entrgi generate`` / ``entrgi eval`` and ``preset:`` in
eval YAML set the preset's fields, explicit fields override them, the resolved config shows the result."""

from __future__ import annotations

import json

import pytest
import yaml
from support.tiny_checkpoints import write_mlm_and_reward

from entrgi import GuidanceConfig, SamplerConfig
from entrgi.cli.commands import main, read_eval_config
from entrgi.eval.config import GRID_SET, EvalConfig
from entrgi.presets import PRESETS, Preset, expand_preset, get_preset


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_mlm_and_reward(tmp_path_factory.mktemp("preset_ckpt"))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_valid_configs_and_leaves_the_grid_alone(name):
    preset = get_preset(name)
    sampler, guidance = preset.configs()
    assert isinstance(sampler, SamplerConfig) and isinstance(guidance, GuidanceConfig)
    for key, value in preset.sampler.items():
        assert getattr(sampler, key) == value
    for key, value in preset.guidance.items():
        assert getattr(guidance, key) == value
    assert not set(preset.sampler) & set(GRID_SET["sampler"]) and not set(preset.guidance) & set(GRID_SET["guidance"])
    base = SamplerConfig(max_new_tokens=8, steps=8)
    assert preset.configs(base)[0].max_new_tokens == 8  # fields it does not name are kept
    assert preset.configs(base)[0].steps == (8 if preset.steps_fraction is None else preset.steps_for(8))


def test_fast_sets_steps_from_the_length_and_the_blocks():
    fast = get_preset("fast")
    assert fast.steps_for(16) == 4 and fast.steps_for(128) == 32 and fast.steps_for(24) == 6
    assert fast.steps_for(24, 3) == 8  # a multiple of the 8 blocks, at least one step each: round(0.75) * 8
    assert fast.steps_for(8, 1) == 8  # one block per slot: at least one step per block
    assert fast.steps_for(2) == 1  # at least one step
    sampler, _ = fast.configs(SamplerConfig(max_new_tokens=24, steps=24, block_length=3))
    assert sampler.steps == 8 and sampler.block_length == 3
    assert Preset("plain-steps", "no fraction").steps_for(16) is None


def test_fast_is_parallel_and_scheduled():
    sampler, guidance = get_preset("fast").configs()
    assert sampler.parallel_threshold is not None and sampler.parallel_threshold < 1.0
    assert (guidance.guide_every, guidance.guide_until, guidance.guide_min_weight) != (1, 1.0, 0.0)
    assert guidance.guide_carry and sampler.confidence_from == "guided"
    assert guidance.inner_steps == 5 and guidance.guide_every == 2 and get_preset("fast").steps_for(16) == 4


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"`preset` must be one of \['fast'\], got 'slow'"):
        get_preset("slow")
    with pytest.raises(ValueError, match="`preset` must be one of"):
        expand_preset({"preset": "slow"})


def test_expand_preset_under_explicit_fields():
    fast = get_preset("fast")
    key = next(iter(fast.sampler))
    out = expand_preset({"preset": "fast", "sampler": {key: "mine", "steps": 4}, "n_prompts": 2})
    assert "preset" not in out and out["n_prompts"] == 2
    assert out["sampler"] == {**fast.sampler, key: "mine", "steps": 4}
    assert out["guidance"] == dict(fast.guidance)
    assert expand_preset({"sampler": {"steps": 4}}) == {"sampler": {"steps": 4}}  # no preset: unchanged
    assert expand_preset({}, "fast")["sampler"] == {**fast.sampler, "steps": 32}  # the flag's name; L = 128
    assert expand_preset({"sampler": {"max_new_tokens": 16}}, "fast")["sampler"] == {
        **fast.sampler, "max_new_tokens": 16, "steps": 4}
    assert expand_preset({"sampler": {"max_new_tokens": 16, "steps": 9}}, "fast")["sampler"]["steps"] == 9


def test_generate_fast_derives_steps_from_the_final_length(folders, capsys):
    mlm, rm = folders
    base = ["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "the cat", "--num-samples", "1",
            "--temperature", "1.0", "--quiet", "--json", "--preset", "fast"]
    assert main([*base, "--max-new-tokens", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["sampler"]["steps"] == 4
    assert main([*base, "--max-new-tokens", "8", "--steps", "8"]) == 0  # an explicit --steps wins
    assert json.loads(capsys.readouterr().out)["sampler"]["steps"] == 8


def test_generate_preset_shows_in_the_json_and_flags_override(folders, capsys):
    mlm, rm = folders
    base = ["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "the cat", "--max-new-tokens", "4",
            "--steps", "4", "--num-samples", "2", "--temperature", "1.0", "--quiet", "--json"]
    fast = get_preset("fast")
    assert main([*base, "--preset", "fast"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key, value in fast.sampler.items():
        assert data["sampler"][key] == value
    for key, value in fast.guidance.items():
        assert data["guidance"][key] == value
    assert data["sampler"]["max_new_tokens"] == 4
    assert main([*base, "--preset", "fast", "--parallel-threshold", "0.5", "--guide-every", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sampler"]["parallel_threshold"] == 0.5 and data["guidance"]["guide_every"] == 2
    assert data["guidance"]["guide_carry"] is True  # the preset's other fields stay
    assert main(base) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sampler"]["parallel_threshold"] is None and data["guidance"]["guide_every"] == 1


def test_bad_preset_flag_is_one_line(folders, capsys):
    mlm, rm = folders
    with pytest.raises(SystemExit) as info:  # argparse's choices
        main(["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "x", "--preset", "slow"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--preset" in err and "'slow'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_yaml_preset(tmp_path, capsys):
    fast = get_preset("fast")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "fast", "out": str(tmp_path / "run"), "guidance": {"inner_steps": 1}}))
    data = read_eval_config(str(path))
    assert "preset" not in data
    assert data["sampler"] == {**fast.sampler, "steps": 32}  # L/4 of SamplerConfig's L = 128
    assert data["guidance"] == {**fast.guidance, "inner_steps": 1}
    cfg = EvalConfig.from_dict(data)
    assert cfg.guidance_config("entrgi").inner_steps == 1 != fast.guidance["inner_steps"]  # the YAML's field wins
    for key, value in fast.guidance.items():
        assert getattr(cfg.guidance_config("entrgi"), key) == (1 if key == "inner_steps" else value)
    resolved = cfg.identity()["sampler"]  # what run.json stores (the run's identity)
    for key, value in fast.sampler.items():
        assert resolved[key] == value
    path.write_text(yaml.safe_dump({"preset": "slow"}))
    with pytest.raises(ValueError, match=r"`--config` .*run.yaml.*`preset` must be one of \['fast'\]"):
        read_eval_config(str(path))
    assert main(["eval", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "`preset` must be one of" in err and "Traceback" not in err


def test_eval_preset_flag_runs(folders, tmp_path):
    mlm, rm = folders
    out = tmp_path / "run"
    assert main(["eval", "--model", str(mlm), "--reward", str(rm), "--out", str(out), "--preset", "fast",
                 "--methods", "entrgi", "--temperatures", "1.0", "--seeds", "1", "--prompt-sets", "continuations",
                 "--n-prompts", "2", "--max-new-tokens", "4", "--steps", "4", "--num-samples", "2",
                 "--no-perplexity", "--no-report", "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    fast = get_preset("fast")
    for section, fields in (("sampler", fast.sampler), ("guidance", fast.guidance)):
        for key, value in fields.items():
            assert run["identity"][section][key] == value and run["config"][section][key] == value
