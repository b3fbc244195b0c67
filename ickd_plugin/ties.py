"""Groups of bank rows that are equal bit for bit, found once when a bank is filled.

Why: retrieval promises that ties go to the lower bank row, "so the same bank gives the same
retrieval on every device and run, duplicated images included". A matmul's summation order
depends on the block it computes (chunk size, the row's place in the chunk, the kernel), so
two equal rows in different chunks can get similarities one ulp apart, and the later one
can win. `ickd_plugin.retrieval.retrieve` gives every member of a group the similarity
computed once from the group's representative (`TieGroups`), so equal rows tie exactly.

Finding them costs one hash per row (an integer dot product of the row's bits with fixed
odd weights, wrapping in int64) and an exact comparison of the few rows whose hashes
collide, so a bank without duplicates pays a ``[R]`` hash and a sort. In a distributed
run the hashes of every rank's rows are gathered (8 bytes a row) and the candidate rows'
features exchanged, so the groups (and the representatives' features) are the same on
every rank, also when equal rows live in different shards of a sharded bank.
"""
from __future__ import annotations

import torch

from ickd_plugin.blocks import rows_per_block
from ickd_plugin.distributed import all_gather_rows

_BIT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float64: torch.int64}


def row_bits(features: torch.Tensor) -> torch.Tensor:
    """The rows' bit patterns as integers of the same width (equal rows <=> equal bit rows)."""
    try:
        return features.contiguous().view(_BIT_VIEW[features.dtype])
    except KeyError:
        raise TypeError(f"tie groups: a bank of dtype {features.dtype} is not supported") from None


def row_hashes(features: torch.Tensor) -> torch.Tensor:
    """``[R]`` int64 hash of each row's bits, block by block (equal rows get equal hashes)."""
    out = torch.empty(features.shape[0], dtype=torch.long, device=features.device)
    if features.shape[0] == 0:
        return out
    width = features.shape[1]
    generator = torch.Generator().manual_seed(0x1CD)
    weights = (torch.randint(0, 2**62, (width,), generator=generator) * 2 + 1).to(features.device)
    step = rows_per_block(8 * max(1, width))
    for start in range(0, features.shape[0], step):
        bits = row_bits(features[start : start + step]).long()
        out[start : start + bits.shape[0]] = (bits * weights).sum(dim=1)
    return out


def find_tie_groups(features: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every group of two or more equal rows of the whole bank: ``(member_rows, member_group, representatives)``.

    features: this process's rows of the bank, global rows ``[start, start + R)`` (a replicated
    bank: all of them, ``start`` 0). Collective in a distributed run (every rank calls it).
    Returns the members' global rows, ascending ``[M]``; each one's group ``[M]``, groups
    numbered by their lowest row; and each group's features ``[G, D]`` (a copy, in the
    bank's dtype), identical on every rank.
    """
    device = features.device
    hashes = all_gather_rows(row_hashes(features))  # [total rows], in global row order
    _, inverse, counts = torch.unique(hashes, return_inverse=True, return_counts=True)
    candidates = (counts[inverse] > 1).nonzero().squeeze(1)  # global rows whose hash repeats
    local = candidates[(candidates >= start) & (candidates < start + features.shape[0])]
    rows = all_gather_rows(local)
    narrow = row_bits(features[local - start])
    # gloo cannot gather 16-bit integers: widen (exactly) for the exchange, narrow back after.
    bits = all_gather_rows(narrow.int() if narrow.element_size() < 4 else narrow).to(narrow.dtype)
    if rows.numel() == 0:
        # distinct tensors: a module's buffers that are one object are listed once (named_buffers)
        return (torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dtype=torch.long, device=device),
                features.new_empty((0, features.shape[1])))
    rows, order = rows.sort()
    bits = bits[order]
    _, group, sizes = torch.unique(bits, dim=0, return_inverse=True, return_counts=True)
    tied = sizes[group] > 1  # a hash collision between unequal rows is not a tie
    rows, group = rows[tied], group[tied]
    # Number the groups by their lowest row, so the numbering is the same on every rank.
    first_row = torch.full((int(sizes.numel()),), rows.numel(), dtype=torch.long, device=rows.device)
    first_row.scatter_reduce_(0, group, torch.arange(rows.numel(), device=rows.device), reduce="amin")
    present = first_row < rows.numel()
    renumber = torch.full_like(first_row, -1)
    firsts = first_row[present].sort().values
    renumber[group[firsts]] = torch.arange(firsts.numel(), device=rows.device)
    member_group = renumber[group]
    representatives = bits[tied][firsts].view(features.dtype).to(device)
    return rows.to(device), member_group.to(device), representatives
