"""The torchrec twin of recis' DeepFM for ``e2e_movielens.py``: a pre-built id vocabulary, the id
remap that replaces hash tables, and DeepFM over an ``EmbeddingBagCollection`` wrapped in
``DistributedModelParallel`` (one gloo rank, fused exact row-wise Adagrad)."""

from __future__ import annotations

import dataclasses
import socket
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from _contestants import EPS, _tbe_types
from recis.models.base import concat_dense
from recis.models.layers import MLP, fm_interaction


# ----------------------------------------------------------------------------------------------
# vocabulary: hashed ids -> contiguous rows
# ----------------------------------------------------------------------------------------------

class Vocabulary:
    """Sorted unique hashed ids per feature; row ``len(vocab[f])`` is reserved for ids never seen.

    >>> v = Vocabulary.from_batches(["f"], [{"f": torch.tensor([30, 10, 30])}])
    >>> v.rows(), v.lookup("f", torch.tensor([10, 30, 99])).tolist(), v.unseen
    ({'f': 3}, [0, 1, 2], 1)
    """

    def __init__(self, ids: Mapping[str, torch.Tensor]):
        self.ids = {f: torch.unique(t.to(torch.int64)) for f, t in ids.items()}  # unique() sorts
        self.unseen = 0  # ids looked up that the vocabulary does not hold (mapped to the reserved row)

    @classmethod
    def from_batches(cls, features: Sequence[str], batches: Iterable[Mapping[str, torch.Tensor]]) -> "Vocabulary":
        """Collects the ids of `features` from dicts {feature: ids tensor} (e.g. KJT.to_dict() values)."""
        parts: Dict[str, List[torch.Tensor]] = {f: [] for f in features}
        for b in batches:
            for f in features:
                if f not in b:
                    raise KeyError(f"Vocabulary: batch has no feature {f!r} (has {sorted(b)})")
                parts[f].append(torch.unique(b[f]))
        return cls({f: torch.cat(p) if p else torch.empty(0, dtype=torch.int64) for f, p in parts.items()})

    def rows(self) -> Dict[str, int]:
        """Table size per feature: the vocabulary plus the reserved row."""
        return {f: int(v.numel()) + 1 for f, v in self.ids.items()}

    def lookup(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        vocab = self.ids[feature]
        if vocab.numel() == 0:
            self.unseen += ids.numel()
            return torch.zeros_like(ids)
        pos = torch.searchsorted(vocab, ids)
        hit = vocab[pos.clamp(max=vocab.numel() - 1)] == ids
        misses = int(ids.numel() - hit.sum())
        if misses:
            self.unseen += misses
            pos = torch.where(hit, pos, torch.full_like(pos, vocab.numel()))
        return pos

    def remap_kjt(self, kjt):
        """The KeyedJaggedTensor with every feature's hashed ids replaced by its row index."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        values = kjt.values()
        parts, start = [], 0
        for key, n in zip(kjt.keys(), kjt.length_per_key()):
            parts.append(self.lookup(key, values[start:start + n]))
            start += n
        out = torch.cat(parts) if parts else values
        return KeyedJaggedTensor(keys=kjt.keys(), values=out, lengths=kjt.lengths(), offsets=kjt.offsets())

    def remap_batch(self, batch):
        """A feature-engine Batch with remapped sparse ids (used as the twin's extra transform step)."""
        return dataclasses.replace(batch, sparse=self.remap_kjt(batch.sparse))


def feature_ids(batch) -> Dict[str, torch.Tensor]:
    """{feature: hashed ids} of a feature-engine Batch (input of Vocabulary.from_batches)."""
    return {k: jt.values() for k, jt in batch.sparse.to_dict().items()}


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------

#: fbgemm's fused kernels need a multiple of 4 columns, so the linear term's weight w_id is the mean
#: of 4 columns. They start at zero and get identical gradients g/4, and row-wise Adagrad is
#: invariant to that scale (up to eps), so every column, hence w_id, moves exactly as a dim-1 row would.
LINEAR_COLS = 4


class TorchrecDeepFM(nn.Module):
    """recis.models.DeepFM with torchrec EmbeddingBagCollections for the fields (dim D) and the
    linear term (see LINEAR_COLS): logit = bias + sum_i w_i + w_d . dense + FM(e) + MLP([e, dense])."""

    def __init__(self, sparse_features: Sequence[str], rows: Mapping[str, int], dense_dim: int = 0,
                 embedding_dim: int = 16, hidden: Sequence[int] = (256, 128), dropout: float = 0.0,
                 combiners: Optional[Mapping[str, Optional[str]]] = None, device=torch.device("meta")):
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        super().__init__()
        combiners = dict(combiners or {})
        pooling = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN, None: PoolingType.SUM}
        for f, c in combiners.items():
            if f not in sparse_features or c not in pooling:
                raise ValueError(f"TorchrecDeepFM: combiner {c!r} of feature {f!r} is not supported "
                                 f"(features {list(sparse_features)}, combiners sum|mean)")
        missing = sorted(set(sparse_features) - set(rows))
        if missing:
            raise ValueError(f"TorchrecDeepFM: no table size for features {missing}")
        self.sparse_features, self.embedding_dim, self.dense_dim = list(sparse_features), embedding_dim, dense_dim

        def tables(prefix: str, dim: int):
            return [EmbeddingBagConfig(name=prefix + f, embedding_dim=dim, num_embeddings=rows[f],
                                       feature_names=[f], pooling=pooling[combiners.get(f, "sum")])
                    for f in sparse_features]

        self.embeddings = EmbeddingBagCollection(tables=tables("", embedding_dim), device=device)
        self.linear = EmbeddingBagCollection(tables=tables("linear_", LINEAR_COLS), device=device)
        self.dense_linear = nn.Linear(dense_dim, 1) if dense_dim else None
        self.deep = MLP(len(sparse_features) * embedding_dim + dense_dim, hidden, out_dim=1, dropout=dropout)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch) -> torch.Tensor:
        dense = batch.dense.float() if self.dense_dim else None
        emb = self.embeddings(batch.sparse).to_dict()
        fields = torch.stack([emb[f] for f in self.sparse_features], dim=1)
        linear = self.linear(batch.sparse).values().sum(dim=1) / LINEAR_COLS
        logit = self.bias + linear + fm_interaction(fields)
        if dense is not None:
            logit = logit + self.dense_linear(dense).squeeze(1)
        return logit + self.deep(concat_dense(fields, dense)).squeeze(1)


