"""examples/custom_guidance.py: its rules from Python (the RM reads exactly their mix), the CLI and eval YAML."""

import json
import sys
from pathlib import Path

import pytest
import torch
from support.tiny_checkpoints import write_mlm_and_reward

from entrgi import GuidanceConfig, SamplerConfig, generate, get_guidance_rule, load_plugin
from entrgi.cli.commands import main
from entrgi.guidance.mixing import reward_input_embeddings
from entrgi.registry import GUIDANCE_RULES
from entrgi.reward.callable import CallableReward

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_guidance.py"
RULES = ("max_prob", "half")


def unload_example():
    for name in RULES:
        if name in GUIDANCE_RULES:
            GUIDANCE_RULES.unregister(name)
    for key in [k for k, m in sys.modules.items() if getattr(m, "__file__", None) == str(EXAMPLE)]:
        del sys.modules[key]  # so that the next load runs it (and registers) again


@pytest.fixture
def example():
    unload_example()
    yield load_plugin(str(EXAMPLE))
    unload_example()


@pytest.fixture
def clean():
    unload_example()
    yield
    unload_example()


def test_the_example_is_short_and_uses_public_names_only():
    lines = EXAMPLE.read_text().splitlines()
    assert len(lines) <= 40
    imports = [ln for ln in lines if ln.startswith(("import ", "from "))]
    assert imports == ["from entrgi import GuidanceConfig, SamplerConfig, generate, load_pair, register_guidance_rule"]


def test_the_rules_weights_and_rm_input(example):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 9, generator=g, dtype=torch.float64) * 2
    logits[..., 0] = float("-inf")  # an id that can never be drawn
    table, u = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.rand(4, 3, generator=g, dtype=torch.float64)
    p = torch.exp(logits - torch.logsumexp(logits, -1, keepdim=True))
    w = p.max(-1).values
    torch.testing.assert_close(get_guidance_rule("max_prob").weight(logits, 1.0), w)
    soft, _ = reward_input_embeddings(logits, table, "expectation", temperature=0.7, uniforms=u)
    hard, _ = reward_input_embeddings(logits, table, "aps", temperature=0.7, uniforms=u)
    embeds, got_w = reward_input_embeddings(logits, table, "max_prob", temperature=0.7, uniforms=u)
    torch.testing.assert_close(got_w, w)
    torch.testing.assert_close(embeds, (1 - w).unsqueeze(-1) * soft + w.unsqueeze(-1) * hard)
    embeds, got_w = reward_input_embeddings(logits, table, "half", temperature=0.7, uniforms=u)
    assert torch.equal(got_w, torch.full((4, 3), 0.5, dtype=torch.float64))
    torch.testing.assert_close(embeds, (soft + hard) / 2)


def first_rm_input(mlm, tok, method):
    """The embeddings the RM reads at the first inner step of the first denoising step, and the prior logits."""
    seen, prior = [], []
    table = torch.randn(len(tok), 6, generator=torch.Generator().manual_seed(0))

    def fn(embeds, attn, pos):
        if not seen:
            seen.append(embeds.detach().clone())
        return (embeds[..., 0] * attn).sum(-1)

    def callback(step, out):
        if step == 0:
            prior.append((out["logits"].clone(), out["masked"].clone()))

    reward = CallableReward(fn, table, tok, template="response")
    generate(mlm, ["the cat"], reward, sampler=SamplerConfig(max_new_tokens=4, steps=2, num_samples=2, top_p=1.0),
             guidance=GuidanceConfig(rule=method, inner_steps=1), progress=False, callback=callback)
    start = len(reward.context("the cat").prefix_ids)  # [template prefix ; the L slots ; suffix]
    return seen[0][:, start:start + 4], prior[0]


def test_generate_feeds_the_rm_the_rules_mix(example, mlm, tok):
    """Same seed, same first step: ê(max_prob) = ē + w (ẽ − ē) with w = max softmax(φ), ê(half) = (ē + ẽ) / 2."""
    soft, (logits, masked) = first_rm_input(mlm, tok, "expectation")
    hard, _ = first_rm_input(mlm, tok, "aps")  # same uniforms: the hard draw is the first use of the streams
    mixed, (logits_again, _) = first_rm_input(mlm, tok, "max_prob")
    assert torch.equal(logits, logits_again) and masked.all()
    w = torch.exp(logits - torch.logsumexp(logits, -1, keepdim=True)).max(-1).values  # (B, L)
    torch.testing.assert_close(mixed, soft + w.unsqueeze(-1) * (hard - soft))
    assert not torch.allclose(mixed, soft) and not torch.allclose(mixed, hard)
    half, _ = first_rm_input(mlm, tok, "half")
    torch.testing.assert_close(half, (soft + hard) / 2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_mlm_and_reward(tmp_path_factory.mktemp("ckpt"))


SMALL = ["--max-new-tokens", "4", "--steps", "4", "--num-samples", "2", "--inner-steps", "1", "--quiet"]


def test_entrgi_generate_with_the_plugin(clean, folders, capsys):
    mlm, rm = folders
    base = ["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "the cat", *SMALL]
    with pytest.raises(SystemExit) as exc:  # without the plugin the name is not a choice
        main([*base, "--method", "max_prob"])
    assert exc.value.code == 2 and "invalid choice: 'max_prob'" in capsys.readouterr().err
    assert main([*base, "--plugin", str(EXAMPLE), "--method", "max_prob", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["guidance"]["rule"] == "max_prob" and len(out["samples"][0]) == 2
    assert all(isinstance(s["reward"], float) for s in out["samples"][0])
    with pytest.raises(SystemExit):
        main(["generate", f"--plugin={EXAMPLE}", "--help"])
    assert "max_prob, half" in " ".join(capsys.readouterr().out.split())


def test_a_missing_plugin_is_one_line(clean, capsys):
    assert main(["generate", "--plugin", "no/such/rules.py", "--prompt", "x", "--method", "max_prob"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entrgi generate: error: plugin 'no/such/rules.py': file 'no/such/rules.py' not found")
    assert err.count("\n") == 1


def test_entrgi_eval_with_plugins_in_the_yaml(clean, folders, tmp_path, capsys):
    mlm, rm = folders
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {mlm}\nreward: {rm}\nplugins: ['{EXAMPLE}']\nprompt_sets: ['file:{prompts}']\n"
                   f"methods: [max_prob, half]\ntemperatures: [1.0]\nseeds: [0]\nperplexity: false\n"
                   f"sampler: {{max_new_tokens: 3, steps: 3, num_samples: 2}}\nguidance: {{inner_steps: 1}}\n"
                   f"out: {tmp_path / 'run'}\n")
    assert main(["eval", "--config", str(cfg), "--quiet", "--no-report"]) == 0
    records = [json.loads(ln) for ln in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["half", "max_prob"]
    assert all(isinstance(r["top1"], float) for r in records)


def test_entrgi_serve_loads_plugins(clean, capsys):
    assert main(["serve", "--plugin", "no/such/rules.py"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entrgi serve: error: plugin 'no/such/rules.py'") and err.count("\n") == 1
    # the plugin is loaded before the server starts (here it stops at a bad limit, before loading any model)
    assert main(["serve", "--plugin", str(EXAMPLE), "--max-queue", "0"]) == 2
    assert "max_prob" in GUIDANCE_RULES
    assert capsys.readouterr().err.startswith("entrgi serve: error:")
