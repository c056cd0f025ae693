"""Guided vs unguided sampling with the default pair: reward, VADER (an independent judge), diversity.

``python -m entrgi.default_pair.evaluate`` prints one line per setting; the numbers in the model card
come from :func:`compare` with :data:`DEMO_PROMPTS` / :func:`heldout_prompts`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence

#: Sentence beginnings for the demo (not taken from the corpus).
DEMO_PROMPTS = ("she was", "the weather was", "mr. darcy said that", "it was a", "her sister thought",
                "the letter was")


def heldout_prompts(n: int = 12, seed: int = 0) -> list[str]:
    """Beginnings (2–4 words, no punctuation) of held-out Austen sentences, lower-cased (needs the corpus)."""
    from .corpus import train_heldout_split
    _, held = train_heldout_split()
    cands = [s for s in held if len(s.split()) >= 8 and not any(c in " ".join(s.split()[:4]) for c in ",;:!?.'")]
    random.Random(seed).shuffle(cands)
    return [" ".join(s.split()[:2 + i % 3]).lower() for i, s in enumerate(cands[:n])]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over ``texts`` (1.0 = no repetition across samples)."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def run_setting(dllm, reward, prompts: Sequence[str], method: str = "none", *, max_new_tokens: int = 20,
                steps: int = 20, num_samples: int = 4, temperature: float = 0.8, top_p: float = 0.95,
                inner_steps: int = 3, lr: float = 1.0, seed: int = 0, **guidance) -> dict:
    """Generate and summarise one setting: mean reward, mean VADER compound, share VADER-positive,
    distinct-2 within each prompt's samples, mean words, seconds, and the texts."""
    from .. import generate
    from ..config import GuidanceConfig, SamplerConfig
    from . import vader_compound
    t0 = time.perf_counter()
    out = generate(dllm, list(prompts), reward, progress=False, trace=False,
                   sampler=SamplerConfig(max_new_tokens=max_new_tokens, steps=steps, num_samples=num_samples,
                                         temperature=temperature, top_p=top_p, seed=seed),
                   guidance=GuidanceConfig(method=method, inner_steps=inner_steps, lr=lr, **guidance))
    rows = [s for g in out.samples for s in g]
    vader = vader_compound([f"{s.prompt} {s.text}" for s in rows])
    return {"method": method, "temperature": temperature, "top_p": top_p, "inner_steps": inner_steps, "lr": lr,
            "max_new_tokens": max_new_tokens, "steps": steps, **guidance,
            "reward": sum(s.reward for s in rows) / len(rows), "vader": sum(vader) / len(vader),
            "vader_positive": sum(v > 0.05 for v in vader) / len(vader),
            "distinct2": sum(distinct_n([s.text for s in g]) for g in out.samples) / len(out.samples),
            "words": sum(len(s.text.split()) for s in rows) / len(rows), "seconds": time.perf_counter() - t0,
            "texts": [{"prompt": s.prompt, "text": s.text, "reward": s.reward, "vader": v} for s, v in zip(rows, vader)]}


def compare(dllm, reward, prompts: Sequence[str], settings: Sequence[dict], **common) -> list[dict]:
    return [run_setting(dllm, reward, prompts, **{**common, **s}) for s in settings]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--asset-dir", default=None)
    p.add_argument("--prompts", choices=["demo", "heldout"], default="heldout")
    p.add_argument("--settings", default='[{"method": "none"}, {"method": "entrgi"}]',
                   help="JSON list of run_setting keyword dicts.")
    p.add_argument("--show", type=int, default=6, help="Texts to print per setting.")
    p.add_argument("--json", help="Write every result (with texts) here.")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from . import load_default_pair
    dllm, reward = load_default_pair(asset_dir=args.asset_dir)
    prompts = list(DEMO_PROMPTS) if args.prompts == "demo" else heldout_prompts()
    results = []
    for s in json.loads(args.settings):
        r = run_setting(dllm, reward, prompts, **s)
        results.append(r)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "texts"}),
              flush=True)
        step = max(1, len(r["texts"]) // max(1, args.show))
        for t in r["texts"][::step][:args.show]:
            print(f"    [{t['reward']:+6.2f} | {t['vader']:+.2f}] {t['prompt']} | {t['text']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
