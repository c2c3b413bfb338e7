"""Contestants of ``embedding_step.py``: ``build()`` makes the tables, ``prepare()`` converts the
pre-generated batches into the contestant's input, ``step(i)`` runs one full training step
(lookup + backward + sparse optimizer update) on batch ``i``."""

from __future__ import annotations

import abc
import gc
import socket
import time

import torch

from _workload import Workload, rss_bytes

LR, EPS = 0.05, 1e-8


class Skip(Exception):
    """A contestant cannot run here (missing package, unsupported device)."""


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:160]


def _kjt(keys, values, lengths):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


def _tbe_types():
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, EmbeddingLocation, OptimType, PoolingMode,
        SplitTableBatchedEmbeddingBagsCodegen)
    return SplitTableBatchedEmbeddingBagsCodegen, ComputeDevice, EmbeddingLocation, OptimType, PoolingMode


def make_tbe(sizes, dim, device):
    """fbgemm TBE, one table per entry of ``sizes``, fused exact row-wise Adagrad."""
    TBE, ComputeDevice, EmbeddingLocation, OptimType, PoolingMode = _tbe_types()
    if device.type == "cuda":
        loc, cdev = EmbeddingLocation.DEVICE, ComputeDevice.CUDA
    else:
        loc, cdev = EmbeddingLocation.HOST, ComputeDevice.CPU
    return TBE([(int(n), dim, loc, cdev) for n in sizes], optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
               learning_rate=LR, eps=EPS, pooling_mode=PoolingMode.SUM)


# ----------------------------------------------------------------------------------------------
# contestants: build() makes the tables, prepare() converts batches, step(i) runs one training step
# ----------------------------------------------------------------------------------------------

class Contestant(abc.ABC):
    key = label = optimizer = ""
    idmap = False

    def __init__(self, wl: Workload, device: torch.device):
        self.wl, self.device = wl, device
        self.inputs, self.grad, self.B = [], None, 0

    @abc.abstractmethod
    def build(self):
        """Creates the tables and optimizer (timed separately from the steps)."""

    def prepare(self, batches, grad):
        self.B, self.grad = batches[0].batch_size, grad.to(self.device)
        self.inputs = [self.convert(b) for b in batches]

    @abc.abstractmethod
    def convert(self, b):
        """This contestant's input for batch `b`."""

    @abc.abstractmethod
    def step(self, i):
        """One training step on prepared batch `i`."""

    def close(self):
        keep = {"key", "label", "optimizer", "idmap", "opt_name", "wl", "device"}
        for name in [n for n in self.__dict__ if n not in keep]:
            delattr(self, name)


class Recis(Contestant):
    key, idmap = "recis", True
    label = "recis EmbeddingCollection (merged hash table, fused kernel)"
    optimizer = "row-wise Adagrad (fused)"

    def build(self):
        try:
            from recis.nn import EmbeddingCollection, TableConfig, sparse_tables
            from recis.optim import SparseRowwiseAdagrad
        except Exception as e:  # noqa: BLE001 - report any import failure as a skip
            raise Skip(f"recis not importable ({_reason(e)})") from e
        wl = self.wl
        gc.collect()
        rss0 = rss_bytes()
        self.ec = EmbeddingCollection([
            TableConfig(name=f"t{f}", embedding_dim=wl.dim, feature_names=[f"f{f}"], combiner="sum")
            for f in range(wl.features)])
        if self.device.type != "cpu":
            self.ec = self.ec.to(self.device)
        self.tables = self.ec.tables()
        t0 = time.perf_counter()
        for f, ids in wl.warm_order():
            self.tables[f"t{f}"].find_or_insert(ids.to(self.device))
        self.warm_s = time.perf_counter() - t0
        self.rss_warm = rss_bytes() - rss0
        self.opt = SparseRowwiseAdagrad(sparse_tables(self.ec), lr=LR, eps=EPS, fused=True)
        self.rss_growth = rss_bytes() - rss0
        self.live = self.n_live()

    def n_live(self):
        return sum(len(t) for t in self.tables.values())

    def convert(self, b):
        keys = [f"f{f}" for f in range(self.wl.features)]
        return _kjt(keys, b.raw.to(self.device), b.lengths.to(self.device))

    def step(self, i):
        kt = self.ec(self.inputs[i])
        kt.values().backward(self.grad)
        self.opt.step()


