"""The registries (guidance rules, remasking rules, reward kinds), plugins, the pair rule and the shared primitives."""

import contextlib
import warnings
from pathlib import Path

import pytest
import torch
from support.tiny_models import CHAT_TEMPLATE, tiny_qwen3_reward, word_tokenizer, write_tiny_qwen3_lm

from entrgi import (
    GuidanceConfig,
    GuidanceRule,
    RemaskingRule,
    SamplerConfig,
    generate,
    get_guidance_rule,
    get_remasking_rule,
    load_plugin,
    load_reward,
    register_guidance_rule,
    register_remasking_rule,
    register_reward,
)
from entrgi.config import remasking_choices
from entrgi.dtypes import dtype_from_name
from entrgi.eval.config import EvalConfig
from entrgi.guidance.mixing import entropy_weight, reward_input_embeddings
from entrgi.ops import logit_ops
from entrgi.pair import check_differentiable, check_pair
from entrgi.registry import GUIDANCE_RULES, REMASKING_RULES, REWARD_KINDS
from entrgi.reward.hf import HFRewardModel
from entrgi.reward.likelihood import LikelihoodReward
from entrgi.reward.registry import split_reward_spec
from entrgi.reward.text import TextReward
from entrgi.sampling import schedule
from entrgi.sampling.remasking import probabilities
from entrgi.settings import method_choices, resolve_settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
F64 = torch.float64


@contextlib.contextmanager
def registered(registry, *names):
    """Remove ``names`` from ``registry`` afterwards (the registries are process-wide)."""
    try:
        yield
    finally:
        for n in names:
            if n in registry:
                registry.unregister(n)


def small(**kw):
    return SamplerConfig(**{**dict(max_new_tokens=5, steps=5, num_samples=2, temperature=1.0, top_p=0.9), **kw})


def samples(out):
    return [[(s.token_ids, s.reward) for s in g] for g in out.samples]


# ---- lookups ------------------------------------------------------------------------------------------
def test_unknown_names_list_the_available_ones_and_suggest_close_ones():
    with pytest.raises(ValueError, match=r"^Unknown guidance rule 'entrgu'\. Did you mean: entrgi\? "
                                         r"Available: \['expectation', 'aps', 'entrgi'"):
        get_guidance_rule("entrgu")
    with pytest.raises(ValueError, match=r"^Unknown guidance rule 'zzz'\. Available: \["):  # nothing close: no hint
        get_guidance_rule("zzz")
    with pytest.raises(ValueError, match=r"^Unknown remasking rule 'entropi'\. Did you mean: entropy\? "
                                         r"Available: \['maskgit_plus', 'topk_margin', 'entropy'"):
        get_remasking_rule("entropi")
    with pytest.raises(ValueError, match=r"`rule` must be one of \['none', 'expectation', 'aps', "
                                         r"'entrgi'.*\], got 'entrgu'\. Did you mean: entrgi\?"):
        GuidanceConfig(rule="entrgu")
    with pytest.raises(ValueError, match=r"got 'maskgit'\. Did you mean: maskgit_plus\?"):
        SamplerConfig(remasking="maskgit")
    with pytest.raises(ValueError, match=r"reward 'textt:m:f': Unknown reward kind 'textt'\. Did you mean: text\?"):
        load_reward("textt:m:f")


def test_builtin_reserved_and_malformed_names_cannot_be_registered():
    one = lambda logits, t: torch.ones(logits.shape[:-1])  # noqa: E731
    for name in ("aps", "entrgi", "expectation", "none", "best_of_n"):
        with pytest.raises(ValueError, match=rf"'{name}' is a built-in guidance rule"):
            register_guidance_rule(name, one)
    for name in ("origin", "anchored", "entropy", "random"):
        with pytest.raises(ValueError, match=rf"'{name}' is a built-in remasking rule"):
            register_remasking_rule(name, lambda logits, tokens, t, u: tokens.double())
    with pytest.raises(ValueError, match="'text' is a built-in reward kind"):
        register_reward("text", lambda target, **o: None)
    for bad in ("", "2x", "a b", "x:y", 3):
        with pytest.raises(ValueError, match="name must start with a letter"):
            register_guidance_rule(bad, one)
    with pytest.raises(ValueError, match="must be a function"):
        register_guidance_rule("not_callable", 0.5)
    assert "not_callable" not in GUIDANCE_RULES and method_choices()[:5] == ("none", "best_of_n", "expectation", "aps",
                                                                            "entrgi")


