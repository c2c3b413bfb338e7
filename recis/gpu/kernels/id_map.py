"""GPU id map: open addressing with linear probing over full 64-bit ids.

The map is one int64 tensor of 2 * cap words (cap a power of two): slot i holds the id at
[2i] and a tag at [2i + 1]: 0 = empty, -1 = erased (a tombstone), else (ns << 32) | (row + 1).
Emptiness lives in the tag, never in the id, so every int64 (0, -1, INT64_MIN, INT64_MAX) is
a valid id. A slot's home is the top bits of hash_id(id, ns). New ids claim a slot with an
atomic compare-and-swap on its tag, so any number of them are placed in parallel (a lane that
is done compares against -2, a tag no slot holds, so its CAS never writes).
"""
import triton
import triton.language as tl

from .hashing import hash_id
from .reduce import any_true



@triton.jit
def _home(ids, ns, shift):
    return (hash_id(ids, ns) >> shift).to(tl.int64)


@triton.jit
def _probe(map_ptr, ids, ns, live, mask_slots, shift, BLOCK: tl.constexpr):
    """(row or -1, slot) of each live lane's key: the slot of the hit, or where the run ended."""
    pos = _home(ids, ns, shift)
    done = ~live
    row = tl.full([BLOCK], -1, tl.int64)
    while any_true(~done):
        key = tl.load(map_ptr + 2 * pos, mask=~done, other=0)
        tag = tl.load(map_ptr + 2 * pos + 1, mask=~done, other=0)
        hit = ~done & (tag > 0) & (key == ids) & ((tag >> 32) == ns)
        row = tl.where(hit, (tag & 0xFFFFFFFF) - 1, row)
        done = done | hit | (tag == 0)
        pos = tl.where(done, pos, (pos + 1) & mask_slots)
    return row, pos


@triton.jit
def find_kernel(map_ptr, ids_ptr, ns_ptr, rows_ptr, n, mask_slots, shift,
                counts_ptr, add_ptr, last_ptr, step, TOUCH: tl.constexpr, BLOCK: tl.constexpr):
    """rows[i] = row of (ns[i], ids[i]) or -1. With TOUCH (keys distinct), a hit's metadata is
    updated: count += add[i] (saturating at 2^32 - 1) and last_seen = step."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    ids = tl.load(ids_ptr + offs, mask=m, other=0)
    ns = tl.load(ns_ptr + offs, mask=m, other=0).to(tl.int64)
    row, _ = _probe(map_ptr, ids, ns, m, mask_slots, shift, BLOCK)
    tl.store(rows_ptr + offs, row, mask=m)
    if TOUCH:
        t = m & (row >= 0)
        c = tl.load(counts_ptr + row, mask=t, other=0) + tl.load(add_ptr + offs, mask=t, other=0)
        tl.store(counts_ptr + row, tl.minimum(c, 4294967295), mask=t)
        tl.store(last_ptr + row, tl.full([BLOCK], 0, tl.int64) + step, mask=t)


@triton.jit
def insert_kernel(map_ptr, ids_ptr, ns_ptr, rows_ptr, n, mask_slots, shift, BLOCK: tl.constexpr):
    """Places n distinct keys that are absent from the map: key i gets row rows[i]. Each lane
    walks its probe run and claims the first empty or erased slot with a CAS on the tag."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    ids = tl.load(ids_ptr + offs, mask=m, other=0)
    ns = tl.load(ns_ptr + offs, mask=m, other=0).to(tl.int64)
    row = tl.load(rows_ptr + offs, mask=m, other=0)
    new_tag = (ns << 32) | (row + 1)
    pos = _home(ids, ns, shift)
    done = offs >= n
    while any_true(~done):
        tag = tl.load(map_ptr + 2 * pos + 1, mask=~done, other=1)
        free = ~done & (tag <= 0)
        old = tl.atomic_cas(map_ptr + 2 * pos + 1, tl.where(free, tag, tag * 0 - 2), new_tag)
        won = free & (old == tag)
        tl.store(map_ptr + 2 * pos, ids, mask=won)
        done = done | won
        # A lost race re-reads the same slot; an occupied slot moves the probe on.
        pos = tl.where(done | (free & ~won), pos, (pos + 1) & mask_slots)


@triton.jit
def erase_kernel(map_ptr, ids_ptr, ns_ptr, rows_ptr, n, mask_slots, shift, BLOCK: tl.constexpr):
    """Erases n distinct keys: their slots become tombstones; rows[i] = the freed row or -1."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    ids = tl.load(ids_ptr + offs, mask=m, other=0)
    ns = tl.load(ns_ptr + offs, mask=m, other=0).to(tl.int64)
    row, pos = _probe(map_ptr, ids, ns, m, mask_slots, shift, BLOCK)
    tl.store(map_ptr + 2 * pos + 1, tl.full([BLOCK], -1, tl.int64), mask=m & (row >= 0))
    tl.store(rows_ptr + offs, row, mask=m)


@triton.jit
def rehash_kernel(old_ptr, old_cap, map_ptr, mask_slots, shift, BLOCK: tl.constexpr):
    """Moves every live slot of the old map into the (empty, larger) new map."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < old_cap
    ids = tl.load(old_ptr + 2 * offs, mask=m, other=0)
    tag = tl.load(old_ptr + 2 * offs + 1, mask=m, other=0)
    pos = _home(ids, tag >> 32, shift)
    done = ~m | (tag <= 0)
    while any_true(~done):
        cur = tl.load(map_ptr + 2 * pos + 1, mask=~done, other=1)
        free = ~done & (cur == 0)
        old = tl.atomic_cas(map_ptr + 2 * pos + 1, tl.where(free, tag * 0, tag * 0 - 2), tag)
        won = free & (old == 0)
        tl.store(map_ptr + 2 * pos, ids, mask=won)
        done = done | won
        pos = tl.where(done | (free & ~won), pos, (pos + 1) & mask_slots)
