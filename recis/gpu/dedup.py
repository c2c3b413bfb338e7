"""Batch dedup of (namespace, id) keys on the keys' device, in csrc/ops/dedup.cc's order:
unique keys by hash partition (the top 3 bits of hash_id), then by first sighting. Same keys,
same order, so new ids get the same row numbers as on the CPU."""
from typing import Tuple

import torch

from recis.gpu._flavors import flavor


def key_hashes(ids: torch.Tensor, ns: torch.Tensor) -> torch.Tensor:
    """hash_id(ids[i], ns[i]) as int64 (bit pattern of the uint64)."""
    n = ids.numel()
    out = torch.empty(n, dtype=torch.int64, device=ids.device)
    if n:
        flavor(ids.device).hashing.hash_partition_kernel[(-(-n // 256),)](ids, ns, out, n, BLOCK=256)
    return out


def dedup_keys(ids: torch.Tensor, ns: torch.Tensor, by_partition: bool = True, one_ns: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unique ids, their namespaces, their counts, inverse int64 [n]) of the keys (ns[i], ids[i]).
    `one_ns=True` promises a single namespace (saves a sort)."""
    n = ids.numel()
    dev = ids.device
    if n == 0:
        e = torch.empty(0, dtype=torch.int64, device=dev)
        return e, e, e, e
    h = key_hashes(ids, ns)
    order = torch.arange(n, device=dev)
    if not one_ns:
        order = torch.argsort(ns, stable=True)
    order = order[torch.argsort(h[order], stable=True)]
    hs, nss = h[order], ns[order]
    new = torch.ones(n, dtype=torch.bool, device=dev)
    new[1:] = (hs[1:] != hs[:-1]) | (nss[1:] != nss[:-1])
    gid = torch.cumsum(new, 0) - 1
    starts = new.nonzero().flatten()
    first = order[starts]  # stable sorts: a group's first entry is its first sighting
    counts = torch.diff(starts, append=torch.tensor([n], device=dev))
    key = first
    if by_partition:
        key = ((h[first] >> 61) & 7) * n + first
    rank = torch.argsort(key)
    slot = torch.empty_like(rank)
    slot[rank] = torch.arange(rank.numel(), device=dev)
    inverse = torch.empty(n, dtype=torch.int64, device=dev)
    inverse[order] = slot[gid]
    pick = first[rank]
    return ids[pick], ns[pick], counts[rank], inverse


def first_seen_unique(ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unique ids in first-seen order, inverse, counts) of one namespace's ids."""
    uniq, _, counts, inverse = dedup_keys(ids, torch.zeros_like(ids), by_partition=False, one_ns=True)
    return uniq, inverse, counts
