"""GPU check of the real model families, without downloads.

    python scripts/gpu_check_models.py                                          # CUDA, bfloat16, mid size
    python scripts/gpu_check_models.py --device cpu --dtype float32             # CPU smoke run (tiny, L = 4)

Writes random checkpoints with the real layouts (Dream-v0: config keys, weight names, 152064-wide
logits, the real Qwen BPE tokenizer; LLaDA-8B: OLMo-style names, 126464-wide logits at ``mid``),
loads them through ``entrgi.models.load_diffusion_lm`` in ``--dtype``, pairs each with a Qwen3
sequence-classifier RM (Skywork-Reward-V2's class) run under gradient checkpointing, and runs one
EntRGi-guided generation per family. Prints load / generation times, peak GPU memory and rewards;
exits 1 if any logit, gradient norm or reward is NaN, 2 if a family could not run.

Sizes: ``tiny`` = 2 layers, hidden 32; ``mid`` = Dream/LLaDA widths scaled down (Dream hidden 896,
8 layers, 14/2 heads; LLaDA d_model 1024, 8 layers; RM hidden 1024, 8 layers, 16/8 heads), vocabularies
at full width. Random weights: the rewards are not meaningful, only finite.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))  # test support: tiny models, reference
from support.tiny_checkpoints import (
    llada_style_tokenizer,
    qwen_tokenizer_dir,
    write_dream_checkpoint,
    write_llada_checkpoint,
    write_qwen3_tokenizer,
    write_reward_checkpoint,
)
from support.tiny_models import CHAT_TEMPLATE, word_tokenizer

from entrgi import GuidanceConfig, generate
from entrgi.dtypes import DTYPES
from entrgi.models import Dream, LLaDA, load_diffusion_lm
from entrgi.reward.hf import HFRewardModel

SIZES = {
    "tiny": dict(dream=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2),
                 llada=dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=64),
                 rm=dict(hidden=32, layers=2, heads=4, kv_heads=2)),
    "mid": dict(dream=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=8, num_attention_heads=14,
                           num_key_value_heads=2),
                llada=dict(d_model=1024, n_layers=8, n_heads=16, n_kv_heads=16, mlp_hidden_size=3072,
                           embedding_size=126464),
                rm=dict(hidden=1024, layers=8, heads=16, kv_heads=8, head_dim=128, intermediate=3072)),
}
PROMPTS = ["the cat sat on the mat and it was a very good day", "a dog ran under the tree"]


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_family(name: str, root: Path, args, device: torch.device, dtype: torch.dtype) -> tuple[bool, dict]:
    sizes = SIZES[args.size]
    if name == "dream":
        model_dir = write_dream_checkpoint(root / "dream", seed=args.seed, dtype=dtype, **sizes["dream"])
        from transformers import AutoTokenizer
        rm_tok = AutoTokenizer.from_pretrained(write_qwen3_tokenizer(root / "qwen3_tokenizer"))
        sampler = Dream.recommended_sampler(max_new_tokens=args.max_new_tokens, steps=args.steps,
                                            num_samples=args.num_samples, seed=args.seed)
        guidance = GuidanceConfig(rule="entrgi", inner_steps=args.inner_steps)
    else:
        model_dir = write_llada_checkpoint(root / "llada", llada_style_tokenizer(), seed=args.seed, dtype=dtype,
                                           **sizes["llada"])
        rm_tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
        sampler = LLaDA.recommended_sampler(max_new_tokens=args.max_new_tokens, steps=args.steps,
                                            block_length=args.max_new_tokens // 2, num_samples=args.num_samples,
                                            seed=args.seed)
        guidance = GuidanceConfig(rule="entrgi", inner_steps=args.inner_steps, relaxation_temperature=1.0)
    rm_dir = write_reward_checkpoint(root / f"{name}_rm", rm_tok, seed=args.seed + 1, **sizes["rm"])

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model = load_diffusion_lm(model_dir, dtype=dtype, device=None if args.device_map else device,
                              device_map=args.device_map)
    reward = HFRewardModel.from_pretrained(rm_dir, dtype=dtype, device=device, gradient_checkpointing=True)
    load_s = time.perf_counter() - t0
    loaded_mib = peak_mib(device)

    nan = {"logits": False}

    def watch(step, state):
        g = state["guided_logits"][state["masked"]]
        nan["logits"] |= bool(torch.isnan(g).any())

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = generate(model, PROMPTS, reward, sampler=sampler, guidance=guidance, progress=False, callback=watch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    gen_s = time.perf_counter() - t0
    samples = [s for g in out.samples for s in g]
    rewards = [s.reward for s in samples]
    grad_norms = [g for s in samples for t in s.trace for g in t.grad_norms]
    bad = (nan["logits"] or any(r is None or math.isnan(r) for r in rewards)
           or any(math.isnan(g) for g in grad_norms))
    n_params = sum(p.numel() for p in model.module.parameters())
    report = dict(family=name, params_M=round(n_params / 1e6, 1), logit_width=model.logit_width,
                  load_s=round(load_s, 2), generate_s=round(gen_s, 2),
                  s_per_step=round(gen_s / sampler.steps, 3), peak_after_load_MiB=loaded_mib,
                  peak_MiB=peak_mib(device), rewards=[round(r, 3) for r in rewards],
                  mean_grad_norm=round(sum(grad_norms) / max(len(grad_norms), 1), 4), nan=bad,
                  example=samples[0].text[:80])
    del model, reward
    return not bad, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--size", default=None, choices=sorted(SIZES), help="Default: mid on CUDA, tiny on CPU.")
    p.add_argument("--families", default="dream,llada", help="Comma-separated: dream, llada.")
    p.add_argument("--device-map", default=None, help="accelerate device_map for the DLLM (e.g. auto).")
    p.add_argument("--max-new-tokens", type=int, default=None, help="L (default: 32 on CUDA, 4 on CPU).")
    p.add_argument("--steps", type=int, default=None, help="T (default: L).")
    p.add_argument("--num-samples", type=int, default=None, help="K (default: 4 on CUDA, 2 on CPU).")
    p.add_argument("--inner-steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="Where to write the checkpoints (default: a temp folder).")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu --dtype float32 --size tiny for a CPU run.", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    gpu = device.type == "cuda"
    args.size = args.size or ("mid" if gpu else "tiny")
    args.max_new_tokens = args.max_new_tokens or (32 if gpu else 4)
    args.steps = args.steps or args.max_new_tokens
    args.num_samples = args.num_samples or (4 if gpu else 2)
    print(f"torch {torch.__version__}  device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}  dtype {args.dtype}  "
          f"size {args.size}  L={args.max_new_tokens} T={args.steps} K={args.num_samples} M={args.inner_steps}")
    status = 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name in [f.strip() for f in args.families.split(",") if f.strip()]:
            if name == "dream":
                try:
                    qwen_tokenizer_dir()
                except ImportError as e:
                    print(f"[dream] skipped: {e}", file=sys.stderr)
                    status = max(status, 2)
                    continue
            try:
                ok, report = run_family(name, Path(tmp), args, device, dtype)
            except Exception as e:  # report and go on to the next family
                print(f"[{name}] FAILED: {type(e).__name__}: {e}", file=sys.stderr)
                status = max(status, 2)
                continue
            print(f"[{name}] " + "  ".join(f"{k}={v}" for k, v in report.items()))
            if not ok:
                print(f"[{name}] NaN detected", file=sys.stderr)
                status = 1 if status != 2 else status
    print("OK" if status == 0 else f"exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
