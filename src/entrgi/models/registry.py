"""Model families by name, and loading a diffusion LM from a hub id or a local folder."""

from __future__ import annotations

import difflib

from transformers import AutoConfig

from .base import DiffusionLM
from .hf_mlm import HFMaskedLM

FAMILIES: dict[str, type[DiffusionLM]] = {"hf_mlm": HFMaskedLM}


def register_family(name: str):
    """Class decorator: make an adapter loadable as ``family=name``."""
    def wrap(cls: type[DiffusionLM]) -> type[DiffusionLM]:
        FAMILIES[name] = cls
        return cls
    return wrap


def family_class(name: str) -> type[DiffusionLM]:
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, FAMILIES, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model family {name!r}.{hint} Available: {sorted(FAMILIES)}.")
    return FAMILIES[name]


def detect_family(name_or_path: str) -> str:
    """Family from the checkpoint's config: its ``model_type`` if registered, else ``hf_mlm`` for
    ``*ForMaskedLM`` architectures."""
    config = AutoConfig.from_pretrained(name_or_path) if not isinstance(name_or_path, dict) else name_or_path
    model_type = getattr(config, "model_type", "")
    if model_type in FAMILIES:
        return model_type
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForMaskedLM") for a in archs) or model_type in ("bert", "roberta", "modernbert", "distilbert"):
        return "hf_mlm"
    raise ValueError(f"Cannot tell the model family of {name_or_path!r} (model_type={model_type!r}, "
                     f"architectures={archs}); pass `family=` one of {sorted(FAMILIES)}.")


def load_diffusion_lm(name_or_path: str, *, family: str | None = None, dtype=None, device=None,
                      **kwargs) -> DiffusionLM:
    """Load a masked diffusion LM through its family adapter (never with remote code)."""
    cls = family_class(family or detect_family(name_or_path))
    return cls.from_pretrained(name_or_path, dtype=dtype, device=device, **kwargs)
