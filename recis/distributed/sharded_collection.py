"""ShardedEmbeddingCollection: an EmbeddingCollection whose table groups are spread over ranks.

Forward, in two halves so a pipeline can overlap the first with the previous batch's compute:

1. `input_dist`: dedup the batch's ids per table, send each unique id (with its number of
   occurrences, so admission counts stay exact) to its owner in one all-to-all for all
   row-wise and table-wise groups; replicated groups all-gather their ids instead.
2. `compute`: each owner resolves the keys it received (find-or-insert of distinct keys with
   their counts: the `recis::resolve` table op) and returns their rows in a second all-to-all;
   the requester pools them into the usual KeyedTensor / dict output.

Each table group has a sharding strategy (recis.distributed.strategies: row-wise, table-wise,
replicated), which decides ownership and how the group's ids and rows travel. The module wraps
the unsharded EmbeddingCollection (`unsharded`) and shares its table groups: an optimizer made
over the unsharded module keeps working. Tables stay on their device (CPU with gloo, CUDA with
NCCL); the exchanges run there.

Backward runs the exchange in reverse: row gradients (averaged over ranks, like DDP) go back
to the owners, whose fused sparse optimizer updates the rows. Each rank holds only the rows it
owns; a state_dict therefore holds this rank's shard (see recis.checkpoint for sharded saves).
"""
from typing import Dict

import torch
from torch import nn

from recis._ops import COMBINERS, kernels
from recis.distributed.env import ShardingEnv
from recis.distributed.exchanges import GroupInput, PendingLookup
from recis.distributed.planner import ShardingPlan
from recis.distributed.strategies import exchanges_of, strategy_for
from recis.nn import EmbeddingCollection
from recis.nn.state_keys import STATE_KEYS, group_key, table_head, table_key
from recis.nn.table_state import load_groups, save_groups

__all__ = ["ShardedEmbeddingCollection", "PendingLookup", "PoolRows"]


class PoolRows(torch.autograd.Function):
    """Pools bags of a KJT-ordered batch from a [keys, dim] row tensor (the pooling of
    lookup_forward, on rows that came from other ranks); backward sums per unique row. `k`: the
    kernels of the rows' table group (recis._ops.kernels)."""

    @staticmethod
    def forward(ctx, rows, k, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner):
        ctx.save_for_backward(inverse, offsets, weights)
        ctx.k = k
        ctx.args = (feature_ns, batch, col_offsets, out_cols, combiner, rows.shape[0], rows.shape[1])
        return k.pool_rows(rows, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner)

    @staticmethod
    def backward(ctx, grad):
        inverse, offsets, weights = ctx.saved_tensors
        feature_ns, batch, col_offsets, out_cols, combiner, n_rows, dim = ctx.args
        rows_grad = ctx.k.pool_rows_backward(grad.contiguous(), inverse, offsets, weights, feature_ns, batch,
                                             col_offsets, out_cols, combiner, n_rows, dim)
        return (rows_grad,) + (None,) * 9


