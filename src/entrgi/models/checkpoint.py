"""Checkpoints on disk: hub id -> local folder, ``config.json``, tokenizers, and strict safetensors loading.

Nothing here runs code shipped with a checkpoint. ``config.json`` is read as JSON (``AutoConfig`` would
need the remote code of unknown model types), tokenizers that name a custom class are loaded with the
native class they are equivalent to, and weights are copied tensor by tensor into a module built here,
after every name and shape has been checked (as nanoGPT's ``from_pretrained`` does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

#: Files fetched for a hub id: configs, weights, tokenizer files (no ``*.py``, no ``*.bin`` duplicates).
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _is_local(name_or_path: str | Path) -> bool:
    p = Path(name_or_path).expanduser()
    return p.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1


def resolve_checkpoint(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; a hub id (``org/name``) downloaded with ``huggingface_hub.snapshot_download``."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if _is_local(name_or_path):
        raise FileNotFoundError(f"`{name_or_path}` is not a checkpoint folder (no such directory).")
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=SNAPSHOT_PATTERNS))


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_config(name_or_path: str | Path | dict, revision: str | None = None) -> dict:
    """The checkpoint's ``config.json`` as a dict (a hub id fetches only that file)."""
    if isinstance(name_or_path, dict):
        return name_or_path
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        config = read_json(p / "config.json")
        if config is None:
            raise FileNotFoundError(f"`{p}` has no config.json.")
        return config
    if _is_local(name_or_path):
        raise FileNotFoundError(f"`{name_or_path}` is not a checkpoint folder (no such directory).")
    from huggingface_hub import hf_hub_download
    return json.loads(Path(hf_hub_download(str(name_or_path), "config.json", revision=revision)).read_text())


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


def load_tokenizer(folder: Path, native_cls=None):
    """The folder's tokenizer, loaded with a transformers class named here (never ``AutoTokenizer``).

    ``AutoTokenizer`` reads config.json too, and a config with an ``auto_map`` (Dream's, LLaDA's) makes
    it ask for remote code. The class is the one tokenizer_config.json names when transformers has it;
    a custom class (or a tokenizer ``auto_map``) is replaced by ``native_cls`` (Dream's ``DreamTokenizer``
    is Qwen2's byte-level BPE, read by ``Qwen2Tokenizer`` from its vocab/merges), else by the generic
    fast tokenizer when tokenizer.json exists.
    """
    import transformers
    from transformers import PreTrainedTokenizerFast

    tc = read_json(folder / "tokenizer_config.json") or {}
    name = tc.get("tokenizer_class") or ""
    cls = None if "auto_map" in tc else (getattr(transformers, name, None)
                                         or getattr(transformers, name.removesuffix("Fast"), None))
    if cls is None:
        cls = native_cls
    if cls is None:
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"the tokenizer in `{folder}` is custom code ({name!r}) and there is no tokenizer.json "
                             "to load natively; pass a tokenizer explicitly.")
        cls = PreTrainedTokenizerFast
    return cls.from_pretrained(folder)


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files: the shards named by ``model.safetensors.index.json``, else ``model.safetensors``."""
    index = read_json(folder / "model.safetensors.index.json")
    if index is not None:
        return [folder / f for f in sorted(set(index["weight_map"].values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(f"`{folder}` has no model.safetensors(.index.json); found {present}. Only safetensors "
                            "checkpoints are read (convert *.bin files with `safetensors.torch.save_file`).")


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
