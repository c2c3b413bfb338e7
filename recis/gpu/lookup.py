"""The table ops of torch.ops.recis (lookup forward/backward, optimizer updates, find, erase,
gather) for TritonTable, with the same signatures, so recis.nn and recis.optim call either
backend the same way (recis._ops.table_ops)."""
import functools
import math
from typing import List, Optional, Sequence

import numpy as np
import torch

from recis.gpu.dedup import dedup_keys

SLOT_WIDTHS = {0: lambda d: 0, 1: lambda d: d, 2: lambda d: 1, 3: lambda d: 2 * d, 4: lambda d: 2 * d,
               5: lambda d: 2 * d}
HYPER_SIZES = {0: 2, 1: 5, 2: 3, 3: 6, 4: 6, 5: 5}
MAX_VALUES = 2**31 - 1


def table_op(fn):
    """An entry point of the table: one call at a time per table (like the C++ table's mutex),
    run eagerly under torch.compile (the graph breaks around it)."""
    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with self._lock:
            return fn(self, *args, **kwargs)
    return torch.compiler.disable(run)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _bump(token: torch.Tensor) -> None:
    if token is not None and token.numel() > 0:
        token.add_(1)


def kernel_hyper(kind: int, hyper: Sequence[float], dim: int, slot_width: int):
    """The 7 kernel scalars of optimizer `kind` (see kernels/optim.py), derived in double precision
    exactly as csrc/optim/sparse_update.cc derives them, and whether FTRL's root is a sqrt."""
    if kind not in HYPER_SIZES:
        raise ValueError(f"unknown optimizer kind {kind}")
    if len(hyper) != HYPER_SIZES[kind]:
        raise ValueError(f"optimizer kind {kind} takes {HYPER_SIZES[kind]} hyperparameters, got {len(hyper)}")
    if slot_width != SLOT_WIDTHS[kind](dim):
        raise ValueError(f"table slots (width {slot_width}) do not match optimizer kind {kind}")
    h = [float(v) for v in hyper]
    if kind == 1:
        h = [h[0] / (1.0 + (h[4] - 1.0) * h[1]), h[2], h[3]]
    elif kind in (3, 4):
        bc1, bc2 = 1.0 - h[1] ** h[5], 1.0 - h[2] ** h[5]
        h = h[:5] + [h[0] / bc1, 1.0 / math.sqrt(bc2)]
    elif kind == 5:
        p = -h[4]
        h = h[:4] + [p, 1.0 if float(np.float32(p)) == 0.0 else 0.0]
    h = (h + [0.0] * 7)[:7]
    sqrt = kind == 5 and float(np.float32(h[4])) == 0.5
    return h, sqrt


