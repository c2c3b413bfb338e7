"""ShardedEmbeddingCollection: an EmbeddingCollection whose table groups are spread over ranks.

Forward, in two halves so a pipeline can overlap the first with the previous batch's compute:

1. `input_dist`: dedup the batch's ids per table, send each unique id (with its number of
   occurrences, so admission counts stay exact) to its owner in one all-to-all for all
   row-wise and table-wise groups; replicated groups all-gather their ids instead.
2. `compute`: each owner finds or inserts the ids it received and returns their rows in a
   second all-to-all; the requester pools them into the usual KeyedTensor / dict output.

Backward runs the exchange in reverse: row gradients (averaged over ranks, like DDP) go back
to the owners, whose fused sparse optimizer updates the rows. Each rank holds only the rows it
owns; a state_dict therefore holds this rank's shard (see recis.checkpoint for sharded saves).
"""
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from recis._ops import COMBINERS, ops
from recis.distributed.comm_ops import AllReduceGrad, RowsExchange
from recis.distributed.env import ShardingEnv
from recis.distributed.owner import owner_of, salt_of
from recis.distributed.planner import REPLICATED, TABLE_WISE, ShardingPlan
from recis.nn import EmbeddingCollection
from recis.nn.table_state import load_groups, save_groups

_NS_BITS = 32


@dataclass
class _GroupInput:
    """One table group's part of a local batch: its unique keys and where each value points."""

    uniq_ids: torch.Tensor       # [m] unique ids (the C++ dedup's order)
    uniq_ns: torch.Tensor        # [m] namespace of each
    uniq_counts: torch.Tensor    # [m] occurrences in the local batch
    inverse: torch.Tensor        # [n] int32: each KJT value's unique key, -1 for other groups' features
    feature_ns: List[int]        # per KJT key: its namespace in this group, or -1
    col_offsets: List[int]       # per KJT key: its first output column


@dataclass
class PendingLookup:
    """What `input_dist` hands to `compute` (the ids exchange may still be in flight)."""

    features: object
    batch: int
    groups: List[_GroupInput]
    send_perm: torch.Tensor = None       # sorted send position of every sharded key (pre-sort order)
    send_counts: List[int] = None
    recv_counts: List[int] = None
    send_group: torch.Tensor = None      # group of every key in send order
    received: torch.Tensor = None        # [n, 3] (group << 32 | ns, id, count), or in flight
    work: object = None
    replicated: Dict[int, tuple] = field(default_factory=dict)  # group -> (union ns, ids, counts, my positions)
    stats: Dict[str, float] = field(default_factory=dict)


class PoolRows(torch.autograd.Function):
    """Pools bags of a KJT-ordered batch from a [keys, dim] row tensor (the C++ pooling of
    lookup_forward, on rows that came from other ranks); backward sums per unique row."""

    @staticmethod
    def forward(ctx, rows, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner):
        ctx.save_for_backward(inverse, offsets, weights)
        ctx.args = (feature_ns, batch, col_offsets, out_cols, combiner, rows.shape[0], rows.shape[1])
        return ops.pool_rows(rows, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner)

    @staticmethod
    def backward(ctx, grad):
        inverse, offsets, weights = ctx.saved_tensors
        feature_ns, batch, col_offsets, out_cols, combiner, n_rows, dim = ctx.args
        rows_grad = ops.pool_rows_backward(grad, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols,
                                           combiner, n_rows, dim)
        return (rows_grad,) + (None,) * 8


