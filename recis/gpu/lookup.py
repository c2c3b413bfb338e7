"""The table ops of torch.ops.recis (lookup forward/backward, optimizer updates, find, erase,
gather) as TritonTable methods: what the CUDA kernels of those ops (recis.gpu.ops) run. Same
arguments as the ops, less the table handle; the lookup ops, which take lists of tables, run
one table's share per method call (`lookup_into`, `backward_into`, `backward_apply_into`)."""
import functools
import math
from typing import List, Sequence

import numpy as np
import torch

from recis.gpu.dedup import dedup_keys
from recis.gpu.jagged import (HOT_ROW_SPLIT, check_device, check_ids, dedup_jagged, pool, pow2, segment_sum,
                              unique_grads)
from recis.vocabulary import LOOKUP_MODES, MISSING_MODES, optimizer_of_code


def table_op(fn):
    """An entry point of the table: one call at a time per table (like the C++ table's mutex)."""
    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with self._lock:
            return fn(self, *args, **kwargs)
    return run


def _bump(token: torch.Tensor) -> None:
    if token is not None and token.numel() > 0:
        token.add_(1)


def kernel_hyper(kind: int, hyper: Sequence[float], dim: int, slot_width: int):
    """The 7 kernel scalars of optimizer `kind` (see kernels/optim.py), derived in double precision
    exactly as csrc/optim/sparse_update.cc derives them, and whether FTRL's root is a sqrt."""
    layout = optimizer_of_code(kind)
    if len(hyper) != len(layout.hyper):
        raise ValueError(f"optimizer {layout.name} takes {len(layout.hyper)} hyperparameters {list(layout.hyper)}, "
                         f"got {len(hyper)}")
    if slot_width != layout.slot_width(dim):
        raise ValueError(f"table slots (width {slot_width}) do not match optimizer {layout.name} "
                         f"(width {layout.slot_width(dim)})")
    h = [float(v) for v in hyper]
    v = dict(zip(layout.hyper, h))
    if layout.name == "adagrad":
        h = [v["lr"] / (1.0 + (v["step"] - 1.0) * v["lr_decay"]), v["weight_decay"], v["eps"]]
    elif layout.name in ("adam", "adamw"):
        bc1, bc2 = 1.0 - v["beta1"] ** v["step"], 1.0 - v["beta2"] ** v["step"]
        h = h[:5] + [v["lr"] / bc1, 1.0 / math.sqrt(bc2)]
    elif layout.name == "ftrl":
        p = -v["lr_power"]
        h = h[:4] + [p, 1.0 if float(np.float32(p)) == 0.0 else 0.0]
    h = (h + [0.0] * 7)[:7]
    sqrt = layout.name == "ftrl" and float(np.float32(h[4])) == 0.5
    return h, sqrt


