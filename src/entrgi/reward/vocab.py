"""Bridge from the DLLM's token ids to the reward model's embedding rows, by token string.

Dream and Skywork-Reward-V2-Qwen3 share Qwen's byte-level BPE, so the bridge is the identity on
almost every id; the few ids that differ (Dream's ``<|beginoftext|>``/``<|mask|>`` vs Qwen3's tool
tokens) and Dream's padded logit rows have no RM row. Unmapped ids are *excluded* from the reward
model's view (their probability is removed before forming q), never sent to ``unk``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

#: Below this share of the DLLM's response-capable ids mapped, :meth:`VocabBridge.from_tokenizers` warns.
MIN_COVERAGE = 0.9


class LowCoverageWarning(UserWarning):
    """The reward model sees only part of the tokens the DLLM can emit."""


@dataclass
class CoverageReport:
    """How much of the DLLM's vocabulary the reward model can see."""

    logit_width: int
    dllm_vocab: int
    rm_vocab: int
    mapped: int
    same_id: int
    excluded_ids: list[int] = field(default_factory=list)
    unmapped_ids: list[int] = field(default_factory=list)
    remapped_ids: list[int] = field(default_factory=list)
    differing_ids: list[int] = field(default_factory=list)

    @property
    def emittable(self) -> int:
        """How many ids the DLLM may emit as response tokens (its tokenizer minus excluded ids)."""
        return self.dllm_vocab - sum(1 for i in self.excluded_ids if i < self.dllm_vocab)

    @property
    def coverage(self) -> float:
        """Mapped share of the ids the DLLM may emit (its tokenizer minus excluded ids)."""
        return self.mapped / max(self.emittable, 1)

    def summary(self) -> str:
        show = lambda ids: ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "")  # noqa: E731
        return (f"vocab bridge: {self.mapped:,}/{self.dllm_vocab:,} DLLM tokens mapped ({self.coverage:.2%} of "
                f"emittable), {self.same_id:,} at the same id; {len(self.unmapped_ids)} unmapped "
                f"[{show(self.unmapped_ids)}]; {len(self.excluded_ids)} excluded (mask, padded rows) ; "
                f"ids whose token differs between the tokenizers: [{show(self.differing_ids)}]")


