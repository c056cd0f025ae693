"""Hugging Face checkpoints, whatever they hold (a DLLM, a reward model, a causal LM): hub id -> local folder,
``config.json`` read as JSON, tokenizers loaded with a native class, safetensors headers checked.

Nothing here runs code shipped with a checkpoint. A broken checkpoint (missing files, truncated weights, a
tokenizer without its vocabulary) is a ``ValueError`` naming the path (docs/models.md). Model families build on
it in :mod:`entrgi.models.checkpoint`; reward models in :mod:`entrgi.reward.hf`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .typecheck import type_problem

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

#: Files that hold a tokenizer's vocabulary (one of them must be present).
VOCAB_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model")

#: Files fetched for a hub id: configs, weights, tokenizer files (no ``*.py``, no ``*.bin`` duplicates).
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


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
