"""The command line: same fields as the API, JSON output, clear errors, eval + report end to end."""

import json
from pathlib import Path

import pytest
from support.tiny_models import CHAT_TEMPLATE, tiny_mlm, tiny_qwen3_reward, word_tokenizer

from entrgi.cli.commands import main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny BERT masked LM and a tiny Qwen3 reward classifier saved as HF checkpoints."""
    d = tmp_path_factory.mktemp("ckpt")
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    mlm, rm = tiny_mlm(tok), tiny_qwen3_reward(tok, seed=1)
    mlm.module.save_pretrained(d / "mlm")
    tok.save_pretrained(d / "mlm")
    rm.model.save_pretrained(d / "rm")
    tok.save_pretrained(d / "rm")
    return d / "mlm", d / "rm"


def test_generate_prints_samples_with_rewards(folders, capsys):
    mlm, rm = folders
    assert main(["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "the cat", "--prompt", "a dog",
                 "--max-new-tokens", "5", "--steps", "5", "--num-samples", "3", "--method", "entrgi",
                 "--temperature", "1.0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "method=entrgi" in out and "prompt 0: 'the cat'" in out and "prompt 1: 'a dog'" in out
    assert out.count("*") >= 2  # the best sample of each prompt is marked


def test_generate_json_and_trace_file(folders, capsys, tmp_path):
    mlm, rm = folders
    trace = tmp_path / "out.json"
    assert main(["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "the cat", "--max-new-tokens", "4",
                 "--steps", "4", "--num-samples", "2", "--method", "aps", "--inner-steps", "2", "--lr", "1.0",
                 "--json", "--output", str(trace), "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["guidance"]["rule"] == "aps" and data["guidance"]["inner_steps"] == 2
    assert data["sampler"]["max_new_tokens"] == 4
    sample = data["samples"][0][0]
    assert isinstance(sample["reward"], float) and "trace" not in sample
    full = json.loads(trace.read_text())
    steps = full["samples"][0][0]["trace"]
    assert len(steps) == 4 and len(steps[0]["rewards"]) == 3 and len(steps[0]["grad_norms"]) == 2


@pytest.mark.parametrize("flags,message", [
    (["--top-p", "1.5"], "`top_p` must be in (0.0, 1.0], got 1.5"),
    (["--steps", "0"], "`steps` must be an integer >= 1, got 0"),
    (["--lr", "-1"], "`lr` must be > 0.0, got -1.0"),
])
def test_bad_flags_give_one_clear_line(folders, capsys, flags, message):
    mlm, rm = folders
    assert main(["generate", "--model", str(mlm), "--reward", str(rm), "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_method_is_rejected_by_argparse(folders):
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--method", "dps"])


def test_missing_prompt(folders, capsys):
    mlm, rm = folders
    assert main(["generate", "--model", str(mlm), "--reward", str(rm)]) == 2
    assert "`--prompt`" in capsys.readouterr().err


def test_eval_then_report(folders, tmp_path, capsys):
    mlm, rm = folders
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\na dog sat\nit was\n")
    out = tmp_path / "run"
    assert main(["eval", "--model", str(mlm), "--reward", str(rm), "--prompt-sets", f"file:{prompts}",
                 "--methods", "best_of_n", "entrgi", "--temperatures", "1.0", "--seeds", "1", "2", "--n-prompts", "2",
                 "--max-new-tokens", "4", "--steps", "4", "--num-samples", "2", "--no-perplexity", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| τ | method |" in printed and "EntRGi" in printed
    assert main(["report", str(out), "--no-plots"]) == 0
    assert "EntRGi" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["sampler"]["max_new_tokens"] == 4 and run["config"]["seeds"] == [1, 2]


def test_eval_yaml_config(folders, tmp_path):
    mlm, rm = folders
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\na dog sat\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {mlm}\nreward: {rm}\nprompt_sets: ['file:{prompts}']\nmethods: [none]\n"
                   f"temperatures: [1.0]\nseeds: [0]\nsampler: {{max_new_tokens: 3, steps: 3, num_samples: 1}}\n"
                   f"perplexity: false\nout: {tmp_path / 'y'}\n")
    assert main(["eval", "--config", str(cfg), "--quiet", "--no-report"]) == 0
    assert len((tmp_path / "y" / "results.jsonl").read_text().splitlines()) == 2
    cfg.write_text("methodz: [none]\n")
    assert main(["eval", "--config", str(cfg), "--quiet"]) == 2


def test_model_and_reward_come_together(folders, capsys):
    mlm, rm = folders
    assert main(["generate", "--model", str(mlm), "--prompt", "x"]) == 2  # guided by default: needs a reward
    assert "`--reward` is required with `--model`" in capsys.readouterr().err
    assert main(["generate", "--reward", str(rm), "--prompt", "x"]) == 2
    assert "`--reward` needs `--model`" in capsys.readouterr().err
    assert main(["generate", "--model", str(mlm), "--prompt", "x", "--method", "none", "--max-new-tokens", "4",
                 "--steps", "2", "--num-samples", "1", "--quiet"]) == 0
    assert "n/a" in capsys.readouterr().out  # unguided, no reward to print


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_reward_spellings_reach_the_cli(folders, capsys):
    """``--reward text:FILE.py:FUNCTION`` ranks Best-of-N samples on decoded text; it cannot guide."""
    mlm, _ = folders
    spec = f"text:{EXAMPLES / 'constraint_rewards.py'}:mentions_positive_word"
    small = ["--prompt", "the cat", "--max-new-tokens", "4", "--steps", "4", "--num-samples", "3", "--quiet"]
    assert main(["generate", "--model", str(mlm), "--reward", spec, "--method", "best_of_n", "--json", *small]) == 0
    group = json.loads(capsys.readouterr().out)["samples"][0]
    positive = {"happy", "happiness", "pleasure", "pleased", "delight", "delighted", "good", "kind", "love", "glad",
                "agreeable", "charming", "cheerful", "fine"}
    assert [s["reward"] for s in group] == [float(any(w in positive for w in s["text"].split())) for s in group]
    assert main(["generate", "--model", str(mlm), "--reward", spec, "--method", "entrgi", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scores decoded text only; rule 'entrgi' needs a differentiable reward" in err
    assert main(["generate", "--model", str(mlm), "--reward", "textt:x:y", *small]) == 2
    assert "Unknown reward kind 'textt'. Did you mean: text?" in capsys.readouterr().err
