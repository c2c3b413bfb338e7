"""Contestants of ``dist_embedding.py`` (one per rank process) and a counter of bytes sent.

* ``RecisSharded``: recis ``EmbeddingCollection`` of F tables sharded row-wise over the world
  (``recis.distributed.shard``), fused ``SparseRowwiseAdagrad``; raw 63-bit ids.
* ``RecisLocal``: the same collection unsharded on every rank (no exchange): the compute floor.
* ``TorchrecRW``: torchrec ``DistributedModelParallel(EmbeddingBagCollection)``, ROW_WISE forced on
  every table, fused EXACT_ROWWISE_ADAGRAD kernel; pre-mapped rows (it cannot hash).

torchrec 1.8's planner refuses ROW_WISE on CPU (``EmbeddingBagCollectionSharder.sharding_types``
lists it for "cuda" only: "No available sharding type and compute kernel combination after
applying user provided constraints"), so ``TorchrecRW`` builds the plan by hand with
``construct_module_sharding_plan(..., row_wise(compute_kernel="fused"))`` and a sharder that
admits ROW_WISE on CPU; the sharded module itself then runs on gloo.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections import defaultdict

import torch
import torch.distributed as dist

from _contestants import EPS, LR, Contestant, Recis, TorchrecDMP, _tbe_types
from _workload import Workload


# ----------------------------------------------------------------------------------------------
# bytes on the wire
# ----------------------------------------------------------------------------------------------

def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _rank_world(group):
    return dist.get_rank(group), dist.get_world_size(group)


def _a2a_single(a):
    rank, world = _rank_world(a.get("group"))
    inp = a["input"]
    rows = inp.shape[0] if inp.dim() else 0
    row_bytes = _nbytes(inp) // max(rows, 1)
    splits = a.get("input_split_sizes")
    splits = [int(s) for s in splits] if splits else [rows // world] * world
    return row_bytes * sum(s for r, s in enumerate(splits) if r != rank)


def _a2a_list(a):
    rank, _ = _rank_world(a.get("group"))
    return sum(_nbytes(t) for r, t in enumerate(a["input_tensor_list"]) if r != rank)


def _reduce_scatter_tensor(a):
    _, world = _rank_world(a.get("group"))
    return _nbytes(a["input"]) * (world - 1) // world  # ring reduce-scatter: W-1 chunks of size in/W


def _reduce_scatter_list(a):
    rank, _ = _rank_world(a.get("group"))
    return sum(_nbytes(t) for r, t in enumerate(a["input_list"]) if r != rank)


def _all_gather_tensor(a):
    _, world = _rank_world(a.get("group"))
    return _nbytes(a["input_tensor"]) * (world - 1)  # this rank's input reaches W-1 peers


def _all_gather_list(a):
    _, world = _rank_world(a.get("group"))
    return _nbytes(a["tensor"]) * (world - 1)


def _all_reduce(a):
    _, world = _rank_world(a.get("group"))
    return 2 * _nbytes(a["tensor"]) * (world - 1) // world  # ring all-reduce


_COUNTED = {"all_to_all_single": _a2a_single, "all_to_all": _a2a_list,
            "reduce_scatter_tensor": _reduce_scatter_tensor, "reduce_scatter": _reduce_scatter_list,
            "all_gather_into_tensor": _all_gather_tensor, "all_gather": _all_gather_list,
            "all_reduce": _all_reduce}


class CommCounter:
    """Counts the bytes this rank hands to other ranks in torch.distributed collectives.

    Installs wrappers over the ``torch.distributed`` functions in ``_COUNTED`` (every caller that
    looks them up as ``dist.<name>`` at call time, as recis and torchrec do, is counted). An
    all-to-all counts exactly the rows sent to other ranks; reduce-scatter, all-gather and
    all-reduce count what a ring algorithm sends per rank. Calls while ``paused`` are not counted.
    """

    def __init__(self):
        self.bytes = defaultdict(int)
        self.calls = defaultdict(int)
        self.paused = False
        self._saved = {}

    def install(self) -> "CommCounter":
        for name, size in _COUNTED.items():
            original = getattr(dist, name)
            self._saved[name] = original
            signature = inspect.signature(original)

            def wrapper(*args, __name=name, __size=size, __orig=original, __sig=signature, **kwargs):
                if not self.paused:
                    self.bytes[__name] += int(__size(__sig.bind(*args, **kwargs).arguments))
                    self.calls[__name] += 1
                return __orig(*args, **kwargs)

            setattr(dist, name, wrapper)
        return self

    def uninstall(self) -> None:
        for name, original in self._saved.items():
            setattr(dist, name, original)
        self._saved.clear()

    def snapshot(self) -> dict:
        return {"bytes": dict(self.bytes), "calls": dict(self.calls)}

    @staticmethod
    def delta(after: dict, before: dict) -> dict:
        return {kind: {k: v - before[kind].get(k, 0) for k, v in after[kind].items() if v - before[kind].get(k, 0)}
                for kind in ("bytes", "calls")}

    @contextlib.contextmanager
    def pause(self):
        self.paused = True
        try:
            yield
        finally:
            self.paused = False


# ----------------------------------------------------------------------------------------------
# contestants (build() makes the tables on this rank, convert() its input, step(i) one step)
# ----------------------------------------------------------------------------------------------

class RecisLocal(Recis):
    """recis' single-process contestant, run on each rank on its own batches (no exchange)."""

    key = "recis_local"
    label = "recis EmbeddingCollection, unsharded on each rank (no exchange; compute floor)"


