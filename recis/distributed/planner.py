"""Sharding plans: per physical table group, row-wise, table-wise (on one rank) or replicated.

The planner decides from each group's expected size: small tables are replicated (no exchange,
gradients all-reduced), mid-sized ones are placed whole on the least loaded rank, and large or
unbounded ones (no capacity and no size hint) are sharded row-wise by id hash. Any choice can be
overridden by table name.

>>> from recis.nn import EmbeddingCollection, TableConfig
>>> ec = EmbeddingCollection([TableConfig("user", 8), TableConfig("genre", 4, capacity=20)])
>>> plan = Planner().plan(ec, world_size=2)
>>> [(p.tables, p.sharding) for p in plan.groups]
[(['user'], 'row_wise'), (['genre'], 'replicated')]
>>> Planner(overrides={"genre": "table_wise:1"}).plan(ec, 2).for_table("genre").rank
1
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

ROW_WISE, TABLE_WISE, REPLICATED = "row_wise", "table_wise", "replicated"
SHARDINGS = (ROW_WISE, TABLE_WISE, REPLICATED)


@dataclass
class GroupPlan:
    """How one table group is placed: `rank` is the owner for table_wise, else None."""

    tables: List[str]
    sharding: str
    rank: Optional[int] = None
    bytes: Optional[int] = None
    reason: str = ""

    def __post_init__(self):
        if self.sharding not in SHARDINGS:
            raise ValueError(f"tables {self.tables}: sharding must be one of {SHARDINGS}, got {self.sharding!r}")
        if (self.sharding == TABLE_WISE) != (self.rank is not None):
            raise ValueError(f"tables {self.tables}: table_wise needs a rank, and only table_wise has one")


@dataclass
class ShardingPlan:
    world_size: int
    groups: List[GroupPlan] = field(default_factory=list)

    def for_table(self, name: str) -> GroupPlan:
        for g in self.groups:
            if name in g.tables:
                return g
        raise KeyError(f"the sharding plan has no table {name!r} (it has {[t for g in self.groups for t in g.tables]})")

    def describe(self) -> str:
        """A table of the plan, one line per table group."""
        lines = [f"recis sharding plan for {self.world_size} rank(s):"]
        for g in self.groups:
            where = f"{g.sharding}" + (f" on rank {g.rank}" if g.rank is not None else "")
            size = "unbounded" if g.bytes is None else f"{g.bytes / 2**20:.2f} MiB"
            lines.append(f"  {'+'.join(g.tables):<32} {where:<22} {size:<12} {g.reason}")
        return "\n".join(lines)


class Planner:
    """Chooses a GroupPlan per table group.

    `expected_rows`: table name -> expected number of ids (else the table's capacity; else the
    table is unbounded). `overrides`: table name -> "row_wise" | "replicated" | "table_wise" |
    "table_wise:RANK" (naming any table of a group places the whole group)."""

    def __init__(self, replicate_max_bytes: int = 1 << 20, table_wise_max_bytes: int = 64 << 20,
                 expected_rows: Optional[Dict[str, int]] = None, overrides: Optional[Dict[str, str]] = None):
        if replicate_max_bytes < 0 or table_wise_max_bytes < 0:
            raise ValueError("the planner's byte thresholds must be >= 0")
        self.replicate_max_bytes = replicate_max_bytes
        self.table_wise_max_bytes = table_wise_max_bytes
        self.expected_rows = dict(expected_rows or {})
        self.overrides = dict(overrides or {})

    def plan(self, collections, world_size: int) -> ShardingPlan:
        """Plans every group of `collections` (an EmbeddingCollection or a sequence of them)."""
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        groups = [g for c in _as_list(collections) for g in c.groups]
        names = {t.name for g in groups for t in g.tables}
        unknown = sorted(set(self.overrides) - names)
        if unknown:
            raise ValueError(f"sharding overrides name tables {unknown} that the model does not have "
                             f"(tables: {sorted(names)})")
        unknown = sorted(set(self.expected_rows) - names)
        if unknown:
            raise ValueError(f"expected_rows names tables {unknown} that the model does not have")
        load = [0] * world_size
        plan = ShardingPlan(world_size)
        for group in groups:
            tables = [t.name for t in group.tables]
            size = self._bytes(group)
            chosen = self._override(tables, world_size)
            if chosen is not None:
                sharding, rank = chosen
                reason = "override"
            elif size is None:
                sharding, rank, reason = ROW_WISE, None, "unbounded id space"
            elif size <= self.replicate_max_bytes:
                sharding, rank, reason = REPLICATED, None, f"<= {self.replicate_max_bytes} bytes"
            elif size <= self.table_wise_max_bytes:
                sharding, rank, reason = TABLE_WISE, None, f"<= {self.table_wise_max_bytes} bytes"
            else:
                sharding, rank, reason = ROW_WISE, None, f"> {self.table_wise_max_bytes} bytes"
            if sharding == TABLE_WISE and rank is None:
                rank = min(range(world_size), key=lambda r: (load[r], r))
            if sharding == TABLE_WISE:
                load[rank] += size or 0
            plan.groups.append(GroupPlan(tables, sharding, rank, size, reason))
        return plan

    def _bytes(self, group) -> Optional[int]:
        rows = 0
        for t in group.tables:
            n = self.expected_rows.get(t.name, group.capacity)
            if n is None:
                return None
            rows += int(n)
        return rows * group.embedding_dim * 4

    def _override(self, tables: Sequence[str], world_size: int):
        given = {self.overrides[t] for t in tables if t in self.overrides}
        if not given:
            return None
        if len(given) > 1:
            raise ValueError(f"tables {list(tables)} share one table group but have different overrides {given}")
        spec = given.pop()
        kind, rank = parse_override(spec, f"override {spec!r} for tables {list(tables)}")
        if rank is not None and rank >= world_size:
            raise ValueError(f"override {spec!r} for tables {list(tables)}: rank must be in [0, {world_size})")
        return kind, rank


def parse_override(spec, where: str) -> Tuple[str, Optional[int]]:
    """(sharding, rank or None) of an override "row_wise" | "replicated" | "table_wise" |
    "table_wise:RANK"; an error naming `where` otherwise (the rank's range is the plan's to check).

    >>> parse_override("table_wise:1", "t"), parse_override("replicated", "t")
    (('table_wise', 1), ('replicated', None))
    """
    kind, sep, rank = spec.partition(":") if isinstance(spec, str) else (None, "", "")
    if kind not in SHARDINGS or (sep and (kind != TABLE_WISE or not rank.isdigit())):
        raise ValueError(f"{where}: use one of {SHARDINGS}, or 'table_wise:RANK', got {spec!r}")
    return kind, int(rank) if sep else None


def _as_list(collections):
    return list(collections) if isinstance(collections, (list, tuple)) else [collections]
