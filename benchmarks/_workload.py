"""Workload generation and system probes for ``benchmarks/embedding_step.py``.

The workload mirrors the CPU baseline study: ``F`` sparse features, ``B`` samples per batch, 1-3 ids
per (sample, feature) bag, ids drawn per feature from a truncated Zipf(alpha) over ``R`` ranks, every
(feature, rank) pair hashed with splitmix64 to a distinct 63-bit id.  ``rows`` is the size of the
shared table the vocabulary has to fit in: ``R = int(0.9 * rows / F)`` (90% of capacity).

Besides the raw ids (what recis gets) every batch carries pre-mapped row indices for the peers:

* ``shared`` rows: every (feature, rank) sits on a random row of one table of ``rows`` rows
  (random row order, as if the table had been warmed with every id in random order);
* ``per-feature`` rows: each feature owns a table of ``ceil(rows / F)`` rows and its ranks sit on
  random rows of it.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch

from recis import hashing

_MASK63 = np.uint64((1 << 63) - 1)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 (increment + finalizer, recis.hashing) of every uint64 in ``x``, vectorized, wrapping arithmetic."""
    with np.errstate(over="ignore"):
        return hashing.mix(x.astype(np.uint64) + np.uint64(hashing.GOLDEN))


def _n_distinct(x: np.ndarray) -> int:
    s = np.sort(x)  # a sort is much faster than np.unique's hash path at 1e7 values
    return int(s.size and 1 + np.count_nonzero(s[1:] != s[:-1]))


@dataclass
class Batch:
    """One pre-generated batch in every layout a contestant needs (all int64 CPU tensors)."""

    batch_size: int
    lengths: torch.Tensor  # [F*B] ids per bag, feature-major (torchrec KJT order)
    fm_offsets: torch.Tensor  # [F*B+1] offsets of the feature-major bags
    raw: torch.Tensor  # [N] raw 63-bit ids, feature-major
    frow: torch.Tensor  # [N] rows in the per-feature tables, feature-major
    srow_sm: torch.Tensor  # [N] rows in one shared table, sample-major (bag b*F+f)
    sm_offsets: torch.Tensor  # [B*F+1] offsets of the sample-major bags
    n_ids: int
    n_unique: int
    per_feature_raw: List[torch.Tensor] = field(default_factory=list)  # raw ids of feature f


class Workload:
    def __init__(self, features=26, rows=1_000_000, dim=64, alpha=1.05, min_ids=1, max_ids=3,
                 fill=0.9, seed=0):
        self.features, self.rows, self.dim, self.alpha = features, int(rows), dim, alpha
        self.min_ids, self.max_ids, self.seed = min_ids, max_ids, seed
        self.ranks = max(1, int(fill * self.rows / features))
        self.cap_per_feature = math.ceil(self.rows / features)
        F, R = features, self.ranks
        rng = np.random.default_rng(seed)
        keys = (np.arange(F, dtype=np.uint64)[:, None] << np.uint64(32)) | np.arange(R, dtype=np.uint64)[None, :]
        ids = (splitmix64(keys) & _MASK63).astype(np.int64)  # [F, R]
        if _n_distinct(ids.reshape(-1)) != ids.size:  # ~1e-5 chance at 1e7 rows: fail loudly, never alias
            raise RuntimeError("splitmix64 produced a duplicate id; change --seed")
        self.ids = ids
        self.shared_row = rng.permutation(self.rows)[: F * R].reshape(F, R).astype(np.int64)
        self.feat_row = np.stack([rng.permutation(self.cap_per_feature)[:R] for _ in range(F)]).astype(np.int64)
        w = np.arange(1, R + 1, dtype=np.float64) ** (-alpha)
        self.cdf = np.cumsum(w) / w.sum()
        self._rng = rng

    @property
    def vocab(self) -> int:
        return self.features * self.ranks

    def warm_order(self, n_chunks: int = 32):
        """Every id once, in random global order, as chunks of per-feature id arrays.

        Yields ``(feature, ids)`` pairs; features inside a chunk come in random order, so the rows of
        a merged physical table end up in (nearly) random order across features.
        """
        rng = np.random.default_rng(self.seed + 1)
        flat = rng.permutation(self.vocab)
        for chunk in np.array_split(flat, n_chunks):
            f_of = chunk // self.ranks
            for f in rng.permutation(self.features):
                sel = chunk[f_of == f]
                if sel.size:
                    yield int(f), torch.from_numpy(self.ids[f, sel % self.ranks].copy())

    def batches(self, batch_size: int, n: int, seed_offset: int = 0) -> List[Batch]:
        rng = np.random.default_rng((self.seed, batch_size, seed_offset))
        return [self._batch(batch_size, rng) for _ in range(n)]

    def _batch(self, B: int, rng) -> Batch:
        F, R = self.features, self.ranks
        lengths = rng.integers(self.min_ids, self.max_ids + 1, size=(F, B)).astype(np.int64)
        n = int(lengths.sum())
        feat = np.repeat(np.arange(F), lengths.sum(axis=1))
        rank = np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), R - 1)
        raw = self.ids[feat, rank]
        frow = self.feat_row[feat, rank]
        srow = self.shared_row[feat, rank]
        fm_len = lengths.reshape(-1)
        fm_off = np.zeros(F * B + 1, dtype=np.int64)
        np.cumsum(fm_len, out=fm_off[1:])
        # sample-major order for one nn.EmbeddingBag whose [B*F, D] output views as [B, F*D]
        bag_fm = np.repeat(np.arange(F * B), fm_len)
        bag_sm = (bag_fm % B) * F + bag_fm // B
        perm = np.argsort(bag_sm, kind="stable")
        sm_len = lengths.T.reshape(-1)
        sm_off = np.zeros(F * B + 1, dtype=np.int64)
        np.cumsum(sm_len, out=sm_off[1:])
        fo = np.concatenate([[0], np.cumsum(lengths.sum(axis=1))])
        t = torch.from_numpy
        return Batch(
            batch_size=B, lengths=t(fm_len.copy()), fm_offsets=t(fm_off), raw=t(raw.copy()),
            frow=t(frow.copy()), srow_sm=t(srow[perm].copy()), sm_offsets=t(sm_off), n_ids=n,
            n_unique=_n_distinct(feat.astype(np.int64) * R + rank),
            per_feature_raw=[t(raw[fo[f]:fo[f + 1]].copy()) for f in range(F)],
        )


# ----------------------------------------------------------------------------------------------
# system probes
# ----------------------------------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """Busy jiffies of the whole machine (user+nice+system+irq+softirq; idle, iowait, steal excluded)."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return v[0] + v[1] + v[2] + v[5] + v[6]
    except (OSError, ValueError, IndexError):
        return 0


def _own_ticks() -> int:
    try:
        with open("/proc/self/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime, stime (fields 14, 15)
    except (OSError, ValueError, IndexError):
        return 0


class Probe:
    """Wall time, minor faults and other processes' CPU over a window."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.busy = _busy_ticks()
        self.own = _own_ticks()

    def since(self, start: "Probe"):
        """Returns (wall seconds, minor faults, background CPU seconds)."""
        bg = ((self.busy - start.busy) - (self.own - start.own)) / _HZ
        return self.wall - start.wall, self.flt - start.flt, max(bg, 0.0)


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
