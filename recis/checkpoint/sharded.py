"""Sharded checkpoints: each rank writes its shard of the tables into one directory that rank 0
commits atomically; a checkpoint of W ranks loads onto any W'.

Files of a W-rank checkpoint (W > 1): `sparse-RRRRR-of-WWWWW.safetensors` per rank (the rows it
owns; replicated and unsharded tables only from rank 0), `state-RRRRR-of-WWWWW.{json,safetensors}`
per rank (optimizers, trainer and data position), `dense.safetensors` from rank 0. Loading merges
the shards into one table state (admission sketches are summed, see ShardedEmbeddingCollection);
each rank reads only the rows it owns under its own plan: rows are filtered by owner while the
files are read, by bucket runs where the layout allows (recis.checkpoint.placement), so a rank
of a power-of-two world reads its share of the rows plus the files' headers and row indexes.
"""
import functools
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from recis.checkpoint import files
from recis.checkpoint.errors import CheckpointCorruptError, CheckpointError
from recis.checkpoint.placement import BUCKETS, EVERYTHING, INDEX, NOTHING, Owner
from recis.checkpoint.tables import GROUP_SUFFIX, LIVE_IDS, REMOVED_IDS, ROW_FIELDS
from recis.distributed.env import DistributedError, ShardingEnv
from recis.distributed.owner import owner_of


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


def read_sparse(directory: Path, manifest: Dict, single_name: str,
                owners: Optional[Dict[str, Owner]] = None) -> Dict[str, torch.Tensor]:
    """The table state of a checkpoint (its one sparse file, or its shards merged), holding of
    each table the rows its Owner keeps (`owners`: table state key -> Owner; absent: all).
    Rows are filtered while reading: a file with row indexes is read by bucket runs."""
    world = int(manifest.get("world_size", 1))
    names = [single_name] if world == 1 else [shard_file("sparse", r, world, "safetensors") for r in range(world)]
    parts = []
    for name in names:
        with files.open_tensors(directory, manifest, name) as f:
            parts.append(_read_part(f, owners or {}))
    return merge_shards(parts)


def _read_part(f, owners: Dict[str, Owner]) -> Dict[str, torch.Tensor]:
    keys = f.keys()
    tables = {k[:-len(".ids")] for k in keys if k.endswith(".ids") and GROUP_SUFFIX not in k}
    out, done = {}, set()
    for table in sorted(tables):
        owner = owners.get(table, EVERYTHING)
        fields = [k for k in keys if k.startswith(table + ".") and k[len(table) + 1:] in ROW_FIELDS]
        index_key = f"{table}.{INDEX}"
        done.update(fields + [index_key])
        run = owner.run()
        n = f.rows(f"{table}.ids")
        lo, hi = 0, n
        if owner.nothing:
            lo = hi = 0
        elif run is not None and index_key in keys:
            index = f.read(index_key)
            if index.numel() != BUCKETS + 1 or int(index[-1]) != n:
                raise CheckpointCorruptError(f"checkpoint file {f.path}: the row index of table {table!r} does not "
                                             f"fit its {n} rows")
            lo, hi = int(index[run[0]]), int(index[run[1]])
        part = {k: f.read(k, lo, hi) for k in fields}
        if owner.keep is not None and hi > lo:
            keep = owner.keep(part[f"{table}.ids"])
            part = {k: v[keep] for k, v in part.items()}
        out.update(part)
        for extra in (LIVE_IDS, REMOVED_IDS):  # id lists of incremental checkpoints
            k = f"{table}.{extra}"
            if k in keys:
                done.add(k)
                ids = f.read(k)
                out[k] = ids[owner.keep(ids)] if owner.keep is not None and ids.numel() else ids
    for k in keys:
        if k not in done:
            out[k] = f.read(k)
    return out


def merge_shards(parts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """One table state from rank shards: per-table tensors concatenated; group steps take the
    maximum, admission sketches the sum (each rank counted the ids it owns), in the sketch's
    own dtype (uint32 counters saturate at 2^32 - 1)."""
    out: Dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out:
                out[k] = v
            elif GROUP_SUFFIX in k:
                field = k.rsplit(".", 1)[1]
                if field == "sketch":
                    total = out[k].to(torch.int64) + v.to(torch.int64)
                    out[k] = total.clamp_(max=2**32 - 1).to(out[k].dtype) if out[k].dtype == torch.uint32 else total
                elif field in ("step", "optimizer_step"):
                    out[k] = torch.maximum(out[k], v)
            elif v.dim() == 0:  # one number per shard (an increment's live_count)
                out[k] = torch.cat([out[k].reshape(-1), v.reshape(-1)])
            else:
                out[k] = torch.cat([out[k], v])
    return out


def row_owners(model, entries) -> Dict[str, Owner]:
    """The Owner of each table (state key) of `model` on this rank: the rows a sharded module
    keeps (its public `owned(gi, ns, ids)`); every row elsewhere. Row-wise placement by
    owner_of(ids, seed, world) is recognised by probing `owned`, so that loads read by bucket run."""
    from recis.distributed import ShardedEmbeddingCollection

    by_group = {}
    for m in model.modules():
        if isinstance(m, ShardedEmbeddingCollection):
            for gi, g in enumerate(m.groups):
                by_group[id(g)] = (m, gi)
    out = {}
    for e in entries:
        found = by_group.get(id(e.group))
        for table, key, seed in zip(e.group.tables, e.table_keys, e.group.config["seeds"]):
            out[key] = _owner(found[0], found[1], table.ns, int(seed)) if found else EVERYTHING
    return out


_PROBE = torch.randint(-(2**63), 2**63 - 1, (4096,), dtype=torch.int64, generator=torch.Generator().manual_seed(16))


def _owner(module, gi: int, ns: int, seed: int) -> Owner:
    keep = functools.partial(module.owned, gi, ns)
    mask = keep(_PROBE)
    if bool(mask.all()):
        return EVERYTHING
    world, rank = module.env.world_size, module.env.rank
    if torch.equal(mask, owner_of(_PROBE, seed, world) == rank):
        return Owner(keep=keep, seed=seed, world_size=world, rank=rank)
    if not bool(mask.any()):
        return NOTHING
    return Owner(keep=keep)


def check_world(env: ShardingEnv, what: str) -> None:
    """Raises DistributedError early when ranks would disagree on the checkpoint to load."""
    if env.distributed:
        names = env.all_gather_object(what, what="checkpoint load")
        if len(set(names)) > 1:
            raise DistributedError(f"ranks are loading different checkpoints: {names}")
