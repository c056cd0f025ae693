"""A tiny evaluation run, importable by tests and runnable as a worker process:

    python tests/eval_worker.py OUT_DIR            (RANK / WORLD_SIZE from the environment)
"""

import sys
from pathlib import Path

import torch
from support.tiny_models import CHAT_TEMPLATE, tiny_mlm, tiny_qwen3_reward, word_tokenizer

from entrgi.eval import EvalConfig, EvalRunner, Shard, VaderJudge

PROMPTS = ["the cat sat on", "a big dog", "it was a good day and", "the bird flew over the", "red sun then",
           "the small cat was very"]


def config(out, prompt_file, **kw) -> EvalConfig:
    base = dict(out=str(out), prompt_sets=(f"file:{prompt_file}",), n_prompts=4, methods=("best_of_n", "entrgi"),
                temperatures=(0.7, 1.0), seeds=(1, 2), sampler={"max_new_tokens": 6, "steps": 6, "num_samples": 2},
                guidance={"lr": 1.0}, prompts_per_batch=2, judges=("vader",))
    base.update(kw)
    return EvalConfig(**base)


def write_prompts(directory) -> Path:
    path = Path(directory) / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def runner(cfg: EvalConfig, shard: Shard | None = None) -> EvalRunner:
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    return EvalRunner(cfg, shard=shard, model=tiny_mlm(tok, seed=0), reward=tiny_qwen3_reward(tok, seed=1),
                      judges=[VaderJudge()], progress=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    extra = {"n_prompts": int(sys.argv[2])} if len(sys.argv) > 2 else {}
    runner(config(out, write_prompts(out.parent), **extra)).run()
