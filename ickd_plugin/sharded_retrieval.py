"""Retrieval from a bank sharded across ranks: per-shard candidates, an exact merge, rows from their owners.

One step, for the global batch of ``B`` queries (``b_r`` on rank ``r``), ``W`` ranks:

1. every rank all-gathers the queries, their labels and dataset indices (``B x (D + 2)``);
2. each rank runs the replicated bank's own `retrieve` on its rows: Top-K same-class and
   Top-N other-class candidates of every query, with their similarities (self excluded by
   dataset index, which names the same global row);
3. the candidates are all-gathered (``W x B x (K + N)`` similarities and global rows) and
   every rank merges them with `exact_topk`, ties to the lower global row;
4. each rank receives the features of its own queries' selected rows from their owners
   (point to point, ``b_r x (K + N)`` rows), so the in-context logits are computed from
   exact copies of the bank rows.

Why the merge is exact: the global Top-K under the order (similarity desc, row asc) is made
of rows each of which is in its own shard's Top-K under the same order, and every shard
orders its rows by the same key (its local rows are a contiguous, ascending slice). A
shard with fewer than K same-class (or N other-class) rows pads with -inf candidates,
which the merge ranks last; `check_capacity` guarantees enough real ones globally.
IC-KD-all (every same-class row) is refused with a sharded bank (see `ickd_plugin.config`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ickd_plugin.distributed import communication_device, dist_world, shard_bounds
from ickd_plugin.retrieval import Retrieval, exact_topk, retrieve
from ickd_plugin.sharded_bank import ShardedMemoryBank


def gather_batch(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """All-gather each tensor's rows in rank order (per-rank counts may differ); returns the
    gathered tensors and the per-rank row counts. One size exchange for all tensors."""
    _, world = dist_world()
    count = tensors[0].shape[0]
    if world == 1:
        return list(tensors), [count]
    comm = communication_device()
    sizes_t = [torch.zeros(1, dtype=torch.long, device=comm) for _ in range(world)]
    dist.all_gather(sizes_t, torch.tensor([count], device=comm))
    sizes = [int(s.item()) for s in sizes_t]
    out = []
    for tensor in tensors:
        padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]), device=comm)
        padded[:count] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(tensor.device))
    return out, sizes


def local_candidates(
    bank: ShardedMemoryBank,
    queries: torch.Tensor,
    labels: torch.Tensor,
    index: torch.Tensor,
    k: int,
    n: int,
    chunk_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This shard's candidates for every query: (similarities [B, K + N] float32, global rows [B, K + N]).

    Columns ``[:K]`` are same-class, ``[K:]`` other-class; a missing candidate (the shard has
    too few rows of that kind) has similarity -inf and row -1.
    """
    num_queries, local = queries.shape[0], bank.features.shape[0]
    sims = torch.full((num_queries, k + n), float("-inf"), device=queries.device)
    rows = torch.full((num_queries, k + n), -1, dtype=torch.long, device=queries.device)
    if local == 0:
        return sims, rows
    class_rows = bank.class_rows
    if class_rows.shape[1] < k:  # retrieve's top-k needs K columns; the padding is -1 (no row)
        class_rows = F.pad(class_rows, (0, k - class_rows.shape[1]), value=-1)
    found = retrieve(queries, labels, bank.local_rows_for(index), bank.features, bank.inv_norms, class_rows,
                     k, min(n, local), chunk_size=chunk_size, center=bank.similarity_center, ties=bank.ties)
    width = found.neg_rows.shape[1]
    sims[:, :k], sims[:, k : k + width] = found.pos_sim, found.neg_sim
    rows[:, :k], rows[:, k : k + width] = found.pos_rows + bank.start, found.neg_rows + bank.start
    return sims, rows.masked_fill_(sims == float("-inf"), -1)


