"""Sharded checkpoints: each rank writes its shard of the tables into one directory that rank 0
commits atomically; a checkpoint of W ranks loads onto any W'.

Files of a W-rank checkpoint (W > 1): `sparse-RRRRR-of-WWWWW.safetensors` per rank (the rows it
owns; replicated and unsharded tables only from rank 0), `state-RRRRR-of-WWWWW.{json,safetensors}`
per rank (optimizers, trainer and data position), `dense.safetensors` from rank 0. Loading merges
the shards into one table state (admission sketches are summed, see ShardedEmbeddingCollection);
each rank then keeps the rows it owns under its own plan.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from recis.checkpoint import files
from recis.checkpoint.errors import CheckpointError
from recis.checkpoint.tables import GROUP_SUFFIX
from recis.distributed.env import DistributedError, ShardingEnv


def shard_file(kind: str, rank: int, world_size: int, ext: str) -> str:
    return f"{kind}-{rank:05d}-of-{world_size:05d}.{ext}"


def model_env(model) -> ShardingEnv:
    """The env of the model's sharded tables, else the current torch.distributed world."""
    from recis.distributed import ShardedEmbeddingCollection

    for m in model.modules():
        if isinstance(m, ShardedEmbeddingCollection):
            return m.env
    return ShardingEnv.current()


def rank0_only_groups(model) -> set:
    """ids of the table groups every rank holds whole (replicated or unsharded): rank 0 saves them."""
    from recis.distributed import REPLICATED, ShardedEmbeddingCollection
    from recis.nn import named_table_groups

    sharded = {}
    for m in model.modules():
        if isinstance(m, ShardedEmbeddingCollection):
            sharded.update({id(g): p.sharding for g, p in zip(m.groups, m.group_plans)})
    return {id(g) for _, g in named_table_groups(model) if sharded.get(id(g), REPLICATED) == REPLICATED}


def agree(env: ShardingEnv, error: Optional[BaseException], what: str) -> None:
    """Every rank learns whether every rank succeeded; a failure raises on all of them."""
    if not env.distributed:
        if error is not None:
            raise error
        return
    reports = env.all_gather_object(None if error is None else f"{type(error).__name__}: {error}", what=what)
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
    if failed:
        raise CheckpointError(f"{what} failed on rank(s) {[r for r, _ in failed]}: " +
                              "; ".join(f"rank {r}: {m}" for r, m in failed))


def write_collectively(env: ShardingEnv, root: Path, name: str, write_local: Callable, manifest: Dict) -> Path:
    """Rank 0 opens the temporary directory, every rank writes its files into it, and rank 0
    commits (manifest with every rank's checksums, fsync, rename) once all have succeeded."""
    directory = None
    error = None
    if env.rank == 0:
        try:
            files.remove_stale_temporaries(root)
            directory = files.AtomicDirectory(root, name).__enter__()
        except (OSError, FileExistsError) as e:
            error = e
    agree(env, error, f"opening checkpoint {root / name}")
    tmp = env.broadcast_object(str(directory.tmp) if directory is not None else None, what="checkpoint directory")
    try:
        writer = directory if env.rank == 0 else files.DirectoryWriter(Path(tmp))
        error = None
        try:
            write_local(writer)
        except (OSError, ValueError, RuntimeError) as e:
            error = e
        agree(env, error, f"writing checkpoint {root / name}")
        listed = env.all_gather_object(writer.files, what="checkpoint file list")
        path = None
        if env.rank == 0:
            for part in listed:
                directory.files.update(part)
            path = directory.commit(manifest)
        path = env.broadcast_object(str(path) if path is not None else None, what="checkpoint commit")
        return Path(path)
    finally:
        if directory is not None:
            directory.__exit__(None, None, None)


def read_sparse(directory: Path, manifest: Dict, single_name: str) -> Dict[str, torch.Tensor]:
    """The whole table state of a checkpoint: its one sparse file, or its shards merged."""
    world = int(manifest.get("world_size", 1))
    if world == 1:
        return files.read_tensors(directory, manifest, single_name)
    return merge_shards([files.read_tensors(directory, manifest, shard_file("sparse", r, world, "safetensors"))
                         for r in range(world)])


def merge_shards(parts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """One table state from rank shards: per-table tensors concatenated; group steps take the
    maximum, admission sketches the sum (each rank counted the ids it owns)."""
    out: Dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out:
                out[k] = v
            elif GROUP_SUFFIX in k:
                field = k.rsplit(".", 1)[1]
                if field == "sketch":
                    out[k] = out[k] + v
                elif field in ("step", "optimizer_step"):
                    out[k] = torch.maximum(out[k], v)
            else:
                out[k] = torch.cat([out[k], v])
    return out


def check_world(env: ShardingEnv, what: str) -> None:
    """Raises DistributedError early when ranks would disagree on the checkpoint to load."""
    if env.distributed:
        names = env.all_gather_object(what, what="checkpoint load")
        if len(set(names)) > 1:
            raise DistributedError(f"ranks are loading different checkpoints: {names}")
