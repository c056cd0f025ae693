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
from entrgi.presets import PRESETS, expand_preset, get_preset


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
    base = SamplerConfig(max_new_tokens=8, steps=4)
    assert preset.configs(base)[0].max_new_tokens == 8  # fields it does not name are kept


def test_fast_is_parallel_and_scheduled():
    sampler, guidance = get_preset("fast").configs()
    assert sampler.parallel_threshold is not None and sampler.parallel_threshold < 1.0
    assert (guidance.guide_every, guidance.guide_until, guidance.guide_min_weight) != (1, 1.0, 0.0)
    assert guidance.guide_carry and sampler.confidence_from == "guided"


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
    assert expand_preset({}, "fast")["sampler"] == dict(fast.sampler)  # the flag's name


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
    assert data["sampler"] == dict(fast.sampler) and data["guidance"] == {**fast.guidance, "inner_steps": 1}
    cfg = EvalConfig.from_dict(data)
    assert cfg.guidance_config("entrgi").inner_steps == 1
    for key, value in fast.guidance.items():
        assert getattr(cfg.guidance_config("entrgi"), key) == value
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