def test_a_registered_rule_is_a_method_of_every_config_until_removed():
    with registered(GUIDANCE_RULES, "quarter"):
        rule = register_guidance_rule("quarter", lambda logits, t: torch.full(logits.shape[:-1], 0.25))
        assert get_guidance_rule("quarter") is rule and "quarter" in method_choices()
        assert GuidanceConfig(rule="quarter").guided and not GuidanceConfig(rule="quarter", inner_steps=0).guided
        s = EvalConfig(methods=("quarter", "quarter@8")).settings("quarter@8", 0.7, 1)
        assert (s.guidance.rule, s.search.strategy, s.sampler.num_samples) == ("quarter", "sample", 8)
    assert "quarter" not in method_choices()
    with pytest.raises(ValueError, match="`rule` must be one of"):
        GuidanceConfig(rule="quarter")


def test_registering_again_replaces_silently_from_the_same_function_and_warns_otherwise():
    def w(logits, t):
        return torch.zeros(logits.shape[:-1])

    with registered(GUIDANCE_RULES, "again"):
        register_guidance_rule("again", w)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            register_guidance_rule("again", w)  # a module run twice
        with pytest.warns(UserWarning, match="guidance rule 'again' .* is replaced"):
            register_guidance_rule("again", lambda logits, t: torch.ones(logits.shape[:-1]))
        assert float(get_guidance_rule("again").weight(torch.zeros(1, 3), 1.0)) == 1.0


# ---- guidance rules ---------------------------------------------------------------------------------
@pytest.fixture
def mixing_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, 5, 11, generator=g, dtype=F64) * 2, torch.randn(11, 4, generator=g, dtype=F64),
            torch.rand(3, 5, generator=g, dtype=F64))


def test_a_rule_object_mixes_soft_and_hard_by_its_weight(mixing_inputs):
    logits, table, u = mixing_inputs
    quarter = GuidanceRule("quarter", lambda x, t: torch.full(x.shape[:-1], 0.25, dtype=x.dtype))
    phi = logits.clone().requires_grad_(True)
    embeds, w = reward_input_embeddings(phi, table, quarter, temperature=0.7, uniforms=u)
    soft, _ = reward_input_embeddings(logits, table, "expectation", temperature=0.7, uniforms=u)
    hard, _ = reward_input_embeddings(logits, table, "aps", temperature=0.7, uniforms=u)  # forward value = ẽ
    torch.testing.assert_close(embeds, 0.75 * soft + 0.25 * hard)
    assert torch.equal(w, torch.full((3, 5), 0.25, dtype=F64))
    embeds.sum().backward()  # the gradient is the soft path's, whatever w
    phi_e = logits.clone().requires_grad_(True)
    reward_input_embeddings(phi_e, table, "expectation", temperature=0.7)[0].sum().backward()
    torch.testing.assert_close(phi.grad, phi_e.grad)


@pytest.mark.parametrize("weight,message", [
    (lambda x, t: torch.ones(x.shape[0]), r"must return a tensor of shape \(3, 5\) \(one w per slot\), got \(3,\)"),
    (lambda x, t: 0.5, r"must return a tensor of shape \(3, 5\).*got float"),
    (lambda x, t: torch.full(x.shape[:-1], 1.5), r"must lie in \[0, 1\], got values such as \[1.5"),
    (lambda x, t: torch.full(x.shape[:-1], float("nan")), r"must lie in \[0, 1\], got values such as \[nan"),
])
def test_a_bad_weight_is_a_clear_error_naming_the_rule(mixing_inputs, weight, message):
    logits, table, u = mixing_inputs
    with pytest.raises(ValueError, match=r"guidance rule 'bad': `weight` " + message):
        reward_input_embeddings(logits, table, GuidanceRule("bad", weight), uniforms=u)


