"""scripts/frontier.py's bookkeeping (docs/fast-guidance.md): Best-of-N for several N from one run, the
interpolated Best-of-N at a given cost, and the cost priced at the paper pair's parameter counts."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from test_sampler import PROMPTS, small

from entrgi import GuidanceConfig, generate

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("frontier_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LengthJudge:
    def score(self, prompts, texts):
        return [float(len(t)) for t in texts]


def test_best_of_n_from_one_run_is_a_best_of_n_run(frontier, mlm, qwen_reward):
    bon = GuidanceConfig(method="best_of_n")
    big = generate(mlm, PROMPTS, qwen_reward, sampler=small(num_samples=4), guidance=bon, progress=False, trace=False)
    recs = frontier.best_of_n_records(big, LengthJudge(), PROMPTS, [2, 4], wall_s=1.0)
    two = generate(mlm, PROMPTS, qwen_reward, sampler=small(num_samples=2), guidance=bon, progress=False, trace=False)
    assert recs[2]["top1"] == pytest.approx(sum(two.top1()) / len(PROMPTS), abs=1e-5)
    assert recs[2]["avg"] == pytest.approx(sum(two.avg()) / len(PROMPTS), abs=1e-5)
    assert recs[4]["top1"] == pytest.approx(sum(big.top1()) / len(PROMPTS), abs=1e-9)
    assert recs[2]["counts_per_prompt"]["dllm_tokens"] * len(PROMPTS) == two.stats.dllm_tokens  # exact for the DLLM
    assert recs[4]["flops_per_prompt"] == pytest.approx(2 * recs[2]["flops_per_prompt"])
    best = [max(g[:2], key=lambda s: s.reward).text for g in big.samples]
    assert recs[2]["vader_top1"] == pytest.approx(sum(len(t) for t in best) / len(best))


def test_bon_at_cost_interpolates_in_log_cost(frontier):
    by = {"bon@4": {1: {"flops_per_prompt": 10.0, "top1": 1.0}}, "bon@16": {1: {"flops_per_prompt": 40.0, "top1": 3.0}},
          "entrgi": {1: {"flops_per_prompt": 20.0, "top1": 9.0}}}
    assert frontier.bon_at_cost(by, 1, 20.0) == pytest.approx(2.0)  # log(20) is halfway between log(10), log(40)
    assert frontier.bon_at_cost(by, 1, 10.0) == pytest.approx(1.0)
    assert frontier.bon_at_cost(by, 1, 50.0) is None  # outside the stored Ns


def test_projected_flops_prices_the_counts(frontier):
    counts = {"dllm_tokens": 10, "dllm_logit_tokens": 7, "rm_forward_tokens": 3, "rm_backward_tokens": 2,
              "soft_embedding_macs": 5}
    rec = {"counts_per_prompt": counts, "rm_vd": 100}
    n_dllm, n_rm, n_head, vd = frontier.PAPER_PAIRS["7B+0.6B"]
    expected = 2 * n_dllm * 10 + 2 * n_head * 7 + 2 * n_rm * (3 + 2) + 2 * 5 * vd / 100
    assert math.isclose(frontier.projected_flops(rec, "7B+0.6B"), expected)
