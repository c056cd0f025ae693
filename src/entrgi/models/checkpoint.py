"""Checkpoints on disk: hub id -> local folder, ``config.json``, RoPE settings, tokenizers, strict safetensors.

Nothing here runs code shipped with a checkpoint: ``config.json`` is read as JSON, tokenizers are loaded
with a native class, and weights are copied into a module built here after every name and shape is checked.
A broken checkpoint (missing files, truncated weights, a tokenizer without its vocabulary) is a
``ValueError`` naming the path (docs/models.md).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..typecheck import type_problem

#: Files fetched for a hub id: configs, weights, tokenizer files (no ``*.py``, no ``*.bin`` duplicates).
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
#: What a hub id looks like (``name`` or ``org/name``); anything else is a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_local(name_or_path: str | Path) -> bool:
    """True for an existing path or a string that can only be a path (``.``/``/``/``~`` start, a path
    separator a hub id cannot have, or not of the hub-id form ``org/name``)."""
    s = str(name_or_path)
    if isinstance(name_or_path, Path) or Path(s).expanduser().exists() or s.startswith((".", "/", "~")):
        return True
    seps = {os.sep, os.altsep or os.sep} - {"/"}
    return any(c in s for c in seps) or s.count("/") > 1 or not _HUB_ID.fullmatch(s)


def local_folder(name_or_path: str | Path) -> Path | None:
    """The local checkpoint folder, or None for a hub id; raises ``ValueError`` for a local path that is
    not an existing folder (never left to the hub client, whose "Repo id must be in the form" misleads)."""
    if not looks_local(name_or_path):
        return None
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"`{name_or_path}` is a file, not a checkpoint folder: give the folder that holds "
                         "config.json, the weights and the tokenizer files.")
    raise ValueError(f"the local folder `{name_or_path}` does not exist (resolved to `{p.resolve()}`): check the "
                     "path, or give a hub id of the form `org/name`.")


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return f"found {names}" if names else "the folder is empty"


def resolve_checkpoint(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; a hub id (``org/name``) downloaded with ``huggingface_hub.snapshot_download``."""
    folder = local_folder(name_or_path)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=SNAPSHOT_PATTERNS))


