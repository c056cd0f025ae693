"""Reproduction modes: which reference sampler a run reproduces token for token, and with which choices.

``SamplerConfig.match_released`` reproduces the authors' released EntRGi code (``atutej/entrgi``,
``main_expts/entrgi.py`` + ``utils.py``), guided or not (rule ``none`` is that code with M = 0).
``SamplerConfig.match_reference`` reproduces a model family's own unguided sampler: ``"dream"`` is Dream's
``diffusion_generate``, ``"llada"`` LLaDA's ``generate.py``. The two are separate fields because they
reproduce different code: the released code also decides the EOS set, the response text, the prompts and
the reward model's view (docs/differences.md), the reference samplers only which tokens are committed, and
their numerics differ (which distribution ranks the commits, how the count is rounded, how ties fall).

A mode resolves to a :class:`Reproduction`: one flag per numeric or vocabulary choice, all on. The sampler
reads ``DenoisingState.reproduction``; a flag turned off puts that one choice back to the project's default,
which is how the agreement script (``scripts/reproduce_reference.py``) measures each choice's effect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: ``SamplerConfig.match_reference`` values: the family's own sampler.
REFERENCE_SAMPLERS = ("dream", "llada")
#: Every reference a :class:`Reproduction` can name: the released code, then the family samplers.
REFERENCES = ("released", *REFERENCE_SAMPLERS)


@dataclass(frozen=True)
class Reproduction:
    """The reference a run reproduces and its choices, each True = the reference's way (docs/differences.md).

    Attributes:
        reference: ``released`` (atutej/entrgi), ``dream`` (``diffusion_generate``) or ``llada`` (``generate``).
        non_token_ids: the DLLM's ids that are not tokens (mask, padded rows, ``<|beginoftext|>``) keep their
            finite logits (the project: −∞).
        float32_top_p: the top-p boundary by a float32 sort / softmax / cumsum (the project: float64).
        draw: tokens drawn by the inverse CDF of the reference's float32 probabilities (Dream: normalised as
            ``torch.distributions.Categorical``; LLaDA: its float64 ``exp(logits) / (−log u)^τ``).
        float32_confidence: the commit confidence in float32 as the reference computes it (entropy with its
            +1e-10 ε; Dream: on the top-p-filtered distribution; released ``maskgit_plus`` / ``topk_margin``:
            on the guided filtered one) (the project: float64, unfiltered).
        topk_order: which candidates a step commits by ``torch.topk`` on the reference's layout, ties in its
            order (the project: a stable sort, earliest slot first).
        counts: the commit count from the float32 ``torch.linspace`` schedule (Dream: its batch mean).
        dense_guidance: the inner loop as the released code: per trajectory a dense float32 softmax and
            matmul, its ε-entropy weight, unfused Adam, the reward model run on the whole row (no prefix cache).
        rm_positions: the reward model's position ids are 0 … N − 1 (the project skips padding and masked-out
            slots).
        unk_fallback: DLLM ids without an RM token read the RM's unk embedding, else its eos embedding (the
            project: excluded from the RM's view).
        rescoring: each decoded response re-scored alone, the RM's chat template rendered around it (the
            project: around a placeholder, in left-padded batches).
    """

    reference: str
    non_token_ids: bool = True
    float32_top_p: bool = True
    draw: bool = True
    float32_confidence: bool = True
    topk_order: bool = True
    counts: bool = True
    dense_guidance: bool = True
    rm_positions: bool = True
    unk_fallback: bool = True
    rescoring: bool = True

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"`reference` must be one of {list(REFERENCES)}, got {self.reference!r}.")
        for name in self.choices():
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The names of the choice flags, in docs/differences.md's order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "reference")

    def without(self, *names: str) -> Reproduction:
        """This profile with the choices ``names`` put back to the project's default (flag False)."""
        unknown = [n for n in names if n not in self.choices()]
        if unknown:
            raise ValueError(f"`names` must be among {list(self.choices())}, got {unknown}.")
        return dataclasses.replace(self, **{n: False for n in names})


def reproduction_for(sampler: Any) -> Reproduction | None:
    """The :class:`Reproduction` a :class:`~entrgi.config.SamplerConfig` asks for (every choice on), or None."""
    if getattr(sampler, "match_released", False):
        return Reproduction("released")
    reference = getattr(sampler, "match_reference", None)
    return Reproduction(reference) if reference else None


#: What each reference sampler implements: SamplerConfig fields that must have one of these values under it.
_SAMPLER_SETTINGS: dict[str, dict[str, tuple]] = {
    "released": dict(sampling=("inverse_cdf",), remasking=("entropy", "maskgit_plus", "topk_margin"),
                     schedule=("linear",), block_length=(None,)),
    "dream": dict(sampling=("inverse_cdf",), remasking=("entropy", "maskgit_plus", "topk_margin"),
                  schedule=("linear",), block_length=(None,), deprioritize_eos=(False,)),
    "llada": dict(sampling=("gumbel",), remasking=("low_confidence",), schedule=("uniform",), top_p=(1.0,),
                  top_k=(None,), deprioritize_eos=(False,)),
}
#: Project options no reference has: they must keep their defaults under any reproduction mode.
_PROJECT_OPTIONS = dict(remasking_temperature=(0.0,), confidence_from=("prior",), parallel_threshold=(None,),
                        kv_cache=("none",), min_new_tokens=(0,))
_WHAT = {"released": "the released code (atutej/entrgi)", "dream": "Dream's diffusion_generate",
         "llada": "LLaDA's generate"}


def check_sampler(sampler: Any) -> None:
    """``ValueError`` (one line, naming the field) for a sampler setting the requested reference does not have."""
    if sampler.match_released and sampler.match_reference is not None:
        raise ValueError(f"`match_reference` must be None with `match_released` (the released code is one "
                         f"reference, {sampler.match_reference!r} another), got {sampler.match_reference!r}.")
    rep = reproduction_for(sampler)
    if rep is None:
        return
    switch = "`match_released`" if rep.reference == "released" else f"`match_reference` = {rep.reference!r}"
    for name, allowed in {**_SAMPLER_SETTINGS[rep.reference], **_PROJECT_OPTIONS}.items():
        value = getattr(sampler, name)
        if value not in allowed:
            shown = allowed[0] if len(allowed) == 1 else list(allowed)
            raise ValueError(f"`{name}` must be {shown!r} with {switch}: {_WHAT[rep.reference]} has no other "
                             f"(got {value!r}; docs/differences.md).")


def check_guidance(sampler: Any, guidance: Any) -> None:
    """``ValueError`` for guidance settings a reproduction mode cannot follow (the reference samplers are
    unguided; the released code's inner loop has no sparse soft embedding)."""
    rep = reproduction_for(sampler)
    if rep is None:
        return
    if rep.reference != "released" and guidance.guided:
        raise ValueError(f"`rule` must be 'none' with `match_reference` = {rep.reference!r}: "
                         f"{_WHAT[rep.reference]} is unguided (got {guidance.rule!r}; for guided runs use "
                         "`match_released`).")
    if rep.reference == "released" and guidance.soft_top_k is not None:
        raise ValueError(f"`soft_top_k` must be None with `match_released`: the released code forms the soft "
                         f"embedding over every id (got {guidance.soft_top_k!r}).")


__all__ = ["REFERENCES", "REFERENCE_SAMPLERS", "Reproduction", "check_guidance", "check_sampler", "reproduction_for"]
