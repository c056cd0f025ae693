"""``SamplerConfig.match_released``: the released code's EOS set, response decoding and raw prompts, against
the project's default rule (docs/differences.md)."""

import json
import warnings

import pytest
import torch
from conftest import TableModule
from eval_worker import config, runner
from support.tiny_models import CHAT_TEMPLATE, WORDS, word_tokenizer

from entrgi import GuidanceConfig, SamplerConfig, generate, resolve_settings
from entrgi.cli.args import settings_layer
from entrgi.cli.commands import build_parser
from entrgi.eval import load_prompt_set, read_records
from entrgi.models import Dream
from entrgi.models.base import DiffusionLM
from entrgi.models.dream import EOS_ID, MASK_ID
from entrgi.reward.callable import CallableReward

NONE = GuidanceConfig(rule="none")
IM_END = 151645


@pytest.fixture(scope="module")
def dream_tok(dream_dir):
    from transformers import AutoTokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(dream_dir)


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def stray_response(tok):
    """' Hello world.' <|im_end|> ' More text' <|endoftext|> ' stray tail\\n' <|endoftext|> <|endoftext|>."""
    ids = [*enc(tok, " Hello world."), IM_END, *enc(tok, " More text"), EOS_ID, *enc(tok, " stray tail\n"),
           EOS_ID, EOS_ID]
    assert tok.convert_ids_to_tokens([IM_END, EOS_ID]) == ["<|im_end|>", "<|endoftext|>"]
    return ids


def test_dream_eos_sets(dream_tok):
    dream = Dream.from_module(torch.nn.Linear(1, 1), dream_tok)
    assert dream.eos_ids() == dream.eos_token_ids == (EOS_ID, IM_END)
    assert dream.eos_ids(match_released=True) == (EOS_ID,)


def test_decode_both_ways_on_the_real_qwen_tokenizer(dream_tok):
    dream = Dream.from_module(torch.nn.Linear(1, 1), dream_tok)
    ids = stray_response(dream_tok)
    # project: cut at the first EOS of {<|endoftext|>, <|im_end|>}, strip
    assert dream.decode_response(ids) == "Hello world."
    # released: all L slots, special tokens skipped, text after the EOS kept, nothing stripped
    assert dream.decode_response(ids, match_released=True) == " Hello world. More text stray tail\n"


@pytest.mark.parametrize("match_released", [False, True])
def test_generate_returns_the_rule_s_text(dream_tok, match_released):
    """A DLLM whose greedy tokens are the stray response (real Qwen ids, V = 151,667): the sample's text and
    its RM re-score follow the rule."""
    ids = stray_response(dream_tok)
    prompt = "Hi"
    P, L = len(enc(dream_tok, prompt)), len(ids)
    table = torch.full((P + L, len(dream_tok)), -10.0)
    table[torch.arange(P, P + L), torch.tensor(ids)] = 10.0
    model = DiffusionLM(TableModule(table), dream_tok, mask_token_id=MASK_ID, eos_token_ids=[EOS_ID, IM_END],
                        pad_token_id=EOS_ID, use_chat_template=False)
    out = generate(model, prompt, sampler=SamplerConfig(max_new_tokens=L, steps=L, num_samples=1, temperature=0.0,
                                                        match_released=match_released),
                   guidance=NONE, progress=False)
    s = out.samples[0][0]
    assert s.token_ids == ids
    assert s.text == (" Hello world. More text stray tail\n" if match_released else "Hello world.")
    assert out.to_dict()["sampler"]["match_released"] is match_released


def eos_model(tok, probs):
    """A position-independent DLLM over the word tokenizer plus <|endoftext|>; both EOS ids in its set."""
    table = torch.full((48, len(tok)), -1e4)
    for word, p in probs.items():
        table[:, tok.convert_tokens_to_ids(word)] = torch.tensor(p).log()
    eos = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    return DiffusionLM(TableModule(table), tok, mask_token_id=tok.mask_token_id, eos_token_ids=eos,
                       pad_token_id=tok.pad_token_id, invalid_token_ids=[tok.cls_token_id, tok.unk_token_id],
                       use_chat_template=False)


@pytest.fixture(scope="module")
def eot_tok():
    return word_tokenizer([*WORDS, "<|endoftext|>"])


def record(store):
    def cb(step, state):
        store.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()})
    return cb


def early_commits(states, token, eos):
    """Rows and steps at which a slot proposing ``token`` was committed while a candidate proposing neither
    ``token`` nor an id of ``eos`` stayed masked."""
    n = 0
    for st in states:
        prop = (st["proposal"] == token) & st["candidates"]
        others = st["candidates"] & ~st["committed"] & ~prop & ~torch.isin(st["proposal"], torch.tensor(eos))
        n += int(((st["committed"] & prop).any(-1) & others.any(-1)).sum())
    return n


def test_released_mode_deprioritises_only_endoftext(eot_tok):
    model = eos_model(eot_tok, {"<|im_end|>": 0.5, "<|endoftext|>": 0.2, "cat": 0.2, "dog": 0.1})
    eot, im_end = eot_tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert model.eos_ids(match_released=True) == (eot,)
    counts = {}
    for mode in (False, True):
        states = []
        cfg = SamplerConfig(max_new_tokens=12, steps=6, num_samples=8, temperature=1.0, top_p=1.0,
                            remasking="maskgit_plus", match_released=mode)
        generate(model, ["the cat"], sampler=cfg, guidance=NONE, progress=False, callback=record(states))
        eos_left = [st["candidates"] & ~st["committed"] & (st["proposal"] == eot) for st in states]
        assert any(e.any() for e in eos_left)  # EOS candidates were there to be deprioritised
        eos = model.eos_ids(mode)
        counts[mode] = (early_commits(states, eot, eos), early_commits(states, im_end, eos))
    assert counts[False] == (0, 0)  # project: both EOS ids committed last
    eot_early, im_end_early = counts[True]
    assert eot_early == 0 and im_end_early > 0  # released: <|im_end|> is an ordinary, likely token: it goes first


