"""Model families by name, and loading a diffusion LM from a hub id or a local folder.

The family is read from the checkpoint's ``config.json`` as plain JSON (``model_type`` "Dream"/"dream"
-> dream, "llada" -> llada, a ``*ForMaskedLM`` architecture -> hf_mlm): ``AutoConfig`` would need the
remote code of model types transformers does not know. No loader here passes or enables remote code.
"""

from __future__ import annotations

from pathlib import Path

from ..hub import read_config
from ..registry import FAMILIES, origin_of
from .base import DiffusionLM
from .diffusion_gemma import MODEL_TYPES as DIFFUSION_GEMMA_TYPES
from .diffusion_gemma import DiffusionGemma
from .dream import Dream
from .hf_mlm import HFMaskedLM
from .llada import LLaDA

#: ``model_type`` (lower case) -> family.
MODEL_TYPES: dict[str, str] = {}
ENCODER_MODEL_TYPES = ("bert", "roberta", "modernbert", "distilbert", "xlm-roberta", "electra", "deberta-v2")


def register_family(name: str, model_types: tuple[str, ...] = (), *, builtin: bool = False):
    """Class decorator: make an adapter loadable as ``family=name`` (and detected from ``model_types``). A built-in
    family or model type cannot be taken."""
    def wrap(cls: type[DiffusionLM]) -> type[DiffusionLM]:
        if not (isinstance(cls, type) and issubclass(cls, DiffusionLM)):
            raise ValueError(f"family {name!r}: register a DiffusionLM subclass, got {cls!r}.")
        taken = [t for t in model_types if MODEL_TYPES.get(t.lower(), name) != name]
        if taken:
            raise ValueError(f"family {name!r}: model_type {taken[0]!r} belongs to family "
                             f"{MODEL_TYPES[taken[0].lower()]!r}.")
        FAMILIES.register(name, cls, origin=origin_of(cls), builtin=builtin)
        for t in model_types:
            MODEL_TYPES[t.lower()] = name
        return cls
    return wrap


def get_family(name: str) -> type[DiffusionLM]:
    """The adapter class registered as ``name`` (a ``ValueError`` naming the available ones otherwise)."""
    return FAMILIES.get(name)


def list_families() -> list[str]:
    """Every registered family, built-ins first."""
    return FAMILIES.names()


for _name, _cls, _types in (("hf_mlm", HFMaskedLM, ()), ("dream", Dream, ("dream",)),
                            ("llada", LLaDA, ("llada", *LLaDA.MOE_MODEL_TYPES)),  # LLaDA-MoE: refused by the adapter
                            ("diffusion_gemma", DiffusionGemma, DIFFUSION_GEMMA_TYPES)):
    register_family(_name, _types, builtin=True)(_cls)


def detect_family(name_or_path: str | Path | dict, revision: str | None = None) -> str:
    """Family of a checkpoint (folder, hub id or an already-read config.json dict): its ``model_type``
    if registered, else ``hf_mlm`` for a ``*ForMaskedLM`` architecture transformers implements."""
    config = read_config(name_or_path, revision)
    model_type = str(config.get("model_type", ""))
    if model_type.lower() in MODEL_TYPES:
        return MODEL_TYPES[model_type.lower()]
    archs = config.get("architectures") or []
    if any(a.endswith("ForMaskedLM") for a in archs) or model_type in ENCODER_MODEL_TYPES:
        from transformers import CONFIG_MAPPING
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{name_or_path!r} is a masked LM of model_type {model_type!r}, which transformers does "
                             "not implement; its remote code is never run. Wrap the module yourself with "
                             "`HFMaskedLM.from_module`.")
        return "hf_mlm"
    where = name_or_path if not isinstance(name_or_path, dict) else "this config"
    raise ValueError(f"Cannot tell the model family of {where!r} (model_type={model_type!r}, "
                     f"architectures={archs}); pass `family=` one of {list_families()}.")


def load_diffusion_lm(name_or_path: str | Path, *, family: str | None = None, dtype=None, device=None,
                      device_map=None, **kwargs) -> DiffusionLM:
    """Load a masked diffusion LM through its family adapter (never with remote code).

    Args:
        name_or_path: a hub id (downloaded with ``huggingface_hub``) or a local folder with config.json,
            safetensors weights (sharded or not) and tokenizer files.
        family: ``dream``, ``llada``, ``hf_mlm`` or a registered name (default: detected from config.json).
        dtype: weights dtype, e.g. ``torch.bfloat16`` (default: as stored).
        device: one device for the whole model.
        device_map: accelerate placement for models larger than one device (``"auto"`` or a dict).
        **kwargs: passed to the family's ``from_pretrained`` (e.g. ``attn_implementation``).

    Raises:
        ValueError: naming the path and what is wrong: a local folder that does not exist, no or invalid
            config.json, missing or truncated weights, a tokenizer that cannot be the model's, a RoPE type
            the adapter does not implement, or weights that do not fit.
    """
    cls = get_family(family or detect_family(name_or_path, kwargs.get("revision")))
    return cls.from_pretrained(name_or_path, dtype=dtype, device=device, device_map=device_map, **kwargs)
