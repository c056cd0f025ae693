"""What :func:`entrgi.generate` returns: samples with rewards, a per-step trace, compute counts."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from torch import nn

from ..config import GuidanceConfig, SamplerConfig, SearchConfig, method_name
from ..errors import check_rewards
from ..reproduction import reproduction_for
from ..reward.base import rescore_texts


@dataclass
class StepTrace:
    """One denoising step of one sample.

    Attributes:
        step: global step index (blocks run one after another).
        block: block index (0 without blocks).
        masked: masked response slots before this step's commit.
        committed: response positions (0-based within the response) committed at this step.
        entropy_weight: mean EntRGi weight w over the masked slots (pre-guidance logits).
        rewards: RM reward seen before each inner step, then after the last one (M + 1 values;
            empty when the step is not guided).
        grad_norms: ‖∇_φ R‖ over the sample's masked slots at each inner step (M values).
        estimate: RM reward of the predicted completion after this step (``track_reward``), else None.
        resampled_from: particle sampler only: the index (within its prompt) of the particle this one
            was copied from after this step, when a resampling happened.
        num_committed: how many slots this step committed (``len(committed)``; more than the schedule's
            count with ``parallel_threshold``).
        guided: whether the sample was guided at this step (the guidance schedule may skip steps).
    """

    step: int
    block: int
    masked: int
    committed: list[int]
    entropy_weight: float | None
    rewards: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    estimate: float | None = None
    resampled_from: int | None = None
    num_committed: int = 0
    guided: bool = False


@dataclass
class Sample:
    """One trajectory: the decoded response, its tokens, its reward on discrete text, its trace."""

    prompt_index: int
    sample_index: int
    prompt: str
    text: str
    token_ids: list[int]
    reward: float | None = None
    trace: list[StepTrace] | None = None

    def to_dict(self, with_trace: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_trace:
            d.pop("trace")
        return d


@dataclass
class ComputeStats:
    """Work done. ``*_forwards`` / ``*_backwards`` count rows (one row = one sequence through one model
    call); the token, MAC and FLOP counts are deterministic (they depend on the inputs and settings, never
    on timing) and follow docs/performance.md, "Cost count".

    Attributes:
        dllm_tokens: tokens through DLLM forwards (rows × sequence length, padding included, per forward; the
            query window on a KV-cached step).
        dllm_logit_tokens: response slots the DLLM's output (logit) layer ran on (rows × L per uncached forward;
            the window's slots on a cached step).
        rm_forward_tokens: tokens through RM forwards, as each call runs them: with the prefix cache the
            prefix once per batch plus ``[slots ; suffix]`` per inner step (else the whole row); the
            ``track_reward`` estimates; the final re-score of the decoded texts (left-padded batches of 16);
            with RM gradient checkpointing, the forward each backward recomputes.
        rm_backward_tokens: tokens through RM backward passes (the inner steps; input gradients only).
        soft_embedding_macs: multiply-adds of the soft embeddings q·E: n × V × d per soft embedding and per
            backward of one (n masked slots, V ids, or ``soft_top_k``; d the RM width).
        flops: :meth:`estimate_flops` of the counts with the models' :func:`cost_parameters`.
    """

    dllm_forwards: int = 0
    rm_forwards: int = 0
    rm_backwards: int = 0
    wall_time_s: float = 0.0
    dllm_tokens: int = 0
    rm_forward_tokens: int = 0
    rm_backward_tokens: int = 0
    soft_embedding_macs: int = 0
    flops: int = 0
    dllm_logit_tokens: int = 0

    def estimate_flops(self, n_dllm: int, n_rm: int, n_dllm_head: int = 0) -> int:
        """2·N_dllm·dllm_tokens + 2·N_head·dllm_logit_tokens + 2·N_rm·(rm_forward_tokens + rm_backward_tokens)
        + 2·soft_embedding_macs: 2 FLOPs per weight and token for a forward, and for a backward that computes
        input gradients only (the models are frozen); a multiply-add is 2 FLOPs (docs/performance.md)."""
        return (2 * n_dllm * self.dllm_tokens + 2 * n_dllm_head * self.dllm_logit_tokens
                + 2 * n_rm * (self.rm_forward_tokens + self.rm_backward_tokens) + 2 * self.soft_embedding_macs)

    def count_dllm_forward(self, rows: int, tokens: int, logit_tokens: int) -> None:
        """Add one DLLM forward of ``rows`` rows, each running ``tokens`` positions and its output layer on
        ``logit_tokens`` response slots."""
        self.dllm_forwards += rows
        self.dllm_tokens += rows * tokens
        self.dllm_logit_tokens += rows * logit_tokens

    def move_rm_forward(self, to: ComputeStats, rows: int, tokens: int) -> None:
        """Move one RM forward of ``rows`` rows and ``tokens`` tokens from these counts to ``to`` (work an observer
        did that the method then used: the ``track_reward`` estimate that weighs particles)."""
        self.rm_forwards -= rows
        self.rm_forward_tokens -= tokens
        to.rm_forwards += rows
        to.rm_forward_tokens += tokens

    def count_inner_loop(self, rows: int, call_tokens: int, n_masked: int, width: int, d: int, forwards: int,
                         backwards: int, extra: int = 0, recompute: bool = False) -> None:
        """Add one denoising step's inner loop: ``forwards`` RM calls with gradient and ``backwards`` backward
        passes over ``rows`` rows of ``call_tokens`` tokens in all (per call), ``extra`` no-grad evaluations (the
        trace's), each call and each backward one soft embedding of ``n_masked`` slots over ``width`` ids of
        width ``d``; ``recompute``: the RM's backward reruns its forward (gradient checkpointing)."""
        calls = forwards + extra + (backwards if recompute else 0)
        self.rm_forwards += rows * (forwards + extra)
        self.rm_backwards += rows * backwards
        self.rm_forward_tokens += call_tokens * calls
        self.rm_backward_tokens += call_tokens * backwards
        self.soft_embedding_macs += n_masked * width * d * (forwards + backwards + extra)


class CostParameters(NamedTuple):
    """The parameter counts :meth:`ComputeStats.estimate_flops` prices the token counts with."""

    dllm: int  #: the DLLM's non-embedding parameters (:func:`non_embedding_parameters`)
    rm: int  #: the RM's non-embedding parameters (0 without a reward model)
    dllm_head: int = 0  #: the DLLM's output layer (:func:`output_layer_parameters`)


def non_embedding_parameters(module: nn.Module | None) -> int:
    """N of the cost count: the parameters of ``module`` (shared ones once) less its embedding matrices:
    every ``nn.Embedding`` (tokens, positions, token types) and the output embedding (the logit layer:
    ``get_output_embeddings()`` of any submodule, or an ``lm_head``). 0 for None and for rewards that are not
    modules (a text reward is code on strings: it has no parameter count)."""
    if not isinstance(module, nn.Module):
        return 0
    excluded: dict[int, int] = {}
    for m in module.modules():
        heads = [m] if isinstance(m, nn.Embedding) else []
        heads += [output_embedding(m), getattr(m, "lm_head", None)]
        for h in heads:
            if isinstance(h, nn.Module):
                excluded.update((id(p), p.numel()) for p in h.parameters())
    total = {id(p): p.numel() for p in module.parameters()}
    return sum(n for k, n in total.items() if k not in excluded)


def output_embedding(module: nn.Module) -> nn.Module | None:
    """``module.get_output_embeddings()`` (the logit layer of an HF model), or None where it has none."""
    getter = getattr(module, "get_output_embeddings", None)
    if not callable(getter):
        return None
    try:
        head = getter()
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, nn.Module) else None