def _ones(x, t):
    return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)


def _zeros(x, t):
    return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)


@pytest.mark.parametrize("builtin,copy", [
    ("aps", GuidanceRule("aps_copy", _ones)),
    ("entrgi", GuidanceRule("entrgi_copy", entropy_weight)),
    ("expectation", GuidanceRule("expectation_copy", _zeros, needs_hard_sample=False)),
])
def test_registered_copies_of_the_builtins_give_bit_identical_samples(mlm, pref_reward, builtin, copy):
    """A registered rule runs the same inner loop as a built-in: same tokens, same rewards (exactly)."""
    with registered(GUIDANCE_RULES, copy.name):
        register_guidance_rule(copy)
        outs = [generate(mlm, ["the cat", "a dog"], pref_reward, sampler=small(),
                         guidance=GuidanceConfig(rule=m, inner_steps=2, lr=1.0), progress=False)
                for m in (builtin, copy.name)]
    assert samples(outs[0]) == samples(outs[1])
    assert [s.trace[2].rewards for s in outs[0].samples[0]] == [s.trace[2].rewards for s in outs[1].samples[0]]


# ---- remasking rules --------------------------------------------------------------------------------
def _maskgit(logits, tokens, temperature, uniforms):
    return probabilities(logits, temperature).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("builtin,copy", [
    ("maskgit_plus", RemaskingRule("maskgit_copy", _maskgit)),
    ("random", RemaskingRule("random_copy", lambda logits, tokens, t, u: u, needs_uniforms=True)),
])
def test_registered_copies_of_remasking_rules_give_identical_samples(mlm, pref_reward, builtin, copy):
    with registered(REMASKING_RULES, copy.name):
        register_remasking_rule(copy)
        assert copy.name in remasking_choices()
        outs = [generate(mlm, ["the cat", "a dog"], pref_reward, sampler=small(remasking=r),
                         guidance=GuidanceConfig(rule="aps", inner_steps=1, lr=1.0), progress=False)
                for r in (builtin, copy.name)]
    assert samples(outs[0]) == samples(outs[1])


def test_a_custom_confidence_orders_the_commits(mlm):
    """Confidence = the drawn id: at every step the committed slots hold the largest drawn ids."""
    states = []
    with registered(REMASKING_RULES, "largest_id"):
        register_remasking_rule("largest_id", lambda logits, tokens, t, u: tokens.double())
        generate(mlm, ["the cat"], None, sampler=small(remasking="largest_id", deprioritize_eos=False, num_samples=3),
                 guidance=GuidanceConfig(rule="none"), progress=False,
                 callback=lambda step, out: states.append((out["candidates"].clone(), out["proposal"].clone(),
                                                           out["committed"].clone())))
    checked = 0
    for cand, prop, commit in states:
        for b in range(cand.shape[0]):
            skipped = cand[b] & ~commit[b]
            if commit[b].any() and skipped.any():
                assert prop[b][commit[b]].min() >= prop[b][skipped].max()
                checked += 1
    assert checked > 0