class LookupOps:
    """Mixin of TritonTable: the table ops, with torch.ops.recis arguments less the handle."""

    hot_row_split = HOT_ROW_SPLIT

    def _check_ids(self, t: torch.Tensor, what: str) -> None:
        check_ids(t, what, self.device)

    def _check_device(self, t: torch.Tensor, what: str) -> None:
        check_device(t, what, self.device)

    # ---- forward ----
    @table_op
    def lookup_into(self, values, offsets, w, feature_ns: Sequence[int], batch: int, col_offsets: Sequence[int],
                    out_cols: int, combiner: int, mode: int, out, unique_rows, inverse) -> None:
        """This table's share of a lookup_forward call (recis.gpu.ops): writes its pooled columns
        into `out` ([batch, out_cols], or its [n, dim] block unpooled), its unique rows into
        `unique_rows` ([n]: a row of the call's [T, n] output, whose storage carries the lease of a
        training forward) and its inverse index into `inverse` ([n]). Inputs are checked by the caller."""
        for f in feature_ns:
            if f >= 0:
                self.check_ns(f)
        dev, dim, n = self.device, self.dim, values.shape[0]
        uids, uns, ucounts, inv = dedup_jagged(values, offsets, feature_ns, batch)
        train = mode != LOOKUP_MODES["eval"]
        step_before = self._step
        if train:
            self._advance_step()  # the TTL sweep due at this step boundary, then step + 1
        try:
            urows = self.resolve(uns, uids, ucounts, train)
        except BaseException:
            self._step = step_before  # a refused batch leaves no trace
            raise
        U = uids.numel()
        unique_rows.fill_(-1)
        unique_rows[:U] = urows
        inverse.copy_(inv)
        if mode == LOOKUP_MODES["train_with_grad"]:
            self._add_forward(unique_rows, self._step)
        src, fallback = urows, self.rows.emb[:0]
        if self._missing == MISSING_MODES["init"] and U:
            miss = (urows < 0).nonzero().flatten()
            if miss.numel():
                m = miss.numel()
                fallback = torch.empty(m, dim, device=dev)
                self._fill_initial(uids[miss].contiguous(), uns[miss].contiguous(),
                                   torch.arange(m, device=dev), fallback)
                src = urows.clone()
                src[miss] = -2 - torch.arange(m, device=dev)
        pool(self.rows.emb, src, fallback, offsets, inverse, w, feature_ns, batch, col_offsets, out_cols, combiner,
             n, out=out)

    # ---- backward ----
    def _unique_grads(self, grad_out, offsets, w, unique_rows, inverse, feature_ns, batch, col_offsets, combiner):
        """(rows [U], grads [U, dim], finite [U] int8): every unique row's summed gradient.
        grad_out: this table's block of the output gradient ([batch, out_cols] or [n, dim])."""
        grads, finite = unique_grads(grad_out, offsets, w, inverse, feature_ns, batch, col_offsets, combiner, self.dim,
                                     split=self.hot_row_split)
        return unique_rows[:grads.shape[0]].clone(), grads, finite

    @table_op
    def backward_into(self, grad_out, offsets, w, unique_rows, inverse, feature_ns, batch, col_offsets,
                      combiner) -> None:
        """This table's share of a lookup_backward call: its gradients wait for apply_update."""
        # Without a sparse optimizer the table is not trained: backward keeps no gradients.
        if self._keep_grads:
            self._append_pending(self._unique_grads(grad_out, offsets, w, unique_rows, inverse, feature_ns,
                                                    batch, col_offsets, combiner))

    def check_fused(self, kind: int, hyper: Sequence[float]) -> None:
        """Refuses a fused backward before any table of the call changes."""
        if self._pending:
            raise RuntimeError("recis: fused backward with gradients still pending; call step() first")
        kernel_hyper(kind, hyper, self.dim, self.slot_width)

    @table_op
    def backward_apply_into(self, grad_out, offsets, w, unique_rows, inverse, feature_ns, batch, col_offsets,
                            combiner, kind: int, hyper: List[float]):
        """This table's share of a lookup_backward_apply call; returns (rows updated, rows left
        alone for a NaN/Inf gradient) as a [2] tensor."""
        rows, grads, finite = self._unique_grads(grad_out, offsets, w, unique_rows, inverse, feature_ns, batch,
                                                 col_offsets, combiner)
        has_row = rows >= 0
        counts = torch.stack([has_row.sum(), (has_row & (finite == 0)).sum()])
        self._update_rows(kind, hyper, rows, grads, finite)
        return torch.stack([counts[0] - counts[1], counts[1]])

    def _update_rows(self, kind: int, hyper: Sequence[float], rows, grads, finite) -> None:
        h, sqrt = kernel_hyper(kind, hyper, self.dim, self.slot_width)
        n = rows.numel()
        if n == 0:
            return
        block_d = pow2(self.dim)
        block_r = max(1, min(32, 4096 // block_d))
        r = self.rows
        self.k.optim.sparse_update_kernel[(-(-n // block_r),)](
            r.emb, r.slots, rows, grads, finite, n, self.dim, max(self.slot_width, 1), *h, KIND=kind, SQRT=sqrt,
            BLOCK_R=block_r, BLOCK_D=block_d, enable_fp_fusion=False)

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
        segment_sum(csr, (order * self.dim).contiguous(), grads, grads, fin[order].contiguous(), out, finite,
                    False, True)
        return uniq, out, finite

    @table_op
    def apply_update(self, token, kind: int, hyper: List[float], skip_nonfinite: bool) -> torch.Tensor:
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
        return torch.tensor([applied, nonfinite], dtype=torch.int64, device=token.device)

    @table_op
    def clear_pending(self) -> None:
        self._clear_pending()

    # ---- ids -> rows ----
    @table_op
    def find(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids, "ids")
        self.check_ns(ns)
        return self.find_rows(ns, ids.contiguous())

    @table_op
    def find_or_insert(self, token, ns: int, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids, "ids")
        self.check_ns(ns)
        rows = self.find_or_insert_rows(ns, ids.contiguous())
        _bump(token)
        return rows

    @table_op
    def erase(self, token, ns: int, ids: torch.Tensor) -> int:
        self._check_ids(ids, "ids")
        self.check_ns(ns)
        erased = self.erase_ids(ns, ids.contiguous())
        _bump(token)
        return erased

    @table_op
    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        self._check_ids(rows, "rows")
        out = torch.zeros(rows.numel(), self.dim, device=self.device)
        valid = rows >= 0
        bad = rows >= self.rows.high_water
        if bool(bad.any()):
            raise IndexError(f"recis: row {int(rows[bad][0])} out of range")
        out[valid] = self.rows.emb[rows[valid]]
        return out
