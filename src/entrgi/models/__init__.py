"""Masked diffusion LM adapters: one thin module per family, loadable by name."""

from .base import DiffusionLM
from .hf_mlm import HFMaskedLM
from .registry import FAMILIES, detect_family, family_class, load_diffusion_lm, register_family

__all__ = ["FAMILIES", "DiffusionLM", "HFMaskedLM", "detect_family", "family_class", "load_diffusion_lm",
           "register_family"]
