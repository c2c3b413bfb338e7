"""shard(model): swaps every EmbeddingCollection of a model for its sharded form, in place.

>>> from recis.nn import EmbeddingCollection, TableConfig
>>> model = torch.nn.Sequential(EmbeddingCollection([TableConfig("user", 8)]))
>>> model = shard(model, verbose=False)         # no process group: one rank owns every row
>>> type(model[0]).__name__, model[0].group_plans[0].sharding
('ShardedEmbeddingCollection', 'row_wise')
"""
import hashlib
import json
from functools import partial
from typing import Optional

import torch
from torch import nn

from recis.distributed.env import ShardingEnv
from recis.distributed.planner import Planner, ShardingPlan
from recis.distributed.sharded_collection import ShardedEmbeddingCollection
from recis.nn import EmbeddingCollection


class ConfigMismatchError(ValueError):
    """Ranks were started with different table configs."""


def shard(model: nn.Module, env: Optional[ShardingEnv] = None, planner: Optional[Planner] = None,
          plan: Optional[ShardingPlan] = None, verbose: bool = True) -> nn.Module:
    """Replaces the model's EmbeddingCollections by ShardedEmbeddingCollections (all share one
    process subgroup of `env`, default: the current torch.distributed world or a single process).
    Checks that every rank has the same table configs, and prints the plan on rank 0."""
    env = env or ShardingEnv.current()
    collections = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, EmbeddingCollection) and not isinstance(m, ShardedEmbeddingCollection)]
    if not collections:
        return model
    check_same_tables([m for _, m in collections], env)
    if plan is None:
        plan = (planner or Planner()).plan([m for _, m in collections], env.world_size)
    elif plan.world_size != env.world_size:
        raise ValueError(f"the sharding plan is for {plan.world_size} ranks, the world has {env.world_size}")
    if verbose and env.rank == 0:
        print(plan.describe(), flush=True)
    comm = env.subgroup()
    for name, module in collections:
        sharded = ShardedEmbeddingCollection(module, plan, comm)
        if not name:
            return sharded
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, sharded)
    return model


def table_signature(collections) -> dict:
    """The table configs that all ranks must agree on, by table name (JSON values)."""
    out = {}
    for c in collections:
        for group in c.groups:
            cfg = group.config
            for name, seed in zip(cfg["names"], cfg["seeds"]):
                out[name] = {"dim": group.embedding_dim, "seed": int(seed),
                             "initializer": list(map(str, group.initializer.spec(group.embedding_dim))),
                             "admission": repr(cfg["admission"]), "eviction": repr(cfg["eviction"]),
                             "capacity": cfg["capacity"], "missing": cfg["missing"], "group": list(cfg["names"])}
    return out


def check_same_tables(collections, env: ShardingEnv) -> None:
    """Raises ConfigMismatchError naming the first table (and rank) whose config differs from rank 0's."""
    mine = table_signature(collections)
    digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()
    digests = env.all_gather_object(digest, what="table config check")
    if all(d == digests[0] for d in digests):
        return
    everyone = env.all_gather_object(mine, what="table config check")
    ref = everyone[0]
    for rank, theirs in enumerate(everyone):
        for name in sorted(set(ref) | set(theirs)):
            if ref.get(name) != theirs.get(name):
                raise ConfigMismatchError(f"table {name!r} differs between rank 0 and rank {rank}: "
                                          f"{ref.get(name)} vs {theirs.get(name)}")
    raise ConfigMismatchError("table configs differ across ranks")


def wrap_dense(model: nn.Module, env: Optional[ShardingEnv] = None, mode: str = "ddp") -> nn.Module:
    """Data-parallel dense parameters: "ddp" (DistributedDataParallel), "fsdp2" (fully_shard on
    the dense submodules) or "none". A single process gets the model back unchanged."""
    env = env or ShardingEnv.current()
    if mode not in ("ddp", "fsdp2", "none"):
        raise ValueError(f"dense parallelism must be 'ddp', 'fsdp2' or 'none', got {mode!r}")
    if not env.distributed or mode == "none" or not any(p.requires_grad for p in model.parameters()):
        return model
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model, process_group=env.group)
    from torch.distributed.fsdp import fully_shard

    sharded = set()
    for child in model.children():
        if any(p.requires_grad for p in child.parameters()) and not isinstance(child, EmbeddingCollection):
            fully_shard(child)
            sharded.update(id(p) for p in child.parameters())
    # The root's own parameters (a scalar bias, say, which fully_shard refuses) stay replicated:
    # same start on every rank, gradients averaged as soon as they are accumulated.
    for p in model.parameters():
        if id(p) in sharded or not p.requires_grad:
            continue
        with torch.no_grad():
            torch.distributed.broadcast(p.data, src=0, group=env.group)
        p.register_post_accumulate_grad_hook(partial(_average_grad, env=env))
    return model


def _average_grad(param: torch.Tensor, env: ShardingEnv) -> None:
    env.all_reduce(param.grad, "replicated parameter gradients").div_(env.world_size)
