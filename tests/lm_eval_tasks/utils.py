"""The local task's helpers: its documents (the JSONL next to this file, so the task runs from any directory,
offline) and its metric, entrgi's ``reference:contains`` match. Importing entrgi's lm-eval module here is what
registers the ``entrgi`` model when ``lm_eval`` loads this task by path (lm-eval >= 0.4.13 also takes the module
path in the YAML itself: ``!function entrgi.integrations.lm_eval.reference_contains``)."""

import json
from pathlib import Path

from entrgi.integrations.lm_eval import reference_contains  # noqa: F401  (the task's metric)

DATA = Path(__file__).resolve().parent / "entrgi_local.jsonl"


def load_docs(**_):
    """lm-eval's ``custom_dataset``: ``{"test": Dataset}`` of :data:`DATA` (lm-eval passes model_args / metadata as
    keyword arguments; none is needed)."""
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})