class RecisSharded(Recis):
    """recis EmbeddingCollection sharded row-wise (forced) over the world, fused row-wise Adagrad."""

    key = "recis"
    label = "recis ShardedEmbeddingCollection, row-wise (forced), raw ids"

    def build(self):
        from recis.distributed import Planner, ShardingEnv, shard
        from recis.nn import sparse_tables
        from recis.optim import SparseRowwiseAdagrad

        super().build()  # the full collection, warmed with every id; shard() keeps the owned rows
        del self.opt
        env = ShardingEnv.current()
        names = [t.name for g in self.ec.groups for t in g.tables]
        self.ec = shard(self.ec, env, Planner(overrides={n: "row_wise" for n in names}), verbose=False)
        self.plan_desc = ", ".join(f"{'+'.join(p.tables[:2])}{'+...' if len(p.tables) > 2 else ''}: {p.sharding}"
                                   for p in self.ec.group_plans)
        self.tables = {t.name: t for t in sparse_tables(self.ec)}
        self.opt = SparseRowwiseAdagrad(sparse_tables(self.ec), lr=LR, eps=EPS, fused=True)
        self.live = self.n_live()
        self.comm_log = []

    def step(self, i):
        super().step(i)
        self.comm_log.append(dict(self.ec.comm_stats))


class TorchrecRW(TorchrecDMP):
    """The single-process torchrec contestant's model, row-wise sharded over the world."""

    label = "torchrec DMP(EmbeddingBagCollection), ROW_WISE forced, one table per feature"

    def build(self):
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
        from torchrec.distributed.types import ShardingEnv, ShardingPlan, ShardingType

        class RowWiseCpuSharder(EmbeddingBagCollectionSharder):
            def sharding_types(self, compute_device_type):
                return [ShardingType.ROW_WISE.value]

        wl: Workload = self.wl
        OptimType = _tbe_types()[3]
        pg = dist.group.WORLD
        world = dist.get_world_size(pg)
        ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t{f}", embedding_dim=wl.dim, num_embeddings=wl.cap_per_feature,
                               feature_names=[f"f{f}"], pooling=PoolingType.SUM)
            for f in range(wl.features)], device=torch.device("meta"))
        sharder = RowWiseCpuSharder(fused_params={"optimizer": OptimType.EXACT_ROWWISE_ADAGRAD,
                                                  "learning_rate": LR, "eps": EPS})
        module_plan = construct_module_sharding_plan(
            ebc, per_param_sharding={f"t{f}": row_wise(compute_kernel="fused") for f in range(wl.features)},
            local_size=world, world_size=world, device_type="cpu", sharder=sharder)
        plan = ShardingPlan({"": module_plan})
        kernels = sorted({(p.sharding_type, p.compute_kernel) for p in module_plan.values()})
        self.plan_desc = ", ".join(f"{s}/{k}" for s, k in kernels)
        self.own_pg = False  # run_local's process group
        self.model = DistributedModelParallel(ebc, env=ShardingEnv.from_process_group(pg),
                                              device=torch.device("cpu"), plan=plan, sharders=[sharder])


def timed_steps(c: Contestant, indices, counter: CommCounter, barrier) -> tuple:
    """Runs `c.step(i)` for each i between two barriers; returns (seconds per step, bytes delta)."""
    with counter.pause():
        barrier()
    before = counter.snapshot()
    t0 = time.perf_counter()
    for i in indices:
        c.step(i)
    dt = time.perf_counter() - t0
    delta = CommCounter.delta(counter.snapshot(), before)
    return dt / len(indices), delta