# ----------------------------------------------------------------------------------------------
# DistributedModelParallel on one gloo rank
# ----------------------------------------------------------------------------------------------

def init_single_rank_gloo() -> bool:
    """Starts a 1-rank gloo process group on localhost unless one exists; True if it started one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return True


def wrap_dmp(module: nn.Module, lr: float, eps: float = EPS):
    """`module` (with EmbeddingBagCollections on meta) sharded by DMP on CPU: every table table-wise
    with the fused kernel (exact row-wise Adagrad in backward). Returns (dmp, plan description)."""
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingEnv, ShardingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    OptimType = _tbe_types()[3]
    sharder = EmbeddingBagCollectionSharder(fused_params={
        "optimizer": OptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": lr, "eps": eps})
    pg = dist.group.WORLD
    # Small tables would otherwise be planned data-parallel (dense kernel, updated by the dense optimizer).
    fused = ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value],
                                 compute_kernels=[EmbeddingComputeKernel.FUSED.value])
    constraints = {t.name: fused for m in module.modules() if isinstance(m, EmbeddingBagCollection)
                   for t in m.embedding_bag_configs()}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"), constraints=constraints)
    plan = planner.collective_plan(module, [sharder], pg)
    kernels = sorted({(p.sharding_type, p.compute_kernel) for mp in plan.plan.values() for p in mp.values()})
    dmp = DistributedModelParallel(module, env=ShardingEnv.from_process_group(pg), device=torch.device("cpu"),
                                   plan=plan, sharders=[sharder])
    return dmp, ", ".join(f"{s}/{k}" for s, k in kernels)


def init_tables(dmp: nn.Module, std: float, cutoff: float = 2.0) -> int:
    """recis' initialisation on the sharded tables: the field tables truncated normal (mean 0,
    `std`, resampled outside +-cutoff*std), the linear tables zeros. Returns the tables set."""
    done = 0
    with torch.no_grad():
        for name, t in dmp.state_dict().items():
            if "embedding_bags" not in name or not name.endswith(".weight"):
                continue
            local = t.local_shards()[0].tensor if hasattr(t, "local_shards") else t
            if ".linear." in f".{name}":
                local.zero_()
            else:
                nn.init.trunc_normal_(local, std=std, a=-cutoff * std, b=cutoff * std)
            done += 1
    return done


def dense_parameters(dmp: nn.Module) -> List[nn.Parameter]:
    """Parameters not updated by the fused in-backward optimizer (for the dense torch optimizer)."""
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    return [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())]
