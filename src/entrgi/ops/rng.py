"""One random stream per (prompt, sample), so a sample never depends on what it is batched with.

A row's stream is seeded from ``(seed, prompt token ids, sample index)``: the same prompt and sample
index give the same sample whatever the batch size, the order of prompts or the other prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def row_seed(seed: int, prompt_ids: Sequence[int], sample_index: int, stream: str = "sample") -> int:
    """A 63-bit seed derived from the run seed, the prompt's token ids, the sample index and a stream name."""
    h = hashlib.sha256()
    h.update(f"{seed}|{stream}|{sample_index}|".encode())
    h.update(",".join(map(str, prompt_ids)).encode())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


class RowStreams:
    """A list of ``torch.Generator``, one per row of a batch, with vectorised helpers."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(s))
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def uniform_at(self, mask: torch.Tensor) -> torch.Tensor:
        """Uniforms in [0, 1) at the True entries of ``mask`` (B, L), drawn from row b's stream in
        position order; 0 elsewhere. Row b consumes exactly ``mask[b].sum()`` draws."""
        assert mask.shape[0] == len(self.generators), "one stream per row"
        out = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
        counts = mask.sum(-1).tolist()
        for b, (g, n) in enumerate(zip(self.generators, counts)):
            if n:
                out[b, mask[b]] = torch.rand(n, generator=g, dtype=torch.float64, device=self.device).to(mask.device)
        return out

    def uniform_matrix_at(self, mask: torch.Tensor, width: int) -> torch.Tensor:
        """(mask.sum(), width) uniforms: row b's masked positions (in order) from stream b."""
        assert mask.shape[0] == len(self.generators), "one stream per row"
        parts = [torch.rand((int(n), width), generator=g, dtype=torch.float64, device=self.device)
                 for g, n in zip(self.generators, mask.sum(-1).tolist()) if n]
        if not parts:
            return torch.zeros((0, width), dtype=torch.float64, device=mask.device)
        return torch.cat(parts).to(mask.device)

    def uniform_rows(self, n: int) -> torch.Tensor:
        """(B, n) uniforms, row b from stream b."""
        return torch.stack(
            [torch.rand(n, generator=g, dtype=torch.float64, device=self.device) for g in self.generators]
        )
