"""How a table's rows are laid out in a checkpoint file, so that a rank of any world size reads
only the rows it will own.

Rows are owned by `owner_of(id, seed, W)` = h mod W, with h the 64-bit mix of (id, seed)
(recis.distributed.owner). A sparse file stores each table's rows ordered by their placement
bucket: the low BITS bits of h, bit-reversed. For a power-of-two world W = 2^k (k <= BITS) the
rows rank r owns (low k bits of h = r) are then one contiguous run of buckets, and the file's
`{table}.row_index` (int64, BUCKETS + 1 entries: the first row of each bucket) says where it
starts and ends: the rank reads that run of each file plus the index. Other world sizes, or
other placements, read the whole table and filter by owner while reading.

>>> bucket_run(rank=1, world_size=2)   # h odd: the upper half of the bit-reversed buckets
(512, 1024)
>>> bucket_run(rank=1, world_size=3) is None
True
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from recis.distributed.owner import owner_of

BITS = 10
BUCKETS = 1 << BITS
INDEX = "row_index"


def _bit_reverse_table(bits: int) -> torch.Tensor:
    v = torch.arange(1 << bits, dtype=torch.int64)
    out = torch.zeros_like(v)
    for b in range(bits):
        out |= ((v >> b) & 1) << (bits - 1 - b)
    return out


_REVERSED = _bit_reverse_table(BITS)


def buckets_of(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """The placement bucket (in [0, BUCKETS)) of each id of the table with `seed`."""
    return _REVERSED[owner_of(ids, seed, BUCKETS)]


def arrange(state: Dict[str, torch.Tensor], seed: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """(the table's state with its rows in bucket order, its row index): `state` holds per-row
    tensors of one table (ids, rows, slots, counts, last_seen)."""
    ids = state["ids"]
    buckets = buckets_of(ids, seed)
    order = torch.argsort(buckets, stable=True)
    index = torch.zeros(BUCKETS + 1, dtype=torch.int64)
    index[1:] = torch.cumsum(torch.bincount(buckets, minlength=BUCKETS), 0)
    if bool((order[1:] > order[:-1]).all()):  # already in order (e.g. a table of one bucket)
        return dict(state), index
    return {k: v.index_select(0, order) if v.dim() else v for k, v in state.items()}, index


def bucket_run(rank: int, world_size: int) -> Optional[Tuple[int, int]]:
    """The buckets [lo, hi) holding the rows `rank` owns in a power-of-two world of at most
    BUCKETS ranks; None for other world sizes."""
    if world_size < 1 or world_size > BUCKETS or world_size & (world_size - 1):
        return None
    k = world_size.bit_length() - 1
    r = int(_bit_reverse_table(k)[rank]) if k else 0
    return r << (BITS - k), (r + 1) << (BITS - k)


@dataclass(frozen=True)
class Owner:
    """Which rows of a table a loading rank keeps: `keep(ids)` (None: every row), and for rows
    placed by owner_of(ids, seed, world_size) those numbers, which let it read by bucket run."""

    keep: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    seed: Optional[int] = None
    world_size: int = 1
    rank: int = 0
    nothing: bool = False

    @property
    def everything(self) -> bool:
        return self.keep is None and not self.nothing

    def run(self) -> Optional[Tuple[int, int]]:
        """The bucket run to read ((0, BUCKETS): all; None: no run, read all and filter)."""
        if self.nothing:
            return (0, 0)
        if self.keep is None:
            return (0, BUCKETS)
        return bucket_run(self.rank, self.world_size) if self.seed is not None else None


EVERYTHING = Owner()
NOTHING = Owner(nothing=True)
