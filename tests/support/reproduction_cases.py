"""The golden cases of the reproduction modes (issue #25): tiny checkpoints with the real vocabularies, and the
settings of each case. Used by ``scripts/reproduce_reference.py`` (which runs the reference samplers on them and
records the golden file) and ``tests/test_reproduction.py`` (which replays entrgi on them, without the references).

- Dream: the Dream-v0 layout (logit width 152064, the real Qwen BPE tokenizer as Dream ships it), its output
  layer scaled for *peaked* (x8) or *flat* (x0.25) logits, or biased toward ``<|endoftext|>`` / ``<|im_end|>``
  for *EOS-heavy* ones.
- LLaDA: the LLaDA-8B-Base layout (logit width 126464, special tokens at their real ids, a word-level filler
  vocabulary: the real tokenizer is not installable offline).
- Reward: a 2-layer ``Qwen3ForSequenceClassification`` (Skywork-Reward-V2's class) over the real Qwen3 tokenizer.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.sampling.sampler import DiffusionSampler

from .tiny_checkpoints import write_dream_checkpoint, write_member_checkpoint, write_qwen3_tokenizer
from .tiny_models import tiny_qwen3_reward

#: Output-layer changes per Dream variant: weight scale, and logit biases on the EOS tokens.
DREAM_VARIANTS = {
    "peaked": dict(scale=8.0, bias={}),
    "flat": dict(scale=0.25, bias={}),
    "eos": dict(scale=1.0, bias={"<|endoftext|>": 8.4, "<|im_end|>": 6.0}),
    "mixed": dict(scale=2.5, bias={}),
}
DREAM_PROMPT = "Write one sentence about the sea."
LLADA_PROMPT = "the cat sat on the mat"
#: Shared settings of every case: K = 4 trajectories, L = 16 slots.
COMMON = dict(max_new_tokens=16, num_samples=4)


def cases() -> list[dict]:
    """Every golden case: ``name``, ``reference`` (released / dream / llada), ``model`` (dream variant or llada),
    ``prompt``, ``sampler`` (SamplerConfig fields, the reproduction switch included) and ``guidance``
    (GuidanceConfig fields)."""
    out = []
    for variant in ("peaked", "flat", "eos"):
        for rule in ("none", "entrgi"):
            out.append(dict(
                name=f"released-{variant}-{'guided' if rule == 'entrgi' else 'unguided'}", reference="released",
                model=variant, prompt=DREAM_PROMPT,
                sampler=dict(COMMON, steps=4, temperature=0.7, top_p=0.95, seed=11, match_released=True),
                guidance=dict(rule=rule, inner_steps=3, lr=0.5)))
    for i, alg in enumerate(("entropy", "maskgit_plus", "topk_margin")):
        out.append(dict(  # entropy on peaked logits: near-ties and exact ties of the confidence (p = 1)
            name=f"dream-{alg}", reference="dream", model="peaked" if alg == "entropy" else "mixed",
            prompt=DREAM_PROMPT,
            sampler=dict(COMMON, steps=4, temperature=0.7, top_p=0.95, seed=20 + i, remasking=alg,
                         deprioritize_eos=False, match_reference="dream"),
            guidance=dict(rule="none")))
    out.append(dict(
        name="llada-low_confidence-blocks", reference="llada", model="llada", prompt=LLADA_PROMPT,
        sampler=dict(COMMON, steps=4, temperature=0.7, top_p=1.0, seed=30, remasking="low_confidence",
                     schedule="uniform", sampling="gumbel", block_length=8, deprioritize_eos=False,
                     match_reference="llada"),
        guidance=dict(rule="none")))
    return out


@functools.cache
def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="entrgi-reproduction-"))


@functools.cache
def _dream_base():
    from entrgi.models import load_diffusion_lm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_diffusion_lm(write_dream_checkpoint(_folder() / "dream", shards=1))


@functools.cache
def dream(variant: str):
    """A Dream adapter whose output layer is the base checkpoint's, changed per :data:`DREAM_VARIANTS` (the
    tokenizer and every other weight shared)."""
    spec = DREAM_VARIANTS[variant]
    base = _dream_base()
    model = type(base)(copy.deepcopy(base.module), base.tokenizer, mask_token_id=base.mask_token_id,
                       eos_token_ids=base.eos_token_ids, pad_token_id=base.pad_token_id, shift_logits=True,
                       logit_width=base.logit_width, invalid_token_ids=base.invalid_token_ids,
                       max_length=base.max_length)
    old = model.module.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight * spec["scale"])
        head.bias.zero_()
        vocab = model.tokenizer.get_vocab()
        for token, value in spec["bias"].items():
            head.bias[vocab[token]] = value
    model.module.lm_head = head.requires_grad_(False)
    return model


@functools.cache
def llada():
    """A LLaDA adapter with LLaDA-8B-Base's layout (126464 logits; mask, EOS at their real ids)."""
    from entrgi.models import load_diffusion_lm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_diffusion_lm(write_member_checkpoint(_folder() / "llada", "llada_8b_base", shards=1))


