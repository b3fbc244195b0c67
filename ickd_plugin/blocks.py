"""How much of a bank a whole-bank pass copies at a time.

A pass over every row that needs a copy of the rows (float32 norms, hashing on the host,
staging for a broadcast) works block by block, so its copies stay at about 16 MiB whatever
the bank's size: a 5 GB ImageNet bank is never upcast, hashed or staged whole.
"""
from __future__ import annotations

# Bytes per block when a whole-bank pass needs a copy of the rows (float32 norms, hashing on
# the host, staging for a broadcast): the copies then stay at about 16 MiB whatever the bank's size.
BLOCK_BYTES = 1 << 24


def rows_per_block(row_bytes: int) -> int:
    """Rows of ``row_bytes`` bytes each that fit in one block (at least one)."""
    return max(1, BLOCK_BYTES // max(1, row_bytes))
