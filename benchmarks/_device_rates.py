"""GPU-side rates for ``embedding_step.py --device cuda``: the device's copy bandwidth, the
bandwidth of recis' pooled forward (the pooling kernel alone and the whole lookup with hashing),
and the id map's find rate on a large batch at a known load factor."""

from __future__ import annotations

import statistics
import time

import torch

from recis._ops import kernels
from recis.gpu.jagged import pool


def _timed(fn, device, reps):
    fn()
    torch.cuda.synchronize(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def copy_bandwidth(device, gib=1.0, reps=10):
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written)."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = _timed(lambda: dst.copy_(src), device, reps)
    del src, dst
    return 2 * n * 4 / t


def forward_bandwidth(ec, kjt, device, reps=20):
    """Pooled forward of one group of `ec` (tables on the Triton backend): bytes of the rows read
    (one row per value) and of the output written, per second; for the pooling kernel alone
    and for the whole eval-mode lookup (dedup + hashing + find + pooling)."""
    group = ec.groups[0]
    impl = group._impl
    keys = kjt.keys()
    B, D = kjt.stride(), group.embedding_dim
    values, offsets = kjt.values(), kjt.offsets()
    feature_ns = list(range(len(keys)))
    col_offsets = [f * D for f in range(len(keys))]
    out_cols = len(keys) * D
    k = kernels(group)
    with torch.no_grad():
        _, unique_rows, inverse = k.lookup_forward(group.token, group.handle, values, offsets, None, feature_ns, B,
                                                   col_offsets, out_cols, 0, 0)
        n = values.numel()
        fb = impl.rows.emb[:0]
        t_pool = _timed(lambda: pool(impl.rows.emb, unique_rows, fb, offsets, inverse, None, feature_ns, B,
                                     col_offsets, out_cols, 0, n), device, reps)
        t_full = _timed(lambda: k.lookup_forward(group.token, group.handle, values, offsets, None, feature_ns, B,
                                                 col_offsets, out_cols, 0, 0), device, reps)
    nbytes = n * D * 4 + B * out_cols * 4
    return {"values": n, "bytes": nbytes, "pool_ms": t_pool * 1e3, "pool_bytes_per_s": nbytes / t_pool,
            "lookup_ms": t_full * 1e3, "lookup_bytes_per_s": nbytes / t_full}


def large_find_rate(table, ids, device, target_n=1 << 24, reps=10):
    """find() of `target_n` present ids (the table's ids, repeated and shuffled) per second, and
    the id map's load factor (live ids / slots)."""
    reps_needed = -(-target_n // ids.numel())
    big = ids.repeat(reps_needed)[:target_n]
    big = big[torch.randperm(big.numel(), device=device)]
    impl = table.group._impl
    ns = torch.full_like(big, table.ns)
    t = _timed(lambda: impl.map.find(big, ns), device, reps)
    rows = impl.map.find(big, ns)
    return {"find_ids": big.numel(), "find_ids_per_s": big.numel() / t, "all_present": bool((rows >= 0).all()),
            "load": impl.map.size / max(impl.map.cap, 1), "map_slots": impl.map.cap}


def large_insert_rate(make_table, ids, device, reps=3):
    """find_or_insert of `ids` (distinct, absent) into an empty table, per second, rehashes
    included; and into a reserve()d table (no rehash)."""
    out = {}
    for label, reserve in (("insert_ids_per_s", False), ("insert_reserved_ids_per_s", True)):
        times = []
        for _ in range(reps):
            table = make_table()
            if reserve:
                table.reserve(ids.numel())
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            table.find_or_insert(ids)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            del table
        out[label] = ids.numel() / statistics.median(times)
    out["insert_ids"] = ids.numel()
    return out
