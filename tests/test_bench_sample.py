"""benchmarks/bench_sample.py's bookkeeping at toy size: settings, cost counts, window tokens, determinism.
No timing is asserted (the figures are in docs/performance.md)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

bench = pytest.importorskip("bench_sample")
from bench_guidance import build_pair, lm_head_scaled  # noqa: E402

from entrgi.presets import get_preset  # noqa: E402
from entrgi.sampling.outputs import cost_parameters  # noqa: E402
from entrgi.sampling.sampler import DiffusionSampler  # noqa: E402
from entrgi.sampling.schedule import commit_counts  # noqa: E402

L, T, ROWS, M = 32, 4, 2, 3
BY_NAME = {s.name: s for s in bench.SETTINGS}


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    pair = build_pair("toy", torch.device("cpu"), torch.float32, width=2048)
    sampler = DiffusionSampler(pair.dllm, pair.reward, pair.bridge)
    prompt = bench.prompt_of(pair.dllm, 24)
    names = ("unguided", "unguided + dual cache", "EntRGi M=3", "EntRGi + schedule")
    results = bench.measure(sampler, prompt, [BY_NAME[n] for n in names], L, T, ROWS, reps=2, warmup=False)
    return pair, sampler, len(pair.dllm.encode_prompt(prompt)), results


def test_settings_are_the_parts_of_the_fast_preset():
    fast = get_preset("fast")
    s, g = bench.configs(BY_NAME["fast preset + dual cache"], 64, 64, 1)
    assert s.kv_cache == "dual" and s.block_length == 32 and s.steps == fast.steps_for(64, 32) == 16
    assert all(getattr(s, k) == v for k, v in fast.sampler.items())
    assert all(getattr(g, k) == v for k, v in fast.guidance.items()) and g.rule == "entrgi"
    s, g = bench.configs(BY_NAME["EntRGi + schedule"], 64, 64, 1)
    assert g.guide_until == 0.25 and s.parallel_threshold is None and s.kv_cache == "none"
    s, g = bench.configs(BY_NAME["unguided + threshold"], 64, 64, 1)
    assert g.rule == "none" and s.parallel_threshold == fast.sampler["parallel_threshold"]
    s, g = bench.configs(BY_NAME["EntRGi M=3"], 64, 64, 1)
    assert s.parallel_threshold is None and s.kv_cache == "none" and g.guide_until == 1.0


def test_counts_per_sample(run):
    pair, _, P, results = run
    bench.check_deterministic(results)  # the repetitions agree in counts and tokens
    rows = {r["setting"]: r for r in bench.summary(results, ROWS)}
    params = cost_parameters(pair.dllm, pair.reward)
    for name, runs in results.items():
        st = runs[0].stats
        assert st.flops == st.estimate_flops(*params) > 0
        assert rows[name]["dllm_forwards"] == T and runs[0].steps == T  # T = 4 steps, no threshold
        assert rows[name]["slots_per_step"] == L / T  # the linear schedule: 8, 8, 8, 8
        assert all(pair.dllm.mask_token_id not in t and len(t) == L for t in runs[0].tokens)
    assert rows["unguided"]["rm_backwards"] == rows["unguided + dual cache"]["rm_backwards"] == 0
    assert rows["EntRGi M=3"]["rm_backwards"] == M * T  # every step guided
    # guide_until 0.25: guided while < 8 of the 32 slots are committed. Dream's linear schedule (ts = linspace(1,
    # eps, T + 1)) commits int(32 · (1 − s/t)) = 7 at step 0 (eps), so steps 0 and 1 are guided, then not
    n, before = torch.tensor([L]), []
    for j in range(T):
        before.append(L - int(n))
        n = n - commit_counts(n, j, T, "linear", 1e-3)
    assert before[:2] == [0, 7] and before[2] >= 8
    assert rows["EntRGi + schedule"]["rm_backwards"] == M * 2
    # the DLLM tokens run: the whole canvas every step; with the dual cache, a block's first step and then the
    # window [block start − 1, block end) of 33 positions
    assert rows["unguided"]["dllm_tokens_run"] == T * (P + L)
    assert rows["unguided + dual cache"]["dllm_tokens_run"] == (P + L) + (T - 1) * (L + 1)
    assert rows["unguided"]["x_min"] == rows["unguided"]["x_flops"] == 1.0
    assert rows["EntRGi M=3"]["x_flops"] > rows["EntRGi + schedule"]["x_flops"] > 1.0
    text = bench.table(list(rows.values()))
    assert all(f"| {name} |" in text for name in results)


def test_lm_head_scaling_is_restored(run):
    pair = run[0]
    w = pair.dllm.module.lm_head.weight
    before = w.detach().clone()
    with lm_head_scaled(pair, 4.0):
        assert torch.equal(w, before * 4.0)
    assert torch.equal(w, before)