class ShardedEmbeddingCollection(EmbeddingCollection):
    """An EmbeddingCollection whose table groups are placed over the ranks of `env` by `plan`;
    made by `recis.distributed.shard`. Its configs, groups, tables and output layout are those of
    the wrapped (unsharded) module."""

    def __init__(self, module: EmbeddingCollection, plan: ShardingPlan, env: ShardingEnv):
        nn.Module.__init__(self)
        # Not a submodule: the tables appear once in state_dict / named_table_groups, under this module.
        self.__dict__["unsharded"] = module
        self.train(module.training)
        self.env = env
        groups = module.groups
        self.group_plans = [plan.for_table(g.tables[0].name) for g in groups]
        for g, p in zip(groups, self.group_plans):
            if sorted(p.tables) != sorted(g.names):
                raise ValueError(f"the sharding plan places tables {p.tables} together, but they form the table "
                                 f"group {g.names}")
        self._check_devices(groups, env)
        self.strategies = [strategy_for(p, g, env) for p, g in zip(self.group_plans, groups)]
        self._exchanges = exchanges_of(self.strategies, env)
        self._sketch_base: Dict[int, torch.Tensor] = {}
        self._prefetched: Dict[int, PendingLookup] = {}
        self.comm_stats: Dict[str, float] = {}
        for s in self.strategies:
            s.drop_unowned()

    @staticmethod
    def _check_devices(groups, env: ShardingEnv) -> None:
        devices = {g.device for g in groups}
        if len(devices) > 1:
            where = {str(d): [g.names for g in groups if g.device == d] for d in devices}
            raise ValueError(f"sharded tables must live on one device, got {where}")
        device = next(iter(devices))
        if env.distributed and env.device.type != device.type:
            raise ValueError(f"tables {[g.names for g in groups]} live on {device}, but the process group's "
                             f"backend ({env.backend}) runs collectives on {env.device.type}: use gloo for CPU "
                             "tables and nccl for CUDA tables (recis.distributed.init_from_env picks nccl when CUDA "
                             "is available)")

    # ---------------------------------------------------------------- the wrapped module
    @property
    def groups(self):
        return self.unsharded.groups

    @property
    def configs(self):
        return self.unsharded.configs

    @property
    def output(self):
        return self.unsharded.output

    @property
    def extra_keys(self):
        return self.unsharded.extra_keys

    def tables(self):
        return self.unsharded.tables()

    def feature_names(self):
        return self.unsharded.feature_names()

    # ---------------------------------------------------------------- ownership
    def owned(self, gi: int, ns: int, ids: torch.Tensor) -> torch.Tensor:
        """Mask of the ids of table `ns` of group `gi` that this rank holds."""
        return self.strategies[gi].owned(ns, ids)

    # ---------------------------------------------------------------- forward
    def forward(self, features):
        pending = self._prefetched.pop(id(features), None)
        if pending is None or pending.features is not features:
            pending = self.input_dist(features)
        return self.compute(pending)

    def prefetch(self, features) -> None:
        """Starts the ids exchange of `features` now; the forward that later gets this very
        KeyedJaggedTensor finishes it (see recis.distributed.pipeline)."""
        while len(self._prefetched) >= 2:  # never consumed (e.g. training stopped): drop the oldest
            self._prefetched.pop(next(iter(self._prefetched)))
        self._prefetched[id(features)] = self.input_dist(features)

    def input_dist(self, features) -> PendingLookup:
        """Dedups the batch and starts the ids exchanges (asynchronously where they can)."""
        keys, index, batch, offsets, values, _ = self._checked_input(features, self.device)
        groups = []
        for group, (_, cols, _) in zip(self.groups, self.unsharded.group_layouts()):
            feature_ns, col_offsets = [-1] * len(keys), [0] * len(keys)
            for f, ns, col in cols:
                feature_ns[index[f]], col_offsets[index[f]] = ns, col
            ids, ns, counts, inverse = kernels(group).dedup_jagged(values, offsets, feature_ns, batch)
            groups.append(GroupInput(ids, ns, counts, inverse, feature_ns, col_offsets))
        pending = PendingLookup(features, batch, groups)
        for i, exchange in enumerate(self._exchanges):
            pending.exchanges[i] = exchange.start(pending)
        return pending

    def compute(self, p: PendingLookup):
        """Finishes the lookup started by `input_dist`; returns the module's output."""
        rows = {}
        for i, exchange in enumerate(self._exchanges):
            rows.update(exchange.finish(p, p.exchanges[i], self.training))
        pooled, unpooled = [], {}
        features, batch = p.features, p.batch
        offsets, weights = features.offsets(), features.weights_or_none()
        index = {k: i for i, k in enumerate(features.keys())}
        for gi, (combiner, cols, out_cols) in enumerate(self.unsharded.group_layouts()):
            g = p.groups[gi]
            if combiner is None:
                for f, _, _ in cols:
                    i = index[f]
                    s, e = int(offsets[i * batch]), int(offsets[(i + 1) * batch])
                    part = rows[gi].index_select(0, g.inverse[s:e].long())
                    if weights is not None:
                        part = part * weights[s:e].unsqueeze(1)
                    unpooled[f] = (part, 0, part.shape[0], i)
            else:
                out = PoolRows.apply(rows[gi], kernels(self.groups[gi]), g.inverse, offsets, weights, g.feature_ns, batch, g.col_offsets,
                                     out_cols, COMBINERS[combiner])
                pooled.append((out, [f for f, _, _ in cols], self.groups[gi].embedding_dim))
        p.stats["rows_bytes"] = p.stats.get("rows_bytes", 0)
        self.comm_stats = dict(p.stats)
        return self._assemble(p.features, p.batch, pooled, unpooled)

    def _apply(self, fn, recurse=True):
        """Sharded tables stay on the device they were sharded on; moving the model moves its dense
        parts only."""
        return nn.Module._apply(self, fn, recurse)

    # ---------------------------------------------------------------- state
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        save_groups(self.groups, destination, prefix)
        # Admission sketches: rank 0 saves its sketch, the others only what they added since the
        # last load, so the shards' sum is the sketch of one process.
        for gi, base in self._sketch_base.items():
            key = group_key(prefix, self.groups[gi].tables[0].name, "sketch")
            if self.env.rank > 0 and key in destination:
                # (in int64: the counters are uint32, which torch cannot subtract)
                mine = destination[key]
                destination[key] = (mine.to(torch.int64) - base.to(torch.int64)).clamp_(min=0).to(mine.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Takes a full (merged) state: keeps the rows this rank owns under the current plan."""
        state = dict(state_dict)
        for gi, group in enumerate(self.groups):
            for t in group.tables:
                key = table_key(prefix, t.name, "ids")
                if key in state:
                    keep = self.owned(gi, t.ns, state[key])
                    for k in STATE_KEYS:
                        full = table_key(prefix, t.name, k)
                        if full in state:
                            state[full] = state[full][keep]
        load_groups(self.groups, state, prefix, strict, missing_keys, unexpected_keys, error_msgs)
        for gi, group in enumerate(self.groups):
            key = group_key(prefix, group.tables[0].name, "sketch")
            if key in state:
                self._sketch_base[gi] = state[key].clone()
        heads = tuple(table_head(prefix, name) for name in self.tables())
        rest = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
        nn.Module._load_from_state_dict(self, rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                        error_msgs)

    def extra_repr(self) -> str:
        plans = ", ".join(f"{'+'.join(s.plan.tables)}: {s.describe()}" for s in self.strategies)
        return f"rank={self.env.rank}/{self.env.world_size}, {plans}"

