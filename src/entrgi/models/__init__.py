"""Masked diffusion LM adapters: one thin module per family, loadable by name.

- :class:`~entrgi.models.dream.Dream`: Dream-v0 (Qwen2 layers, bidirectional, right-shifted logits).
- :class:`~entrgi.models.llada.LLaDA`: LLaDA-8B (LLaMA layers, bidirectional, OLMo-style checkpoint names).
- :class:`~entrgi.models.hf_mlm.HFMaskedLM`: any transformers ``*ForMaskedLM``.

:func:`load_diffusion_lm` detects the family from ``config.json`` and never runs remote code.
"""

from .base import DiffusionLM
from .bidirectional import BidirectionalDLLM, BidirectionalLM
from .diffusion_gemma import DiffusionGemma
from .dream import Dream, DreamModule
from .hf_mlm import HFMaskedLM
from .llada import LLaDA, LLaDAModule
from .registry import detect_family, get_family, list_families, load_diffusion_lm, register_family

__all__ = ["BidirectionalDLLM", "BidirectionalLM", "DiffusionGemma", "DiffusionLM", "Dream", "DreamModule",
           "HFMaskedLM", "LLaDA", "LLaDAModule", "detect_family", "get_family", "list_families", "load_diffusion_lm",
           "register_family"]
