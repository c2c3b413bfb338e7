"""TritonTable: the GPU backend of a TableGroup, with the interface of the C++ recis._C.HashTable
(sizes, slots, policies, state export/import) plus the table ops that the CUDA kernels of
torch.ops.recis run (recis.gpu.lookup, recis.gpu.ops). Same semantics as the C++ table:
ids -> rows, initial values, admission, TTL/LFU eviction and the gradient window."""
import collections
import math
import threading
import weakref
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from recis.gpu._flavors import flavor
from recis.gpu.dedup import dedup_keys, first_seen_unique
from recis.gpu.id_map import DeviceIdMap
from recis.gpu.lookup import LookupOps, table_op
from recis.gpu.ops import register
from recis.gpu.rows import UINT32_MAX, DeviceRows
from recis.hashing import seed_key, signed
from recis.vocabulary import EVICT_POLICIES, INIT_KINDS

_BLOCK_N = 32
MAX_SKETCH_WIDTH = 2**32 - 1


def _f32(x: float) -> float:
    return float(np.float32(x))


class TritonTable(LookupOps):
    """One physical table in device memory (`device` may be "cpu": the kernels then run in
    Triton's interpreter, which is how the tests check them against the C++ table)."""

    def __init__(self, dim: int, seeds: Sequence[int], init_kind: int, a: float, b: float, c: float,
                 device="cuda"):
        if dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {dim}")
        if not seeds:
            raise ValueError("a table needs at least one namespace")
        self.device = torch.device(device)
        self.k = flavor(self.device)
        self._dim = int(dim)
        self._seeds = [int(s) & (2**64 - 1) for s in seeds]
        self._init = (int(init_kind), _f32(a), _f32(b), _f32(c))
        self._ns_keys = torch.tensor([signed(seed_key(s)) for s in self._seeds], dtype=torch.int64,
                                     device=self.device)
        n = len(self._seeds)
        self.map = DeviceIdMap(n, self.device)
        self.rows = DeviceRows(self._dim, self.device)
        self._capacity: List[int] = [0] * n
        self._policy: List[int] = [0] * n
        self._evict_fraction: List[float] = [0.0] * n
        self._min_count = 0
        self._sketch: Optional[torch.Tensor] = None
        self._sketch_shape = (0, 0)
        self._missing = 0
        self._step = 0
        # Rows a gradient may still reach (as in C++, see HashTable::add_forward): step -> live
        # training forwards of that step; the steps of released forwards arrive in _released
        # (appended wherever autograd frees a forward's graph) and are counted off under the lock.
        self._live: Dict[int, int] = {}
        self._released: collections.deque = collections.deque()
        self._keep_grads = False
        self._names = [""] * len(self._seeds)
        self._stats = {"inserts": 0, "evictions": 0, "not_admitted": 0}
        self._pending: List[tuple] = []
        self._pending_guard: Optional[torch.Tensor] = None  # smallest last_seen of the pending rows
        self._lock = threading.RLock()
        self.handle = register(self)  # the Triton backend's own registry (recis.gpu.ops)

    # ---- accessors (as recis._C.HashTable) ----
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def slot_width(self) -> int:
        return self.rows.width

    @property
    def num_namespaces(self) -> int:
        return len(self._seeds)

    def check_ns(self, ns: int) -> None:
        if not 0 <= ns < self.num_namespaces:
            raise IndexError(f"namespace {ns} out of range for a table with {self.num_namespaces}")

    def size(self, ns: int) -> int:
        self.check_ns(ns)
        return self.map.sizes[ns]

    def map_capacity(self, ns: int) -> int:
        self.check_ns(ns)
        return self.map.cap

    def map_bytes(self, ns: int) -> int:
        """This namespace's share of the group's one map (by live ids)."""
        total = self.map.size
        return self.map.memory_bytes() * self.map.sizes[ns] // total if total else 0

    def memory_bytes(self) -> int:
        sketch = self._sketch.numel() * 4 if self._sketch is not None else 0
        return self.map.memory_bytes() + self.rows.memory_bytes() + sketch

    def row_bytes(self) -> int:
        return self.rows.row_bytes()

    def get_step(self) -> int:
        return self._step

    def set_step(self, s: int) -> None:
        self._step = int(s)

    def pending_rows(self) -> int:
        return sum(int(p[0].numel()) for p in self._pending)

    def live_forwards(self) -> int:
        with self._lock:
            self._count_releases()
            return sum(self._live.values())

    @table_op
    def set_keep_grads(self, keep: bool) -> None:
        self._keep_grads = bool(keep)
        if not keep:
            self._clear_pending()

    def set_name(self, ns: int, name: str) -> None:
        self.check_ns(ns)
        self._names[ns] = str(name)

    def _label(self, ns: int) -> str:
        return f"table {self._names[ns]!r} (namespace {ns})" if self._names[ns] else f"namespace {ns}"

    def stats(self) -> Dict[str, int]:
        return dict(self._stats)

    # ---- configuration ----
    @table_op
    def set_slots(self, width: int, init: Sequence[float], reset: bool) -> None:
        if len(init) != width:
            raise ValueError(f"slot init has {len(init)} values, expected {width}")
        same = width == self.rows.width
        self.rows.relayout(width, [_f32(v) for v in init])
        if same and width > 0 and reset:
            for ns in range(self.num_namespaces):
                self.rows.reset_slots(self.map.live(ns)[1])

    def set_admission(self, min_count: int, width: int, depth: int) -> None:
        if not 1 <= depth <= 8:
            raise ValueError(f"sketch depth must be in [1, 8], got {depth}")
        if min_count > 1 and not 1 <= width <= MAX_SKETCH_WIDTH:
            raise ValueError(f"GPU admission sketch width must be in [1, 2^32 - 1], got {width}")
        self._min_count = int(min_count)
        if min_count > 1:
            self._sketch = torch.zeros(width * depth, dtype=torch.int64, device=self.device)
            self._sketch_shape = (int(width), int(depth))
        else:
            self._sketch, self._sketch_shape = None, (0, 0)

    def set_capacity(self, ns: int, capacity: int, policy: int, evict_fraction: float) -> None:
        self.check_ns(ns)
        self._capacity[ns], self._policy[ns], self._evict_fraction[ns] = int(capacity), int(policy), evict_fraction

    def set_missing(self, mode: int) -> None:
        self._missing = int(mode)

    @table_op
    def reserve(self, ns: int, n: int) -> None:
        self.check_ns(ns)
        self.map.reserve(self.map.size + n)
        self.rows.reserve(n)

    @table_op
    def get_sketch(self) -> torch.Tensor:
        """The admission sketch's counters in their own dtype, uint32 (as the C++ table gives them;
        they are kept in int64 here, clamped to the uint32 range, so the conversion is exact)."""
        if self._sketch is None:
            return torch.empty(0, dtype=torch.uint32, device=self.device)
        return self._sketch.to(torch.uint32)

    @table_op
    def set_sketch(self, v: torch.Tensor) -> None:
        n = self._sketch.numel() if self._sketch is not None else 0
        if v.numel() != n:
            raise ValueError(f"admission sketch has {n} counters, the state holds {v.numel()}")
        if n:
            self._sketch.copy_(v.to(torch.int64).clamp(0, UINT32_MAX).reshape(-1))

    # ---- initialization ----
    def _fill_initial(self, ids: torch.Tensor, ns: torch.Tensor, dst: torch.Tensor, out: torch.Tensor) -> None:
        """out[dst[i]] = initial row of (ns[i], ids[i])."""
        n = ids.numel()
        if n == 0:
            return
        kind, a, b, c = self._init
        if kind == INIT_KINDS["uniform"]:
            b = float(np.float32(b) - np.float32(a))  # the span, as the C++ computes it
        block_d = min(64, triton_next_pow2(self._dim))
        grid = (-(-n // _BLOCK_N), -(-self._dim // block_d))
        self.k.init.init_rows_kernel[grid](ids, ns, self._ns_keys, dst, out, n, self._dim, a, b, c, KIND=kind,
                                           BLOCK_N=_BLOCK_N, BLOCK_D=block_d, enable_fp_fusion=False)

    @table_op
    def initial_rows(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        self.check_ns(ns)
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be int64, got {ids.dtype}")
        ids = ids.to(self.device).contiguous()
        out = torch.empty(ids.numel(), self._dim, device=self.device)
        self._fill_initial(ids, self._ns_tensor(ns, ids.numel()), torch.arange(ids.numel(), device=self.device), out)
        return out

    def _ns_tensor(self, ns: int, n: int) -> torch.Tensor:
        return torch.full((n,), ns, dtype=torch.int64, device=self.device)

    # ---- resolve: ids -> rows, with admission, eviction and inserts ----
    def _protected_from(self) -> int:
        """Rows seen at or after this step may still receive gradients: never evict them."""
        self._count_releases()
        guard = self._step
        if self._pending and self._pending_guard is not None:
            guard = min(guard, int(self._pending_guard))
        if self._live:
            guard = min(guard, min(self._live))
        return guard

    def _add_forward(self, unique_rows: torch.Tensor, step: int) -> None:
        """Leases `step` for as long as the storage of `unique_rows` lives (autograd saves it
        for backward, so until the graph is freed)."""
        self._live[step] = self._live.get(step, 0) + 1
        weakref.finalize(unique_rows.untyped_storage(), self._released.append, step).atexit = False

    def _count_releases(self) -> None:
        while self._released:
            step = self._released.popleft()
            left = self._live.get(step, 0) - 1
            if left > 0:
                self._live[step] = left
            else:
                self._live.pop(step, None)

    def _append_pending(self, entry: tuple) -> None:
        """Keeps a backward's (rows, grads, finite), merging duplicate rows first when the buffer
        outgrows the live rows (as HashTable::append_pending)."""
        if len(self._pending) > 1 and self.pending_rows() > 2 * (self.map.size + 1):
            self._pending = [self._merged_pending()]
        rows = entry[0]
        # Without a sync: rows without one (-1) count as UINT32_MAX; a table without rows has only those.
        if rows.numel() and self.rows.last_seen.numel():
            seen = torch.where(rows >= 0, self.rows.last_seen[rows.clamp(min=0)], UINT32_MAX).min()
            self._pending_guard = seen if self._pending_guard is None else torch.minimum(self._pending_guard, seen)
        self._pending.append(entry)

    def _clear_pending(self) -> None:
        self._pending.clear()
        self._pending_guard = None

    def _holds_message(self, ns: int, cap: int, incoming: int, cands: int, batch_rows: int) -> str:
        head = (f"recis: {self._label(ns)} is at its capacity of {cap} rows and cannot make room for the {incoming} "
                f"new ids of this batch: only {cands} rows may be evicted. ")
        forwards, pending = sum(self._live.values()), self.pending_rows()
        if not forwards and not pending:
            return head + (f"The other rows belong to this batch ({batch_rows} of its ids already have rows); raise "
                           "the capacity or send smaller batches")
        return head + self._describe_holds(forwards, pending)

    @staticmethod
    def _describe_holds(forwards: int, pending: int) -> str:
        """What holds a table's rows, and how to release them (as describe_holds in C++)."""
        held = []
        if forwards:
            held.append(f"{forwards} forward pass{'' if forwards == 1 else 'es'} in training mode whose outputs are "
                        "still alive (a backward may still come)")
        if pending:
            held.append(f"{pending} rows with gradients waiting for the sparse optimizer's step() or zero_grad()")
        return ("Rows stay protected while a gradient may still reach them; here they are held by "
                + " and by ".join(held) + ". To release them, call backward() and the sparse optimizer's step() "
                "(or zero_grad()), or drop the outputs you do not backpropagate; for forward-only use (scoring, "
                "feature extraction) run the model in eval() mode or under torch.no_grad()")

    def _sketch_op(self, ids, ns, add, sel=None) -> torch.Tensor:
        n = ids.numel()
        est = torch.empty(n, dtype=torch.int64, device=self.device)
        if n:
            width, depth = self._sketch_shape
            self.k.sketch.sketch_kernel[(-(-n // 128),)](self._sketch, ids, ns, add, sel if sel is not None else add,
                                                         est, n, width, DEPTH=depth, COMMIT=sel is not None,
                                                         BLOCK=128)
        return est

    def resolve(self, ns: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, train: bool,
                admit_all: bool = False, touch_hits: bool = True) -> torch.Tensor:
        """Rows of distinct keys (-1: no row), as HashTable::resolve in C++."""
        bounded = any(self._capacity)
        touch_now = train and touch_hits and not bounded
        r = self.rows
        rows = self.map.find(ids, ns, (r.counts, counts, r.last_seen, self._step) if touch_now else None)
        if not train:
            return rows
        miss = rows < 0
        gated = self._sketch is not None and not admit_all
        if gated:
            admit = miss & (self._sketch_op(ids, ns, counts) >= self._min_count)
        else:
            admit = miss
        which = admit.nonzero().flatten()
        incoming = torch.bincount(ns[which], minlength=self.num_namespaces).tolist() if which.numel() else \
            [0] * self.num_namespaces
        full = any(incoming[s] and self._capacity[s] and self.map.sizes[s] + incoming[s] > self._capacity[s]
                   for s in range(self.num_namespaces))
        if full:
            hits = rows[rows >= 0]
            for s in range(self.num_namespaces):
                if incoming[s]:
                    self._make_room(s, incoming[s], hits)
        if touch_hits and not touch_now:
            hit = rows >= 0
            r.touch(rows[hit], counts[hit], self._step)
        if gated and bool(miss.any()):
            self._sketch_op(ids, ns, counts, miss.to(torch.int8))
        self._insert_new(ns, ids, counts, which, incoming, rows)
        if gated:  # without admission every miss got a row (or the batch was refused)
            self._stats["not_admitted"] += int((rows < 0).sum())
        return rows

    def _insert_new(self, ns, ids, counts, which, incoming, rows) -> None:
        k = which.numel()
        if k == 0:
            return
        fresh = self.rows.allocate(k)
        ids_n, ns_n = ids[which].contiguous(), ns[which].contiguous()
        r = self.rows
        r.counts[fresh] = counts[which]
        r.last_seen[fresh] = self._step
        self._fill_initial(ids_n, ns_n, fresh, r.emb)
        r.reset_slots(fresh)
        rows[which] = fresh
        self.map.insert(ids_n, ns_n, fresh, incoming)
        self._stats["inserts"] += k

    def _drop(self, ns: int, ids: torch.Tensor) -> int:
        """Erases distinct ids of namespace ns; their rows go to the free list in id order."""
        freed = self.map.erase(ids, self._ns_tensor(ns, ids.numel()))
        freed = freed[freed >= 0]
        self.map.note_erased(ns, freed.numel())
        self.rows.release(freed)
        return freed.numel()

    def _make_room(self, ns: int, incoming: int, keep: torch.Tensor) -> None:
        cap = self._capacity[ns]
        size = self.map.sizes[ns]
        if cap == 0 or size + incoming <= cap:
            return
        need = size + incoming - cap
        if self._policy[ns] == EVICT_POLICIES["none"]:
            raise RuntimeError(f"recis: table capacity reached: {self._label(ns)} holds {size} of {cap} rows and "
                               f"{incoming} new ids arrived; configure an eviction policy or raise the capacity "
                               "(no row was overwritten)")
        ids, rws = self.map.live(ns)
        last = self.rows.last_seen[rws]
        cand = (last < self._protected_from()) & ~torch.isin(rws, keep)
        ids, rws, last = ids[cand], rws[cand], last[cand]
        if ids.numel() < need:
            raise RuntimeError(self._holds_message(ns, cap, incoming, ids.numel(), keep.numel()))
        k = min(max(need, math.ceil(self._evict_fraction[ns] * cap)), ids.numel())
        # Least frequent first, then least recent, then smallest id: stable sorts, last key first.
        order = torch.argsort(ids, stable=True)
        order = order[torch.argsort(last[order], stable=True)]
        order = order[torch.argsort(self.rows.counts[rws][order], stable=True)]
        self._drop(ns, ids[order[:k]].contiguous())
        self._stats["evictions"] += k

    @table_op
    def evict_ttl(self, ttl_steps: int) -> int:
        guard, evicted = self._protected_from(), 0
        for ns in range(self.num_namespaces):
            ids, rws = self.map.live(ns)
            last = self.rows.last_seen[rws]
            old = (last < guard) & (self._step - last > ttl_steps)
            evicted += self._drop(ns, ids[old].contiguous())
        self._stats["evictions"] += evicted
        return evicted

    # ---- TTL eviction at the step boundary (as HashTable::set_ttl / advance_step in C++) ----
    _ttl = (0, 0)  # (ttl_steps, interval_steps): none until set_ttl

    def set_ttl(self, ttl_steps: int, interval_steps: int) -> None:
        """TTL eviction (ttl_steps 0: none): at every training-step boundary whose step is a
        positive multiple of `interval_steps`, rows unseen for more than `ttl_steps` steps are erased."""
        if ttl_steps and interval_steps < 1:
            raise ValueError(f"recis: {self._label(0)}: TTL eviction needs interval_steps >= 1, got {interval_steps}")
        self._ttl = (int(ttl_steps), int(interval_steps))

    def _advance_step(self) -> None:
        """Starts the next training step: first the TTL sweep due at this boundary, then step + 1."""
        ttl, interval = self._ttl
        if ttl and self._step > 0 and self._step % interval == 0:
            self.evict_ttl(ttl)
        self._step += 1

    # ---- ids -> rows without a lookup ----
    def find_rows(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        return self.map.find(ids, self._ns_tensor(ns, ids.numel()))

    def find_or_insert_rows(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        uniq, uns, counts, inverse = dedup_keys(ids, self._ns_tensor(ns, ids.numel()))
        return self.resolve(uns, uniq, counts, True, admit_all=True, touch_hits=False)[inverse]

    def erase_ids(self, ns: int, ids: torch.Tensor) -> int:
        uniq, _, _ = first_seen_unique(ids)
        self._count_releases()
        forwards, pending = sum(self._live.values()), self.pending_rows()
        if forwards or pending:
            # An erased row goes to the next new id: a gradient still on its way would land there.
            rws = self.find_rows(ns, uniq)
            seen = torch.where(rws >= 0, self.rows.last_seen[rws.clamp(min=0)], -1)
            held = uniq[seen >= self._protected_from()].tolist()
            if held:
                shown = ", ".join(map(str, held[:5])) + (", ..." if len(held) > 5 else "")
                raise RuntimeError(f"recis: cannot erase {len(held)} ids of {self._label(ns)}, namely {shown}: a gradient "
                                   "may still reach their rows, which would then belong to other ids; nothing was "
                                   "erased. " + self._describe_holds(forwards, pending))
        return self._drop(ns, uniq)

    # ---- state ----
    @table_op
    def export_ns(self, ns: int):
        self.check_ns(ns)
        ids, rws = self.map.live(ns)
        r = self.rows
        return ids, r.emb[rws], r.slots[rws], r.counts[rws], r.last_seen[rws]

    @table_op
    def import_ns(self, ns: int, ids: torch.Tensor, rows: torch.Tensor, slots=None, counts=None, last_seen=None):
        self.check_ns(ns)
        n = ids.numel()
        if ids.dtype != torch.int64:
            raise TypeError(f"import: ids must be int64, got {ids.dtype}")
        if rows.dtype != torch.float32:
            raise TypeError(f"import: rows must be float32, got {rows.dtype}")
        if rows.dim() != 2 or rows.shape[0] != n or rows.shape[1] != self._dim:
            raise ValueError(f"import: rows must be [{n}, {self._dim}], got {list(rows.shape)}")
        has_slots = slots is not None and slots.numel() > 0
        if has_slots and (slots.dim() != 2 or slots.shape[0] != n or slots.shape[1] != self.slot_width):
            raise ValueError(f"import: slots must be [{n}, {self.slot_width}], got {list(slots.shape)}")
        for what, t in (("counts", counts), ("last_seen", last_seen)):
            if t is not None and (t.dim() != 1 or t.shape[0] != n):
                raise ValueError(f"import: {what} must be [{n}] (one per id), got {list(t.shape)}")
        dev = self.device
        ids = ids.to(dev).contiguous()
        uniq, seen = torch.unique(ids, return_counts=True)
        dups = uniq[seen > 1][:6].tolist()
        if dups:
            shown = ", ".join(map(str, dups[:5])) + (", ..." if len(dups) > 5 else "")
            raise ValueError(f"recis: cannot load {self._label(ns)}: its state lists ids more than once ({shown}); "
                             "each id must appear once; nothing was loaded")
        where = self.find_or_insert_rows(ns, ids)
        r = self.rows
        r.counts[where] = counts.to(dev, torch.int64).clamp(0, UINT32_MAX) if counts is not None else 0
        r.last_seen[where] = last_seen.to(dev, torch.int64).clamp(0, UINT32_MAX) if last_seen is not None \
            else self._step
        r.emb[where] = rows.to(dev)
        if has_slots:
            r.slots[where] = slots.to(dev, torch.float32)

    @table_op
    def clear(self) -> None:
        self.map.clear()
        self.rows.clear()
        self._clear_pending()
        if self._sketch is not None:
            self._sketch.zero_()

    @table_op
    def export_ns_since(self, ns: int, since: int):
        """export_ns of the rows touched at or after step `since` (last_seen >= since): what an
        incremental checkpoint saves (the twin of the C++ HashTable.export_ns_since)."""
        self.check_ns(ns)
        if since < 0:
            raise ValueError(f"export_ns_since: since must be a step >= 0, got {since}")
        ids, rws = self.map.live(ns)
        r = self.rows
        keep = r.last_seen[rws] >= since
        ids, rws = ids[keep], rws[keep]
        return ids, r.emb[rws], r.slots[rws], r.counts[rws], r.last_seen[rws]


def triton_next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
