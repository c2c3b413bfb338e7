"""TableConfig: the options of one logical hash table, declared and validated here only.

Every table is built from TableConfigs: an EmbeddingCollection groups its configs by
`group_key()` into TableGroups, a HashEmbedding holds one, and `TableGroup(dim, names, seeds,
**options)` is the short form of one TableConfig per name (`group_configs`).

>>> c = TableConfig("user", 8, ["user_id"], eviction=LFUEviction(capacity=100))
>>> c.seed == zlib.crc32(b"user"), c.effective_capacity, c.ttl
(True, 100, None)
>>> TableConfig("user", 8, capacity=10, eviction=LFUEviction(capacity=100))
Traceback (most recent call last):
...
ValueError: table 'user': capacity=10 disagrees with LFUEviction(capacity=100)
>>> [c.name for c in group_configs(4, ["a", "b"], [1, 2], missing="init")]
['a', 'b']
"""
import typing
import zlib
from dataclasses import dataclass, field, fields
from typing import List, Optional, Sequence, Union

import torch

from recis.config_utils import Range, bounded, check_value, rule_of
from recis.nn.initializers import resolve_initializer
from recis.nn.policies import FrequencyAdmission, LFUEviction, TTLEviction
from recis.vocabulary import COMBINERS, MISSING_MODES

EvictionArg = Union[None, TTLEviction, LFUEviction, Sequence[Union[TTLEviction, LFUEviction]]]
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


def split_eviction(eviction: EvictionArg):
    """Returns (ttl policy or None, lfu policy or None) from one policy or a sequence of them."""
    policies = [] if eviction is None else list(eviction) if isinstance(eviction, (list, tuple)) else [eviction]
    ttl = [p for p in policies if isinstance(p, TTLEviction)]
    lfu = [p for p in policies if isinstance(p, LFUEviction)]
    bad = [p for p in policies if not isinstance(p, (TTLEviction, LFUEviction))]
    if bad or len(ttl) > 1 or len(lfu) > 1:
        raise ValueError(f"eviction takes at most one TTLEviction and one LFUEviction, got {eviction!r}")
    return (ttl[0] if ttl else None), (lfu[0] if lfu else None)


def resolve_capacity(capacity: Optional[int], lfu: Optional[LFUEviction], where: str = "table") -> Optional[int]:
    """The capacity of a table: `capacity`, or its LFUEviction's (which checks its own fields)."""
    if capacity is not None:
        capacity = table_int(capacity, "capacity", where, CAPACITY_RANGE)
    if lfu is not None:
        if capacity is not None and capacity != lfu.capacity:
            raise ValueError(f"{where}: capacity={capacity} disagrees with LFUEviction(capacity={lfu.capacity})")
        return lfu.capacity
    return capacity


# The options that tables sharing one physical TableGroup have in common (TableConfig.group_key).
GROUP_OPTIONS = ("embedding_dim", "combiner", "initializer", "admission", "eviction", "capacity", "missing", "dtype")


