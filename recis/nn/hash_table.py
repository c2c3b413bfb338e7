"""Hash tables: `TableGroup` is one physical table (rows + optimizer slots), shared by one or
more logical `HashTable`s, each with its own 64-bit id space. On the CPU the table lives in C++;
on CUDA in device memory, run by Triton kernels (recis.gpu); `TableGroup.to(device)` moves it.

>>> group = TableGroup(4, names=["user"], seeds=[7])
>>> table = group.tables[0]
>>> rows = table.find_or_insert(torch.tensor([10, -1, 10]))
>>> len(table), bool(rows[0] == rows[2])
(2, True)
"""
import functools
import numbers
import os
import weakref
from typing import Dict, List, Optional, Sequence, Union

import torch

from recis.config_utils import Range, check_value
from recis._ops import COMBINERS, INIT_KINDS, kernels, new_table
from recis.nn.functional import LOOKUP_EVAL, as_ids, hash_lookup
from recis.nn.initializers import resolve_initializer
from recis.nn.policies import FrequencyAdmission, LFUEviction, TTLEviction

EvictionArg = Union[None, TTLEviction, LFUEviction, Sequence[Union[TTLEviction, LFUEviction]]]
MISSING_MODES = {"zeros": 0, "init": 1}
STATE_KEYS = ("ids", "rows", "slots", "counts", "last_seen")  # per logical table (export / load)
GROUP_STATE_KEYS = ("step", "optimizer_step", "sketch")       # per group (group_state / load_group_state)
BACKENDS = ("auto", "cpp", "triton")
BACKEND_ENV = "RECIS_TABLE_BACKEND"


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """"cpp" or "triton" for a table on `device`: "auto" (the default, or $RECIS_TABLE_BACKEND)
    is C++ on the CPU and Triton on CUDA; "triton" on the CPU runs the Triton kernels in
    Triton's interpreter (slow: meant for tests and kernel development)."""
    backend = backend or os.environ.get(BACKEND_ENV) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"recis tables live on cpu or cuda devices, got {device}")
    if backend == "auto":
        return "cpp" if device.type == "cpu" else "triton"
    if backend == "cpp" and device.type != "cpu":
        raise ValueError(f"the C++ table backend runs on the cpu only, got device {device}")
    return backend


def _device(device) -> torch.device:
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def split_eviction(eviction: EvictionArg):
    """Returns (ttl policy or None, lfu policy or None) from one policy or a sequence of them."""
    policies = [] if eviction is None else list(eviction) if isinstance(eviction, (list, tuple)) else [eviction]
    ttl = [p for p in policies if isinstance(p, TTLEviction)]
    lfu = [p for p in policies if isinstance(p, LFUEviction)]
    bad = [p for p in policies if not isinstance(p, (TTLEviction, LFUEviction))]
    if bad or len(ttl) > 1 or len(lfu) > 1:
        raise ValueError(f"eviction takes at most one TTLEviction and one LFUEviction, got {eviction!r}")
    return (ttl[0] if ttl else None), (lfu[0] if lfu else None)


SEED_RANGE = Range(ge=-(2**63), lt=2**64)  # seeds are 64-bit, in their signed or unsigned spelling
CAPACITY_RANGE = Range(ge=1, lt=2**63)
DIM_RANGE = Range(ge=1)


def table_int(value, arg: str, where: str, rule: Range) -> int:
    """`value` as an int within `rule`; a TypeError or ValueError naming `arg` and `where` (the
    table) otherwise. bools, floats and strings are refused, never rounded or parsed."""
    check_value(f"{where}: {arg}", value, int, rule)
    return int(value)


