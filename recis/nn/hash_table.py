"""Hash tables: `TableGroup` is one physical table (rows + optimizer slots), shared by one or
more logical `HashTable`s, each with its own 64-bit id space. On the CPU the table lives in C++;
on CUDA in device memory, run by Triton kernels (recis.gpu); `TableGroup.to(device)` moves it.

>>> group = TableGroup([TableConfig("user", 4, seed=7)])
>>> table = group.tables[0]
>>> rows = table.find_or_insert(torch.tensor([10, -1, 10]))
>>> len(table), bool(rows[0] == rows[2])
(2, True)
>>> TableGroup(4, names=["user"], seeds=[7]).config == group.config  # the short form
True
"""
import functools
import os
import weakref
from typing import Dict, List, Optional, Sequence, Union

import torch

from recis.config_utils import Range
from recis._ops import INIT_KINDS, kernels, new_table
from recis.nn.functional import LOOKUP_EVAL, UNPOOLED, as_ids, hash_lookup
from recis.nn.state_keys import GROUP_STATE_KEYS, STATE_KEYS
# The table options live in recis.nn.table_config (split_eviction is re-exported for recis.checkpoint).
from recis.nn.table_config import TableConfig, check_group, group_configs, split_eviction, table_int  # noqa: F401
from recis.vocabulary import EVICT_POLICIES, MISSING_MODES

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


class TableGroup:
    """One physical table holding the rows of logical tables (one namespace each), built from
    their TableConfigs: `TableGroup(configs, device=None, backend=None)`."""

    def __init__(self, configs: Union[TableConfig, Sequence[TableConfig], int], names: Optional[Sequence[str]] = None,
                 seeds: Optional[Sequence[int]] = None, *, device=None, backend: Optional[str] = None, **options):
        """`configs`: the TableConfigs of the tables (one namespace each), which share their
        `group_key()` options; or, the short form, an embedding_dim with `names`, one seed per
        name in `seeds` and the other TableConfig options as keywords (`group_configs`).
        `device` and `backend` place the table (see `to`)."""
        if isinstance(configs, (TableConfig, list, tuple)):
            if names is not None or seeds is not None or options:
                given = [k for k, v in (("names", names), ("seeds", seeds)) if v is not None] + sorted(options)
                raise TypeError(f"TableGroup takes either TableConfigs or an embedding_dim with names, seeds and "
                                f"options; got TableConfigs and {given}")
            configs = check_group(configs)
        else:
            configs = group_configs(configs, names, seeds, **options)
        c0 = configs[0]
        self.configs: List[TableConfig] = configs
        self.embedding_dim = c0.embedding_dim
        self._ns_names = [c.name for c in configs]
        self.initializer = c0.initializer
        self._seeds = [c.seed & (2**64 - 1) for c in configs]
        self.token = torch.zeros(1, dtype=torch.int64)
        self.ttl, self._lfu = c0.ttl, c0.lfu
        self.capacity = c0.effective_capacity
        self.admission = c0.admission
        self.missing = c0.missing
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
        self.tables = [HashTable(self, ns, c.name) for ns, c in enumerate(configs)]

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
        impl.set_ttl(*((self.ttl.ttl_steps, self.ttl.interval_steps) if self.ttl is not None else (0, 0)))
        for ns, name in enumerate(self._ns_names):
            impl.set_name(ns, name)
        impl.set_keep_grads(self._attached() is not None)
        if self.capacity is not None:
            lfu = self._lfu
            for ns in range(len(self._seeds)):
                impl.set_capacity(ns, self.capacity, EVICT_POLICIES["lfu" if lfu else "none"],
                                  lfu.evict_fraction if lfu else 0.0)
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
        copy = TableGroup(self.configs, device=self.device, backend=self.backend)
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
        """A (KeyedJaggedTensor-ordered) jagged batch's rows, pooled per `combiner` ([batch, out_cols];
        unpooled [n, dim]): the lookup op with a list of one table (an EmbeddingCollection looks up
        all its groups in one call). A training lookup starts a step of the table, which runs its
        TTL sweep when one is due (every TTLEviction.interval_steps steps: inside the backend, C++
        or Triton, like LFU eviction)."""
        return hash_lookup(self, values, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner, train)

    def evict_expired(self) -> int:
        """Runs TTL eviction now, besides the sweeps due every interval_steps; returns the
        number of rows erased."""
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

    def load_stats(self, stats: Dict[str, int]) -> None:
        """Sets the counters of stats() (inserts, evictions, not_admitted) to `stats`, e.g. those a
        checkpoint saved; the table keeps counting from there."""
        counted = self._impl.stats()
        unknown = sorted(set(stats) - set(counted))
        if unknown:
            raise KeyError(f"tables {self.names}: unknown statistics {unknown} (known: {sorted(counted)})")
        for k, v in stats.items():
            self._stats_base[k] = int(v) - counted[k]

    @property
    def config(self) -> Dict:
        """The options of this group (dim, names, seeds, policies, ...) as a dict (see `configs`)."""
        c0 = self.configs[0]
        return dict(embedding_dim=c0.embedding_dim, names=[c.name for c in self.configs],
                    seeds=[c.seed for c in self.configs], initializer=c0.initializer, admission=c0.admission,
                    eviction=c0.eviction, capacity=c0.capacity, missing=c0.missing, dtype=c0.dtype)

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
        if self.admission is not None:  # the sketch's counters in their own dtype, uint32
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
        out, _, _ = kernels(self.group).lookup_forward([self.group.token], [self.group.handle], ids, offsets, None,
                                                       [self.ns], 1, [0], 0, [UNPOOLED], LOOKUP_EVAL)
        return out

    def initial_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The deterministic initial rows of `ids` (what a fresh insert would get)."""
        return self.group._impl.initial_rows(self.ns, self._ids(ids))

    def export(self, since: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """ids [n], rows [n, dim], slots [n, W], counts [n], last_seen [n] of every live id; with
        `since`, of the ids touched at or after that step only (last_seen >= since: what an
        incremental checkpoint saves; the table copies out just those rows)."""
        if since is None:
            return dict(zip(STATE_KEYS, self.group._impl.export_ns(self.ns)))
        since = table_int(since, "export(since)", f"table {self.name!r}", Range(ge=0))
        return dict(zip(STATE_KEYS, self.group._impl.export_ns_since(self.ns, since)))

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