@dataclass
class TableConfig:
    """One logical table: its name, the features it serves, and its options. `seed=None`
    derives a stable seed from the table name. Checked on construction, naming the table and
    the option; the tables built from it (TableGroup, HashEmbedding, EmbeddingCollection) take
    it as it is."""

    name: str
    embedding_dim: int = bounded(ge=DIM_RANGE.ge)
    feature_names: List[str] = field(default_factory=list)
    combiner: Optional[str] = "sum"
    initializer: object = None
    seed: Optional[int] = bounded(None, ge=SEED_RANGE.ge, lt=SEED_RANGE.lt)
    admission: Optional[FrequencyAdmission] = None
    eviction: EvictionArg = None
    capacity: Optional[int] = bounded(None, ge=CAPACITY_RANGE.ge, lt=CAPACITY_RANGE.lt)
    missing: str = "zeros"
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str) or "." in self.name:
            raise ValueError(f"TableConfig.name must be a non-empty string without '.', got {self.name!r}")
        where = f"table {self.name!r}"
        hints = typing.get_type_hints(TableConfig)
        for f in fields(self):  # the numbers, by their rules; numpy ints become ints
            value, rule = getattr(self, f.name), rule_of(f)
            if rule is not None:
                check_value(f"{where}: {f.name}", value, hints[f.name], rule)
                setattr(self, f.name, int(value) if value is not None else None)
        if isinstance(self.feature_names, str) or not all(isinstance(f, str) and f for f in self.feature_names):
            raise TypeError(f"{where}: feature_names must be a list of non-empty strings, got {self.feature_names!r}")
        self.feature_names = list(self.feature_names)
        if not self.feature_names:
            self.feature_names = [self.name]
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"{where}: duplicate feature names {self.feature_names}")
        if self.combiner not in COMBINERS:
            raise ValueError(f"{where}: combiner must be 'sum', 'mean' or None, got {self.combiner!r}")
        if self.missing not in MISSING_MODES:
            raise ValueError(f"{where}: missing must be one of {sorted(MISSING_MODES)}, got {self.missing!r}")
        if self.dtype != torch.float32:
            raise TypeError(f"{where}: recis tables store float32 rows, got {self.dtype}")
        if self.admission is not None and not isinstance(self.admission, FrequencyAdmission):
            raise TypeError(f"{where}: admission must be a FrequencyAdmission or None, got {self.admission!r}")
        self.initializer = resolve_initializer(self.initializer)
        resolve_capacity(self.capacity, split_eviction(self.eviction)[1], where)
        if self.seed is None:
            self.seed = zlib.crc32(self.name.encode())

    @property
    def ttl(self) -> Optional[TTLEviction]:
        """The TTLEviction policy among `eviction`, or None."""
        return split_eviction(self.eviction)[0]

    @property
    def lfu(self) -> Optional[LFUEviction]:
        """The LFUEviction policy among `eviction`, or None."""
        return split_eviction(self.eviction)[1]

    @property
    def effective_capacity(self) -> Optional[int]:
        """The most ids the table keeps: `capacity`, or its LFUEviction's; None: unbounded."""
        return resolve_capacity(self.capacity, self.lfu)

    def group_key(self) -> tuple:
        """Tables with equal keys share one physical TableGroup (and one kernel call per step)."""
        return tuple(self._group_value(o) for o in GROUP_OPTIONS)

    def _group_value(self, option: str):
        value = getattr(self, option)
        if option == "initializer":
            return value.spec(self.embedding_dim)
        if option == "eviction" and isinstance(value, (list, tuple)):
            return tuple(value)
        return value


def group_configs(embedding_dim, names, seeds, **options) -> List[TableConfig]:
    """One TableConfig per table name, with its seed and the shared `options` (the short form
    `TableGroup(embedding_dim, names, seeds, **options)`)."""
    names = check_table_names(names)
    where = f"table {names[0]!r}" if len(names) == 1 else f"tables {names}"
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(names) != len(seeds):
        raise ValueError(f"{where}: a TableGroup needs a list of one seed per table name, got seeds={seeds!r}")
    known = {f.name for f in fields(TableConfig)} - {"name", "embedding_dim", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{where}: unknown table option(s) {unknown} (TableConfig options: {sorted(known)})")
    return [TableConfig(name, embedding_dim, seed=seed, **options) for name, seed in zip(names, seeds)]


def check_group(configs) -> List[TableConfig]:
    """`configs` as a list of TableConfigs that can share one TableGroup: at least one, distinct
    names, one group key (a ValueError names the option that differs)."""
    configs = [configs] if isinstance(configs, TableConfig) else list(configs)
    if not configs:
        raise ValueError("TableGroup needs at least one TableConfig")
    bad = [c for c in configs if not isinstance(c, TableConfig)]
    if bad:
        raise TypeError(f"TableGroup takes TableConfigs, got {bad[0]!r}")
    names = check_table_names([c.name for c in configs])
    first = configs[0]
    for c in configs[1:]:
        for option in GROUP_OPTIONS:
            if c._group_value(option) != first._group_value(option):
                raise ValueError(f"tables {names}: one TableGroup holds tables with the same options, but "
                                 f"{option} is {getattr(first, option)!r} for table {first.name!r} and "
                                 f"{getattr(c, option)!r} for table {c.name!r}")
    return configs