def check_table_names(names, where: str = "TableGroup") -> List[str]:
    """Table names: a non-empty list of distinct non-empty strings without '.' (state_dict keys
    are `{table}.{field}`)."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{where}: names must be a list of table names, got {names!r}")
    for n in names:
        if not isinstance(n, str) or not n or "." in n:
            raise ValueError(f"{where}: table names must be non-empty strings without '.', got {n!r}")
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"{where}: duplicate table names {dup}")
    if not names:
        raise ValueError(f"{where}: needs at least one table name")
    return list(names)


def resolve_capacity(capacity: Optional[int], lfu: Optional[LFUEviction], where: str = "table") -> Optional[int]:
    """The capacity of a table: `capacity`, or its LFUEviction's (which checks its own fields)."""
    if capacity is not None:
        capacity = table_int(capacity, "capacity", where, CAPACITY_RANGE)
    if lfu is not None:
        if capacity is not None and capacity != lfu.capacity:
            raise ValueError(f"{where}: capacity={capacity} disagrees with LFUEviction(capacity={lfu.capacity})")
        return lfu.capacity
    return capacity


class TableGroup:
    """One physical table holding the rows of the logical tables `names` (one namespace each)."""

    def __init__(self, embedding_dim: int, names: Sequence[str], seeds: Sequence[int], initializer=None,
                 admission: Optional[FrequencyAdmission] = None, eviction: EvictionArg = None,
                 capacity: Optional[int] = None, missing: str = "zeros", dtype: torch.dtype = torch.float32,
                 device=None, backend: Optional[str] = None):
        names = check_table_names(names)
        where = f"table {names[0]!r}" if len(names) == 1 else f"tables {names}"
        embedding_dim = table_int(embedding_dim, "embedding_dim", where, DIM_RANGE)
        if dtype != torch.float32:
            raise TypeError(f"{where}: recis tables store float32 rows; got dtype={dtype}")
        if missing not in MISSING_MODES:
            raise ValueError(f"{where}: missing must be one of {sorted(MISSING_MODES)}, got {missing!r}")
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(names) != len(seeds):
            raise ValueError(f"{where}: a TableGroup needs a list of one seed per table name, got seeds={seeds!r}")
        seeds = [table_int(s, "seed", f"table {n!r}", SEED_RANGE) for n, s in zip(names, seeds)]
        if admission is not None and not isinstance(admission, FrequencyAdmission):
            raise TypeError(f"{where}: admission must be a FrequencyAdmission or None, got {admission!r}")
        self.embedding_dim = embedding_dim
        self._ns_names = names
        self.initializer = resolve_initializer(initializer)
        self._seeds = [s & (2**64 - 1) for s in seeds]
        self.token = torch.zeros(1, dtype=torch.int64)
        self.ttl, self._lfu = split_eviction(eviction)
        self.capacity = resolve_capacity(capacity, self._lfu, where)
        self.admission = admission
        self.missing = missing
        self.device = _device(device)
        self.backend = resolve_backend(backend, self.device)
        self._slot_init: Sequence[float] = []
        self._stats_base = {"inserts": 0, "evictions": 0, "not_admitted": 0}
        self._optimizer = None
        self._impl = self._new_impl(self.device, self.backend)
        # Leaf tensor that ties the table into autograd and into torch.optim param groups.
        self.anchor = torch.empty(0, requires_grad=True, device=self.device)
        self.slot_kind: Optional[str] = None
        self._fused = False
        self.optimizer_step = 0  # steps applied by the sparse optimizer (Adam's bias correction)
        self.tables = [HashTable(self, ns, name) for ns, name in enumerate(names)]
        self._config = dict(embedding_dim=embedding_dim, names=list(names), seeds=list(seeds),
                            initializer=self.initializer, admission=admission, eviction=eviction,
                            capacity=capacity, missing=missing, dtype=dtype)

    def _new_impl(self, device: torch.device, backend: str):
        """A configured, empty table of this group's config on `device`; the group's handle and
        token (on `device`: every tensor of an op call lives where the table does) name it."""
        kind, a, b, c = self.initializer.spec(self.embedding_dim)
        impl = new_table(backend, device, self.embedding_dim, self._seeds, INIT_KINDS[kind], a, b, c)
        self.handle = impl.handle
        self.token = torch.zeros(1, dtype=torch.int64, device=device)
        if self.admission is not None:
            impl.set_admission(self.admission.min_count, self.admission.sketch_width, self.admission.sketch_depth)
        impl.set_missing(MISSING_MODES[self.missing])
        for ns, name in enumerate(self._ns_names):
            impl.set_name(ns, name)
        impl.set_keep_grads(self._attached() is not None)
        if self.capacity is not None:
            lfu = self._lfu
            for ns in range(len(self._seeds)):
                impl.set_capacity(ns, self.capacity, 1 if lfu else 0, lfu.evict_fraction if lfu else 0.0)
        return impl

    def to(self, device=None, backend: Optional[str] = None) -> "TableGroup":
        """Moves the table (rows, slots, metadata, step, admission sketch) to `device`, or to
        another backend; the optimizer attached stays attached. Gradients waiting for the
        optimizer's step() must be applied or dropped first, and no training forward may still
        await its backward. Returns self."""
        device = _device(device if device is not None else self.device)
        backend = resolve_backend(backend if backend is not None else
                                  ("auto" if device.type != self.device.type else self.backend), device)
        if device == self.device and backend == self.backend:
            return self
        if self.pending_rows():
            raise RuntimeError(f"tables {self.names}: {self.pending_rows()} rows hold gradients for the sparse "
                               "optimizer; call its step() or zero_grad() before moving the tables")
        if self.live_forwards():
            raise RuntimeError(f"tables {self.names}: {self.live_forwards()} forward passes in training mode still "
                               "have their autograd graphs (their backward would reach the rows left behind); call "
                               "backward() or drop their outputs before moving the tables")
        old, old_handle, old_token = self._impl, self.handle, self.token
        try:
            impl = self._new_impl(device, backend)
            if old.slot_width or self.slot_kind is not None:
                impl.set_slots(old.slot_width, list(self._slot_init) or [0.0] * old.slot_width, True)
            impl.set_step(old.get_step())
            if self.admission is not None:
                impl.set_sketch(old.get_sketch().to(device))
            for ns in range(len(self._seeds)):
                ids, rows, slots, counts, last = (t.to(device) for t in old.export_ns(ns))
                impl.import_ns(ns, ids, rows, slots, counts, last)
        except BaseException:
            self.handle, self.token = old_handle, old_token  # the group stays where it was
            raise
        for k, v in old.stats().items():
            self._stats_base[k] += v
        self._impl, self.device, self.backend = impl, device, backend
        self.anchor.data = self.anchor.data.to(device)
        return self

    def __deepcopy__(self, memo):
        """A detached copy with the same rows, slots and metadata (no optimizer attached)."""
        copy = TableGroup(**self._config, device=self.device, backend=self.backend)
        memo[id(self)] = copy
        if self.slot_kind is not None:
            copy.reserve_slots(self.slot_kind, self._impl.slot_width)
        copy.load_group_state(self.group_state())
        for mine, theirs in zip(self.tables, copy.tables):
            theirs.load(mine.export())
        return copy

    def __reduce__(self):
        raise TypeError(f"tables {self.names} cannot be pickled; save module.state_dict() (tensors only) instead")

    # ---- optimizer attachment ----
    def attach_optimizer(self, optimizer, kind: str, slot_init: Sequence[float], fused: bool = False) -> None:
        """Lays out this table's slots for `optimizer`; one sparse optimizer per table. A fused
        optimizer updates the rows during backward instead of in step()."""
        current = self._attached()
        if current is not None and current is not optimizer:
            raise ValueError(f"tables {self.names} already belong to {type(current).__name__}; "
                             "a table takes one sparse optimizer")
        self._impl.set_slots(len(slot_init), [float(v) for v in slot_init], self.slot_kind != kind)
        self._slot_init = [float(v) for v in slot_init]
        self.slot_kind = kind
        self._optimizer = weakref.ref(optimizer, functools.partial(_optimizer_gone, weakref.ref(self)))
        self._impl.set_keep_grads(True)
        self._fused = fused

    def reserve_slots(self, kind: str, width: int) -> None:
        """Lays out slots for a `kind` optimizer that is not attached yet (state is loaded next);
        the optimizer created afterwards keeps them."""
        self._impl.set_slots(width, [0.0] * width, True)
        self._slot_init = [0.0] * width
        self.slot_kind = kind

    def _attached(self):
        """The attached sparse optimizer if it is alive, else None."""
        return self._optimizer() if self._optimizer is not None else None

    def fused_optimizer(self):
        """The attached optimizer if it is alive and fused, else None."""
        opt = self._attached()
        return opt if opt is not None and self._fused else None

    def fused_update(self):
        """The optimizer that applies this backward's gradients right away (fused), or None when
        backward leaves them pending: no fused optimizer, or gradients already wait for step()."""
        opt = self.fused_optimizer()
        return opt if opt is not None and self.pending_rows() == 0 else None

    # ---- lookups ----
    def lookup(self, values, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner, train):
        if train and self.ttl is not None:
            self._tick_eviction()
        return hash_lookup(self, values, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner, train)

    @torch.compiler.disable
    def _tick_eviction(self) -> None:
        step = self._impl.get_step()
        if self.ttl is not None and step > 0 and step % self.ttl.interval_steps == 0:
            self._impl.evict_ttl(self.ttl.ttl_steps)

    def evict_expired(self) -> int:
        """Runs TTL eviction now; returns the number of rows erased."""
        if self.ttl is None:
            raise ValueError(f"tables {self.names} have no TTLEviction policy")
        return self._impl.evict_ttl(self.ttl.ttl_steps)

    # ---- introspection ----
    @property
    def names(self):
        return [t.name for t in self.tables]

    @property
    def step(self) -> int:
        return self._impl.get_step()

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables)

    def memory_bytes(self) -> int:
        """Bytes held by the rows, slots, metadata, id maps and admission sketch."""
        return self._impl.memory_bytes()

    def stats(self) -> Dict[str, int]:
        stats = {k: v + self._stats_base.get(k, 0) for k, v in self._impl.stats().items()}
        return dict(stats, live=len(self), step=self.step)

    @property
    def config(self) -> Dict:
        """The constructor arguments of this group (dim, names, seeds, policies, ...), as a copy."""
        return dict(self._config)

    def pending_rows(self) -> int:
        """Rows holding gradients that wait for the sparse optimizer's step(). Backward keeps
        gradients only for tables with a sparse optimizer attached: without one a table is not
        trained (like a frozen parameter) and nothing waits."""
        return int(self._impl.pending_rows())

    def live_forwards(self) -> int:
        """Training-mode forward passes through these tables whose autograd graph is still alive
        (a backward may still come). Their rows are protected from eviction until the graph is
        freed: after backward(), or when the outputs are dropped."""
        return int(self._impl.live_forwards())

    # ---- state ----
    def group_state(self) -> Dict[str, torch.Tensor]:
        state = {"step": torch.tensor(self.step, dtype=torch.int64),
                 "optimizer_step": torch.tensor(self.optimizer_step, dtype=torch.int64)}
        if self.admission is not None:
            state["sketch"] = self._impl.get_sketch()
        return state

    def load_group_state(self, state: Dict[str, torch.Tensor]) -> None:
        unknown = sorted(set(state) - set(GROUP_STATE_KEYS))
        if unknown:
            raise KeyError(f"tables {self.names}: group state has unknown keys {unknown} (known: {GROUP_STATE_KEYS})")
        if "step" in state:
            self._impl.set_step(int(state["step"]))
        if "optimizer_step" in state:
            self.optimizer_step = int(state["optimizer_step"])
        if "sketch" in state:
            if self.admission is None:
                raise ValueError(f"state holds an admission sketch but tables {self.names} have no admission policy")
            self._impl.set_sketch(state["sketch"].to(self.device))


