"""The weight dtypes by name, as the CLI flags, the eval YAML and the loaders spell them."""

from __future__ import annotations

import torch

#: Name -> dtype of the weights (``--dtype``, eval ``dtype:``); all three run on CPU and GPU.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_from_name(name: str | torch.dtype | None, what: str = "`dtype`") -> torch.dtype | None:
    """``name`` (``"bfloat16"``, ``"torch.bfloat16"`` or a torch dtype of :data:`DTYPES`) as a torch dtype; None
    stays None (the checkpoint's own); anything else is a ``ValueError`` naming ``what``."""
    if name is None:
        return None
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
        return DTYPES[name.removeprefix("torch.")]
    raise ValueError(f"{what} must be one of {list(DTYPES)}, got {name!r}.")


__all__ = ["DTYPES", "dtype_from_name"]