def test_confidence_in_row_blocks_equals_one_call_and_bad_rules_are_named(monkeypatch):
    logits = torch.randn(40, 7, generator=torch.Generator().manual_seed(0))
    tokens = torch.arange(40) % 7
    rule = RemaskingRule("margin_like", lambda x, tok, t, u: x.max(-1).values - x.gather(-1, tok[:, None])[:, 0])
    whole = schedule.confidence(rule, logits, tokens, 0.5)
    monkeypatch.setattr(schedule, "ROW_BLOCK_ELEMENTS", 7 * 6)  # blocks of 6 rows
    torch.testing.assert_close(schedule.confidence(rule, logits, tokens, 0.5), whole)
    assert whole.dtype == F64
    with pytest.raises(ValueError, match=r"remasking rule 'nan': `confidence` must be finite"):
        schedule.confidence(RemaskingRule("nan", lambda x, tok, t, u: x[:, 0] * float("nan")), logits, tokens, 1.0)
    with pytest.raises(ValueError, match=r"remasking rule 'wide': `confidence` must return a tensor of shape \(6,\)"):
        schedule.confidence(RemaskingRule("wide", lambda x, tok, t, u: x), logits, tokens, 1.0)
    with pytest.raises(ValueError, match=r"remasking rule 'needs_u' needs `uniforms`"):
        schedule.confidence(RemaskingRule("needs_u", lambda x, tok, t, u: u, needs_uniforms=True), logits, tokens, 1.0)


def test_anchored_is_read_as_maskgit_plus_on_the_guided_logits(mlm, pref_reward):
    """The old spelling `anchored` is read by the settings resolution (with a deprecation note), not rewritten by the
    config; SamplerConfig itself says what it stands for."""
    anchored = SamplerConfig(remasking="maskgit_plus", confidence_from="guided")
    with pytest.warns(DeprecationWarning, match="'anchored' is read as remasking 'maskgit_plus'"):
        assert resolve_settings(overrides={"sampler": {"remasking": "anchored"}}).sampler == anchored
    with pytest.raises(ValueError, match="remasking='maskgit_plus' and confidence_from='guided'"):
        SamplerConfig(remasking="anchored")
    cfg = EvalConfig(methods=("aps_anchored",)).settings("aps_anchored", 0.7, 1)
    assert (cfg.sampler.remasking, cfg.sampler.confidence_from, cfg.guidance.rule) == ("maskgit_plus", "guided", "aps")
    g = GuidanceConfig(rule="aps", inner_steps=1, lr=2.0)
    a = generate(mlm, ["the cat"], pref_reward, sampler=small(remasking="maskgit_plus", confidence_from="guided"),
                 guidance=g, progress=False)
    b = generate(mlm, ["the cat"], pref_reward, sampler=small(remasking="maskgit_plus", confidence_from="guided"),
                 guidance=g, progress=False)
    assert samples(a) == samples(b)


# ---- rewards ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,expected", [
    ("Skywork/Skywork-Reward-V2-Qwen3-0.6B", ("hf", "Skywork/Skywork-Reward-V2-Qwen3-0.6B")),
    ("runs/my-rm", ("hf", "runs/my-rm")),
    ("hf:runs/my-rm", ("hf", "runs/my-rm")),
    ("text:my_pkg.rewards:score", ("text", "my_pkg.rewards:score")),
    ("text:examples/constraint_rewards.py:word_budget", ("text", "examples/constraint_rewards.py:word_budget")),
    ("likelihood:Qwen/Qwen3-0.6B", ("likelihood", "Qwen/Qwen3-0.6B")),
    ("C:\\models\\rm", ("hf", "C:\\models\\rm")),
])
def test_reward_spellings(spec, expected):
    assert split_reward_spec(spec) == expected


def test_reward_spelling_errors(tmp_path):
    with pytest.raises(ValueError, match=r"reward 'text:': nothing after 'text:'; give text:TARGET"):
        split_reward_spec("text:")
    with pytest.raises(ValueError, match=r"reward '': give a path or hub id, or KIND:TARGET"):
        split_reward_spec("")
    odd = tmp_path / "rm:v2"
    odd.mkdir()
    assert split_reward_spec(str(odd)) == ("hf", str(odd))  # an existing folder is a folder, colon or not
    with pytest.raises(ValueError, match="gradient checkpointing .* not to 'text' rewards"):
        load_reward(f"text:{EXAMPLES / 'constraint_rewards.py'}:word_budget", gradient_checkpointing=True)


