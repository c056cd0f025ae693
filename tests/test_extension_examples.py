"""The two extension examples (examples/sign_ascent.py: a user optimiser; examples/powered_entropy.py: a user rule
with its own parameter) work from Python and from the command line, with public names only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_sampler import PROMPTS, small, tokens_by_prompt

from entrgi import GuidanceConfig, generate, load_plugin, reward_input_embeddings
from entrgi.cli.commands import main
from entrgi.guidance.mixing import entropy_weight
from entrgi.registry import GUIDANCE_RULES, OPTIMIZERS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def plugins():
    mods = [load_plugin(str(EXAMPLES / name)) for name in ("sign_ascent.py", "powered_entropy.py")]
    yield mods
    for registry, name in ((OPTIMIZERS, "sign_ascent"), (GUIDANCE_RULES, "powered_entropy")):
        if name in registry:
            registry.unregister(name)


@pytest.mark.parametrize("name", ["sign_ascent.py", "powered_entropy.py"])
def test_the_examples_are_short_and_use_public_names_only(name):
    text = (EXAMPLES / name).read_text()
    assert len(text.splitlines()) <= 40
    imported = re.findall(r"^from (\S+) import (.+)$", text, re.M)
    assert [m for m, _ in imported if m.startswith("entrgi")] == ["entrgi"]  # the front door only
    assert not re.search(r"\b_[a-z]", "".join(names for _, names in imported))


def test_powered_entropy_is_entrgi_at_power_one_and_sharpens_w(plugins, mlm, qwen_reward):
    logits = torch.randn(3, 7, len(mlm.tokenizer), dtype=torch.float64)
    table = torch.randn(len(mlm.tokenizer), 5, dtype=torch.float64)
    u = torch.rand(3, 7, dtype=torch.float64)
    for power in (0.5, 2.0):
        _, w = reward_input_embeddings(logits, table, "powered_entropy", rule_params={"power": power}, uniforms=u)
        torch.testing.assert_close(w, entropy_weight(logits) ** power, rtol=0, atol=0)
    one = GuidanceConfig(rule="powered_entropy", rule_params={"power": 1.0}, lr=1.0)
    a = generate(mlm, PROMPTS, qwen_reward, sampler=small(), guidance=one, progress=False)
    b = generate(mlm, PROMPTS, qwen_reward, sampler=small(), guidance=GuidanceConfig(lr=1.0), progress=False)
    assert tokens_by_prompt(a) == tokens_by_prompt(b)  # power 1 is EntRGi, bit for bit
    # a reward linear in its input embeddings has the same gradient whatever w (straight-through): the tiny Qwen3
    # RM is not, so a sharper w moves other tokens
    sharp = GuidanceConfig(rule="powered_entropy", rule_params={"power": 4.0}, lr=1.0)
    c = generate(mlm, PROMPTS, qwen_reward, sampler=small(), guidance=sharp, progress=False)
    assert tokens_by_prompt(c) != tokens_by_prompt(b)


def test_sign_ascent_steps_along_the_sign_of_the_reward_gradient(plugins, mlm, pref_reward):
    from entrgi import get_optimizer

    phi = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    opt = get_optimizer("sign_ascent")([phi], 0.25, decay=0.1)
    (-(phi * torch.tensor([[3.0, -2.0, 0.0]])).sum()).backward()  # the loss −R: ∇R = (3, −2, 0)
    opt.step()
    torch.testing.assert_close(phi.detach(), torch.tensor([[0.5 * 0.9 + 0.25, -1.0 * 0.9 - 0.25, 2.0 * 0.9]]))
    g = GuidanceConfig(optimizer="sign_ascent", optimizer_params={"decay": 0.0}, lr=2.0)
    out = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=g, progress=False)
    plain = generate(mlm, PROMPTS, pref_reward, sampler=small(), guidance=GuidanceConfig(rule="none"), progress=False)
    assert sum(out.avg()) > sum(plain.avg())  # it guides: a known-optimum reward rises
    with pytest.raises(ValueError, match="Unknown parameter of optimizer 'sign_ascent'.*'momentum'"):
        GuidanceConfig(optimizer="sign_ascent", optimizer_params={"momentum": 0.9})


def test_both_from_the_command_line(tmp_path, capsys):
    from support.tiny_checkpoints import write_mlm_and_reward

    mlm, rm = write_mlm_and_reward(tmp_path)
    base = ["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "the cat", "--max-new-tokens", "4",
            "--steps", "4", "--num-samples", "2", "--temperature", "1.0", "--quiet", "--json",
            "--plugin", str(EXAMPLES / "sign_ascent.py"), "--plugin", str(EXAMPLES / "powered_entropy.py")]
    assert main([*base, "--rule", "powered_entropy", "--rule-param", "power=2.0", "--optimizer", "sign_ascent",
                 "--optimizer-param", "decay=0.01"]) == 0
    g = json.loads(capsys.readouterr().out)["guidance"]
    assert (g["rule"], g["rule_params"], g["optimizer"], g["optimizer_params"]) == (
        "powered_entropy", {"power": 2.0}, "sign_ascent", {"decay": 0.01})
    assert main([*base, "--rule", "powered_entropy", "--rule-param", "powr=2.0"]) == 2
    err = capsys.readouterr().err
    assert "parameter of guidance rule 'powered_entropy'" in err and "Did you mean: power?" in err
