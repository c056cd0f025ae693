"""Named presets (entrgi.presets): a registry of field sets; how they combine with the other layers is
entrgi.settings' (tests/test_settings.py)."""

from __future__ import annotations

import json

import pytest
from support.tiny_checkpoints import write_mlm_and_reward

from entrgi import Preset, get_preset, list_presets, register_preset, resolve_settings
from entrgi.cli.commands import main
from entrgi.eval.config import GRID_SET
from entrgi.registry import PRESETS


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_mlm_and_reward(tmp_path_factory.mktemp("preset_ckpt"))


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_resolves_to_valid_configs_and_leaves_the_grid_alone(name):
    preset = get_preset(name)
    s = resolve_settings(overrides={"preset": name})
    for section, fields in (("sampler", preset.sampler), ("guidance", preset.guidance), ("search", preset.search)):
        for key, value in fields.items():
            assert getattr(getattr(s, section), key) == value
    assert not set(preset.sampler) & set(GRID_SET["sampler"])
    base = resolve_settings(model_defaults={"sampler": {"max_new_tokens": 8, "steps": 8}}, overrides={"preset": name})
    assert base.sampler.max_new_tokens == 8  # fields it does not name are kept
    assert base.sampler.steps == (8 if preset.steps_fraction is None else preset.steps_for(8))


def test_fast_sets_steps_from_the_length_and_the_blocks():
    fast = get_preset("fast")
    assert fast.steps_for(16) == 4 and fast.steps_for(128) == 32 and fast.steps_for(24) == 6
    assert fast.steps_for(24, 3) == 8  # a multiple of the 8 blocks, at least one step each: round(0.75) * 8
    assert fast.steps_for(8, 1) == 8  # one block per slot: at least one step per block
    assert fast.steps_for(2) == 1  # at least one step
    s = resolve_settings(overrides={"preset": "fast", "sampler": {"max_new_tokens": 24, "block_length": 3}})
    assert s.sampler.steps == 8 and s.sampler.block_length == 3
    assert Preset("plain-steps", "no fraction").steps_for(16) is None


def test_fast_is_parallel_and_scheduled():
    s = resolve_settings(overrides={"preset": "fast"})
    assert s.sampler.parallel_threshold is not None and s.sampler.parallel_threshold < 1.0
    assert (s.guidance.guide_every, s.guidance.guide_until, s.guidance.guide_min_weight) != (1, 1.0, 0.0)
    assert s.guidance.guide_carry and s.sampler.confidence_from == "guided"
    assert s.guidance.inner_steps == 5 and s.guidance.guide_every == 2 and get_preset("fast").steps_for(16) == 4


def test_unknown_preset_and_the_registry():
    with pytest.raises(ValueError, match=r"^Unknown preset 'slow'\. Available: \['fast'\]"):
        get_preset("slow")
    with pytest.raises(ValueError, match=r"Unknown preset 'fst'\. Did you mean: fast\?"):
        resolve_settings(overrides={"preset": "fst"})
    with pytest.raises(ValueError, match="'fast' is a built-in preset"):
        register_preset(Preset("fast", "mine"))
    with pytest.raises(ValueError, match="`steps_fraction` must be in"):
        Preset("half", "T = 2L", steps_fraction=2.0)
    try:
        mine = register_preset(Preset("cheap", "every 4th step", guidance={"guide_every": 4}))
        assert get_preset("cheap") is mine and "cheap" in list_presets()
        assert resolve_settings(overrides={"preset": "cheap"}).guidance.guide_every == 4
    finally:
        PRESETS.unregister("cheap")


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
