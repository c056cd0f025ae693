"""One resolution of a run's settings (entrgi.settings.resolve_settings) for generate, eval and serve: the layers'
order, the method spellings, the preset's steps from the final length, and errors that name the layer."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from entrgi import GuidanceConfig, RunSettings, SamplerConfig, SearchConfig, generate, resolve_settings
from entrgi.cli.args import add_settings_args, settings_layer
from entrgi.cli.commands import generate_settings, main
from entrgi.default_pair import GUIDANCE_DEFAULTS, SAMPLER_DEFAULTS
from entrgi.eval import EvalConfig, read_records
from entrgi.settings import method_fields, model_defaults


def flags(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--family")
    add_settings_args(p)
    return p.parse_args(list(argv))


def test_the_layers_override_in_order():
    model = {"sampler": {"max_new_tokens": 16, "steps": 16, "top_p": 0.9}, "guidance": {"lr": 1.0}}
    config = {"sampler": {"top_p": 0.8}, "guidance": {"inner_steps": 2}}
    overrides = {"guidance": {"inner_steps": 5}}
    s = resolve_settings(model_defaults=model, config=config, overrides=overrides)
    assert (s.sampler.max_new_tokens, s.sampler.steps, s.sampler.top_p) == (16, 16, 0.8)
    assert (s.guidance.lr, s.guidance.inner_steps, s.guidance.optimizer) == (1.0, 5, "adam")
    assert s == resolve_settings(model_defaults=model, config=config, overrides=overrides)  # a value
    assert resolve_settings() == RunSettings(SamplerConfig(), GuidanceConfig(), SearchConfig())
    # the preset sits above the model's defaults and below the config file, whichever layer names it
    s = resolve_settings(model_defaults={"guidance": {"lr": 1.0}}, config={"guidance": {"lr": 0.25}},
                         overrides={"preset": "fast"})
    assert s.guidance.lr == 0.25 and s.guidance.guide_every == 2 and s.preset == "fast"
    s = resolve_settings(model_defaults={"guidance": {"lr": 1.0}}, overrides={"preset": "fast"})
    assert s.guidance.lr == 3.0  # the preset's, over the model's


def test_the_preset_takes_T_from_the_final_length_unless_steps_are_given():
    """The bug of issue 23: `entrgi eval --preset fast --max-new-tokens 16` took T from the default L = 128 (T = 32)."""
    assert resolve_settings(overrides={"preset": "fast", "sampler": {"max_new_tokens": 16}}).sampler.steps == 4
    assert resolve_settings(config={"preset": "fast"}, overrides={"sampler": {"max_new_tokens": 16}}).sampler.steps == 4
    assert resolve_settings(config={"sampler": {"steps": 9}}, overrides={"preset": "fast"}).sampler.steps == 9
    model = {"sampler": {"max_new_tokens": 16, "steps": 16}}  # the model's own T = L does not block the preset's
    assert resolve_settings(model_defaults=model, overrides={"preset": "fast"}).sampler.steps == 4
    cfg = EvalConfig.from_dict({"preset": "fast", "sampler": {"max_new_tokens": 16}, "methods": ["entrgi"]})
    assert cfg.settings("entrgi", 0.7, 1).sampler.steps == 4


def test_generate_eval_and_the_python_api_resolve_alike():
    args = flags("--preset", "fast", "--max-new-tokens", "12", "--lr", "2.0")
    by_cli = generate_settings(args)
    by_eval = EvalConfig.from_dict({"preset": "fast", "sampler": {"max_new_tokens": 12}, "guidance": {"lr": 2.0},
                                    "methods": ["entrgi"], "temperatures": [0.7], "seeds": [0]})
    assert by_eval.settings("entrgi", 0.7, 0) == by_cli
    by_api = resolve_settings(model_defaults=model_defaults(None), overrides=settings_layer(args))
    assert by_api == by_cli and by_cli.sampler.steps == 3 and by_cli.guidance.lr == 2.0
    assert model_defaults(None) == {"sampler": SAMPLER_DEFAULTS, "guidance": GUIDANCE_DEFAULTS}


@pytest.mark.parametrize("method,rule,strategy", [
    ("none", "none", "sample"), ("best_of_n", "none", "best_of_n"), ("entrgi", "entrgi", "sample"),
    ("aps", "aps", "sample"), ("particles", "none", "particles"), ("particles_entrgi", "entrgi", "particles")])
def test_the_method_spellings_are_a_rule_and_a_search(method, rule, strategy):
    s = resolve_settings(overrides={"method": method})
    assert (s.guidance.rule, s.search.strategy) == (rule, strategy)
    assert resolve_settings(overrides={"guidance": {"method": method}}) == s  # the request's spelling too
    assert method_fields(method)["guidance"]["rule"] == rule


def test_anchored_aps_and_the_rule_flags():
    s = resolve_settings(overrides={"method": "aps_anchored"})
    assert (s.guidance.rule, s.sampler.remasking, s.sampler.confidence_from) == ("aps", "maskgit_plus", "guided")
    s = generate_settings(flags("--rule", "expectation", "--search", "best_of_n"))
    assert (s.guidance.rule, s.search.strategy) == ("expectation", "best_of_n")
    with pytest.raises(ValueError, match="`method` 'entrgi' and guidance.rule = 'aps' disagree"):
        resolve_settings(overrides={"method": "entrgi", "guidance": {"rule": "aps"}})
    with pytest.warns(DeprecationWarning, match="rule=..."):
        assert GuidanceConfig(method="aps").rule == "aps"  # the Python spelling of 0.1
    with pytest.raises(ValueError, match="is not a guidance rule: what is searched is `SearchConfig.strategy`"):
        GuidanceConfig(method="best_of_n")


def test_another_rule_drops_the_earlier_rules_parameters():
    from entrgi import register_guidance_rule
    from entrgi.registry import GUIDANCE_RULES

    try:
        register_guidance_rule("scaled", lambda logits, t, scale: logits.new_full(logits.shape[:-1], scale),
                               params={"scale": 0.5})
        s = resolve_settings(config={"guidance": {"rule": "scaled", "rule_params": {"scale": 0.25}}},
                             overrides={"method": "entrgi"})
        assert s.guidance.rule == "entrgi" and dict(s.guidance.rule_params) == {}
        s = resolve_settings(config={"guidance": {"rule": "scaled", "rule_params": {"scale": 0.25}}})
        assert dict(s.guidance.rule_params) == {"scale": 0.25} and hash(s.guidance) == hash(s.guidance)
        with pytest.raises(ValueError, match="parameter `scale` of guidance rule 'scaled'.*must be a float"):
            GuidanceConfig(rule="scaled", rule_params={"scale": "big"})
    finally:
        GUIDANCE_RULES.unregister("scaled")


def test_errors_name_the_field_and_the_layer_that_set_it():
    with pytest.raises(ValueError, match=r"`top_p` must be in \(0.0, 1.0\], got 1.5\. \(`sampler.top_p` from "
                                         r"the config file\)"):
        resolve_settings(config={"sampler": {"top_p": 1.5}})
    with pytest.raises(ValueError, match=r"`sampler.top_q` \(the flags\) is not a SamplerConfig field\. Did you mean "
                                         r"`top_p`\?"):
        resolve_settings(overrides={"sampler": {"top_q": 0.5}})
    with pytest.raises(ValueError, match=r"the flags: unknown settings \['samplr'\]"):
        resolve_settings(overrides={"samplr": {}})
    with pytest.raises(ValueError, match=r"`method` must be one of .*got 'entrgy'\. Did you mean: entrgi\?"):
        resolve_settings(overrides={"method": "entrgy"})


# ---- eval: methods with their own settings, one table with the frontier ---------------------------------------
FAST_VS = {"prompt_sets": ["continuations"], "n_prompts": 2, "subsample": "paper", "temperatures": [0.7],
           "seeds": [1], "judges": ["vader"], "perplexity": False, "track_reward": True,
           "methods": [{"name": "plain", "method": "none"}, "entrgi", {"name": "fast", "preset": "fast"},
                       {"name": "bon-fast", "method": "best_of_n_matched", "match": ["fast"]}]}


def test_one_eval_holds_plain_entrgi_fast_and_best_of_n_at_fasts_cost(tmp_path):
    """Each method its own preset; the traced eval records the method's own cost (the trace and the reward
    estimates are counted apart), so Best-of-N is matched on fast's cost and the numbers equal a plain
    `generate` with the same settings (what scripts/frontier.py runs)."""
    from entrgi.default_pair import load_default_pair
    from entrgi.eval import EvalRunner
    from entrgi.eval.prompts import load_prompt_set

    cfg = EvalConfig.from_dict({**FAST_VS, "out": str(tmp_path / "run")})
    model, reward = load_default_pair()
    EvalRunner(cfg, model=model, reward=reward, progress=False).run()
    recs = {r["method"]: r for r in read_records(tmp_path / "run")}
    by = {}
    for r in read_records(tmp_path / "run"):
        by.setdefault(r["method"], []).append(r)
    prompts = [p.text for p in load_prompt_set("continuations").subsample(2, "paper", 1)]
    for name in ("plain", "fast"):  # the two resolutions that differ most (full EntRGi: the costliest to redo)
        s = cfg.settings(name, 0.7, 1, model_layer=model_defaults(model))
        out = generate(model, prompts, reward, sampler=s.sampler, guidance=s.guidance, search=s.search,
                       progress=False, trace=False)
        assert [r["top1"] for r in by[name]] == out.top1() and [r["avg"] for r in by[name]] == out.avg()
        assert sum(r["compute"]["flops"] for r in by[name]) == pytest.approx(out.stats.flops, rel=1e-12)
    assert recs["fast"]["settings"]["preset"] == "fast" and recs["fast"]["label"] == "fast"
    assert recs["entrgi"]["settings"]["preset"] is None and recs["entrgi"]["label"] == "EntRGi"
    assert recs["fast"]["settings"]["sampler"]["steps"] == 4 and recs["entrgi"]["settings"]["sampler"]["steps"] == 16
    fast = sum(r["compute"]["flops"] for r in by["fast"])
    plain = sum(r["compute"]["flops"] for r in by["plain"])
    n = json.loads((tmp_path / "run" / "matched_n.json").read_text())
    assert list(n.values()) == [max(4, round(4 * fast / plain))] == [recs["bon-fast"]["num_samples"]]
    assert all(r["observer_compute"]["rm_forwards"] > 0 for r in by["entrgi"])  # traced and tracked, apart


def test_a_run_preset_labels_its_methods(tmp_path):
    cfg = EvalConfig.from_dict({"preset": "fast", "methods": ["entrgi", {"name": "full", "method": "entrgi",
                                                                        "preset": None}]})
    assert cfg.settings("entrgi", 0.7, 1).preset == "fast"
    from entrgi.eval.tables import cell_label
    assert cell_label("entrgi", None, "fast") == "EntRGi (fast)"


def test_eval_yaml_methods_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"`methods`: the names \['x'\] appear twice"):
        EvalConfig.from_dict({"methods": [{"name": "x", "method": "none"}, {"name": "x"}]})
    with pytest.raises(ValueError, match=r"`methods\[b\].match`: no method named 'fast'"):
        EvalConfig.from_dict({"methods": ["none", {"name": "b", "method": "best_of_n_matched", "match": "fast"}]})
    with pytest.raises(ValueError, match=r"`methods\[f\].method` must be one of"):
        EvalConfig.from_dict({"methods": [{"name": "f", "method": "fastt"}]})
    with pytest.raises(ValueError, match=r"`steps` \(9\) must be a multiple of the number of blocks .*method 'f'"):
        EvalConfig.from_dict({"methods": [{"name": "f", "sampler": {"block_length": 8, "steps": 9}}]})


def test_eval_cli_threads_and_a_yaml_with_methods(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**FAST_VS, "out": str(tmp_path / "run"), "n_prompts": 1,
                                    "methods": [{"name": "plain", "method": "none"},
                                                {"name": "fast", "preset": "fast"}]}))
    assert main(["eval", "--config", str(path), "--threads", "1", "--quiet", "--no-report"]) == 0
    recs = read_records(tmp_path / "run")
    assert sorted({r["label"] for r in recs}) == ["fast", "plain"]