def _optimizer_gone(group_ref, optimizer_ref) -> None:
    """The sparse optimizer of a group was garbage-collected: its gradients can never be
    applied, so the group drops them and backward stops keeping new ones."""
    group = group_ref()
    if group is not None and group._optimizer is optimizer_ref:
        group._impl.set_keep_grads(False)


class HashTable:
    """A logical table: a 64-bit id space whose rows live in a TableGroup."""

    def __init__(self, group: TableGroup, ns: int, name: str):
        self.group, self.ns, self.name = group, ns, name

    @property
    def embedding_dim(self) -> int:
        return self.group.embedding_dim

    def __len__(self) -> int:
        return self.group._impl.size(self.ns)

    def __repr__(self) -> str:
        return f"HashTable(name={self.name!r}, dim={self.embedding_dim}, live_ids={len(self)})"

    def memory_bytes(self) -> int:
        """This table's share: its id map plus its rows (with slots and metadata)."""
        impl = self.group._impl
        return impl.map_bytes(self.ns) + len(self) * impl.row_bytes()

    def reserve(self, n: int) -> None:
        """Pre-sizes the id map and row blocks for `n` more ids, so that they arrive without
        rehashing or faulting in fresh memory (optional: tables grow on their own)."""
        self.group._impl.reserve(self.ns, table_int(n, "reserve(n)", f"table {self.name!r}", Range(ge=0)))

    def find(self, ids: torch.Tensor) -> torch.Tensor:
        """Row index of each id, -1 where absent. Never inserts."""
        return kernels(self.group).find(self.group.handle, self.ns, self._ids(ids))

    def find_or_insert(self, ids: torch.Tensor) -> torch.Tensor:
        """Row index of each id, inserting missing ids (no admission; capacity rules apply)."""
        return kernels(self.group).find_or_insert(self.group.token, self.group.handle, self.ns, self._ids(ids))

    def erase(self, ids: torch.Tensor) -> int:
        return kernels(self.group).erase(self.group.token, self.group.handle, self.ns, self._ids(ids))

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Embeddings of the given rows ([n, dim]); -1 gives zeros."""
        return kernels(self.group).gather(self.group.handle, self._ids(rows))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of `ids` without inserting: zeros (or initial values, per `missing`) if absent.
        The same kernel as an eval-mode forward with no pooling; nothing in the table changes."""
        ids = self._ids(ids)
        offsets = torch.tensor([0, ids.numel()], dtype=torch.int64, device=ids.device)
        out, _, _ = kernels(self.group).lookup_forward(self.group.token, self.group.handle, ids, offsets, None,
                                                       [self.ns], 1, [0], self.embedding_dim, COMBINERS[None],
                                                       LOOKUP_EVAL)
        return out

    def initial_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The deterministic initial rows of `ids` (what a fresh insert would get)."""
        return self.group._impl.initial_rows(self.ns, self._ids(ids))

    def export(self) -> Dict[str, torch.Tensor]:
        """ids [n], rows [n, dim], slots [n, W], counts [n], last_seen [n] of every live id."""
        return dict(zip(STATE_KEYS, self.group._impl.export_ns(self.ns)))

    def load(self, state: Dict[str, torch.Tensor]) -> None:
        """Inserts or overwrites the ids in `state` (as produced by `export`)."""
        missing = [k for k in ("ids", "rows") if k not in state]
        if missing:
            raise KeyError(f"table {self.name!r}: state lacks {missing}")
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown:
            raise KeyError(f"table {self.name!r}: state has unknown keys {unknown} (known: {STATE_KEYS})")
        slots = state.get("slots")
        if slots is not None and slots.numel() > 0 and slots.shape[1] != self.group._impl.slot_width:
            raise ValueError(f"table {self.name!r}: state has {slots.shape[1]} optimizer slots per row, the table "
                             f"has {self.group._impl.slot_width}; create the same sparse optimizer before loading")
        dev = self.group.device
        opt = [t.to(dev) if t is not None else None for t in (slots, state.get("counts"), state.get("last_seen"))]
        self.group._impl.import_ns(self.ns, self._ids(state["ids"]), state["rows"].to(dev, torch.float32), *opt)

    def clear(self) -> None:
        """Erases every id of this table."""
        self.erase(self.export()["ids"])

    def _ids(self, t) -> torch.Tensor:
        """int64 ids on the table's device (these calls are not the hot path: inputs are moved)."""
        return as_ids(t, "HashTable").reshape(-1).to(self.group.device)
