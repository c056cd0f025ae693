"""Pure functions on logits: temperature, top-p / top-k filtering, inverse-CDF sampling.

Every function takes logits of shape (..., V) and returns a new tensor; nothing is modified in place.
Random draws are never made here: callers pass uniforms ``u`` drawn from their own per-row streams
(see :mod:`entrgi.ops.rng`), so the same uniforms always give the same tokens.
"""

from __future__ import annotations

import functools
import math

import torch

NEG_INF = float("-inf")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32/float64 unchanged (a softmax over 150k ids needs the bits)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


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
    return torch.nn.functional.threshold_(z, _flush_below(z.dtype), NEG_INF).exp_()  # z < floor -> −inf -> 0


@functools.cache
def _flush_below(dtype: torch.dtype) -> float:
    """The largest value below the cut of :func:`exp_flushed_` (threshold keeps z > it, i.e. z >= the cut)."""
    floor = torch.tensor(math.log(torch.finfo(dtype).tiny) + 1.0, dtype=dtype)
    return float(torch.nextafter(floor, torch.tensor(NEG_INF, dtype=dtype)))


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
                   heads: tuple[int, ...] = NUCLEUS_HEADS, lse: torch.Tensor | None = None, *,
                   sort_rest: bool = True):
    """The ids that top-p keeps in softmax(logits / τ), found without sorting the whole vocabulary of most rows.

    Yields ``(rows (r,), ids (r, k), keep (r, k))`` for groups of rows of ``logits`` (n, V): ``ids`` are a
    row's k most likely ids in descending order, ``keep`` marks those top-p keeps (Dream's rule: an id is
    removed when the mass of the ids before it exceeds ``top_p``). A row is settled by the first head of
    ``heads`` whose mass exceeds ``top_p`` (every id beyond it is then removed); a head that cannot reach
    ``top_p`` (by the mass and the smallest probability of the head before) is skipped. The remaining rows
    get a full sort, or with ``sort_rest=False`` :func:`nucleus_by_buckets`: groups ``(rows, None, keep
    (r, V))`` with ``keep`` indexed by id, and the full sort only for the few rows it cannot settle. Every
    row appears in exactly one group; the kept ids are the same either way. Probabilities are float64
    (normaliser ``lse`` = logsumexp(logits / τ) (n,), by default from :func:`logsumexp_chunked`), so the
    boundary is exact to ~1e-7 relative.
    """
    n, V = logits.shape
    x = upcast(logits)
    lse = logsumexp_chunked(x, temperature) if lse is None else lse.double()  # (n,)
    rows = torch.arange(n, device=logits.device)
    x = x.contiguous()
    block_max = x[:, :V // 64 * 64].view(n, V // 64, 64).amax(-1) if V >= 256 else None  # shared by the heads
    # Per row, from the last head it tried: size, mass and smallest probability; a head of k ids then holds
    # at most mass + (k − size) · smallest (no id beyond is more likely).
    size = torch.zeros(n, dtype=torch.float64, device=logits.device)
    mass, smallest = torch.zeros_like(size), torch.full_like(size, math.inf)
    for k in sorted(h for h in heads if h < V):
        can = mass[rows] + (k - size[rows]) * smallest[rows] > top_p - 1e-9  # margin >> rounding of the sums
        part = rows[can]
        if part.numel() == 0:
            continue
        block = _block_for(k, V)
        if block == 64:
            vals, ids = topk_blocked(x, k, part, 64, block_max)  # (r, k)
        else:  # a large head for the few rows left: finer blocks on a copy of those rows
            vals, ids = topk_blocked(x if part.numel() == n else x[part], k, block=max(block, 1))
        probs = (vals.double() / temperature - lse[part].unsqueeze(-1)).exp()
        before = probs.cumsum(-1) - probs  # mass of the ids ranked before each
        head_mass = before[:, -1] + probs[:, -1]
        settled = head_mass > top_p
        yield part[settled], ids[settled], ~(before[settled] > top_p)
        left = part[~settled]
        size[left], mass[left], smallest[left] = float(k), head_mass[~settled], probs[~settled, -1]
        rows = torch.cat([rows[~can], left]).sort().values
    if rows.numel() == 0:
        return
    if not sort_rest:
        unsettled = []
        step = max(1, (SELECT_CHUNK_CPU if x.device.type == "cpu" else SELECT_CHUNK) // V)
        for lo in range(0, rows.numel(), step):
            r = rows[lo:lo + step]
            keep, ok = nucleus_by_buckets(_take_rows(x, r), lse[r], top_p, temperature)
            if ok.all():
                yield r, None, keep
                continue
            if ok.any():
                yield r[ok], None, keep[ok]
            unsettled.append(r[~ok])
        rows = torch.cat(unsettled) if unsettled else rows[:0]
        if rows.numel() == 0:
            return
    vals, ids = torch.sort(x if rows.numel() == n else x[rows], -1, descending=True)  # (r, V)
    probs = (vals.double() / temperature - lse[rows].unsqueeze(-1)).exp()
    yield rows, ids, ~(probs.cumsum(-1) - probs > top_p)


def _take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` for ascending ``rows``: a view when they are consecutive (no copy of the (r, V) rows)."""
    first, last = int(rows[0]), int(rows[-1])
    return x[first:last + 1] if last - first + 1 == rows.numel() else x[rows]


#: Buckets of :func:`nucleus_by_buckets`, linear in the logit from a row's max down to max − 40 τ.
SELECT_BUCKETS = 4096
#: Rows × V per call of :func:`nucleus_by_buckets` from :func:`nucleus_groups`: on a CPU ~30 rows of a 152k
#: vocabulary (32 MiB float64 temporaries: fresh (n, V) buffers cost more in page faults than the arithmetic,
#: and many small calls cost thread wake-ups on a busy machine); on an accelerator, all rows of a step.
SELECT_CHUNK_CPU, SELECT_CHUNK = 1 << 22, 1 << 25


def nucleus_by_buckets(x: torch.Tensor, lse: torch.Tensor, top_p: float, temperature: float = 1.0,
                       buckets: int = SELECT_BUCKETS) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p keep masks of rows of ``x`` (c, V) without sorting them: ``(keep (c, V) by id, ok (c,))``.

    Where ``ok``, the ids that the full sort of :func:`nucleus_groups` keeps: the ids go into buckets by a
    monotone map of the logit, the bucket masses give the bucket of the id that crosses ``top_p``, and
    only that bucket's ids are sorted. The masses are summed in another order than the sorted cumsum, so a
    row is ``ok`` only when no decision can depend on the rounding of either sum (the mass before the last
    kept id and the mass through it are both more than 4 (V + buckets) 2^-53 from ``top_p``; fails for
    ~1e-5 of random rows) and when the boundary does not split a run of equal logits (which of them the full
    sort keeps is its order's choice; ~1e-3 of random float32 rows). Other rows get an all-False mask.
    ``lse`` (c,): logsumexp(x / τ), float64.
    """
    x = upcast(x).contiguous()
    c, V = x.shape
    dev = x.device
    hi = x.amax(-1, keepdim=True)
    ok = torch.isfinite(lse) & torch.isfinite(hi).squeeze(-1)  # then x holds finite values and −inf only
    if not ok.all():
        keep = torch.zeros((c, V), dtype=torch.bool, device=dev)
        if ok.any():
            keep[ok], ok[ok.clone()] = nucleus_by_buckets(x[ok], lse[ok], top_p, temperature, buckets)
        return keep, ok
    p = x.to(torch.float64, copy=True)  # the full sort's probabilities, bit for bit: (x.double() / τ − lse).exp()
    if temperature != 1.0:
        p.div_(temperature)
    p.sub_(lse.double().unsqueeze(-1)).exp_()
    # bucket ⌊(hi − x) · buckets / span⌋ in [0, buckets): 0 holds the max, non-increasing in x (one rounding per
    # op); ids more than span = min(40 τ, hi − min) below the max (each < e^-40 of it) go to the last one
    span = torch.minimum(hi - x.amin(-1, keepdim=True), torch.full_like(hi, 40.0 * temperature))
    to_bucket = torch.where(span > 0, buckets / span, 1.0)
    ok &= torch.isfinite(to_bucket).squeeze(-1)
    to_bucket.nan_to_num_(posinf=1.0)
    b = torch.sub(hi, x).mul_(to_bucket).clamp_(0, buckets - 1).long()  # (c, V)
    mass = torch.zeros((c, buckets), dtype=torch.float64, device=dev)
    if dev.type != "cpu" and torch.are_deterministic_algorithms_enabled():  # CUDA has a deterministic 1-D kernel
        offsets = torch.arange(0, c * buckets, buckets, device=dev).unsqueeze(-1)
        mass.view(-1).scatter_add_(0, (b + offsets).view(-1), p.view(-1))
    else:
        mass.scatter_add_(1, b, p)
    upto = mass.cumsum(-1)  # [:, j]: the mass of buckets 0..j, the most likely ids
    top = (upto <= top_p).sum(-1, keepdim=True)  # the bucket of the id that crosses top_p (buckets: none)
    ok &= top.squeeze(-1) < buckets
    top.clamp_max_(buckets - 1)
    through = upto.gather(1, top)  # mass down to that bucket, and above it:
    above = torch.where(top > 0, upto.gather(1, (top - 1).clamp_min(0)), 0.0)
    keep = b < top
    at = (b == top).view(-1).nonzero().squeeze(-1)  # the candidates' flat positions in (c, V), ascending
    del b
    count = torch.bincount(at // V, minlength=c).unsqueeze(-1)
    width = max(int(count.max()), 1)
    first = torch.arange(width, device=dev) < count  # (c, width): the candidates, then padding
    cid = torch.full((c, width), V, dtype=torch.long, device=dev).masked_scatter_(first, at % V)
    cx = x.new_full((c, width), NEG_INF).masked_scatter_(first, x.view(-1).index_select(0, at))
    cp = torch.zeros((c, width), dtype=torch.float64, device=dev).masked_scatter_(first, p.view(-1).index_select(0, at))
    del p
    cx, order = torch.sort(cx, -1, descending=True)  # the crossing bucket only (ties: any order, see below)
    cp, cid = cp.gather(-1, order), cid.gather(-1, order)
    before = (cp.cumsum(-1) - cp) + above  # the mass ranked before each candidate
    kept = ~(before > top_p) & (cid < V)
    n_kept = kept.sum(-1, keepdim=True)
    ok &= (n_kept.squeeze(-1) >= 1) & (kept == (torch.arange(width, device=dev) < n_kept)).all(-1)  # a prefix
    last, nxt = (n_kept - 1).clamp_min(0), n_kept.clamp_max(width - 1)
    has_next = n_kept < count  # the next id is a candidate, else the first one of a lower bucket
    mass_kept = torch.where(has_next, before.gather(-1, nxt), through)
    # > the rounding of both sums (recursive sums of <= V + buckets terms) and of exp (1 ulp: scalar vs vector code)
    margin = 4.0 * (V + buckets) * 2.0 ** -53
    ok &= (before.gather(-1, last) <= top_p - margin).squeeze(-1) & (mass_kept > top_p + margin).squeeze(-1)
    ok &= ~(has_next & (cx.gather(-1, nxt) == cx.gather(-1, last))).squeeze(-1)  # a tie split by the boundary
    r, j = kept.nonzero(as_tuple=True)
    keep[r, cid[r, j]] = True
    if not ok.all():
        keep &= ok.unsqueeze(-1)
    return keep, ok


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of ids whose probability reaches ``top_p`` (the most likely id always stays).

    The rule of :func:`top_p_filter_sorted` without sorting the vocabulary: top-k heads settle most rows,
    the buckets of :func:`nucleus_by_buckets` the rest (:func:`nucleus_groups`), and the probabilities are
    float64 (a float32 cumsum over a 152k vocabulary is off by ~1e-5)."""
    if top_p >= 1.0:
        return logits
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=logits.device)
    for rows, ids, kept in nucleus_groups(flat, top_p, sort_rest=False):
        if ids is None:
            keep[rows] = kept
        else:
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
    V = logits.shape[-1]
    return inverse_cdf(logits.double().reshape(-1, V), uniforms.reshape(-1)).view(logits.shape[:-1])


def draw(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float = 1.0,
         top_k: int | None = None, *, lse: torch.Tensor | None = None) -> torch.Tensor:
    """``sample_from_logits(sampling_logits(logits, temperature, top_p, top_k), uniforms)``, cheaper.

    τ = 0 is the argmax. With top-p < 1 the inverse CDF runs over the kept ids only (in id order, as
    :func:`sample_from_logits` walks them), found without sorting the vocabulary (:func:`nucleus_groups`
    with ``sort_rest=False``: the full sort only for the rare rows whose boundary is a tie or within
    rounding of ``top_p``, with the same ids either way). Same ids as the filter-then-sample reference up
    to float rounding of the normaliser (a draw within ~1e-16 of a CDF step may differ).
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
    flat, u = upcast(x).reshape(-1, V), uniforms.reshape(-1)
    out = torch.empty(flat.shape[0], dtype=torch.long, device=x.device)
    lse = lse.reshape(-1) if lse is not None and top_k is None else None
    for rows, ids, keep in nucleus_groups(flat, top_p, tau, lse=lse, sort_rest=False):
        if ids is None:  # keep (r, V) by id: the kept ids ascending are its nonzero columns
            at = keep.view(-1).nonzero().squeeze(-1)  # flat positions in (r, V), ascending
            count = keep.sum(-1)
            src = _take_rows(flat, rows).reshape(-1).index_select(0, at).double()
            vals = torch.full(keep.shape, NEG_INF, dtype=torch.float64, device=x.device)  # as by_id below
            vals.masked_scatter_(torch.arange(V, device=x.device) < count.unsqueeze(-1),
                                 src.div_(tau) if tau != 1.0 else src)
            j = torch.minimum(inverse_cdf(vals, u[rows]), count - 1)
            out[rows] = at[count.cumsum(0) - count + j] % V
            continue
        by_id = torch.where(keep, ids, V).sort(-1).values  # (r, k) kept ids ascending, V = padding
        vals = (flat[rows.unsqueeze(-1), by_id.clamp_max(V - 1)].double() / tau).masked_fill(by_id == V, NEG_INF)
        out[rows] = by_id.gather(-1, inverse_cdf(vals, u[rows]).unsqueeze(-1)).squeeze(-1)
    return out.view(x.shape[:-1])


def inverse_cdf(vals: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The column of the inverse-CDF draw from softmax(vals) (r, k) for uniforms ``u`` (r,) in [0, 1): the
    first column whose cumulative probability exceeds u · total; never a zero-probability column (a draw
    that lands on one at the float boundary falls back to the argmax)."""
    probs = vals.softmax(-1)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    target = (u.to(cdf.dtype).unsqueeze(-1) * total).clamp(max=total * (1 - 1e-7))
    j = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    j = j.clamp(max=vals.shape[-1] - 1)
    bad = probs.gather(-1, j.unsqueeze(-1)).squeeze(-1) <= 0
    if bad.any():
        j = torch.where(bad, probs.argmax(-1), j)
    return j


def sample_gumbel_max(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """argmax(logits + Gumbel noise) in float64, with noise −log(−log u) from ``uniforms`` (..., V).

    LLaDA's ``add_gumbel_noise`` writes this as argmax(exp(logits) / (−log u)^τ) on logits not yet
    divided by τ; both draw from softmax(logits / τ)."""
    return (logits.double() + gumbel(uniforms)).argmax(-1)


def gumbel(uniforms: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise −log(−log u), float64, from uniforms in [0, 1) (clamped away from 0 and 1)."""
    return -torch.log(-torch.log(uniforms.double().clamp(1e-300, 1 - 1e-16)))