def merge_candidates(
    sims: torch.Tensor, rows: torch.Tensor, k: int, n: int, total_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge every shard's candidates ``[W, B, K + N]`` into (pos_sim, pos_rows, neg_sim, neg_rows).

    Ties go to the lower global row; a missing candidate gets an id past every row, so it
    loses every tie.
    """
    world, num_queries, width = sims.shape
    spare = total_rows + torch.arange(world * width, device=rows.device).view(world, 1, width)
    ids = torch.where(rows >= 0, rows, spare.expand_as(rows))
    out = []
    for part, count in ((slice(0, k), k), (slice(k, k + n), n)):
        values = sims[:, :, part].permute(1, 0, 2).reshape(num_queries, -1)
        part_ids = ids[:, :, part].permute(1, 0, 2).reshape(num_queries, -1)
        top, columns = exact_topk(values, count, ids=part_ids)
        out += [top, part_ids.gather(1, columns)]
    return out[0], out[1], out[2], out[3]


def fetch_rows(bank: ShardedMemoryBank, selected: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Features ``[b_r, S, D]`` of this rank's queries' selected global rows ``selected [B, S]``,
    each sent by the rank that holds it (point to point; the bank's dtype, bit for bit)."""
    rank, world = dist_world()
    offsets = [sum(sizes[:r]) for r in range(world + 1)]
    stops = torch.tensor([shard_bounds(bank.total_rows, r, world)[1] for r in range(world)], device=selected.device)
    owner = torch.searchsorted(stops, selected, right=True)  # [B, S]
    mine = selected[offsets[rank] : offsets[rank + 1]]
    out = torch.empty(mine.shape + (bank.features.shape[1],), dtype=bank.features.dtype, device=bank.features.device)
    local = owner[offsets[rank] : offsets[rank + 1]] == rank
    out[local] = bank.features[mine[local] - bank.start]
    if world == 1:
        return out
    comm = communication_device()
    sends, receives, ops = [], [], []
    for peer in range(world):
        if peer == rank:
            continue
        wanted = owner[offsets[peer] : offsets[peer + 1]] == rank  # rows `peer` needs from me
        if bool(wanted.any()):
            rows = selected[offsets[peer] : offsets[peer + 1]][wanted] - bank.start
            payload = bank.features[rows].to(comm).contiguous()
            sends.append(payload)
            ops.append(dist.P2POp(dist.isend, payload.view(torch.uint8), peer))
        from_peer = owner[offsets[rank] : offsets[rank + 1]] == peer  # rows I need from `peer`
        count = int(from_peer.sum())
        if count:
            buffer = torch.empty((count, out.shape[-1]), dtype=out.dtype, device=comm)
            receives.append((from_peer, buffer))
            ops.append(dist.P2POp(dist.irecv, buffer.view(torch.uint8), peer))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    for mask, buffer in receives:
        out[mask] = buffer.to(out.device)
    return out


@torch.no_grad()
def sharded_retrieve(
    bank: ShardedMemoryBank,
    queries: torch.Tensor,
    labels: torch.Tensor,
    index: torch.Tensor,
    k: int,
    n: int,
    chunk_size: int = 0,
) -> tuple[Retrieval, torch.Tensor, torch.Tensor]:
    """Retrieval for this rank's queries from the sharded bank, as `retrieve` on the whole bank.

    Returns (Retrieval with global rows, positive features [b, K, D], negative features
    [b, N, D]) in the bank's dtype. Collective: every rank must call it at the same step.
    The gathered (index, query) of the global batch is left on the bank for `refresh_last_batch`.
    """
    rank, world = dist_world()
    device = bank.features.device
    (all_queries, meta), sizes = gather_batch(
        queries.to(device), torch.stack([labels.to(device).long(), index.to(device).long()], dim=1)
    )
    bank.remember_batch(meta[:, 1], all_queries)
    sims, rows = local_candidates(bank, all_queries, meta[:, 0], meta[:, 1], k, n, chunk_size)
    if world > 1:
        comm = communication_device()
        sim_parts = [torch.empty_like(sims, device=comm) for _ in range(world)]
        row_parts = [torch.empty_like(rows, device=comm) for _ in range(world)]
        dist.all_gather(sim_parts, sims.to(comm))
        dist.all_gather(row_parts, rows.to(comm))
        sims, rows = torch.stack(sim_parts).to(device), torch.stack(row_parts).to(device)
    else:
        sims, rows = sims[None], rows[None]
    pos_sim, pos_rows, neg_sim, neg_rows = merge_candidates(sims, rows, k, n, bank.total_rows)
    features = fetch_rows(bank, torch.cat([pos_rows, neg_rows], dim=1), sizes)
    mine = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    found = Retrieval(pos_rows[mine], pos_sim[mine], None, neg_rows[mine], neg_sim[mine])
    return found, features[:, :k], features[:, k:]
