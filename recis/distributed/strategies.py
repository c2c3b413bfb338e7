"""Sharding strategies: how one table group is placed over the ranks, and how its lookups travel.

Like torchrec's split of a sharder from its sharding types, a ShardedEmbeddingCollection holds
one strategy per table group (made from the plan's GroupPlan by `strategy_for`). A strategy owns

- ownership: which rank holds each (namespace, id) key (`owned`, and `owners` for the strategies
  that route keys to an owner);
- its exchange: the ids exchange and the row exchange / gradient path
  (recis.distributed.exchanges). Strategies with the same exchange share one instance of it, so
  all row-wise and table-wise groups travel in one ids all-to-all per step.
"""
from typing import Dict, List

import torch

from recis.distributed.env import ShardingEnv
from recis.distributed.exchanges import ReplicatedExchange, RoutedExchange
from recis.distributed.owner import owner_of, salt_of
from recis.distributed.planner import REPLICATED, ROW_WISE, TABLE_WISE, GroupPlan


class ShardingStrategy:
    """The placement of one table group (`group`, planned as `plan`) over the ranks of `env`."""

    kind: str = ""
    exchange = None  # the exchange class that moves this strategy's ids and rows

    def __init__(self, plan: GroupPlan, group, env: ShardingEnv):
        self.plan, self.group, self.env = plan, group, env
        self.seeds = [int(s) for s in group.config["seeds"]]

    def owned(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        """Mask of the ids of namespace `ns` that this rank holds."""
        raise TypeError(f"{type(self).__name__} does not define ownership")

    def drop_unowned(self) -> None:
        """Erases the rows this rank does not own (a module sharded after it was filled)."""
        for t in self.group.tables:
            ids = t.export()["ids"]
            if ids.numel():
                t.erase(ids[~self.owned(t.ns, ids)])

    def describe(self) -> str:
        return self.kind + (f"@{self.plan.rank}" if self.plan.rank is not None else "")


class RoutedStrategy(ShardingStrategy):
    """Each key has one owner: requesters send it there and get its row back (RoutedExchange)."""

    exchange = RoutedExchange

    def owners(self, ns: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The owning rank (int64) of each key (ns[i], ids[i])."""
        raise TypeError(f"{type(self).__name__} does not define owners")

    def owned(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        return self.owners(torch.full_like(ids, ns), ids) == self.env.rank


class RowWise(RoutedStrategy):
    """Rows spread over every rank by a hash of (id, table seed): recis.distributed.owner_of."""

    kind = ROW_WISE

    def __init__(self, plan: GroupPlan, group, env: ShardingEnv):
        super().__init__(plan, group, env)
        self.salts = torch.tensor([salt_of(s) for s in self.seeds], dtype=torch.int64, device=group.device)

    def owned(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        return owner_of(ids, self.seeds[ns], self.env.world_size) == self.env.rank

    def owners(self, ns: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return owner_of(ids, self.salts[ns], self.env.world_size)


class TableWise(RoutedStrategy):
    """The whole group on rank `plan.rank`."""

    kind = TABLE_WISE

    def owners(self, ns: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.full_like(ids, self.plan.rank)

    def owned(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        return torch.full_like(ids, self.plan.rank == self.env.rank, dtype=torch.bool)


class Replicated(ShardingStrategy):
    """A copy on every rank: ids are all-gathered, gradients all-reduced (ReplicatedExchange)."""

    kind = REPLICATED
    exchange = ReplicatedExchange

    def owned(self, ns: int, ids: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(ids, dtype=torch.bool)


STRATEGIES = {ROW_WISE: RowWise, TABLE_WISE: TableWise, REPLICATED: Replicated}


def strategy_for(plan: GroupPlan, group, env: ShardingEnv) -> ShardingStrategy:
    """The strategy object of a planned group."""
    return STRATEGIES[plan.sharding](plan, group, env)


def exchanges_of(strategies: List[ShardingStrategy], env: ShardingEnv) -> list:
    """One exchange per exchange class, serving its strategies' groups (by group index); those
    whose ids travel asynchronously start first (the same order on every rank)."""
    members: Dict[type, Dict[int, ShardingStrategy]] = {}
    for gi, s in enumerate(strategies):
        members.setdefault(s.exchange, {})[gi] = s
    classes = sorted(members, key=lambda cls: not cls.asynchronous)
    return [cls(members[cls], env) for cls in classes]