class ShardedEmbeddingCollection(EmbeddingCollection):
    """Wraps the groups of an EmbeddingCollection (sharing them: an optimizer made over the
    unsharded module keeps working); made by `recis.distributed.shard`."""

    def __init__(self, module: EmbeddingCollection, plan: ShardingPlan, env: ShardingEnv):
        nn.Module.__init__(self)
        self.output, self.configs, self.groups = module.output, module.configs, module.groups
        self.extra_keys = module.extra_keys
        self._plans, self._tables = module._plans, module._tables
        self.train(module.training)
        on_device = [g.names for g in self.groups if g.device.type != "cpu"]
        if on_device:
            raise ValueError(f"tables {on_device} live on a GPU; sharded tables run on the CPU (gloo) for now: shard "
                             "the model before moving it, and move only its dense part")
        self.env = env
        self.group_plans = [plan.for_table(g.tables[0].name) for g in self.groups]
        for g, p in zip(self.groups, self.group_plans):
            if sorted(p.tables) != sorted(g.names):
                raise ValueError(f"the sharding plan places tables {p.tables} together, but they form the table "
                                 f"group {g.names}")
        self._seeds = [[int(s) for s in g.config["seeds"]] for g in self.groups]
        self._salts = [torch.tensor([salt_of(s) for s in seeds], dtype=torch.int64) for seeds in self._seeds]
        self._dims = torch.tensor([g.embedding_dim for g in self.groups], dtype=torch.int64)
        self._sketch_base: Dict[int, torch.Tensor] = {}
        self._prefetched: Dict[int, PendingLookup] = {}
        self.comm_stats: Dict[str, float] = {}
        for gi in range(len(self.groups)):
            self._drop_unowned(gi)

    # ---------------------------------------------------------------- ownership
    def owned(self, gi: int, ns: int, ids: torch.Tensor) -> torch.Tensor:
        """Mask of the ids of table `ns` of group `gi` that this rank holds."""
        plan, env = self.group_plans[gi], self.env
        if plan.sharding == REPLICATED:
            return torch.ones_like(ids, dtype=torch.bool)
        if plan.sharding == TABLE_WISE:
            return torch.full_like(ids, plan.rank == env.rank, dtype=torch.bool)
        return owner_of(ids, self._seeds[gi][ns], env.world_size) == env.rank

    def _owners(self, gi: int, ns: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        plan, env = self.group_plans[gi], self.env
        if plan.sharding == TABLE_WISE:
            return torch.full_like(ids, plan.rank)
        return owner_of(ids, self._salts[gi][ns], env.world_size)

    def _drop_unowned(self, gi: int) -> None:
        for t in self.groups[gi].tables:
            ids = t.export()["ids"]
            if ids.numel():
                t.erase(ids[~self.owned(gi, t.ns, ids)])

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
        """Dedups the batch and starts the ids exchange (asynchronously)."""
        keys, index, batch, offsets, values, _ = self._checked_input(features, torch.device("cpu"))
        groups = []
        for _, cols, _ in self._plans:
            feature_ns, col_offsets = [-1] * len(keys), [0] * len(keys)
            for f, ns, col in cols:
                feature_ns[index[f]], col_offsets[index[f]] = ns, col
            ids, ns, counts, inverse = ops.dedup_jagged(values, offsets, feature_ns, batch)
            groups.append(_GroupInput(ids, ns, counts, inverse, feature_ns, col_offsets))
        pending = PendingLookup(features, batch, groups)
        self._start_exchange(pending)
        self._gather_replicated(pending)
        return pending

    def _start_exchange(self, p: PendingLookup) -> None:
        env = self.env
        sharded = [gi for gi, plan in enumerate(self.group_plans) if plan.sharding != REPLICATED]
        tags, ids, counts, owners, group_of = [], [], [], [], []
        for gi in sharded:
            g = p.groups[gi]
            tags.append((gi << _NS_BITS) | g.uniq_ns)
            ids.append(g.uniq_ids)
            counts.append(g.uniq_counts)
            owners.append(self._owners(gi, g.uniq_ns, g.uniq_ids))
            group_of.append(torch.full_like(g.uniq_ids, gi))
        if not sharded:
            return
        owners_t = torch.cat(owners)
        perm = torch.sort(owners_t, stable=True).indices
        keys = torch.stack([torch.cat(tags), torch.cat(ids), torch.cat(counts)], dim=1)[perm]
        send = torch.bincount(owners_t, minlength=env.world_size)
        recv = env.exchange_counts(send, what="embedding ids count exchange")
        p.send_perm = torch.empty_like(perm)
        p.send_perm[perm] = torch.arange(perm.numel())
        p.send_group = torch.cat(group_of)[perm]
        p.send_counts, p.recv_counts = send.tolist(), recv.tolist()
        p.received, p.work = env.all_to_all(keys, p.send_counts, p.recv_counts, what="embedding ids all-to-all",
                                            async_op=True)
        remote = sum(c for r, c in enumerate(p.send_counts) if r != env.rank)
        p.stats.update(ids_bytes=remote * 3 * 8, count_bytes=8 * (env.world_size - 1) if env.distributed else 0,
                       keys=int(sum(int(p.groups[gi].uniq_counts.sum()) for gi in sharded)),
                       unique_keys=int(keys.shape[0]), remote_keys=remote)

    def _gather_replicated(self, p: PendingLookup) -> None:
        env = self.env
        for gi, plan in enumerate(self.group_plans):
            if plan.sharding != REPLICATED:
                continue
            g = p.groups[gi]
            mine = torch.stack([g.uniq_ns, g.uniq_ids, g.uniq_counts], dim=1)
            everyone = torch.cat(env.all_gather_rows(mine, what=f"replicated table {plan.tables} ids all_gather"))
            # The union, sorted by (namespace, id) identically on every rank, with summed counts.
            u_ns, u_ids, u_counts, positions = [], [], [], torch.empty_like(g.uniq_ids)
            base = 0
            for ns in range(len(self._seeds[gi])):
                sel = everyone[:, 0] == ns
                uniq, inv = torch.unique(everyone[sel, 1], sorted=True, return_inverse=True)
                counts = torch.zeros_like(uniq).scatter_add_(0, inv, everyone[sel, 2])
                m = g.uniq_ns == ns
                positions[m] = torch.searchsorted(uniq, g.uniq_ids[m]) + base
                u_ns.append(torch.full_like(uniq, ns))
                u_ids.append(uniq)
                u_counts.append(counts)
                base += uniq.numel()
            p.replicated[gi] = (torch.cat(u_ns), torch.cat(u_ids), torch.cat(u_counts), positions)
            if env.distributed:
                p.stats["allgather_bytes"] = p.stats.get("allgather_bytes", 0) + sum(
                    int(x.shape[0]) for x in [everyone]) * 3 * 8 - mine.shape[0] * 3 * 8

    def compute(self, p: PendingLookup):
        """Finishes the lookup started by `input_dist`; returns the module's output."""
        rows = self._exchange_rows(p)
        for gi, (u_ns, u_ids, u_counts, positions) in p.replicated.items():
            union_rows = AllReduceGrad.apply(self._owner_lookup(gi, u_ns, u_ids, u_counts), self.env)
            rows[gi] = union_rows.index_select(0, positions)
        pooled, unpooled = [], {}
        features, batch = p.features, p.batch
        offsets, weights = features.offsets(), features.weights_or_none()
        index = {k: i for i, k in enumerate(features.keys())}
        for gi, (combiner, cols, out_cols) in enumerate(self._plans):
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
                out = PoolRows.apply(rows[gi], g.inverse, offsets, weights, g.feature_ns, batch, g.col_offsets,
                                     out_cols, COMBINERS[combiner])
                pooled.append((out, [f for f, _, _ in cols], self.groups[gi].embedding_dim))
        p.stats["rows_bytes"] = p.stats.get("rows_bytes", 0)
        self.comm_stats = dict(p.stats)
        return self._assemble(p.features, p.batch, pooled, unpooled)

    def _owner_lookup(self, gi: int, ns: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows [n, dim] of the given (namespace, id) keys in this rank's shard, inserted as in
        training. Each key is a bag of `count` copies of its id weighted (1, 0, ..., 0): the bag
        sum is the row itself, exactly, and the table counts every occurrence, so admission and
        LFU counts match one process."""
        group = self.groups[gi]
        order = torch.sort(ns, stable=True).indices
        ns_s, ids_s, counts_s = ns[order], ids[order], counts[order]
        tables = len(self._seeds[gi])
        per_ns = torch.bincount(ns_s, minlength=tables)
        if not self.training or bool((counts_s == 1).all()):  # eval lookups count nothing
            values, bag_offsets, weights = ids_s, None, None
        else:
            values = torch.repeat_interleave(ids_s, counts_s)
            bag_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts_s, 0)])
            weights = torch.zeros(values.numel())
            weights[bag_offsets[:-1]] = 1.0
        n = ids_s.numel()
        if bag_offsets is None:  # one value per key: unpooled lookup, one bag per table
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(per_ns, 0)])
            out = group.lookup(values, offsets, None, list(range(tables)), 1, [0] * tables, group.embedding_dim,
                               COMBINERS[None], self.training)
        else:  # one bag per key: key j of table t is bag j of feature t (columns t * dim), zero-padded
            dim = group.embedding_dim
            width = int(per_ns.max()) if n else 0
            slot = torch.arange(n) - (torch.cumsum(per_ns, 0) - per_ns)[ns_s]
            bag_len = torch.zeros(tables * width, dtype=torch.int64)
            bag_len[ns_s * width + slot] = counts_s
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(bag_len, 0)])
            pooled = group.lookup(values, offsets, weights, list(range(tables)), width,
                                  [t * dim for t in range(tables)], tables * dim, COMBINERS["sum"], self.training)
            back = torch.empty_like(order)
            back[order] = torch.arange(order.numel())
            if tables == 1:
                return pooled.index_select(0, slot[back])
            return pooled.view(width * tables, dim).index_select(0, (slot * tables + ns_s)[back])
        back = torch.empty_like(order)
        back[order] = torch.arange(order.numel())
        return out.index_select(0, back)

    def _exchange_rows(self, p: PendingLookup) -> Dict[int, torch.Tensor]:
        """Serves the keys this rank owns and receives the rows of the keys it sent: one
        all-to-all of [keys, dim] rows per distinct embedding dim."""
        env = self.env
        if p.received is None:
            return {}
        if p.work is not None:
            t0 = time.perf_counter()
            with env.failing_as("embedding ids all-to-all"), torch.profiler.record_function("recis:ids_all_to_all_wait"):
                p.work.wait()
            p.stats["ids_wait_s"] = time.perf_counter() - t0
            p.work = None
        recv = p.received
        rgroup = recv[:, 0] >> _NS_BITS
        rns = recv[:, 0] & ((1 << _NS_BITS) - 1)
        source = torch.repeat_interleave(torch.arange(env.world_size), torch.tensor(p.recv_counts))
        owner = torch.repeat_interleave(torch.arange(env.world_size), torch.tensor(p.send_counts))
        sharded = [gi for gi, plan in enumerate(self.group_plans) if plan.sharding != REPLICATED]
        served = {gi: (rgroup == gi).nonzero().squeeze(1) for gi in sharded}
        rows = {gi: self._owner_lookup(gi, rns[sel], recv[sel, 1], recv[sel, 2]) for gi, sel in served.items()}
        out, rows_bytes = {}, 0
        for dim in sorted({self.groups[gi].embedding_dim for gi in sharded}):
            members = [gi for gi in sharded if self.groups[gi].embedding_dim == dim]
            # Owner: this dim's rows in received order (source-major), as one [n, dim] matrix.
            mine = torch.isin(rgroup, torch.tensor(members))
            position = torch.empty_like(rgroup)
            base = 0
            for gi in members:
                position[served[gi]] = base + torch.arange(served[gi].numel())
                base += served[gi].numel()
            stacked = torch.cat([rows[gi] for gi in members]) if len(members) > 1 else rows[members[0]]
            order = position[mine]
            identity = order.numel() == stacked.shape[0] and bool((order == torch.arange(order.numel())).all())
            serve_rows = stacked if identity else stacked.index_select(0, order)
            serve = torch.bincount(source[mine], minlength=env.world_size).tolist()
            # Requester: the rows of its own keys of this dim, in send order (owner-major).
            wanted = torch.isin(p.send_group, torch.tensor(members))
            expect = torch.bincount(owner[wanted], minlength=env.world_size).tolist()
            with torch.profiler.record_function("recis:rows_all_to_all"):
                back = RowsExchange.apply(serve_rows, env, serve, expect)
            rows_bytes += 4 * dim * sum(c for r, c in enumerate(serve) if r != env.rank)
            index_in_dim = torch.cumsum(wanted.to(torch.int64), 0) - 1
            base = 0
            for gi in sharded:
                m = p.groups[gi].uniq_ids.numel()
                if gi in members:
                    out[gi] = back.index_select(0, index_in_dim[p.send_perm[base:base + m]])
                base += m
        p.stats["rows_bytes"] = rows_bytes
        return out

    def _apply(self, fn, recurse=True):
        """Sharded tables stay on the CPU; moving the model moves its dense parts only."""
        return nn.Module._apply(self, fn, recurse)

    # ---------------------------------------------------------------- state
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        save_groups(self.groups, destination, prefix)
        # Admission sketches: rank 0 saves its sketch, the others only what they added since the
        # last load, so the shards' sum is the sketch of one process.
        for gi, base in self._sketch_base.items():
            key = f"{prefix}{self.groups[gi].tables[0].name}._group.sketch"
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
                key = f"{prefix}{t.name}.ids"
                if key in state:
                    keep = self.owned(gi, t.ns, state[key])
                    for k in ("ids", "rows", "slots", "counts", "last_seen"):
                        full = f"{prefix}{t.name}.{k}"
                        if full in state:
                            state[full] = state[full][keep]
        load_groups(self.groups, state, prefix, strict, missing_keys, unexpected_keys, error_msgs)
        for gi, group in enumerate(self.groups):
            key = f"{prefix}{group.tables[0].name}._group.sketch"
            if key in state:
                self._sketch_base[gi] = state[key].clone()
        heads = tuple(f"{prefix}{name}." for name in self._tables)
        rest = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
        nn.Module._load_from_state_dict(self, rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                        error_msgs)

    def extra_repr(self) -> str:
        plans = ", ".join(f"{'+'.join(p.tables)}: {p.sharding}" + (f"@{p.rank}" if p.rank is not None else "")
                          for p in self.group_plans)
        return f"rank={self.env.rank}/{self.env.world_size}, {plans}"

