"""Pure functions on logits: temperature, top-p / top-k filtering, inverse-CDF sampling.

Every function takes logits of shape (..., V) and returns a new tensor; nothing is modified in place.
Random draws are never made here: callers pass uniforms ``u`` drawn from their own per-row streams
(see :mod:`entrgi.rng`), so the same uniforms always give the same tokens.
"""

from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / τ, with τ = 0 meaning *greedy*: the argmax gets 0 and every other id −inf."""
    if temperature == 0:
        return torch.where(one_hot_argmax(logits), 0.0, NEG_INF).to(logits.dtype)
    return logits / temperature


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Boolean (..., V) mask of the argmax (the first one on ties)."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)


#: Head sizes :func:`nucleus_groups` tries before sorting a row's whole vocabulary: a row is settled by the first
#: head whose probability mass exceeds top_p (with Dream-like logits nearly all rows by 512).
NUCLEUS_HEADS = (64, 512, 4096)
#: Ids per chunk of the chunked reductions over the vocabulary (cache-sized temporaries).
VOCAB_CHUNK = 8192


def exp_flushed_(z: torch.Tensor) -> torch.Tensor:
    """``z.exp_()`` in place, with results below the smallest normal float set to exactly 0.

    CPUs take a slow path for exp of inputs below log(tiny) (−87.3 in float32) and for arithmetic on the
    denormals it returns: at τ = 0.1 most of q = softmax(φ/τ) is denormal, and the exp and the q·E
    matmuls ran ~5× slower. The cut is one nat above log(tiny) (exp just at log(tiny) is still slow): the
    values lost are < 3.2e-38 each in float32 (relative to a softmax sum ≥ 1)."""
    floor = math.log(torch.finfo(z.dtype).tiny) + 1.0
    tiny = z < floor
    return z.clamp_min_(floor).exp_().masked_fill_(tiny, 0.0)


def logsumexp_chunked(logits: torch.Tensor, temperature: float = 1.0, chunk: int = VOCAB_CHUNK) -> torch.Tensor:
    """logsumexp(logits / τ) over the last dim of (n, V), float64: per-chunk sums of exp, accumulated in
    double over vocabulary chunks (no (n, V) temporary). −inf rows give −inf."""
    m = logits.amax(-1)  # (n,)
    shift = torch.where(torch.isinf(m), torch.zeros_like(m), m).unsqueeze(-1)
    total = torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
    for lo in range(0, logits.shape[-1], chunk):
        z = logits[:, lo:lo + chunk] - shift
        total += exp_flushed_(z.div_(temperature)).sum(-1).double()
    return shift.squeeze(-1).double() / temperature + total.log()


def topk_blocked(x: torch.Tensor, k: int, rows: torch.Tensor | None = None, block: int = 64,
                 block_max: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x[rows], k, -1)`` of (n, V) (sorted, descending; ties in any order), from the rows' block
    maxima: the k largest values lie in the k blocks with the largest maxima (any other block has k blocks
    above it, each holding a larger value), so only k·block candidates are ranked. ``block_max``: the
    (n, V // block) maxima when the caller already has them."""
    n, V = x.shape
    rows = torch.arange(n, device=x.device) if rows is None else rows
    nb = V // block
    if k * block * 4 > V or nb < k:
        return torch.topk(x if rows.numel() == n else x[rows], k, -1)
    main = nb * block
    blocks = x[:, :main].view(n, nb, block)  # a view: rows are contiguous
    if block_max is None:
        block_max = blocks.amax(-1)  # (n, nb)
    top_blocks = torch.topk(block_max[rows], k, -1).indices  # (r, k)
    cand = blocks[rows.unsqueeze(-1), top_blocks].reshape(-1, k * block)  # whole blocks: contiguous copies
    if main < V:  # the ragged last block is always a candidate
        cand = torch.cat([cand, x[rows, main:]], -1)
    vals, pos = torch.topk(cand, k, -1)  # pos in [0, k·block) from the blocks, beyond: the ragged tail
    in_blocks = pos < k * block
    ids = top_blocks.gather(-1, (pos // block).clamp_max(k - 1)) * block + pos % block
    return vals, torch.where(in_blocks, ids, pos - k * block + main)


def _block_for(k: int, V: int) -> int:
    """Block size for :func:`topk_blocked` with head k: ≤ 64 and at most V / (4k) (0 = no blocking)."""
    b = 64
    while b >= 8 and k * b * 4 > V:
        b //= 2
    return b if b >= 8 else 0


def nucleus_groups(logits: torch.Tensor, top_p: float, temperature: float = 1.0,
                   heads: tuple[int, ...] = NUCLEUS_HEADS, lse: torch.Tensor | None = None):
    """The ids that top-p keeps in softmax(logits / τ), found without sorting the whole vocabulary of most rows.

    Yields ``(rows (r,), ids (r, k), keep (r, k))`` for groups of rows of ``logits`` (n, V): ``ids`` are a
    row's k most likely ids in descending order, ``keep`` marks those top-p keeps (Dream's rule: an id is
    removed when the mass of the ids before it exceeds ``top_p``). A row is settled by the first head of
    ``heads`` whose mass exceeds ``top_p`` (every id beyond it is then removed); the remaining rows get a full
    sort. Every row appears in exactly one group. Probabilities are float64 (normaliser ``lse`` =
    logsumexp(logits / τ) (n,), by default from :func:`logsumexp_chunked`), so the boundary is exact to
    ~1e-7 relative.
    """
    n, V = logits.shape
    x = upcast_probs(logits)
    lse = logsumexp_chunked(x, temperature) if lse is None else lse.double()  # (n,)
    rows = torch.arange(n, device=logits.device)
    x = x.contiguous()
    block_max = x[:, :V // 64 * 64].view(n, V // 64, 64).amax(-1) if V >= 256 else None  # shared by the heads
    for k in (*sorted(h for h in heads if h < V), V):
        if rows.numel() == 0:
            return
        block = _block_for(k, V)
        if k == V:
            vals, ids = torch.sort(x if rows.numel() == n else x[rows], -1, descending=True)  # (r, V)
        elif block == 64:
            vals, ids = topk_blocked(x, k, rows, 64, block_max)  # (r, k)
        else:  # a large head for the few rows left: finer blocks on a copy of those rows
            vals, ids = topk_blocked(x if rows.numel() == n else x[rows], k, block=max(block, 1))
        probs = (vals.double() / temperature - lse[rows].unsqueeze(-1)).exp()
        before = probs.cumsum(-1) - probs  # mass of the ids ranked before each
        keep = ~(before > top_p)
        settled = (before[:, -1] + probs[:, -1] > top_p) if k < V else torch.ones_like(keep[:, 0])
        yield rows[settled], ids[settled], keep[settled]
        rows = rows[~settled]


def upcast_probs(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (probabilities over 150k ids need the bits); float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of ids whose probability reaches ``top_p`` (the most likely id always stays).

    The rule of :func:`top_p_filter_sorted`, but a full sort of the vocabulary happens only for rows
    whose top-4096 mass stays below ``top_p``; the others use top-k heads (:func:`nucleus_groups`), and
    the probabilities are float64 (a float32 cumsum over a 152k vocabulary is off by ~1e-5)."""
    if top_p >= 1.0:
        return logits
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=logits.device)
    for rows, ids, kept in nucleus_groups(flat, top_p):
        keep[rows.unsqueeze(-1), ids] = kept
    return logits.masked_fill(~keep.view(logits.shape), NEG_INF)


def top_p_filter_sorted(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """:func:`top_p_filter` by sorting every row's whole vocabulary (the straightforward reference)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # Remove an id when the mass of the ids before it already exceeds top_p (Dream's rule: the id
    # that crosses top_p stays, and so does the most likely id).
    remove_sorted = (probs.cumsum(-1) - probs) > top_p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep the ``top_k`` largest logits (ties at the boundary are all kept)."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def sampling_logits(
    logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """The logits a token is drawn from: scaled by τ, then top-k, then top-p filtered."""
    return top_p_filter(top_k_filter(scale(logits, temperature), top_k), top_p)


def sample_from_logits(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one id per row of ``logits`` (..., V) by inverse CDF with the given uniforms (...,).

    ``uniforms`` in [0, 1). An id with probability 0 is never returned.
    """
    probs = logits.double().softmax(-1)
    cdf = probs.cumsum(-1)
    total = cdf[..., -1:]
    target = (uniforms.to(cdf.dtype).unsqueeze(-1) * total).clamp(max=total * (1 - 1e-7))
    ids = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    ids = ids.clamp(max=logits.shape[-1] - 1)
    # Guard against landing on a zero-probability id at the float boundary: fall back to argmax.
    bad = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1) <= 0
    return torch.where(bad, probs.argmax(-1), ids)


def draw(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float = 1.0,
         top_k: int | None = None, *, lse: torch.Tensor | None = None) -> torch.Tensor:
    """``sample_from_logits(sampling_logits(logits, temperature, top_p, top_k), uniforms)``, cheaper.

    τ = 0 is the argmax. With top-p < 1 the inverse CDF runs over the kept ids only (in id order, as
    :func:`sample_from_logits` walks them), found by :func:`nucleus_groups`; no (n, V) float64 copy is
    made. Same ids up to float rounding of the normaliser (a draw within ~1e-16 of a CDF step may differ).
    ``lse``: logsumexp(logits / τ) per row when the caller has it (reused by the nucleus search).
    """
    if temperature == 0:
        return logits.argmax(-1)
    if top_p >= 1.0 or top_k is not None:
        x, tau = top_k_filter(scale(logits, temperature), top_k), 1.0
    else:
        x, tau = logits, temperature  # the nucleus and the draw divide by τ themselves: no (n, V) copy
    if top_p >= 1.0:
        return sample_from_logits(x, uniforms)
    V = x.shape[-1]
    flat, u = upcast_probs(x).reshape(-1, V), uniforms.reshape(-1)
    out = torch.empty(flat.shape[0], dtype=torch.long, device=x.device)
    lse = lse.reshape(-1) if lse is not None and top_k is None else None
    for rows, ids, keep in nucleus_groups(flat, top_p, tau, lse=lse):
        by_id = torch.where(keep, ids, V).sort(-1).values  # (r, k) kept ids ascending, V = padding
        valid = by_id < V
        vals = (flat[rows.unsqueeze(-1), by_id.clamp_max(V - 1)].double() / tau).masked_fill(~valid, NEG_INF)
        probs = vals.softmax(-1)  # (r, k) the filtered distribution over the kept ids
        cdf = probs.cumsum(-1)
        total = cdf[:, -1:]
        target = (u[rows].to(cdf.dtype).unsqueeze(-1) * total).clamp(max=total * (1 - 1e-7))
        j = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
        j = j.clamp(max=by_id.shape[-1] - 1)
        bad = probs.gather(-1, j.unsqueeze(-1)).squeeze(-1) <= 0
        j = torch.where(bad, probs.argmax(-1), j)
        out[rows] = by_id.gather(-1, j.unsqueeze(-1)).squeeze(-1)
    return out.view(x.shape[:-1])


def sample_gumbel_max(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """argmax(logits + Gumbel noise) in float64, with noise −log(−log u) from ``uniforms`` (..., V).

    LLaDA's ``add_gumbel_noise`` writes this as argmax(exp(logits) / (−log u)^τ) on logits not yet
    divided by τ; both draw from softmax(logits / τ)."""
    g = -torch.log(-torch.log(uniforms.double().clamp(1e-300, 1 - 1e-16)))
    return (logits.double() + g).argmax(-1)