def test_load_reward_reads_every_builtin_kind(tmp_path):
    text = load_reward(f"text:{EXAMPLES / 'constraint_rewards.py'}:mentions_positive_word")
    assert isinstance(text, TextReward)
    assert text.score_texts(["she was"] * 2, ["very happy today", "at the door"]).tolist() == [1.0, 0.0]

    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    rm = tiny_qwen3_reward(tok, seed=3)
    rm.model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    prompts, responses = ["the cat", "a dog"], ["sat on the mat", "ran"]
    for spec in (str(tmp_path / "rm"), f"hf:{tmp_path / 'rm'}"):
        loaded = load_reward(spec, template="plain")
        assert isinstance(loaded, HFRewardModel) and loaded.template == "plain"
        want = HFRewardModel(rm.model, tok, template="plain").score_texts(prompts, responses)
        torch.testing.assert_close(loaded.score_texts(prompts, responses), want)

    lm = write_tiny_qwen3_lm(tok, tmp_path / "lm")
    loaded = load_reward(f"likelihood:{tmp_path / 'lm'}", dtype=torch.float64)
    assert isinstance(loaded, LikelihoodReward) and loaded.model.dtype == torch.float64
    want = LikelihoodReward(lm.double(), tok).score_texts(prompts, responses)
    torch.testing.assert_close(loaded.score_texts(prompts, responses), want)


def test_a_registered_reward_kind_gets_its_target_and_the_options():
    calls = []

    @register_reward("constant")
    def load_constant(target, **options):
        calls.append((target, options))
        return TextReward(lambda p, r: float(target), name=f"constant:{target}")

    with registered(REWARD_KINDS, "constant"):
        reward = load_reward("constant:2.5", device="cpu", template="plain")
        assert reward.score_texts(["a"], ["b"]).tolist() == [2.5]
        assert calls == [("2.5", {"device": "cpu", "dtype": None, "device_map": None, "template": "plain",
                                  "gradient_checkpointing": False})]
    with pytest.raises(ValueError, match="Unknown reward kind 'constant'"):
        load_reward("constant:2.5")


# ---- the pair rule ------------------------------------------------------------------------------------
def test_one_pair_rule_for_the_cli_and_the_eval_config():
    check_pair(None, None, ["entrgi"])  # the embedded pair
    check_pair("m", "r", ["entrgi"])
    check_pair("m", None, ["none", "none"])  # unguided sampling needs no reward
    with pytest.raises(ValueError, match=r"^`--reward` needs `--model`"):
        check_pair(None, "r", ["none"])
    with pytest.raises(ValueError, match=r"^`--reward` is required with `--model` for method 'best_of_n'"):
        check_pair("m", None, ["none", "best_of_n"])
    with pytest.raises(ValueError, match=r"^`reward` is required with `model` for methods \['best_of_n', "
                                         r"'expectation', 'aps', 'entrgi'\]"):
        EvalConfig(model="m")
    with pytest.raises(ValueError, match=r"^`reward` needs `model`"):
        EvalConfig(reward="r")
    assert EvalConfig(model="m", methods=("none",)).reward is None
    with pytest.raises(ValueError, match=r"reward 'text:x' \(TextReward\) scores decoded text only; method 'entrgi' "
                                         "needs a differentiable reward model"):
        check_differentiable(TextReward(lambda p, r: 0.0), "text:x", "method 'entrgi'")


def test_an_eval_of_a_model_without_a_reward_runs_method_none(mlm, tmp_path):
    from entrgi.eval import EvalRunner, read_records

    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\na dog\n")
    cfg = EvalConfig(out=str(tmp_path / "run"), model="unused: the runner gets the model", methods=("none",),
                     prompt_sets=(f"file:{prompts}",), temperatures=(1.0,), seeds=(0,), perplexity=False,
                     sampler={"max_new_tokens": 3, "steps": 3, "num_samples": 2})
    EvalRunner(cfg, model=mlm, reward=None, judges=[], progress=False).run()
    recs = read_records(tmp_path / "run")
    assert len(recs) == 2 and all(r["top1"] is None and r["avg"] is None and r["best_index"] == 0 for r in recs)
    assert all(len(r["samples"]) == 2 and r["samples"][0]["reward"] is None for r in recs)


