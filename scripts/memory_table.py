"""Parameter counts and a memory estimate for the paper's models (prints the tables of docs/models.md).

    python scripts/memory_table.py                      # B = 4 rows (1 prompt x K = 4), L = 128, RM length 400
    python scripts/memory_table.py --rows 8 --length 256

Parameter counts are exact: each model is built on the meta device from its real config shapes (Dream
and LLaDA through this package's config mapping, the RMs as transformers' Qwen3ForSequenceClassification)
and its parameters are counted. Memory: weights = 2 bytes/param (bf16); the rest are estimates from
tensor shapes, listed with their formulas in docs/models.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
from accelerate import init_empty_weights
from transformers import Qwen3Config, Qwen3ForSequenceClassification

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))  # test support: tiny models, reference
from support.tiny_checkpoints import dream_config, llada_config

from entrgi.models.dream import DreamModule, qwen2_config
from entrgi.models.llada import LLaDAModule, llama_config

GiB = 2**30
DLLMS = {  # name: (module factory, logit width V, hidden, intermediate, layers)
    "Dream-v0-Instruct-7B": (lambda: DreamModule(qwen2_config(dream_config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4))), 152064, 3584, 18944, 28),
    "LLaDA-8B-Instruct": (lambda: LLaDAModule(llama_config(llada_config(
        126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288))),
        126464, 4096, 12288, 32),
}
#: Qwen3 base shapes of Skywork-Reward-V2-Qwen3-{0.6B,1.7B,4B}: hidden, layers, heads, kv heads, intermediate.
RMS = {"Skywork-Reward-V2-Qwen3-0.6B": (1024, 28, 16, 8, 3072), "Skywork-Reward-V2-Qwen3-1.7B": (2048, 28, 16, 8, 6144),
       "Skywork-Reward-V2-Qwen3-4B": (2560, 36, 32, 8, 9728)}


def count(factory) -> int:
    with init_empty_weights():
        module = factory()
    return sum(p.numel() for p in module.parameters())


def rm_factory(h, layers, heads, kv, inter):
    return lambda: Qwen3ForSequenceClassification(Qwen3Config(
        vocab_size=151936, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=128, intermediate_size=inter, num_labels=1, tie_word_embeddings=True))


def layer_activation_bytes(h: int, inter: int) -> int:
    """bf16 bytes per token per layer that a backward keeps (SDPA/flash: no N x N scores):
    norm inputs/outputs, q, k, v, attention output, residuals ~ 8h; gate, up, silu, product ~ 4I."""
    return 2 * (8 * h + 4 * inter)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4, help="B: rows per batch (prompts x K trajectories).")
    p.add_argument("--length", type=int, default=128, help="L: response slots.")
    p.add_argument("--prompt", type=int, default=256, help="DLLM prompt tokens.")
    p.add_argument("--rm-length", type=int, default=400, help="RM sequence: template + prompt + L + suffix.")
    a = p.parse_args()
    B, L, N, NR = a.rows, a.length, a.prompt + a.length, a.rm_length

    print("| model | parameters | bf16 weights |\n|---|---:|---:|")
    dllm, rm = {}, {}
    for name, (factory, V, h, inter, _layers) in DLLMS.items():
        n = count(factory)
        dllm[name] = (n, V, h, inter)
        print(f"| {name} | {n / 1e9:.3f} B | {2 * n / GiB:.2f} GiB |")
    for name, shape in RMS.items():
        n = count(rm_factory(*shape))
        rm[name] = (n, *shape)
        print(f"| {name} | {n / 1e9:.3f} B | {2 * n / GiB:.2f} GiB |")

    print(f"\nPer guided denoising step, B = {B} rows, L = {L}, DLLM sequence {N}, RM sequence {NR} (GiB):\n")
    print("| DLLM + RM | weights | aligned E_R | DLLM fwd | φ state | RM act. | RM act. (ckpt) | total "
          "| total (ckpt) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dname, (dn, V, dh, dinter) in dllm.items():
        for rname, (rn, h, layers, _heads, _kv, inter) in rm.items():
            weights = 2 * (dn + rn)
            table = 2 * V * h  # the RM embedding rows re-indexed to the DLLM ids (a copy)
            fwd = B * N * (2 * dh + 3 * dinter) * 2 + B * L * V * (2 + 4 + 4)  # one layer's transients + logits
            phi = 12 * 4 * B * L * V  # fp32 (B·L, V): logits, φ, grad, Adam m & v, q, backward/entropy temps
            act = layers * B * NR * layer_activation_bytes(h, inter)
            act_ck = layers * B * NR * 2 * h + B * NR * layer_activation_bytes(h, inter)
            total, total_ck = weights + table + fwd + phi + act, weights + table + fwd + phi + act_ck
            short = dname.split("-")[0] + " + " + rname.rsplit("-", 1)[-1]
            print(f"| {short} | {weights / GiB:.1f} | {table / GiB:.2f} | {fwd / GiB:.2f} | {phi / GiB:.2f} | "
                  f"{act / GiB:.2f} | {act_ck / GiB:.2f} | {total / GiB:.1f} | {total_ck / GiB:.1f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
