"""How the keys and rows of sharded table groups travel between ranks, on the tables' device.

- RoutedExchange (row-wise, table-wise): each unique key goes to its owner in one ids all-to-all
  for all its groups; owners resolve the keys (recis.distributed.owner_rows) and send the rows
  back in one all-to-all per embedding dim; gradients travel the reverse way (RowsExchange).
- ReplicatedExchange: every rank all-gathers the ids, resolves the union in its replica, and the
  gradients are all-reduced (AllReduceGrad), so every replica takes the same update.

Both take a PendingLookup (what `input_dist` made of a batch) in two halves: `start` (the ids
exchange, asynchronous where the collective allows) and `finish` (rows per group index).
"""
import time
from dataclasses import dataclass, field
from typing import Dict, List

import torch

from recis.distributed.comm_ops import AllReduceGrad, RowsExchange
from recis.distributed.env import ShardingEnv
from recis.distributed.owner_rows import owner_rows

_NS_BITS = 32


@dataclass
class GroupInput:
    """One table group's part of a local batch: its unique keys and where each value points."""

    uniq_ids: torch.Tensor       # [m] unique ids (the dedup's order)
    uniq_ns: torch.Tensor        # [m] namespace of each
    uniq_counts: torch.Tensor    # [m] occurrences in the local batch
    inverse: torch.Tensor        # [n] int32: each KJT value's unique key, -1 for other groups' features
    feature_ns: List[int]        # per KJT key: its namespace in this group, or -1
    col_offsets: List[int]       # per KJT key: its first output column


@dataclass
class PendingLookup:
    """What `input_dist` hands to `compute`: the batch's keys per group, and each exchange's
    state (by exchange index; an ids exchange may still be in flight)."""

    features: object
    batch: int
    groups: List[GroupInput]
    exchanges: Dict[int, object] = field(default_factory=dict)
    stats: Dict[str, float] = field(default_factory=dict)


@dataclass
class _RoutedIds:
    send_perm: torch.Tensor      # sorted send position of every key (pre-sort order)
    send_counts: List[int]
    recv_counts: List[int]
    send_group: torch.Tensor     # group of every key in send order
    received: torch.Tensor       # [n, 3] (group << 32 | ns, id, count), or in flight
    work: object