# ---- plugins ------------------------------------------------------------------------------------------
PLUGIN = '''
from pathlib import Path
from entrgi import register_guidance_rule
Path(__file__).with_suffix(".runs").open("a").write("x")

@register_guidance_rule("{name}")
def w(logits, entropy_temperature):
    return logits.softmax(-1).amax(-1)

def score(prompt, response):
    return float(len(response))
'''


def test_a_plugin_file_runs_once_and_registers_for_every_config(tmp_path):
    path = tmp_path / "my_rules.py"
    path.write_text(PLUGIN.format(name="plugin_rule"))
    with registered(GUIDANCE_RULES, "plugin_rule"):
        with pytest.raises(ValueError, match="`methods` must be one of"):
            EvalConfig(methods=("plugin_rule",))
        assert EvalConfig(methods=("plugin_rule",), plugins=(str(path),)).plugins == (str(path),)
        assert GuidanceConfig(rule="plugin_rule").guided
        module = load_plugin(str(path))
        assert load_plugin(str(path)) is module
        reward = load_reward(f"text:{path}:score")  # the same file as a text reward: not run again
        assert reward.score_texts(["a"], ["four"]).tolist() == [4.0]
        assert path.with_suffix(".runs").read_text() == "x"


def test_a_plugin_module_by_name(tmp_path, monkeypatch):
    (tmp_path / "entrgi_test_plugin_mod.py").write_text(PLUGIN.format(name="module_rule"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with registered(GUIDANCE_RULES, "module_rule"):
        load_plugin("entrgi_test_plugin_mod")
        assert "module_rule" in method_choices()


@pytest.mark.parametrize("spec,message", [
    ("missing_plugin.py", r"plugin 'missing_plugin.py': file 'missing_plugin.py' not found \(resolved to "),
    ("no_such_module_xyz", r"plugin 'no_such_module_xyz': no module named 'no_such_module_xyz' \(check the spelling"),
    ("not a module!", r"plugin 'not a module!' is neither a .py file nor a module name"),
])
def test_plugin_errors_name_the_plugin(spec, message):
    with pytest.raises(ValueError, match=message):
        load_plugin(spec)


def test_a_failing_plugin_names_the_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match=r"plugin '.*broken.py': running '.*broken.py' failed: RuntimeError: boom"):
        load_plugin(str(path))


# ---- one copy of each primitive ---------------------------------------------------------------------------
def test_dtype_names():
    assert dtype_from_name("bfloat16") is torch.bfloat16 and dtype_from_name("torch.float16") is torch.float16
    assert dtype_from_name(torch.float32) is torch.float32 and dtype_from_name(None) is None
    with pytest.raises(ValueError, match=r"`dtype` must be one of \['float32', 'float16', 'bfloat16'\], got 'fp8'"):
        dtype_from_name("fp8")


def test_gumbel_noise_is_shared_by_token_draws_and_position_draws():
    u = torch.rand(5, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
    logits = torch.randn(5, 9, generator=torch.Generator().manual_seed(2), dtype=F64)
    g = -torch.log(-torch.log(u))
    torch.testing.assert_close(logit_ops.gumbel(u), g, rtol=0, atol=0)
    assert torch.equal(logit_ops.sample_gumbel_max(logits, u), (logits + g).argmax(-1))
    torch.testing.assert_close(schedule.gumbel_keys(logits, 0.5, u), logits / 0.5 + g, rtol=0, atol=0)


def test_inverse_cdf_draws_the_first_id_past_u():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]], dtype=F64).expand(6, 4)
    u = torch.tensor([0.0, 0.05, 0.3, 0.69, 0.71, 0.99999], dtype=F64)
    assert logit_ops.sample_from_logits(probs.log(), u).tolist() == [0, 0, 2, 2, 3, 3]  # never the p = 0 id
    assert logit_ops.inverse_cdf(probs.log(), u).tolist() == [0, 0, 2, 2, 3, 3]
