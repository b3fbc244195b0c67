"""In-context sample retrieval: pure tensor functions, batched, exact and deterministic.

For each query (a batch sample's feature) we need, from the memory bank,

* positives: the Top-K bank rows of the sample's own class most similar to it (itself
  excluded), or all of them for IC-KD-all;
* negatives: the Top-N bank rows of any other class most similar to it.

Similarity is cosine, ``S = (q / |q|) @ (H / |H|)^T``, or with ICKD.SIMILARITY centered the
cosine after subtracting the bank's mean feature ``c`` from the query and every row,
computed as one matmul per chunk of bank rows (the bank keeps ``1 / |H - c|`` per row, so
no normalised or centred copy is stored), shifted, scaled and masked in place so a chunk
holds one ``[B, chunk]`` float32 block at a time. Positives
are read by gathering ``S`` at the sample's class rows from a ``[C, max_class_count]`` table,
so they never look at other classes (or, where that table would be large: few, large classes
as in a dense bank, one class of the batch at a time, with the same result); negatives are a
top-k over ``S`` with the own class masked. ``torch.topk`` does not say which of several
equal values it returns, so `exact_topk` breaks ties explicitly by the lower bank row, and
rows that are equal bit for bit get one similarity (`TieGroups`): equal rows tie whatever the
chunking or device, and the lower one wins.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Auto chunking keeps one [B, chunk] similarity block at about this many elements (256 MiB in float32).
AUTO_CHUNK_ELEMENTS = 1 << 26


@dataclass
class Retrieval:
    """Bank rows and cosine similarities of each query's in-context samples.

    ``pos_mask`` is None when every positive is valid (Top-K); with IC-KD-all it marks the real
    same-class rows among the padded ``[B, max_class_count]`` columns (padding and self are
    False, and their ``pos_sim`` is -inf, ``pos_rows`` 0).
    """

    pos_rows: torch.Tensor  # [B, K] long
    pos_sim: torch.Tensor  # [B, K] float32
    pos_mask: torch.Tensor | None  # [B, K] bool or None
    neg_rows: torch.Tensor  # [B, N] long
    neg_sim: torch.Tensor  # [B, N] float32


def exact_topk(values: torch.Tensor, k: int, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along dim 1 with ties broken by the smaller id; output sorted by (value desc, id asc).

    values: [B, M]; ids: [B, M] distinct non-negative ints per row, or None for the column
    index. Returns (top values [B, k], their columns in `values` [B, k]).

    A plain topk already returns every value above the k-th largest; only which of the
    entries *equal* to the k-th value it keeps is unspecified. That choice matters only in
    rows where a tied entry was left out, i.e. where the (k+1)-th largest value equals the
    k-th: we ask topk for k + 1 values, so spotting those rows costs a [B] compare, not a
    pass over [B, M]. They (exact duplicates at the boundary: rare with real features) are
    repaired by `_first_ties`, at one host sync per call. The k results are then re-sorted,
    a [B, k] operation.
    """
    num_cols = values.shape[1]
    if not 1 <= k <= num_cols:
        raise ValueError(f"exact_topk: k = {k}, expected 1 <= k <= {num_cols} (the number of columns)")
    if ids is not None:
        ids, order = ids.sort(dim=1)  # ties are then resolved in column order
        values = values.gather(1, order)
    top, columns = values.topk(min(k + 1, num_cols), dim=1)
    if num_cols > k:
        ambiguous = top[:, k] == top[:, k - 1]
        top, columns = top[:, :k], columns[:, :k]
        if bool(ambiguous.any()):
            rows = ambiguous.nonzero().squeeze(1)
            columns[rows] = _first_ties(values[rows], top[rows], columns[rows], k)
    columns, by_column = columns.sort(dim=1)
    top, by_value = top.gather(1, by_column).sort(dim=1, descending=True, stable=True)
    columns = columns.gather(1, by_value)
    if ids is not None:
        columns = order.gather(1, columns)
    return top, columns