class RoutedExchange:
    """The keys of row-wise and table-wise groups (`members`: group index -> RoutedStrategy)."""

    asynchronous = True  # the ids all-to-all overlaps what runs before `finish`

    def __init__(self, members: Dict, env: ShardingEnv):
        self.members, self.env = dict(members), env
        self.order = sorted(self.members)

    def start(self, p: PendingLookup):
        env, dev = self.env, p.groups[self.order[0]].uniq_ids.device
        tags, ids, counts, owners, group_of = [], [], [], [], []
        for gi in self.order:
            g = p.groups[gi]
            tags.append((gi << _NS_BITS) | g.uniq_ns)
            ids.append(g.uniq_ids)
            counts.append(g.uniq_counts)
            owners.append(self.members[gi].owners(g.uniq_ns, g.uniq_ids))
            group_of.append(torch.full_like(g.uniq_ids, gi))
        owners_t = torch.cat(owners)
        perm = torch.sort(owners_t, stable=True).indices
        keys = torch.stack([torch.cat(tags), torch.cat(ids), torch.cat(counts)], dim=1)[perm]
        send = torch.bincount(owners_t, minlength=env.world_size)
        recv = env.exchange_counts(send, what="embedding ids count exchange")
        send_perm = torch.empty_like(perm)
        send_perm[perm] = torch.arange(perm.numel(), device=dev)
        send_counts, recv_counts = send.tolist(), recv.tolist()
        received, work = env.all_to_all(keys, send_counts, recv_counts, what="embedding ids all-to-all",
                                        async_op=True)
        remote = sum(c for r, c in enumerate(send_counts) if r != env.rank)
        p.stats.update(ids_bytes=remote * 3 * 8, count_bytes=8 * (env.world_size - 1) if env.distributed else 0,
                       keys=int(sum(int(p.groups[gi].uniq_counts.sum()) for gi in self.order)),
                       unique_keys=int(keys.shape[0]), remote_keys=remote)
        return _RoutedIds(send_perm, send_counts, recv_counts, torch.cat(group_of)[perm], received, work)

    def finish(self, p: PendingLookup, state: _RoutedIds, training: bool) -> Dict[int, torch.Tensor]:
        """Serves the keys this rank owns and receives the rows of the keys it sent: one
        all-to-all of [keys, dim] rows per distinct embedding dim."""
        env = self.env
        if state.work is not None:
            t0 = time.perf_counter()
            with env.failing_as("embedding ids all-to-all"), torch.profiler.record_function("recis:ids_all_to_all_wait"):
                state.work.wait()
            p.stats["ids_wait_s"] = time.perf_counter() - t0
            state.work = None
        recv = state.received
        dev = recv.device
        ranks = torch.arange(env.world_size, device=dev)
        rgroup = recv[:, 0] >> _NS_BITS
        rns = recv[:, 0] & ((1 << _NS_BITS) - 1)
        source = torch.repeat_interleave(ranks, torch.tensor(state.recv_counts, device=dev))
        owner = torch.repeat_interleave(ranks, torch.tensor(state.send_counts, device=dev))
        served = {gi: (rgroup == gi).nonzero().squeeze(1) for gi in self.order}
        rows = {gi: owner_rows(self.members[gi].group, rns[sel], recv[sel, 1], recv[sel, 2], training)
                for gi, sel in served.items()}
        out, rows_bytes = {}, 0
        dims = {gi: self.members[gi].group.embedding_dim for gi in self.order}
        for dim in sorted(set(dims.values())):
            members = [gi for gi in self.order if dims[gi] == dim]
            member_t = torch.tensor(members, device=dev)
            # Owner: this dim's rows in received order (source-major), as one [n, dim] matrix.
            mine = torch.isin(rgroup, member_t)
            position = torch.empty_like(rgroup)
            base = 0
            for gi in members:
                position[served[gi]] = base + torch.arange(served[gi].numel(), device=dev)
                base += served[gi].numel()
            stacked = torch.cat([rows[gi] for gi in members]) if len(members) > 1 else rows[members[0]]
            order = position[mine]
            identity = len(members) == 1 or bool((order == torch.arange(order.numel(), device=dev)).all())
            serve_rows = stacked if identity else stacked.index_select(0, order)
            serve = torch.bincount(source[mine], minlength=env.world_size).tolist()
            # Requester: the rows of its own keys of this dim, in send order (owner-major).
            wanted = torch.isin(state.send_group, member_t)
            expect = torch.bincount(owner[wanted], minlength=env.world_size).tolist()
            with torch.profiler.record_function("recis:rows_all_to_all"):
                back = RowsExchange.apply(serve_rows, env, serve, expect)
            rows_bytes += 4 * dim * sum(c for r, c in enumerate(serve) if r != env.rank)
            index_in_dim = torch.cumsum(wanted.to(torch.int64), 0) - 1
            base = 0
            for gi in self.order:
                m = p.groups[gi].uniq_ids.numel()
                if gi in members:
                    out[gi] = back.index_select(0, index_in_dim[state.send_perm[base:base + m]])
                base += m
        p.stats["rows_bytes"] = p.stats.get("rows_bytes", 0) + rows_bytes
        return out


class ReplicatedExchange:
    """The keys of replicated groups (`members`: group index -> Replicated strategy)."""

    asynchronous = False

    def __init__(self, members: Dict, env: ShardingEnv):
        self.members, self.env = dict(members), env

    def start(self, p: PendingLookup):
        env, state = self.env, {}
        for gi, strategy in self.members.items():
            g = p.groups[gi]
            mine = torch.stack([g.uniq_ns, g.uniq_ids, g.uniq_counts], dim=1)
            everyone = torch.cat(env.all_gather_rows(mine, what=f"replicated table {strategy.plan.tables} ids "
                                                                "all_gather"))
            # The union, sorted by (namespace, id) identically on every rank, with summed counts.
            u_ns, u_ids, u_counts, positions = [], [], [], torch.empty_like(g.uniq_ids)
            base = 0
            for ns in range(len(strategy.seeds)):
                sel = everyone[:, 0] == ns
                uniq, inv = torch.unique(everyone[sel, 1], sorted=True, return_inverse=True)
                counts = torch.zeros_like(uniq).scatter_add_(0, inv, everyone[sel, 2])
                m = g.uniq_ns == ns
                positions[m] = torch.searchsorted(uniq, g.uniq_ids[m]) + base
                u_ns.append(torch.full_like(uniq, ns))
                u_ids.append(uniq)
                u_counts.append(counts)
                base += uniq.numel()
            state[gi] = (torch.cat(u_ns), torch.cat(u_ids), torch.cat(u_counts), positions)
            if env.distributed:
                p.stats["allgather_bytes"] = p.stats.get("allgather_bytes", 0) + (everyone.shape[0]
                                                                                  - mine.shape[0]) * 3 * 8
        return state

    def finish(self, p: PendingLookup, state, training: bool) -> Dict[int, torch.Tensor]:
        out = {}
        for gi, (u_ns, u_ids, u_counts, positions) in state.items():
            union = owner_rows(self.members[gi].group, u_ns, u_ids, u_counts, training, distinct=True)
            out[gi] = AllReduceGrad.apply(union, self.env).index_select(0, positions)
        return out
