"""Model families' checkpoints: RoPE settings, special ids, strict safetensors loading into a module built here
(the generic hub, config and tokenizer helpers are :mod:`entrgi.hub`, re-exported here).

Nothing here runs code shipped with a checkpoint: ``config.json`` is read as JSON, tokenizers are loaded
with a native class, and weights are copied into a module built here after every name and shape is checked.
A broken checkpoint (missing files, truncated weights, a tokenizer without its vocabulary) is a
``ValueError`` naming the path (docs/models.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..hub import (  # the generic checkpoint helpers, re-exported for the families
    safetensors_files,
)

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")




def rope_parameters(raw: dict, what: str, default_theta: float, supported: Iterable[str] = ("default",)) -> dict:
    """``{"rope_type", "rope_theta", ...}`` from a config.json in either layout: transformers 4's top-level
    ``rope_theta`` + ``rope_scaling``, or transformers 5's ``rope_parameters``. A rope type not in
    ``supported`` (``what``'s adapter does not implement it) or conflicting values raise ``ValueError``."""
    supported = tuple(supported)
    merged: dict = {}
    sources = (("rope_parameters", raw.get("rope_parameters")), ("rope_scaling", raw.get("rope_scaling")),
                ("rope_theta", None if raw.get("rope_theta") is None else {"rope_theta": raw["rope_theta"]}))
    for key, part in sources:
        if part is None:
            continue
        if not isinstance(part, dict) or any(isinstance(v, dict) for v in part.values()):
            raise ValueError(f"{what} `{key}` must be a flat object (one RoPE for every layer), got {part!r}.")
        part = dict(part)
        if "type" in part:  # transformers 4's old name
            part.setdefault("rope_type", part.pop("type"))
        for k, v in part.items():
            if k in merged and merged[k] != v:
                raise ValueError(f"{what} RoPE settings conflict: `{k}` is {merged[k]!r} in one place and {v!r} in "
                                 f"`{key}`; keep one value.")
            merged[k] = v
    rope_type = merged.pop("rope_type", None) or "default"
    if rope_type not in supported:
        raise ValueError(f"{what} rope type {rope_type!r} is not implemented by the {what} adapter (supported: "
                         f"{', '.join(supported)}); its positions would be wrong.")
    out = {"rope_type": rope_type, "rope_theta": _positive(merged.pop("rope_theta", default_theta), "rope_theta",
                                                           what)}
    if rope_type == "linear":
        if "factor" not in merged:
            raise ValueError(f"{what} rope type 'linear' needs a `factor`.")
        out["factor"] = _positive(merged.pop("factor"), "factor", what)
        if out["factor"] < 1.0:
            raise ValueError(f"{what} linear RoPE `factor` must be >= 1, got {out['factor']}.")
    if merged:
        raise ValueError(f"{what} RoPE keys {sorted(merged)} are not supported for rope type {rope_type!r}.")
    return out


def _positive(value, name: str, what: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{what} `{name}` must be a finite positive number, got {value!r}.")
    return float(value)


def as_ids(value) -> list[int]:
    """A config's token id field (an int, a list of ints or None) as a list."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def first_id(*values) -> int:
    """The first value that is not None, as an int (a list gives its first element)."""
    for v in values:
        ids = as_ids(v)
        if ids:
            return ids[0]
    raise ValueError("no token id given.")


def check_token_id(tokenizer, token: str, expected: int, what: str) -> None:
    """Raise if ``tokenizer`` has ``token`` at another id than ``expected`` (config.json and tokenizer disagree)."""
    got = tokenizer.get_vocab().get(token)
    if got is not None and got != expected:
        raise ValueError(f"the tokenizer has {token} at id {got}, but the {what} config says {expected}: the "
                         "tokenizer files do not belong to this checkpoint.")


def require_keys(config: dict, keys: Iterable[str], what: str) -> None:
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{what} config.json lacks the keys {missing}.")




def build_empty(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with parameters on the meta device (no memory, no init); buffers stay real."""
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):
        return factory()


def _resolve_device_map(module: nn.Module, device_map, dtype, no_split: list[str]) -> dict[str, str | int]:
    if isinstance(device_map, (str, torch.device)) and str(device_map) not in DEVICE_MAP_STRATEGIES:
        return {"": str(device_map)}
    if isinstance(device_map, str):
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory
        max_memory = None
        if device_map != "sequential":
            max_memory = get_balanced_memory(module, dtype=dtype, no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(module, max_memory=max_memory, no_split_module_classes=no_split,
                                           dtype=dtype)
    if not isinstance(device_map, dict):
        raise ValueError(f"`device_map` must be a dict, a device or one of {list(DEVICE_MAP_STRATEGIES)}, "
                         f"got {device_map!r}.")
    if "disk" in map(str, device_map.values()):
        raise ValueError(f"`device_map` offloads to disk ({device_map}); not supported: give more GPU/CPU memory.")
    return dict(device_map)


def _placement(name: str, device_map: dict) -> str | int:
    best, dev = -1, None
    for prefix, d in device_map.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, dev = len(prefix), d
    if dev is None:
        raise ValueError(f"`device_map` places no module holding {name!r}.")
    return dev


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    sub = module.get_submodule(owner)
    if attr in sub._parameters:
        sub._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        sub._buffers[attr] = value


def load_safetensors(module: nn.Module, folder: Path, rename: Callable[[str], str | None] = lambda k: k, *,
                     tied: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None, device_map=None,
                     no_split_module_classes: Iterable[str] = ()) -> nn.Module:
    """Copy a safetensors checkpoint into ``module`` (built by :func:`build_empty`), strictly.

    Args:
        module: the target; its ``state_dict`` names and shapes are the contract.
        folder: holds ``model.safetensors`` or the shards of ``model.safetensors.index.json``.
        rename: checkpoint name -> module name (None = not a weight of this module: an error).
        tied: module name -> module name it shares a tensor with (e.g. a tied output layer); the
            first is not read from the checkpoint.
        dtype: cast floating-point tensors to this (None = as stored).
        device: where everything goes (ignored when ``device_map`` is given).
        device_map: accelerate placement: a dict ``{module prefix: device}``, a device, or
            ``auto``/``balanced``/``balanced_low_0``/``sequential``; the module is then dispatched
            (hooks move activations between devices).
        no_split_module_classes: class names kept whole on one device (the decoder layer).

    Raises:
        ValueError: listing every unexpected / missing checkpoint key and every shape mismatch,
            before any tensor is read.
    """
    from safetensors import safe_open

    tied = dict(tied or {})
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in tied}
    files = safetensors_files(folder)
    plan: list[tuple[Path, str, str]] = []
    unexpected, mismatched, seen = [], [], set()
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                name = rename(key)
                if name is None or name not in expected:
                    unexpected.append(key)
                    continue
                shape = tuple(f.get_slice(key).get_shape())
                if shape != expected[name]:
                    mismatched.append(f"{key} -> {name}: checkpoint {shape}, model {expected[name]}")
                    continue
                seen.add(name)
                plan.append((file, key, name))
    missing = sorted(set(expected) - seen)
    if unexpected or missing or mismatched:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected in the checkpoint ({len(unexpected)}): {sorted(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
        raise ValueError(f"checkpoint `{folder}` does not fit {type(module).__name__}: " + "; ".join(parts))

    placement = None
    if device_map is not None:
        placement = _resolve_device_map(module, device_map, dtype, list(no_split_module_classes))
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for file, key, name in plan:
        by_file.setdefault(file, []).append((key, name))
    for file, items in by_file.items():
        with safe_open(file, framework="pt", device="cpu") as f:
            for key, name in items:
                t = f.get_tensor(key)
                target = _placement(name, placement) if placement is not None else (device or "cpu")
                t = t.to(device=target, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)
                _set_tensor(module, name, t)
    for target, source in tied.items():
        _set_tensor(module, target, module.get_parameter(source))
    if placement is not None:
        from accelerate import dispatch_model
        if len(set(map(str, placement.values()))) == 1:
            module.to(next(iter(placement.values())))
        else:
            module = dispatch_model(module, device_map=placement)
    elif device is not None:
        module.to(device)
    return module.eval().requires_grad_(False)