def output_layer_parameters(module: nn.Module | None) -> int:
    """Parameters of the DLLM's output (logit) layer, run once per response slot: its
    ``get_output_embeddings()`` (or ``lm_head``), weight and bias, tied or not; 0 when it has none."""
    if not isinstance(module, nn.Module):
        return 0
    head = output_embedding(module) or getattr(module, "lm_head", None)
    return sum(p.numel() for p in head.parameters()) if isinstance(head, nn.Module) else 0


def cost_parameters(model, reward=None) -> CostParameters:
    """The :class:`CostParameters` of a diffusion LM (its ``module`` when it is an adapter) and a reward."""
    module = getattr(model, "module", model)
    return CostParameters(non_embedding_parameters(module), non_embedding_parameters(reward),
                          output_layer_parameters(module))


def rm_recomputes_forward(reward) -> bool:
    """True when the RM's backward reruns its forward (HF gradient checkpointing, ``--rm-checkpointing``)."""
    module = getattr(reward, "model", None)
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers >= 5.x / older
        if hasattr(type(module), name):
            return bool(getattr(module, name))
    return False


def rm_call_tokens(reward_batch) -> int:
    """Tokens one scoring call of a :class:`~entrgi.reward.base.RewardBatch` runs: rows × (the whole
    left-padded row, or with the prefix cache ``[L slots ; suffix]``)."""
    B, N = reward_batch.static_embeds.shape[:2]
    return B * N