def test_released_mode_lets_the_reward_model_see_past_im_end(eot_tok):
    """RM attention ends at the first EOS of the argmax: <|im_end|> everywhere hides every slot by default,
    none in released mode. Reward = attended positions ([CLS] + slots + [SEP])."""
    model = eos_model(eot_tok, {"<|im_end|>": 0.6, "cat": 0.4})
    table = torch.eye(len(eot_tok))
    reward = CallableReward(lambda e, a, p: a.sum(-1).float() + 0.0 * e.sum((-1, -2)), table, eot_tok,
                            template="response")
    L = 6
    for mode, seen in ((False, 0), (True, L)):
        out = generate(model, ["the cat"], reward, sampler=SamplerConfig(max_new_tokens=L, steps=L, num_samples=2,
                                                                        temperature=1.0, match_released=mode),
                       guidance=GuidanceConfig(rule="entrgi", inner_steps=1), progress=False)
        for s in out.samples[0]:
            assert s.trace[0].rewards[0] == 2 + seen


def test_released_mode_accepts_raw_prompts(eot_tok):
    model = eos_model(eot_tok, {"cat": 0.5, "dog": 0.5})
    with pytest.raises(ValueError, match=r"`prompts\[1\]` must be a non-empty string"):
        generate(model, ["the cat", "  "], sampler=SamplerConfig(max_new_tokens=2, steps=2), guidance=NONE,
                 progress=False)
    out = generate(model, ["the cat", "  "], sampler=SamplerConfig(max_new_tokens=2, steps=2, match_released=True),
                   guidance=NONE, progress=False)
    assert [g[0].prompt for g in out.samples] == ["the cat", "  "]
    with pytest.raises(ValueError, match="`match_released` must be True or False"):
        SamplerConfig(match_released="yes")


RAW = ["  leading spaces", "\n\nafter blank lines\n", "   ", "", "plain", "trailing  "]


def test_prompt_sets_raw_or_cleaned(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"q": t}) + "\n" for t in RAW))
    clean = load_prompt_set(f"file:{path}:q")
    raw = load_prompt_set(f"file:{path}:q", raw=True)
    assert [p.text for p in clean.prompts] == ["leading spaces", "after blank lines", "plain", "trailing"]
    assert [p.text for p in raw.prompts] == RAW
    assert [p.id.split("-")[0] for p in raw.prompts] == [str(i) for i in range(len(RAW))]
    # a seed's subset: the released code's shuffle of every row (dropping rows would shift it)
    import numpy as np
    order = np.random.default_rng(2).permutation(len(RAW))
    assert [p.text for p in raw.subsample(3, "paper", 2)] == [RAW[i] for i in order[:3]]
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\n  indented prompt\n\nsecond \n")
    assert [p.text for p in load_prompt_set(f"file:{txt}").prompts] == ["indented prompt", "second"]
    assert [p.text for p in load_prompt_set(f"file:{txt}", raw=True).prompts] == ["  indented prompt", "second "]


def test_eval_run_uses_raw_prompts_and_records_the_mode(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"q": t}) + "\n" for t in ["  the cat", "a dog\n"]))
    kw = dict(prompt_sets=(f"file:{path}:q",), n_prompts=None, methods=("best_of_n",), temperatures=(1.0,),
              seeds=(1,), perplexity=False)
    sampler = {"max_new_tokens": 4, "steps": 4, "num_samples": 2}
    for mode, prompts in ((True, {"  the cat", "a dog\n"}), (False, {"the cat", "a dog"})):
        out = tmp_path / f"run-{mode}"
        runner(config(out, path, sampler={**sampler, "match_released": mode}, **kw)).run()
        records = read_records(out)
        assert {r["prompt"] for r in records} == prompts
        assert all(r["match_released"] is mode for r in records)
        meta = json.loads((out / "run.json").read_text())
        assert meta["config"]["sampler"]["match_released"] is mode
    with pytest.raises(ValueError, match="different configuration"):  # the mode is part of the run identity
        runner(config(tmp_path / "run-True", path, sampler=sampler, **kw)).run()


def test_cli_flag(tmp_path):
    args = build_parser().parse_args(["generate", "--prompt", "x", "--match-released"])
    assert resolve_settings(overrides=settings_layer(args)).sampler.match_released is True
    args = build_parser().parse_args(["generate", "--prompt", "x"])
    assert resolve_settings(overrides=settings_layer(args)).sampler.match_released is False


def test_word_tokenizer_without_endoftext_keeps_the_adapter_set():
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    model = DiffusionLM(TableModule(torch.zeros(4, len(tok))), tok, mask_token_id=tok.mask_token_id,
                        eos_token_ids=[tok.sep_token_id, tok.pad_token_id], pad_token_id=tok.pad_token_id)
    assert model.eos_ids(match_released=True) == model.eos_token_ids
