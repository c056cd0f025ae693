"""Prompt sources: the paper's benchmarks (through ``datasets``), local files, and shipped sets.

A source is ``continuations`` / ``instructions`` (shipped), ``rm-bench`` / ``judgebench`` / ``reward-bench-2``,
``file:PATH[:FIELD]`` or ``hf:DATASET:SPLIT:FIELD``. Subsampling ``paper`` shuffles with the seed as the
paper's code does, ``fixed`` draws one subset, ``none`` keeps file order. Prompts are stripped and empty
ones dropped unless ``raw=True`` (``match_released``). See docs/evaluation.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

#: The paper's benchmarks: (HF dataset, split, prompt field).
BENCHMARKS = {
    "rm-bench": ("THU-KEG/RM-Bench", "train", "prompt"),
    "judgebench": ("ScalerLab/JudgeBench", "gpt", "question"),
    "reward-bench-2": ("allenai/reward-bench-2", "test", "prompt"),
}
SHIPPED = ("continuations", "instructions")
SUBSAMPLING = ("paper", "fixed", "none")


@dataclass(frozen=True)
class Prompt:
    """One prompt with a stable id (its index in the source and a hash of its text)."""

    id: str
    text: str


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[Prompt, ...]

    def subsample(self, n: int | None, mode: str, seed: int, subset_seed: int = 0) -> list[Prompt]:
        """The prompts a seed sees (see the module docstring for ``mode``)."""
        if mode not in SUBSAMPLING:
            raise ValueError(f"`subsample` must be one of {list(SUBSAMPLING)}, got {mode!r}.")
        items = list(self.prompts)
        if mode != "none":
            order = np.random.default_rng(seed if mode == "paper" else subset_seed).permutation(len(items))
            items = [items[i] for i in order]
        return items if n is None else items[:n]


def _prompt(i: int, text: str) -> Prompt:
    return Prompt(f"{i}-{hashlib.sha256(text.encode()).hexdigest()[:10]}", text)


def _clean(texts, raw: bool = False) -> tuple[Prompt, ...]:
    """Prompts of a source's texts: stripped, empty ones dropped; ``raw``: as they are, every one kept."""
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, list):  # chat-format fields: take the (last) user turn
            t = next((m.get("content", "") for m in reversed(t) if isinstance(m, dict) and m.get("role") == "user"), "")
        t = str(t) if raw else str(t).strip()
        if t or raw:
            out.append(_prompt(i, t))
    if not out:
        raise ValueError("the prompt source yielded no prompts.")
    return tuple(out)


def read_text_lines(text: str, raw: bool = False) -> list[str]:
    """The prompt lines of a .txt file (blank and # lines skipped), stripped unless ``raw``."""
    return [ln if raw else ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_file(path: str | Path, field: str | None = None, raw: bool = False) -> list[str]:
    """Prompts from a local file: .txt (one per line, # comments), .jsonl/.json/.csv/.parquet (``field``)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"prompt file {str(path)!r} does not exist.")
    if path.is_dir():
        raise ValueError(f"prompt file {str(path)!r} is a folder, not a file.")
    try:
        return _read_file(path, field, raw)
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"prompt file {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, column "
                         f"{e.colno}.") from None
    except csv.Error as e:
        raise ValueError(f"prompt file {str(path)!r} is not valid CSV: {e}.") from None


def _read_file(path: Path, field: str | None, raw: bool) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return read_text_lines(path.read_text(encoding="utf-8"), raw)
    if field is None:
        raise ValueError(f"a field name is needed for {path.name}: use file:{path}:FIELD.")
    if suffix == ".jsonl":
        rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq
        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"unsupported prompt file type {suffix!r}: use .txt, .jsonl, .json, .csv or .parquet.")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"prompt file {str(path)!r} must hold a list of objects (one per prompt, each with a "
                         f"{field!r} field).")
    if rows and field not in rows[0]:
        raise ValueError(f"field {field!r} not in {path.name}; fields: {sorted(rows[0])}.")
    missing = next((i for i, r in enumerate(rows) if field not in r), None)
    if missing is not None:
        raise ValueError(f"prompt file {str(path)!r}: row {missing + 1} has no field {field!r}.")
    return [r[field] for r in rows]


def load_hf(dataset: str, split: str, field: str) -> list[str]:
    """Prompts from a Hugging Face dataset (``pip install datasets``; needs the hub or its cache)."""
    try:
        from datasets import load_dataset
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("the `datasets` package is needed for hub benchmarks: pip install 'entrgi[data]'.") from e
    ds = load_dataset(dataset, split=split)
    if field not in ds.column_names:
        raise ValueError(f"field {field!r} not in {dataset}:{split}; columns: {ds.column_names}.")
    return list(ds[field])


def load_prompt_set(spec: str, raw: bool = False) -> PromptSet:
    """Resolve a source spec (see the module docstring) into a :class:`PromptSet`; ``raw``: texts as they
    are (the released code's handling), else stripped with empty ones dropped."""
    if spec in SHIPPED:
        text = resources.files("entrgi.data").joinpath(f"prompts/{spec}.txt").read_text()
        return PromptSet(spec, _clean(read_text_lines(text, raw), raw))
    if spec in BENCHMARKS:
        return PromptSet(spec, _clean(load_hf(*BENCHMARKS[spec]), raw))
    if spec.startswith("file:"):
        rest = spec[5:]
        path, _, field = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
        return PromptSet(Path(path).stem, _clean(load_file(path, field or None, raw), raw))
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if len(parts) != 3:
            raise ValueError(f"hf prompt source must be hf:DATASET:SPLIT:FIELD, got {spec!r}.")
        return PromptSet(parts[0].split("/")[-1], _clean(load_hf(*parts), raw))
    known = [*SHIPPED, *BENCHMARKS, "file:PATH[:FIELD]", "hf:DATASET:SPLIT:FIELD"]
    raise ValueError(f"unknown prompt source {spec!r}; use one of {known}.")