class EmbBag(Contestant):
    idmap = False

    def __init__(self, wl, device, opt_name):
        super().__init__(wl, device)
        self.opt_name = opt_name
        self.key = f"embbag_{opt_name.lower()}"
        self.label = f"torch.nn.EmbeddingBag(sum, sparse=True) + {opt_name}"
        self.optimizer = {"SGD": "SGD", "SparseAdam": "Adam (lazy, sparse)"}.get(opt_name, "Adagrad (elementwise)")

    def build(self):
        wl = self.wl
        self.emb = torch.nn.EmbeddingBag(wl.rows, wl.dim, mode="sum", sparse=True,
                                         include_last_offset=True, device=self.device)
        if self.opt_name == "SGD":
            self.opt = torch.optim.SGD(self.emb.parameters(), lr=LR)
        elif self.opt_name == "SparseAdam":
            self.opt = torch.optim.SparseAdam(self.emb.parameters(), lr=LR)
        else:
            self.opt = torch.optim.Adagrad(self.emb.parameters(), lr=LR, eps=EPS)

    def convert(self, b):
        return b.srow_sm.to(self.device), b.sm_offsets.to(self.device)

    def step(self, i):
        idx, off = self.inputs[i]
        out = self.emb(idx, off).view(self.B, -1)
        out.backward(self.grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class TBE(Contestant):
    key, idmap = "tbe", False
    label = "fbgemm TBE EXACT_ROWWISE_ADAGRAD, one table per feature"
    optimizer = "row-wise Adagrad (fused)"

    def build(self):
        try:
            self.tbe = make_tbe([self.wl.cap_per_feature] * self.wl.features, self.wl.dim, self.device)
        except ImportError as e:
            raise Skip(f"fbgemm_gpu not importable ({_reason(e)})") from e
        except Exception as e:  # noqa: BLE001
            if self.device.type == "cuda":
                raise Skip(f"fbgemm TBE unavailable on cuda ({_reason(e)})") from e
            raise

    def convert(self, b):
        return b.frow.to(self.device), b.fm_offsets.to(self.device)

    def step(self, i):
        idx, off = self.inputs[i]
        self.tbe(idx, off).backward(self.grad)


class TorchrecDMP(Contestant):
    key, idmap = "torchrec", False
    label = "torchrec DMP(EmbeddingBagCollection), 1-rank gloo, one table per feature"
    optimizer = "row-wise Adagrad (fused)"

    def build(self):
        if self.device.type != "cpu":
            raise Skip("the torchrec peer runs on CPU with gloo only in this benchmark")
        try:
            import torch.distributed as dist
            from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
            from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
            from torchrec.distributed.model_parallel import DistributedModelParallel
            from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
            from torchrec.distributed.types import ShardingEnv
            OptimType = _tbe_types()[3]
        except ImportError as e:
            raise Skip(f"torchrec not importable ({_reason(e)})") from e
        wl = self.wl
        self.own_pg = not dist.is_initialized()
        if self.own_pg:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t{f}", embedding_dim=wl.dim, num_embeddings=wl.cap_per_feature,
                               feature_names=[f"f{f}"], pooling=PoolingType.SUM)
            for f in range(wl.features)], device=torch.device("meta"))
        sharder = EmbeddingBagCollectionSharder(fused_params={
            "optimizer": OptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": LR, "eps": EPS})
        pg = dist.group.WORLD
        plan = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu")).collective_plan(
            ebc, [sharder], pg)
        kernels = sorted({(p.sharding_type, p.compute_kernel) for mp in plan.plan.values() for p in mp.values()})
        self.plan_desc = ", ".join(f"{s}/{k}" for s, k in kernels)
        self.model = DistributedModelParallel(ebc, env=ShardingEnv.from_process_group(pg),
                                              device=torch.device("cpu"), plan=plan, sharders=[sharder])

    def convert(self, b):
        return _kjt([f"f{f}" for f in range(self.wl.features)], b.frow, b.lengths)

    def step(self, i):
        self.model(self.inputs[i]).values().backward(self.grad)

    def close(self):
        own = getattr(self, "own_pg", False)
        super().close()
        if own:
            import torch.distributed as dist
            dist.destroy_process_group()