class VocabBridge:
    """``dllm_to_rm[i]`` = RM id of DLLM id ``i`` (same token string), or −1 when unmapped.

    Args:
        dllm_to_rm: LongTensor (V,) over the DLLM's logit width.
        report: the :class:`CoverageReport`.
    """

    def __init__(self, dllm_to_rm: torch.Tensor, report: CoverageReport):
        self.dllm_to_rm = dllm_to_rm.long()
        self.report = report
        self._tables: dict = {}

    @property
    def mapped(self) -> torch.Tensor:
        """Boolean (V,): True where the RM has a row for the DLLM id."""
        return self.dllm_to_rm >= 0

    @classmethod
    def identity(cls, width: int, rm_rows: int | None = None, exclude: Iterable[int] = ()) -> VocabBridge:
        """Ids map to themselves (shared vocabulary), except ``exclude`` and ids ≥ ``rm_rows``."""
        rm_rows = width if rm_rows is None else rm_rows
        m = torch.arange(width)
        m[m >= rm_rows] = -1
        excl = sorted({int(i) for i in exclude if 0 <= int(i) < width})
        m[excl] = -1
        unmapped = [i for i in range(min(width, rm_rows)) if m[i] < 0 and i not in set(excl)]
        report = CoverageReport(width, width, rm_rows, int((m >= 0).sum()), int((m >= 0).sum()),
                                excluded_ids=excl, unmapped_ids=unmapped)
        return cls(m, report)

    @classmethod
    def from_tokenizers(cls, dllm_tokenizer, rm_tokenizer, logit_width: int | None = None,
                        exclude: Iterable[int] = ()) -> VocabBridge:
        """Map each DLLM id to the RM id with the same token string.

        ``exclude`` lists ids that can never be response tokens (the mask id); ids from
        ``len(dllm_tokenizer)`` up to ``logit_width`` (padded output rows) are excluded too.
        """
        n_dllm = len(dllm_tokenizer)
        width = n_dllm if logit_width is None else int(logit_width)
        excl = {int(i) for i in exclude} | set(range(n_dllm, width))
        rm_vocab = rm_tokenizer.get_vocab()
        rm_tokens = rm_tokenizer.convert_ids_to_tokens(list(range(len(rm_tokenizer))))
        dllm_tokens = dllm_tokenizer.convert_ids_to_tokens(list(range(min(n_dllm, width))))
        m = torch.full((width,), -1, dtype=torch.long)
        unmapped, remapped, differing = [], [], []
        for i, tok in enumerate(dllm_tokens):
            if i < len(rm_tokens) and rm_tokens[i] != tok:
                differing.append(i)
            if i in excl:
                continue
            j = rm_vocab.get(tok)
            if j is None:
                unmapped.append(i)
                continue
            m[i] = j
            if j != i:
                remapped.append(i)
        differing.extend(range(len(rm_tokens), n_dllm))
        mapped = int((m >= 0).sum())
        same = int((m == torch.arange(width)).sum())
        report = CoverageReport(width, n_dllm, len(rm_tokenizer), mapped, same,
                                excluded_ids=sorted(i for i in excl if i < width), unmapped_ids=unmapped,
                                remapped_ids=remapped, differing_ids=differing)
        if mapped == 0:
            raise ValueError("the DLLM and reward tokenizers share no token string: no vocabulary bridge exists.")
        if report.coverage < MIN_COVERAGE:
            warnings.warn(f"the vocabulary bridge maps only {mapped:,} of the DLLM's {report.emittable:,} "
                          f"response-capable token ids ({report.coverage:.1%}) to reward-model tokens, so the "
                          f"reward model never sees the other {report.emittable - mapped:,} and guidance is "
                          "weaker.", LowCoverageWarning, stacklevel=2)
        return cls(m, report)

    @classmethod
    def released(cls, dllm_tokenizer, rm_tokenizer, logit_width: int | None = None) -> VocabBridge:
        """The released code's token mapping (``SamplerConfig.match_released``): every DLLM id whose token string
        the RM has maps to it, every other id (the mask, padded rows, strings the RM lacks) to the RM's unk token
        or, without one, its eos token. Nothing is excluded. With Qwen3 tokenizer files (no unk) that is
        ``<|im_end|>``. ``ValueError`` when the RM tokenizer has neither."""
        fallback = rm_tokenizer.unk_token_id or rm_tokenizer.eos_token_id  # `or`, as the released code writes it
        if fallback is None:
            raise ValueError("the reward tokenizer has neither an unk nor an eos token: the released code's mapping "
                             "of unmatched DLLM ids needs one (unset `match_released`).")
        width = len(dllm_tokenizer) if logit_width is None else int(logit_width)
        rm_vocab = rm_tokenizer.get_vocab()
        pairs = [(i, rm_vocab[tok]) for tok, i in dllm_tokenizer.get_vocab().items() if i < width and tok in rm_vocab]
        m = torch.full((width,), int(fallback), dtype=torch.long)
        matched = torch.zeros(width, dtype=torch.bool)
        if pairs:
            ids, rm_ids = torch.tensor(pairs).T
            m[ids], matched[ids] = rm_ids, True
        same = m == torch.arange(width)
        report = CoverageReport(width, len(dllm_tokenizer), len(rm_tokenizer), int(matched.sum()), int(same.sum()),
                                unmapped_ids=(~matched).nonzero().flatten().tolist(),
                                remapped_ids=(matched & ~same).nonzero().flatten().tolist())
        return cls(m, report)

    def rm_table(self, rm_embedding: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """E_R aligned to DLLM ids: (V, d), row i = ``rm_embedding[dllm_to_rm[i]]``, zeros where unmapped.

        ``device``: where to put it (default: the embedding's). Guidance wants it where the DLLM's logits
        are (the soft embedding q·E is formed there; only the (n, d) result travels to the RM). Built once
        per (table, device) and cached (the last table only)."""
        device = rm_embedding.device if device is None else torch.device(device)
        key = (rm_embedding.data_ptr(), rm_embedding.shape, rm_embedding.dtype, rm_embedding.device)
        cached = self._tables.get(key, {}) if key in self._tables else {}
        if device in cached:
            return cached[device]
        m = self.dllm_to_rm.to(rm_embedding.device)
        table = rm_embedding[m.clamp_min(0)] * self.mapped.to(rm_embedding.device).unsqueeze(-1).to(rm_embedding.dtype)
        cached[device] = table.detach().to(device)
        self._tables = {key: cached}
        return cached[device]