class LookupOps:
    """Mixin of TritonTable: op entry points with torch.ops.recis signatures."""

    # A row seen more often than this in one batch ("hot") gets its gradient summed in chunks of
    # this many terms, then the chunks' sums are added: no lane waits for thousands of terms.
    # Rows seen at most this often are summed in value order, bit for bit as on the CPU.
    hot_row_split = 128

    def _check_ids(self, t: torch.Tensor, what: str) -> None:
        if t.dtype != torch.int64:
            raise TypeError(f"recis: {what} must be int64 ids, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"recis: {what} must be 1-D, got shape {list(t.shape)}")
        self._check_device(t, what)

    def _check_device(self, t: torch.Tensor, what: str) -> None:
        if t.device != self.device:
            raise RuntimeError(f"recis: the table lives on {self.device} but {what} is on {t.device}; "
                               "move the input to the table's device")

    def _weights(self, w: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
        if w is None:
            return None
        if w.dtype != torch.float32:
            raise TypeError(f"recis: per_sample_weights must be float32, got {w.dtype}")
        if w.dim() != 1 or w.shape[0] != n:
            raise ValueError(f"recis: per_sample_weights must have shape [{n}], got {list(w.shape)}")
        self._check_device(w, "per_sample_weights")
        return w.contiguous()

    def _check_offsets(self, off: torch.Tensor, num_bags: int, n: int) -> None:
        first, last = off[0], off[-1]
        bad = (off[1:] < off[:-1]).nonzero()
        first, last, nbad = torch.stack([first, last, bad.new_tensor(bad.shape[0])]).tolist()
        if first != 0:
            raise ValueError(f"recis: offsets must start at 0, got {first}")
        if nbad:
            k = int(bad[0, 0])
            a, b = off[k:k + 2].tolist()
            raise ValueError(f"recis: offsets must be non-decreasing, but offsets[{k}]={a} > offsets[{k + 1}]={b}")
        if last != n:
            raise ValueError(f"recis: the last offset ({last}) must equal the number of values ({n})")

    # ---- forward ----
    @table_op
    def lookup_forward(self, token, handle, values, offsets, weights, feature_ns: Sequence[int], batch: int,
                       col_offsets: Sequence[int], out_cols: int, combiner: int, mode: int):
        self._check_ids(values, "values")
        self._check_ids(offsets, "offsets")
        if combiner not in (0, 1, 2):
            raise ValueError(f"recis: unknown combiner code {combiner}")
        if mode not in (0, 1, 2):
            raise ValueError(f"recis: unknown lookup mode {mode}")
        F = len(feature_ns)
        if F < 1 or batch < 0:
            raise ValueError("recis: need at least one feature and a non-negative batch")
        if len(col_offsets) != F:
            raise ValueError("recis: col_offsets needs one entry per feature")
        num_bags = F * batch
        if offsets.shape[0] != num_bags + 1:
            raise ValueError(f"recis: offsets has {offsets.shape[0]} entries; expected num_bags + 1 = {num_bags + 1}")
        values, offsets = values.contiguous(), offsets.contiguous()
        n = values.shape[0]
        if n > MAX_VALUES:
            raise ValueError("recis: at most 2^31 - 1 values per call")
        w = self._weights(weights, n)
        for f in feature_ns:
            if f >= 0:
                self.check_ns(f)
        self._check_offsets(offsets, num_bags, n)
        dev, dim = self.device, self.dim
        # Namespace of every value (-1: a feature this call skips).
        bounds = offsets[torch.arange(F + 1, device=dev) * batch].tolist()
        lens = torch.tensor([bounds[f + 1] - bounds[f] for f in range(F)], device=dev)
        ns_v = torch.repeat_interleave(torch.tensor(list(feature_ns), dtype=torch.int64, device=dev), lens,
                                       output_size=n)
        inverse = torch.full((n,), -1, dtype=torch.int32, device=dev)
        skipped = any(f < 0 for f in feature_ns)
        sel = (ns_v >= 0).nonzero().flatten() if skipped else None
        keys = values[sel] if skipped else values
        uids, uns, ucounts, inv = dedup_keys(keys, ns_v[sel] if skipped else ns_v,
                                             one_ns=len({f for f in feature_ns if f >= 0}) == 1)
        if skipped:
            inverse[sel] = inv.to(torch.int32)
        else:
            inverse = inv.to(torch.int32)
        train = mode != 0
        step_before = self._step
        if train:
            self._advance_step()  # the TTL sweep due at this step boundary, then step + 1
        try:
            urows = self.resolve(uns, uids, ucounts, train)
        except BaseException:
            self._step = step_before  # a refused batch leaves no trace
            raise
        U = uids.numel()
        unique_rows = torch.full((n,), -1, dtype=torch.int64, device=dev)
        unique_rows[:U] = urows
        if mode == 2:
            self._add_forward(unique_rows, self._step)
        src, fallback = urows, self.rows.emb[:0]
        if self._missing == 1 and U:
            miss = (urows < 0).nonzero().flatten()
            if miss.numel():
                m = miss.numel()
                fallback = torch.empty(m, dim, device=dev)
                self._fill_initial(uids[miss].contiguous(), uns[miss].contiguous(),
                                   torch.arange(m, device=dev), fallback)
                src = urows.clone()
                src[miss] = -2 - torch.arange(m, device=dev)
        out = self._pool(offsets, inverse, src, fallback, w, feature_ns, batch, col_offsets, out_cols, combiner, n)
        _bump(token)
        return out, unique_rows, inverse

    def _pool(self, offsets, inverse, src, fallback, w, feature_ns, batch, col_offsets, out_cols, combiner, n):
        dev, dim, k = self.device, self.dim, self.k.pooling
        block_d = min(128, _pow2(dim))
        emb = self.rows.emb
        wt = w if w is not None else emb
        if combiner == 2:
            out = torch.empty(n, dim, device=dev)
            if n:
                grid = (-(-n // 16), -(-dim // block_d))
                k.unpooled_forward_kernel[grid](inverse, src, emb, fallback, wt, out, n, dim, HAS_W=w is not None,
                                                BLOCK_N=16, BLOCK_D=block_d, enable_fp_fusion=False)
            return out
        out = torch.empty(batch, out_cols, device=dev)
        num_bags = len(feature_ns) * batch
        if num_bags:
            fns = torch.tensor(list(feature_ns), dtype=torch.int64, device=dev)
            cols = torch.tensor(list(col_offsets), dtype=torch.int64, device=dev)
            grid = (-(-num_bags // 16), -(-dim // block_d))
            k.pooled_forward_kernel[grid](offsets, inverse, src, emb, fallback, wt, fns, cols, out, num_bags, batch,
                                          out_cols, dim, HAS_W=w is not None, MEAN=combiner == 1, BLOCK_B=16,
                                          BLOCK_D=block_d, enable_fp_fusion=False)
        return out

    # ---- backward ----
    def _unique_grads(self, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch, col_offsets,
                      combiner):
        """(rows [U], grads [U, dim], finite [U] int8): every unique row's summed gradient."""
        self._check_device(grad_out, "the output gradient")
        if grad_out.dtype != torch.float32:
            raise TypeError(f"recis: output gradient must be float32, got {grad_out.dtype}")
        n = inverse.shape[0]
        if unique_rows.shape[0] != n:
            raise ValueError("recis: unique_rows must have one slot per value")
        w = self._weights(weights, n)
        dev, dim = self.device, self.dim
        grad_out = grad_out.contiguous()
        inv = inverse.to(torch.int64)
        valid = inv >= 0
        # Every unique key has a value, so the counts per key (by the largest index) give U.
        counts = torch.bincount(inv[valid]) if n else inv.new_zeros(0)
        U = counts.numel()
        grads = torch.empty(U, dim, device=dev)
        finite = torch.empty(U, dtype=torch.int8, device=dev)
        if U == 0:
            return unique_rows[:0].clone(), grads, finite
        pos = torch.arange(n, device=dev)
        scale = w
        if combiner != 2:
            k = torch.searchsorted(offsets, pos, right=True) - 1
            f = torch.div(k, batch, rounding_mode="floor")
            base = (k - f * batch) * grad_out.shape[-1] + torch.tensor(list(col_offsets), device=dev)[f]
            if combiner == 1:
                lens = (offsets[k + 1] - offsets[k]).to(torch.float32)
                scale = 1.0 / lens if w is None else (1.0 / lens) * w
        else:
            base = pos * dim
        csr = torch.zeros(U + 1, dtype=torch.int64, device=dev)
        csr[1:] = torch.cumsum(counts, 0)
        n_valid, longest = torch.stack([csr[-1], counts.max()]).tolist()
        order = torch.argsort(torch.where(valid, inv, U), stable=True)[:n_valid]
        src = base[order].contiguous()
        sc = scale[order].contiguous() if scale is not None else src
        split = self.hot_row_split
        if longest <= split:
            self._segment_sum(csr, src, sc, grad_out, None, grads, finite, scale is not None, False)
            return unique_rows[:U].clone(), grads, finite
        # Hot rows: chunks of `split` terms (a row's chunks are consecutive), then one sum per row.
        n_chunks = (counts + split - 1) // split
        seg = torch.repeat_interleave(torch.arange(U, device=dev), n_chunks)
        first = torch.cumsum(n_chunks, 0) - n_chunks
        C = seg.numel()
        ccsr = torch.empty(C + 1, dtype=torch.int64, device=dev)
        ccsr[:C] = csr[seg] + (torch.arange(C, device=dev) - first[seg]) * split
        ccsr[C] = csr[U]
        partial = torch.empty(C, dim, device=dev)
        pfinite = torch.empty(C, dtype=torch.int8, device=dev)
        self._segment_sum(ccsr, src, sc, grad_out, None, partial, pfinite, scale is not None, False)
        rcsr = torch.zeros(U + 1, dtype=torch.int64, device=dev)
        rcsr[1:] = torch.cumsum(n_chunks, 0)
        chunk_src = torch.arange(C, device=dev) * dim
        self._segment_sum(rcsr, chunk_src, chunk_src, partial, None, grads, finite, False, False)
        return unique_rows[:U].clone(), grads, finite

    def _segment_sum(self, csr, src, scale, values, in_finite, out, finite, has_scale: bool, init_first: bool):
        n_seg, dim = out.shape[0], self.dim
        block_d = _pow2(dim)
        block_u = max(1, min(64, 4096 // block_d))
        self.k.pooling.segment_sum_kernel[(-(-n_seg // block_u),)](
            csr, src, scale, values, in_finite if in_finite is not None else finite, out, finite, n_seg, dim,
            HAS_SCALE=has_scale, HAS_FINITE=in_finite is not None, INIT_FIRST=init_first, BLOCK_U=block_u,
            BLOCK_D=block_d, enable_fp_fusion=False)

    @table_op
    def lookup_backward(self, token, handle, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch,
                        col_offsets, combiner) -> None:
        # Without a sparse optimizer the table is not trained: backward keeps no gradients.
        if self._keep_grads:
            self._append_pending(self._unique_grads(grad_out, offsets, weights, unique_rows, inverse, feature_ns,
                                                    batch, col_offsets, combiner))
        _bump(token)

    def _update_rows(self, kind: int, hyper: Sequence[float], rows, grads, finite) -> None:
        h, sqrt = kernel_hyper(kind, hyper, self.dim, self.slot_width)
        n = rows.numel()
        if n == 0:
            return
        block_d = _pow2(self.dim)
        block_r = max(1, min(32, 4096 // block_d))
        r = self.rows
        self.k.optim.sparse_update_kernel[(-(-n // block_r),)](
            r.emb, r.slots, rows, grads, finite, n, self.dim, max(self.slot_width, 1), *h, KIND=kind, SQRT=sqrt,
            BLOCK_R=block_r, BLOCK_D=block_d, enable_fp_fusion=False)

    @table_op
    def lookup_backward_apply(self, token, handle, grad_out, offsets, weights, unique_rows, inverse, feature_ns,
                              batch, col_offsets, combiner, kind: int, hyper: List[float]) -> torch.Tensor:
        if self._pending:
            raise RuntimeError("recis: fused backward with gradients still pending; call step() first")
        kernel_hyper(kind, hyper, self.dim, self.slot_width)  # bad hyperparameters fail before any work
        rows, grads, finite = self._unique_grads(grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch,
                                                 col_offsets, combiner)
        has_row = rows >= 0
        with_row, bad = torch.stack([has_row.sum(), (has_row & (finite == 0)).sum()]).tolist()
        self._update_rows(kind, hyper, rows, grads, finite)
        _bump(token)
        return torch.tensor([with_row - bad, bad], dtype=torch.int64)

    def _merged_pending(self):
        """The pending gradients with each row once (summed in backward order), as C++'s
        PendingGrads::merge_duplicates."""
        if len(self._pending) == 1:
            return self._pending[0]
        rows = torch.cat([p[0] for p in self._pending])
        grads = torch.cat([p[1] for p in self._pending])
        fin = torch.cat([p[2] for p in self._pending])
        uniq, _, counts, inverse = dedup_keys(rows, torch.zeros_like(rows), by_partition=False, one_ns=True)
        order = torch.argsort(inverse, stable=True)
        csr = torch.zeros(uniq.numel() + 1, dtype=torch.int64, device=self.device)
        csr[1:] = torch.cumsum(counts, 0)
        out = torch.empty(uniq.numel(), self.dim, device=self.device)
        finite = torch.empty(uniq.numel(), dtype=torch.int8, device=self.device)
        self._segment_sum(csr, (order * self.dim).contiguous(), grads, grads, fin[order].contiguous(), out, finite,
                          False, True)
        return uniq, out, finite

    @table_op
    def apply_update(self, token, handle, kind: int, hyper: List[float], skip_nonfinite: bool) -> torch.Tensor:
        applied = nonfinite = 0
        if self._pending:
            rows, grads, finite = self._merged_pending()
            has_row = rows >= 0
            applied, nonfinite = torch.stack([(has_row & (finite != 0)).sum(),
                                              (has_row & (finite == 0)).sum()]).tolist()
            if nonfinite and not skip_nonfinite:
                applied = 0  # leave every row untouched
            else:
                self._update_rows(kind, hyper, rows, grads, finite)
        self._clear_pending()
        _bump(token)
        return torch.tensor([applied, nonfinite], dtype=torch.int64)

    @table_op
    def clear_pending(self, token, handle) -> None:
        self._clear_pending()
        _bump(token)

    # ---- ids -> rows ----
    @table_op
    def find(self, handle, ns: int, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids, "ids")
        self.check_ns(ns)
        return self.find_rows(ns, ids.contiguous())

    @table_op
    def find_or_insert(self, token, handle, ns: int, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids, "ids")
        self.check_ns(ns)
        rows = self.find_or_insert_rows(ns, ids.contiguous())
        _bump(token)
        return rows

    @table_op
    def erase(self, token, handle, ns: int, ids: torch.Tensor) -> int:
        self._check_ids(ids, "ids")
        self.check_ns(ns)
        erased = self.erase_ids(ns, ids.contiguous())
        _bump(token)
        return erased

    @table_op
    def gather(self, handle, rows: torch.Tensor) -> torch.Tensor:
        self._check_ids(rows, "rows")
        out = torch.zeros(rows.numel(), self.dim, device=self.device)
        valid = rows >= 0
        bad = rows >= self.rows.high_water
        if bool(bad.any()):
            raise IndexError(f"recis: row {int(rows[bad][0])} out of range")
        out[valid] = self.rows.emb[rows[valid]]
        return out