@functools.cache
def reward():
    """The tiny Qwen3 sequence classifier over the real Qwen3 tokenizer, chat template (Skywork-Reward-V2's)."""
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(write_qwen3_tokenizer(_folder() / "qwen3"))
    return tiny_qwen3_reward(tok, seed=1, template="chat")


def model_for(case: dict):
    """The DLLM adapter of ``case``."""
    return llada() if case["model"] == "llada" else dream(case["model"])


# ---- entrgi's side of a case, and the comparison with a reference's record ---------------------------------------
def switch_off(sampler: dict) -> dict:
    """The case's sampler settings without the reproduction switch (entrgi's default path)."""
    return {k: v for k, v in sampler.items() if k not in ("match_released", "match_reference")}


def run_entrgi(case: dict, model, reward, *, profile="config", guided_out: list | None = None) -> dict:
    """entrgi on one case. ``profile``: ``"config"`` = :func:`entrgi.generate` with the case's settings (what a
    user runs); ``"default"`` = without the reproduction switch; a :class:`~entrgi.reproduction.Reproduction` (or
    None = entrgi as shipped before the reproduction choices: the switch's EOS / text / prompt rules only) = the
    step API with that profile on the state; ``guided_out`` then receives each step's guided logits at the masked
    slots (n, V)."""
    s, g = case["sampler"], case["guidance"]
    steps: list = []
    if profile in ("config", "default"):
        sampler = SamplerConfig(**(s if profile == "config" else switch_off(s)))
        out = generate(model, [case["prompt"]], reward, sampler=sampler, guidance=GuidanceConfig(**g), progress=False,
                       trace=False, callback=lambda i, o: steps.append(step_record(o)))
        samples = out.samples[0]
        return record(case, [x.token_ids for x in samples], steps, [x.reward for x in samples])
    from entrgi.reproduction import reproduction_for
    from entrgi.reward.base import rescore_texts
    from entrgi.sampling.masked import response_bias

    cfg, guidance = SamplerConfig(**s), GuidanceConfig(**g)
    if reproduction_for(cfg) is None:
        raise ValueError("profiles apply to the cases with a reproduction switch")
    sampler = DiffusionSampler(model, reward)
    state = sampler.start([case["prompt"]], cfg, guidance, trace=False)
    state.reproduction = profile  # the profile in place of the switch's: the bias, the RM's view, the inner loop
    state.invalid_bias = response_bias(model, cfg, model.device, keep_non_tokens=profile is not None
                                       and profile.non_token_ids)
    if state.reward_view is not None:
        state.reward_view = sampler.reward_view(state, state.stats)
    if state.guide is not None:
        state.guide.view, state.guide.reproduction = state.reward_view, profile
    while not state.done:
        out = sampler.step(state)
        if out is not None:
            steps.append(step_record(out))
            if guided_out is not None:
                guided_out.append(out.guided_logits[out.masked])
    tokens = state.response.tolist()
    texts = [model.decode_response(t, cfg.match_released) for t in tokens]
    released = profile is not None and profile.reference == "released" and profile.rescoring
    rewards = rescore_texts(reward, [case["prompt"]] * len(texts), texts, released).tolist()
    return record(case, tokens, steps, rewards)


def step_record(out) -> tuple[list[list[int]], list[list[float]] | None]:
    """What a :class:`~entrgi.sampling.state.StepOutput` says per row: the committed slots, the inner-loop rewards."""
    commits = [row.nonzero().flatten().tolist() for row in out.committed]
    rewards = None if out.guide is None else out.guide.rewards.tolist()
    return commits, rewards


def record(case: dict, tokens, steps, rewards) -> dict:
    """The comparable part of a run: tokens, per-step commits, final rewards, the inner-loop rewards (guided)."""
    B = len(tokens)
    out = dict(tokens=[list(map(int, t)) for t in tokens], commits=[[c[b] for c, _ in steps] for b in range(B)],
               rewards=[float(r) for r in rewards])
    if case["guidance"]["rule"] != "none":
        out["step_rewards"] = [[r[b] if r is not None else [] for _, r in steps] for b in range(B)]
    return out


def compare(ref: dict, ours: dict) -> dict:
    """Rows with identical tokens / commits; largest reward differences (final; inner loop, where both ran)."""
    rows = sum(a == b for a, b in zip(ref["tokens"], ours["tokens"]))
    commits = sum(a == b for a, b in zip(ref["commits"], ours["commits"]))
    d_final = max((abs(a - b) for a, b in zip(ref.get("rewards", []), ours["rewards"])), default=None)
    d_step = None
    if "step_rewards" in ref:
        diffs = [abs(a - b) for ra, rb in zip(ref["step_rewards"], ours["step_rewards"]) for sa, sb in zip(ra, rb)
                 if sb for a, b in zip(sa, sb)]
        d_step = max(diffs, default=None)
    return dict(rows=rows, commits=commits, d_reward=d_final, d_step_reward=d_step, n=len(ref["tokens"]))