def _first_ties(values: torch.Tensor, top: torch.Tensor, columns: torch.Tensor, k: int) -> torch.Tensor:
    """Refill the slots holding the k-th value with the lowest tied columns (a cumsum ranks the
    ties, a scatter collects the first k); the values in those slots do not change."""
    rows, num_cols = values.shape
    kth = top[:, -1:]
    num_above = (top > kth).sum(dim=1, keepdim=True)  # these come first in `top` and are right
    tied = values == kth
    # slot of each tied column among the first k ties (0, 1, ...); everything else goes to slot k
    slot = (tied.cumsum(dim=1) - 1).clamp_(max=k).masked_fill_(~tied, k)
    first_tied = torch.zeros(rows, k + 1, dtype=torch.long, device=values.device)
    first_tied.scatter_(1, slot, torch.arange(num_cols, device=values.device).expand(rows, num_cols))
    position = torch.arange(k, device=values.device).expand(rows, k)
    from_ties = first_tied.gather(1, (position - num_above).clamp(min=0))
    return torch.where(position >= num_above, from_ties, columns)


def auto_chunk_size(num_queries: int, num_rows: int, chunk_size: int = 0) -> int:
    """Bank rows per similarity block: `chunk_size` if > 0, else as many as fit AUTO_CHUNK_ELEMENTS."""
    if chunk_size > 0:
        return min(chunk_size, num_rows)
    return max(1, min(num_rows, AUTO_CHUNK_ELEMENTS // max(1, num_queries)))


# On a CPU, a half-precision bank is multiplied in float32 blocks of this many rows: CPUs
# without half-precision matrix units run fp16/bf16 matmuls slower than upcasting a block and
# multiplying in float32 (1.1-5.4x on the development CPU, docs/performance.md section 4);
# the block bounds the copy.
CPU_UPCAST_BLOCK_ROWS = 4096

# `retrieve` reads positives one class at a time once the [B, M] table of class rows would have
# this many entries: the table's int64 gathers then cost more than a loop over the batch's
# classes (`tools/bench.py --only retrieval --classes 11`, docs/performance.md section 3).
BY_CLASS_MIN_ENTRIES = 1 << 22


def native_half_product(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor | None:
    """``q @ bank.T`` on the device's half-precision matrix units, accumulated and returned in
    float32 (``torch.mm(..., out_dtype=torch.float32)``, CUDA); None where that is unavailable.

    Never ``(q16 @ bank16.T).float()``: a half output rounds every similarity to 11 bits
    before the top-k, so near-equal neighbours tie and the retrieval depends on the device.
    """
    if bank.device.type != "cuda":
        return None
    try:
        return torch.mm(q.to(bank.dtype), bank.t(), out_dtype=torch.float32)
    except (TypeError, NotImplementedError):  # a torch without out_dtype for mm
        return None


def upcast_product(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``q @ bank.T`` in float32, the bank upcast block by block (`CPU_UPCAST_BLOCK_ROWS`)."""
    out = torch.empty(q.shape[0], bank.shape[0], dtype=torch.float32, device=q.device)
    for start in range(0, bank.shape[0], CPU_UPCAST_BLOCK_ROWS):
        block = bank[start : start + CPU_UPCAST_BLOCK_ROWS]
        out[:, start : start + block.shape[0]] = q @ block.float().t()
    return out


def similarity_product(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``q @ bank.T`` in float32 ``[B, R]``, the fastest way the device has, float32 on every path.

    q: ``[B, D]`` float32 (normalised queries, already rounded to the bank's dtype). A float32
    bank is one float32 matmul. A half-precision bank: on CUDA one matmul on the half
    operands with float32 accumulation and output (`native_half_product`); elsewhere upcast
    block by block (`upcast_product`). The half operands are exact in float32, so every path
    computes the same float32 products and differs only in summation order.
    """
    if bank.dtype == torch.float32:
        return q @ bank.t()
    native = native_half_product(q, bank)
    return native if native is not None else upcast_product(q, bank)


@dataclass
class TieGroups:
    """Bank rows whose features are equal bit for bit, each group with one representative.

    A matmul's summation order depends on the block it computes (chunk size, the row's place
    in it, the device's kernel), so equal rows in different chunks can get similarities one
    ulp apart and the later row can win. Retrieval gives every member of a group the
    similarity computed once from the representative (a ``[B, G]`` product of one shape per
    step), so equal rows tie exactly and `exact_topk` takes the lower row, whatever the
    chunking. ``member_rows`` are the bank rows (ascending) of every group with two or more
    members, ``member_group`` their group; ``features [G, D]`` (the bank's dtype) and
    ``inv_norms [G]`` are the representatives'.
    """

    features: torch.Tensor
    inv_norms: torch.Tensor
    member_rows: torch.Tensor
    member_group: torch.Tensor


def prepare_queries(
    queries: torch.Tensor, bank_dtype: torch.dtype, center: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(q, offset)``: the unit query ``(x - c) / |x - c|`` in float32, rounded to the bank's dtype
    (so every device and path sees the same operands), and ``q . c`` ``[B, 1]`` (None without a centre)."""
    q = queries.float()
    if center is not None:
        q = q - center.float()
    q = F.normalize(q, dim=1)
    if bank_dtype != torch.float32:
        q = q.to(bank_dtype).float()
    return q, None if center is None else q @ center.float()[:, None]


def chunk_similarity(
    q: torch.Tensor, offset: torch.Tensor | None, bank: torch.Tensor, bank_inv_norms: torch.Tensor
) -> torch.Tensor:
    """``S[b, r] = q_b . (H_r - c) / |H_r - c|`` in float32 for prepared queries (`prepare_queries`):
    `similarity_product`, minus the centre's share, scaled in place by ``1 / |H_r - c|``."""
    sim = similarity_product(q, bank)
    if offset is not None:
        sim.sub_(offset)
    return sim.mul_(bank_inv_norms)


def cosine_similarity(
    queries: torch.Tensor, bank: torch.Tensor, bank_inv_norms: torch.Tensor, center: torch.Tensor | None = None
) -> torch.Tensor:
    """``S[b, r] = cos(q_b - c, H_r - c)`` in float32; ``c`` = `center`, or none (plain cosine).

    `bank_inv_norms` must be ``1 / |H_r - c|`` (the bank keeps them for its own centre). The
    centred product is computed as ``q . H_r - q . c``, so no centred copy of the bank exists.
    """
    q, offset = prepare_queries(queries, bank.dtype, center)
    return chunk_similarity(q, offset, bank, bank_inv_norms)


def _tie_columns(ties: TieGroups, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns of the chunk ``[start, stop)`` that belong to a tie group, their groups)."""
    lo, hi = torch.searchsorted(ties.member_rows, torch.tensor([start, stop], device=ties.member_rows.device)).tolist()
    return ties.member_rows[lo:hi] - start, ties.member_group[lo:hi]


def retrieve(
    queries: torch.Tensor,
    labels: torch.Tensor,
    self_rows: torch.Tensor,
    bank: torch.Tensor,
    bank_inv_norms: torch.Tensor,
    class_rows: torch.Tensor,
    k: int,
    n: int,
    all_same_class: bool = False,
    chunk_size: int = 0,
    center: torch.Tensor | None = None,
    ties: TieGroups | None = None,
    row_groups: torch.Tensor | None = None,
    strategy: str = "auto",
) -> Retrieval:
    """Retrieve positives and negatives for a batch of queries.

    queries [B, D]; labels [B] (class of each query); self_rows [B] (the query's own bank row,
    -1 if it has none); bank [R, D]; bank_inv_norms [R] float32 (``1 / |H_r - c|``); class_rows
    [C, M]: bank rows of each class in ascending order, padded with -1 (the bank's labels, as
    a table); center [D]: ``c`` of the centred cosine (ICKD.SIMILARITY centered), None for the
    plain one; ties: the bank's groups of equal rows (`TieGroups`), which then tie exactly;
    row_groups [R]: when given, `self_rows` holds a group id per query and every bank row of
    that group is excluded from its positives (a dense bank: every sampled pixel of the
    query's own image), instead of the one row.
    strategy: how positives are read, with identical results: "gather" (a ``[B, M]`` table of
    each query's class rows, M the largest class), "by_class" (one class of queries at a time:
    ``[B_c, M_c]`` selections; needs one similarity block and Top-K positives), or "auto":
    by_class where it applies and ``B * M >= BY_CLASS_MIN_ENTRIES`` (few, large classes, e.g.
    a dense bank's background), gather otherwise.
    The caller guarantees that every query's class has bank rows, K <= (smallest class size - 1)
    and N <= (smallest other-class count), see `MemoryBank.check_capacity`.
    """
    num_rows = bank.shape[0]
    chunk = auto_chunk_size(queries.shape[0], num_rows, chunk_size)
    q, offset = prepare_queries(queries, bank.dtype, center)
    tie_sim = None if ties is None or ties.member_rows.numel() == 0 else chunk_similarity(q, offset, ties.features, ties.inv_norms)
    if strategy not in ("auto", "gather", "by_class"):
        raise ValueError(f"retrieve: strategy = {strategy!r}; expected 'auto', 'gather' or 'by_class'")
    one_block = chunk >= num_rows
    if strategy == "auto":
        big_tables = queries.shape[0] * class_rows.shape[1] >= BY_CLASS_MIN_ENTRIES
        strategy = "by_class" if one_block and not all_same_class and big_tables else "gather"
    if strategy == "by_class":
        if not one_block or all_same_class:
            raise ValueError("retrieve: strategy 'by_class' needs one similarity block and Top-K positives "
                             "(not chunk_size < bank rows, not IC-KD-all)")
        sim = _similarity_block(q, offset, bank, bank_inv_norms, 0, num_rows, tie_sim, ties)
        return _retrieve_by_class(sim, labels, self_rows, class_rows, k, n, row_groups)
    pos_cols = class_rows[labels]  # [B, M]
    padding = pos_cols < 0
    # Padding points at the class's first row: a row of the own class, so it can be gathered
    # from and masked as the own class without a test (a class the bank lacks, which callers
    # never query, would point at row 0 rather than fail).
    pos_cols = torch.where(padding, pos_cols[:, :1].clamp(min=0), pos_cols)
    if row_groups is None:
        pos_valid = ~padding & (pos_cols != self_rows[:, None])
    else:
        pos_valid = ~padding & (row_groups[pos_cols] != self_rows[:, None])
    if one_block:  # the usual case: the block's columns are the bank rows
        sim = _similarity_block(q, offset, bank, bank_inv_norms, 0, num_rows, tie_sim, ties)
        pos_sim = sim.gather(1, pos_cols).masked_fill_(~pos_valid, float("-inf"))
        neg_sim, neg_row = exact_topk(sim.scatter_(1, pos_cols, float("-inf")), n)
    else:
        pos_sim, neg_sim, neg_row = _chunked_scan(q, offset, bank, bank_inv_norms, pos_cols, pos_valid, n, chunk,
                                                  tie_sim, ties)
    if all_same_class:
        return Retrieval(pos_cols.masked_fill(padding, 0), pos_sim, pos_valid, neg_row, neg_sim)
    top_sim, columns = exact_topk(pos_sim, k)
    return Retrieval(pos_cols.gather(1, columns), top_sim, None, neg_row, neg_sim)


def _similarity_block(
    q: torch.Tensor, offset: torch.Tensor | None, bank: torch.Tensor, bank_inv_norms: torch.Tensor,
    start: int, stop: int, tie_sim: torch.Tensor | None, ties: TieGroups | None,
) -> torch.Tensor:
    """Similarities ``[B, stop - start]`` to bank rows ``[start, stop)``; tie-group members get
    their representative's value (computed once per step, `tie_sim`)."""
    sim = chunk_similarity(q, offset, bank[start:stop], bank_inv_norms[start:stop])
    if tie_sim is not None:
        columns, groups = _tie_columns(ties, start, stop)
        sim[:, columns] = tie_sim[:, groups]
    return sim


def _chunked_scan(
    q: torch.Tensor, offset: torch.Tensor | None, bank: torch.Tensor, bank_inv_norms: torch.Tensor,
    pos_cols: torch.Tensor, pos_valid: torch.Tensor, n: int, chunk: int,
    tie_sim: torch.Tensor | None, ties: TieGroups | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`retrieve` over bank blocks of `chunk` rows: (positives' similarities [B, M], negatives'
    Top-n similarities and rows [B, n]), one ``[B, chunk]`` block in memory at a time."""
    num_rows = bank.shape[0]
    pos_sim = torch.full(pos_cols.shape, float("-inf"), device=q.device)
    neg_values, neg_rows = [], []
    for start in range(0, num_rows, chunk):
        stop = min(start + chunk, num_rows)
        sim = _similarity_block(q, offset, bank, bank_inv_norms, start, stop, tie_sim, ties)
        # The query's class rows that fall in this block, as columns of `sim` (others clamped).
        own_in_chunk = (pos_cols >= start) & (pos_cols < stop)
        own_columns = (pos_cols - start).clamp_(0, stop - start - 1)
        pos_sim = torch.where(own_in_chunk & pos_valid, sim.gather(1, own_columns), pos_sim)
        # Negatives exclude the own class: -inf at those columns, set through the class table
        # (a [B, M_class] scatter, not a [B, chunk] label compare). amin with +inf leaves a
        # column alone, so other blocks' rows are harmless.
        sim.scatter_reduce_(
            1, own_columns, torch.where(own_in_chunk, float("-inf"), float("inf")), reduce="amin"
        )
        values, columns = exact_topk(sim, min(n, stop - start))
        neg_values.append(values)
        neg_rows.append(columns + start)
    if len(neg_values) == 1:
        return pos_sim, neg_values[0], neg_rows[0]
    candidates = torch.cat(neg_rows, dim=1)
    neg_sim, columns = exact_topk(torch.cat(neg_values, dim=1), n, ids=candidates)
    return pos_sim, neg_sim, candidates.gather(1, columns)


def _retrieve_by_class(
    sim: torch.Tensor, labels: torch.Tensor, self_rows: torch.Tensor, class_rows: torch.Tensor, k: int, n: int,
    row_groups: torch.Tensor | None,
) -> Retrieval:
    """`retrieve`'s strategy 'by_class' on the whole similarity block ``sim [B, R]``: for each class
    c of the batch, its queries' rows of `sim` (a copy), their Top-K among c's rows (a ``[B_c, M_c]``
    selection, own row or group masked) and Top-N after c's columns are set to -inf. The values
    and tie-breaks are those of the gather strategy, so both give the same rows."""
    num_queries = sim.shape[0]
    pos_rows = labels.new_empty(num_queries, k)
    pos_sim = sim.new_empty(num_queries, k)
    neg_rows = labels.new_empty(num_queries, n)
    neg_sim = sim.new_empty(num_queries, n)
    sizes = (class_rows >= 0).sum(dim=1)
    classes = torch.unique(labels)
    for c, size in zip(classes.tolist(), sizes[classes].tolist()):
        queries = (labels == c).nonzero().squeeze(1)
        rows = class_rows[c, :size]
        block = sim.index_select(0, queries)
        owners = rows if row_groups is None else row_groups.index_select(0, rows)
        own = owners[None, :] == self_rows.index_select(0, queries)[:, None]
        same_class = block.index_select(1, rows).masked_fill_(own, float("-inf"))
        if size < k:  # fewer rows than K (a shard of a sharded bank): -inf padding, as the table's
            same_class = F.pad(same_class, (0, k - size), value=float("-inf"))
            rows = torch.cat([rows, (rows[:1] if size else rows.new_zeros(1)).expand(k - size)])
        top, columns = exact_topk(same_class, k)
        pos_sim[queries], pos_rows[queries] = top, rows[columns]
        top, columns = exact_topk(block.index_fill_(1, rows, float("-inf")), n)
        neg_sim[queries], neg_rows[queries] = top, columns
    return Retrieval(pos_rows, pos_sim, None, neg_rows, neg_sim)