def rescore_tokens(reward, prompts: Sequence[str], texts: Sequence[str], batch_size: int = 16) -> int:
    """Tokens the final re-score runs: the RM ids of each (prompt, text) (:meth:`RewardModel.text_ids`),
    left-padded in batches of ``batch_size`` as ``score_texts`` runs them; 0 for a reward that reads text, not
    tokens (no ``text_ids``); a composite counts each member's tokens."""
    members = getattr(reward, "members", None)
    if members is not None:
        return sum(rescore_tokens(getattr(m, "reward", m), prompts, texts, batch_size) for m in members)
    if not hasattr(reward, "text_ids"):
        return 0
    lengths = [len(reward.text_ids(p, t)) for p, t in zip(prompts, texts)]
    return sum(len(c) * max(c) for c in (lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)))


@dataclass
class GenerationOutput:
    """``samples[i][k]``: sample k of prompt i; ``stats``: the method's compute; ``observer_stats``: what watching it
    added (the trace's extra evaluations, the ``track_reward`` estimates), not in ``stats.flops``."""

    samples: list[list[Sample]]
    sampler: SamplerConfig
    guidance: GuidanceConfig
    stats: ComputeStats
    search: SearchConfig = field(default_factory=SearchConfig)
    observer_stats: ComputeStats = field(default_factory=ComputeStats)

    def best(self, prompt_index: int) -> Sample:
        """The highest-reward sample of a prompt (Best-of-N / Top@1's pick)."""
        group = self.samples[prompt_index]
        if any(s.reward is None for s in group):
            raise ValueError("samples have no rewards: pass a reward model to score them.")
        return max(group, key=lambda s: s.reward)

    def top1(self) -> list[float]:
        """Per prompt, the max reward over its K samples."""
        return [self.best(i).reward for i in range(len(self.samples))]

    def avg(self) -> list[float]:
        """Per prompt, the mean reward over its K samples."""
        return [math.fsum(s.reward for s in g) / len(g) for g in self.samples]

    def to_dict(self, with_trace: bool = True) -> dict[str, Any]:
        return {
            "sampler": self.sampler.to_dict(),
            "guidance": self.guidance.to_dict(),
            "search": self.search.to_dict(),
            "stats": asdict(self.stats),
            "observer_stats": asdict(self.observer_stats),
            "samples": [[s.to_dict(with_trace) for s in g] for g in self.samples],
        }


def collect_output(model, reward, rows, tokens: list[list[int]], texts: list[str], traces: list, stats: ComputeStats,
                   sampler, guidance: GuidanceConfig, start: float, *, search: SearchConfig | None = None,
                   observer_stats: ComputeStats | None = None) -> GenerationOutput:
    """The samplers' common end: re-score the decoded ``texts`` with ``reward`` (checked finite, counted in
    ``stats``), price ``stats`` in FLOPs, stamp the wall time since ``start`` (``time.perf_counter()``) and group
    the samples by prompt. ``rows`` carry ``prompt_index``, ``sample_index`` and ``prompt``."""
    rewards: list[float | None] = [None] * len(rows)
    if reward is not None:
        prompts = [r.prompt for r in rows]
        rep = reproduction_for(sampler)  # the released code re-scores each text alone, template around it
        released = rep is not None and rep.reference == "released" and rep.rescoring
        scores = rescore_texts(reward, prompts, texts, released)
        check_rewards(scores, "the re-score of the decoded samples", method_name(guidance, search),
                      [(r.prompt_index, r.sample_index) for r in rows])
        rewards = scores.tolist()
        stats.rm_forwards += len(rows)
        stats.rm_forward_tokens += rescore_tokens(reward, prompts, texts)
    params = cost_parameters(model, reward)
    stats.flops = stats.estimate_flops(*params)
    observer_stats = observer_stats or ComputeStats()
    observer_stats.flops = observer_stats.estimate_flops(*params)
    stats.wall_time_s = time.perf_counter() - start
    samples: list[list[Sample]] = [[] for _ in range(max(r.prompt_index for r in rows) + 1)]
    for r, t, txt, rew, tr in zip(rows, tokens, texts, rewards, traces):
        samples[r.prompt_index].append(Sample(r.prompt_index, r.sample_index, r.prompt, txt, t, rew, tr))
    return GenerationOutput(samples, sampler, guidance, stats, search or SearchConfig(), observer_stats)