def read_json(path: Path) -> dict | None:
    """A JSON object file (None when absent); ``ValueError`` naming the file when it is not valid JSON."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"`{path}` is not valid JSON ({e}); the file is corrupt or truncated: re-download it.") \
            from None
    if not isinstance(data, dict):
        raise ValueError(f"`{path}` holds a JSON {type(data).__name__}, not an object: it is not a config file.")
    return data


_IDS = int | list[int] | None
#: The types of the config.json keys the adapters read (``None`` is always allowed: the key's default applies).
CONFIG_TYPES: dict[str, Any] = {
    "architectures": list[str], "model_type": str, "torch_dtype": str, "dtype": str,
    "vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
    "num_key_value_heads": int, "intermediate_size": int, "max_position_embeddings": int, "head_dim": int,
    "d_model": int, "n_layers": int, "n_heads": int, "n_kv_heads": int, "mlp_hidden_size": int,
    "max_sequence_length": int, "embedding_size": int, "num_labels": int,
    "mask_token_id": _IDS, "pad_token_id": _IDS, "eos_token_id": _IDS, "bos_token_id": _IDS,
    "tie_word_embeddings": bool, "weight_tying": bool, "rope_theta": float, "rms_norm_eps": float,
    "layer_norm_eps": float, "text_config": dict, "rope_scaling": dict, "rope_parameters": dict,
}


def check_config(config: dict, path: str | Path) -> dict:
    """``config`` (a config.json read from ``path``) when every key of :data:`CONFIG_TYPES` it holds has its type
    (``text_config`` too); else a ``ValueError`` naming the file and the key, never a crash further on."""
    for section, data in (("", config), ("text_config.", config.get("text_config"))):
        if not isinstance(data, dict):
            continue
        for key, tp in CONFIG_TYPES.items():
            if key in data and data[key] is not None:
                problem = type_problem(data[key], tp, section + key)
                if problem:
                    raise ValueError(f"`{path}`: {problem} The config.json is corrupt: restore or re-download it.")
    return config


def read_config(name_or_path: str | Path | dict, revision: str | None = None) -> dict:
    """The checkpoint's ``config.json`` as a dict (a hub id fetches only that file), its keys' types checked
    (:func:`check_config`)."""
    if isinstance(name_or_path, dict):
        return name_or_path
    folder = local_folder(name_or_path)
    if folder is not None:
        config = read_json(folder / "config.json")
        if config is None:
            raise ValueError(f"`{folder}` is not a checkpoint folder: it has no config.json ({_listing(folder)}).")
        return check_config(config, folder / "config.json")
    from huggingface_hub import hf_hub_download
    try:
        path = hf_hub_download(str(name_or_path), "config.json", revision=revision)
    except OSError as e:
        raise ValueError(f"cannot fetch config.json of the hub id `{name_or_path}` ({type(e).__name__}: "
                         f"{_first_line(e)}); for a local folder give its path (e.g. ./{name_or_path}).") from None
    config = read_json(Path(path))
    return config if config is None else check_config(config, path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


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


#: Files that hold a tokenizer's vocabulary (one of them must be present).
VOCAB_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model")
#: A short English text every real tokenizer encodes to some tokens.
PROBE_TEXT = "Hello, how are you?"


def _tokenizer_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name in VOCAB_FILES or p.suffix == ".tiktoken"
                  or p.name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"))


def _no_tokenizer(where, problem: str) -> ValueError:
    folder = Path(where)
    found = _tokenizer_files(folder) if folder.is_dir() else None
    files = "" if found is None else f"; tokenizer files found: {found or 'none'}"
    if found is not None and not any(f in VOCAB_FILES or f.endswith(".tiktoken") for f in found):
        files += " (missing: a vocabulary file, e.g. tokenizer.json or vocab.json + merges.txt)"
    return ValueError(f"`{where}` has no usable tokenizer: {problem}{files}. Copy the checkpoint's tokenizer files "
                      "into the folder.")


def check_tokenizer(tokenizer, where, embedding_rows: int | None = None, min_share: float = 0.5) -> None:
    """Refuse a tokenizer that cannot be the model's: far fewer tokens than embedding rows (< ``min_share``),
    or :data:`PROBE_TEXT` encoding to nothing (e.g. a BPE tokenizer built without its vocabulary files)."""
    n = len(tokenizer)
    if embedding_rows is not None and n < min_share * embedding_rows:
        raise _no_tokenizer(where, f"it has {n:,} tokens for the model's {embedding_rows:,} embedding rows")
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if len(ids) == 0:
        raise _no_tokenizer(where, f"it encodes {PROBE_TEXT!r} to no tokens")


def load_tokenizer(folder: Path, native_cls=None, embedding_rows: int | None = None):
    """The folder's tokenizer, loaded with a transformers class named here (never ``AutoTokenizer``), and
    checked with :func:`check_tokenizer` against the model's ``embedding_rows``.

    ``AutoTokenizer`` reads config.json too, and a config with an ``auto_map`` (Dream's, LLaDA's) makes
    it ask for remote code. The class is the one tokenizer_config.json names when transformers has it;
    a custom class (or a tokenizer ``auto_map``) is replaced by ``native_cls`` (Dream's ``DreamTokenizer``
    is Qwen2's byte-level BPE, read by ``Qwen2Tokenizer`` from its vocab/merges), else by the generic
    fast tokenizer when tokenizer.json exists.
    """
    import transformers
    from transformers import PreTrainedTokenizerFast

    found = _tokenizer_files(folder)
    if not any(f in VOCAB_FILES or f.endswith(".tiktoken") for f in found):
        raise _no_tokenizer(folder, "no tokenizer vocabulary file")
    tc = read_json(folder / "tokenizer_config.json") or {}
    name = tc.get("tokenizer_class") or ""
    tokenizer_cls = None if "auto_map" in tc else (getattr(transformers, name, None)
                                                   or getattr(transformers, name.removesuffix("Fast"), None))
    if tokenizer_cls is None:
        tokenizer_cls = native_cls
    if tokenizer_cls is None:
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"the tokenizer in `{folder}` is custom code ({name!r}) and there is no tokenizer.json "
                             "to load natively; pass a tokenizer explicitly.")
        tokenizer_cls = PreTrainedTokenizerFast
    try:
        tokenizer = tokenizer_cls.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise _no_tokenizer(folder, f"{tokenizer_cls.__name__} failed to load it ({type(e).__name__}: "
                                    f"{_first_line(e)})") from None
    check_tokenizer(tokenizer, folder, embedding_rows)
    return tokenizer


def load_auto_tokenizer(name_or_path: str | Path, embedding_rows: int | None = None, **kwargs):
    """``AutoTokenizer`` (never with remote code) for a transformers-native checkpoint, checked with
    :func:`check_tokenizer`; a local folder that fails to load is a ``ValueError`` naming it."""
    from transformers import AutoTokenizer

    folder = local_folder(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        if folder is None:
            raise ValueError(f"cannot load the tokenizer of `{name_or_path}` ({type(e).__name__}: "
                             f"{_first_line(e)}).") from None
        raise _no_tokenizer(folder, f"AutoTokenizer failed to load it ({type(e).__name__}: {_first_line(e)})") \
            from None
    check_tokenizer(tokenizer, name_or_path, embedding_rows)
    return tokenizer


def check_hf_folder(folder: Path) -> dict:
    """A local transformers checkpoint: its config.json (returned) and complete weights (safetensors, whose
    headers are checked, or ``pytorch_model.bin``); ``ValueError`` naming what is missing or corrupt."""
    config = read_config(folder)
    if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        if any((folder / f).is_file() for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
            return config
    safetensors_files(folder)
    return config


def config_vocab_size(config: dict) -> int | None:
    """The embedding rows a config.json declares (``vocab_size``, or its ``text_config``'s)."""
    for c in (config, config.get("text_config") or {}):
        v = c.get("vocab_size") if isinstance(c, dict) else None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_safetensors(files: Iterable[Path]) -> None:
    """Every file exists and has a complete safetensors header covering the whole file (a truncated
    download fails here); ``ValueError`` naming the file."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        if not file.is_file():
            raise ValueError(f"weight file `{file}` is missing (model.safetensors.index.json lists it): "
                             "re-download the checkpoint.")
        try:
            with safe_open(file, framework="pt", device="cpu"):
                pass
        except SafetensorError as e:
            raise ValueError(f"weight file `{file}` is truncated or corrupt ({file.stat().st_size:,} bytes; "
                             f"safetensors: {e}): re-download it.") from None


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files: the shards named by ``model.safetensors.index.json``, else ``model.safetensors``;
    each checked by :func:`check_safetensors`."""
    index = read_json(folder / "model.safetensors.index.json")
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"`{folder / 'model.safetensors.index.json'}` has no `weight_map`: it is corrupt.")
        bad = next(((k, f) for k, f in weight_map.items() if not isinstance(f, str) or not f.strip()
                    or Path(f).is_absolute() or ".." in Path(f).parts), None)
        if bad is not None:
            raise ValueError(f"`{folder / 'model.safetensors.index.json'}`: the shard of {bad[0]!r} is {bad[1]!r}, not "
                             "the name of a weight file in the folder: the index is corrupt; restore or re-download "
                             "it.")
        files = [folder / f for f in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        raise ValueError(f"`{folder}` has no weights: no model.safetensors(.index.json) ({_listing(folder)}). Only "
                         "safetensors checkpoints are read (convert *.bin files with `safetensors.torch.save_file`).")
    check_safetensors(files)
    return files


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
