"""Module-level functions that the distributed tests run on every rank (spawned processes
import them by name), and the single-process reference they are compared with."""
import types
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.distributed import Planner, ShardingEnv, shard, wrap_dense
from recis.models import DeepFM
from recis.optim import SparseAdam, SparseRowwiseAdagrad

FEATURES = ["user", "item", "genre"]


def make_model(seed: int = 0, admission=None, backend: Optional[str] = None) -> DeepFM:
    """The test DeepFM; `backend="triton"` puts its tables on the Triton kernels (the interpreter
    on the CPU: the kernels of GPU tables)."""
    from recis.nn import named_table_groups

    torch.manual_seed(seed)
    extra = {"admission": admission} if admission is not None else {}
    model = DeepFM(FEATURES, dense_dim=2, embedding_dim=4, hidden=(8,), combiners={"genre": "mean"}, **extra)
    if backend is not None:
        for _, group in named_table_groups(model):
            group.to(backend=backend)
    return model


def global_batches(steps: int, batch: int, seed: int = 1) -> List[types.SimpleNamespace]:
    """Deterministic batches with repeated ids (within and across ranks' slices) and empty bags."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        user = torch.randint(0, 40, (batch,), generator=g)
        item = torch.randint(-20, 20, (batch,), generator=g) * 7919
        glen = torch.randint(0, 4, (batch,), generator=g)
        genre = torch.randint(0, 6, (int(glen.sum()),), generator=g)
        out.append(types.SimpleNamespace(
            user=user, item=item, genre_len=glen, genre=genre, dense=torch.rand(batch, 2, generator=g),
            labels=(torch.rand(batch, generator=g) < 0.4).float()))
    return out


def slice_batch(b, start: int, end: int) -> types.SimpleNamespace:
    """Examples [start, end) of a global batch, as the feature engine's Batch (sparse KJT, dense, labels)."""
    goff = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(b.genre_len, 0)])
    genre = b.genre[goff[start]:goff[end]]
    lengths = torch.cat([torch.ones(end - start, dtype=torch.int64)] * 2 + [b.genre_len[start:end]])
    kjt = KeyedJaggedTensor.from_lengths_sync(FEATURES, torch.cat([b.user[start:end], b.item[start:end], genre]),
                                              lengths)
    return types.SimpleNamespace(sparse=kjt, dense=b.dense[start:end], labels=b.labels[start:end],
                                 size=end - start)


def sparse_optimizer(model, kind: str, fused: bool):
    if kind == "adam":
        return SparseAdam(model, lr=0.05, fused=fused)
    return SparseRowwiseAdagrad(model, lr=0.3, fused=fused)


def train_steps(model, batches, kind: str = "rowwise_adagrad", fused: bool = True,
                env: Optional[ShardingEnv] = None, optimizers=None, dense_mode: str = "ddp") -> List[float]:
    """Trains one step per batch; returns the global mean loss of each step. `optimizers`:
    (sparse, dense) to continue with, else fresh ones (made after the dense part is wrapped)."""
    env = env or ShardingEnv()
    dense_model = wrap_dense(model, env, mode=dense_mode)
    sparse, dense = optimizers or make_optimizers(model, kind, fused)
    losses = []
    for b in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(dense_model(b), b.labels)
        dense.zero_grad()
        sparse.zero_grad()
        loss.backward()
        dense.step()
        sparse.step()
        reported = loss.detach().clone()
        env.all_reduce(reported)
        losses.append(float(reported) / env.world_size)
    return losses


def make_optimizers(model, kind: str = "rowwise_adagrad", fused: bool = True):
    return sparse_optimizer(model, kind, fused), torch.optim.Adam(model.parameters(), lr=0.01)


def table_contents(model) -> Dict[str, Dict[str, torch.Tensor]]:
    """Every table's state sorted by id (this rank's shard for a sharded model)."""
    from recis.nn import sparse_tables

    out = {}
    for t in sparse_tables(model):
        e = t.export()
        order = torch.argsort(e["ids"])
        out[t.name] = {k: v[order] for k, v in e.items()}
    return out


def merge_contents(parts: List[Dict[str, Dict[str, torch.Tensor]]], replicated=()) -> Dict[str, Dict]:
    """The union of every rank's shard (replicated tables: rank 0's copy, checked equal on all)."""
    out = {}
    for name in parts[0]:
        if name in replicated:
            for p in parts[1:]:
                for k, v in p[name].items():
                    assert torch.equal(v, parts[0][name][k]), f"replica of {name}.{k} differs across ranks"
            out[name] = parts[0][name]
            continue
        ids = torch.cat([p[name]["ids"] for p in parts])
        assert ids.unique().numel() == ids.numel(), f"table {name}: an id is held by two ranks"
        order = torch.argsort(ids)
        out[name] = {k: torch.cat([p[name][k] for p in parts])[order] for k in parts[0][name]}
    return out


def sharded_training(steps: int, batch: int, kind: str, fused: bool, overrides: Dict[str, str], admission=None,
                     backend: Optional[str] = None):
    """Rank body: shards a DeepFM (tables on `backend`), trains on this rank's slice of each global batch."""
    env = ShardingEnv.current()
    model = shard(make_model(admission=admission, backend=backend), env, Planner(overrides=overrides), verbose=False)
    per_rank = batch // env.world_size
    lo, hi = env.rank * per_rank, (env.rank + 1) * per_rank
    batches = [slice_batch(b, lo, hi) for b in global_batches(steps, batch)]
    losses = train_steps(model, batches, kind, fused, env)
    return losses, table_contents(model), {k: v.detach().clone() for k, v in model.state_dict().items()
                                           if not k.split(".")[0] in ("embeddings", "linear")}


def dist_rank() -> int:
    return dist.get_rank()


RESHARD_OVERRIDES = {"genre": "replicated", "linear_item": "table_wise:0"}


def checkpoint_stage(directory: str, load: bool, first: int, last: int, batch: int, incremental: bool):
    """Rank body: (load the latest checkpoint,) train global steps [first, last), save checkpoint
    `last`; returns this rank's tables and its eval logits on its slice of an unseen batch."""
    from recis.checkpoint import CheckpointManager

    env = ShardingEnv.current()
    model = shard(make_model(), env, Planner(overrides=RESHARD_OVERRIDES), verbose=False)
    sparse, dense = make_optimizers(model)
    manager = CheckpointManager(directory, keep_last=None)
    if load:
        manager.load("latest", model, {"sparse": sparse, "dense": dense})
    per_rank = batch // env.world_size
    lo, hi = env.rank * per_rank, (env.rank + 1) * per_rank
    batches = [slice_batch(b, lo, hi) for b in global_batches(last, batch)[first:]]
    train_steps(model, batches, env=env, optimizers=(sparse, dense))
    manager.save(last, model, {"sparse": sparse, "dense": dense}, incremental=incremental)
    model.eval()
    with torch.no_grad():
        logits = model(slice_batch(global_batches(1, batch, seed=99)[0], lo, hi))
    return table_contents(model), logits


def trainer_run(directory: str, steps: int, batch: int, die_in_save: int = 0, die_rank: int = 1):
    """Rank body: the Trainer on this rank's slices with a checkpoint every 2 steps, resuming
    from the latest one. With `die_in_save` = k, rank `die_rank` is killed (os._exit) while
    writing its files of the k-th save."""
    import os

    from recis.checkpoint import CheckpointManager, files
    from recis.train import Trainer, TrainerConfig

    env = ShardingEnv.current()
    if die_in_save and env.rank == die_rank:
        saves = {"n": 0}
        original = files.DirectoryWriter.write_tensors

        def dying(self, name, tensors):
            if name.startswith("sparse"):
                saves["n"] += 1
                if saves["n"] == die_in_save:
                    os._exit(17)
            return original(self, name, tensors)

        files.DirectoryWriter.write_tensors = dying
    model = shard(make_model(), env, Planner(), verbose=False)
    sparse, dense = make_optimizers(model)
    per_rank = batch // env.world_size
    lo, hi = env.rank * per_rank, (env.rank + 1) * per_rank
    data = [slice_batch(b, lo, hi) for b in global_batches(steps, batch)]
    trainer = Trainer(wrap_dense(model, env), sparse, dense, config=TrainerConfig(epochs=1, progress=False,
                                                                                checkpoint_every=2),
                      checkpoint=CheckpointManager(directory, keep_last=2), env=env)
    resumed = trainer.resume()
    start = trainer.step
    trainer.fit(data)
    return resumed, start, trainer.step, table_contents(model)


def stalled_peer(stall_s: float):
    """Rank body: rank 1 stalls (alive, silent) before its forward; rank 0's forward must fail
    with a DistributedError after the collective timeout instead of waiting forever."""
    import time

    env = ShardingEnv.current()
    model = shard(make_model(), env, Planner(), verbose=False)
    batch = slice_batch(global_batches(1, 16)[0], env.rank * 8, env.rank * 8 + 8)
    if env.rank == 1:
        time.sleep(stall_s)
        return "stalled"
    t0 = time.monotonic()
    try:
        model(batch)
    except Exception as e:  # noqa: BLE001 (the test inspects what was raised)
        return type(e).__name__, str(e), time.monotonic() - t0
    return "no error"


def mismatched_tables():
    """Rank body: rank 1 builds its item table with another dim; shard() must refuse on every rank."""
    from recis.nn import EmbeddingCollection, TableConfig

    env = ShardingEnv.current()
    dim = 8 if env.rank == 1 else 4
    ec = EmbeddingCollection([TableConfig("user", 4), TableConfig("item", dim)])
    try:
        shard(torch.nn.Sequential(ec), env, verbose=False)
    except Exception as e:  # noqa: BLE001 (the test inspects what was raised)
        return type(e).__name__, str(e)
    return None


def pipelined_losses(pipeline: bool, steps: int, batch: int):
    """Rank body: the Trainer with or without the pipelined ids exchange; losses, tables and the
    time the forward waited for the ids exchange per step."""
    from recis.train import Trainer, TrainerConfig
    from recis.train.hooks import Hook

    env = ShardingEnv.current()
    model = shard(make_model(), env, Planner(), verbose=False)
    sparse, dense = make_optimizers(model)
    per_rank = batch // env.world_size
    data = [slice_batch(b, env.rank * per_rank, (env.rank + 1) * per_rank) for b in global_batches(steps, batch)]
    waits, losses = [], []

    class Record(Hook):
        def on_step_end(self, trainer, step, logs):
            waits.append(model.embeddings.comm_stats.get("ids_wait_s", 0.0))
            losses.append(logs.get("loss"))

    trainer = Trainer(wrap_dense(model, env), sparse, dense, hooks=[Record()], env=env, pipeline=pipeline,
                      config=TrainerConfig(epochs=1, progress=False, log_every=1))
    trainer.fit(data)
    return losses, table_contents(model), waits


def fsdp2_training(steps: int, batch: int):
    """Rank body: sharded tables with the dense part under FSDP2 (fully_shard) instead of DDP."""
    env = ShardingEnv.current()
    model = shard(make_model(), env, Planner(), verbose=False)
    per_rank = batch // env.world_size
    lo, hi = env.rank * per_rank, (env.rank + 1) * per_rank
    losses = train_steps(model, [slice_batch(b, lo, hi) for b in global_batches(steps, batch)], env=env,
                         dense_mode="fsdp2")
    return losses, table_contents(model)


# ---- row ownership (test_owner_hash) ----------------------------------------------------------
def owner_tables(seed_a: int, seed_b: int):
    """Two tables of one table group (same dim and options), with different seeds."""
    from recis.nn import TableConfig

    return [TableConfig("a", 4, seed=seed_a), TableConfig("b", 4, seed=seed_b)]


def owner_batch(rank: int) -> Dict[str, List[int]]:
    """Rank `rank`'s ids per feature (one id per example): int64 extremes, ids both ranks send, and
    ids only this rank sends."""
    shared = [0, -1, 1, -(2 ** 63), 2 ** 63 - 1, 123456789012345, -77]
    own = [rank * 1000 + k * 7919 for k in range(12)] + [(rank + 1) * (1 << 50) + k for k in range(5)]
    return {"a": shared + own, "b": list(reversed(own)) + shared}


def owner_kjt(batch: Dict[str, List[int]]) -> KeyedJaggedTensor:
    n = len(batch["a"])
    return KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor(batch["a"] + batch["b"], dtype=torch.int64),
                                               torch.ones(2 * n, dtype=torch.int64))


def owner_placement(seed_a: int, seed_b: int, preloaded: List[int]):
    """Rank body: fills an unsharded collection with `preloaded` ids, shards it row-wise (each rank
    keeps what it owns), then runs one training forward on this rank's batch. Returns the ids each
    table holds after sharding and after the forward, and the forward's output per feature."""
    from recis.nn import EmbeddingCollection

    env = ShardingEnv.current()
    ec = EmbeddingCollection(owner_tables(seed_a, seed_b), output="dict")
    for t in ec.tables().values():
        t.find_or_insert(torch.tensor(preloaded, dtype=torch.int64))
    model = shard(ec, env, Planner(overrides={"a": "row_wise"}), verbose=False)
    held = lambda: {n: sorted(t.export()["ids"].tolist()) for n, t in model.tables().items()}  # noqa: E731
    before = held()
    out = model(owner_kjt(owner_batch(env.rank)))
    return before, held(), {k: v.detach().clone() for k, v in out.items()}


# ---- replicated tables (test_distributed_replicated) ------------------------------------------
def replicated_batch(rank: int):
    """(ids, bag lengths, loss coefficients [B, dim]) of rank `rank`: bags of 0-3 ids with repeats,
    some ids seen by both ranks and some by one rank only."""
    g = torch.Generator().manual_seed(100 + rank)
    lengths = torch.tensor([1, 3, 0, 2, 2, 1], dtype=torch.int64)
    ids = torch.randint(0, 6, (int(lengths.sum()),), generator=g) * 1009 + torch.randint(0, 2, (1,), generator=g)
    ids[0] = 424242 + rank  # an id only this rank sends
    return ids, lengths, torch.randn(lengths.numel(), 4, generator=g)


def replicated_sgd_step(lr: float, backend: Optional[str] = None):
    """Rank body: a replicated (combiner "mean") table trained one plain-SGD step on this rank's batch
    with loss sum(pooled * coefficients), deferred and fused; returns each table's (ids, rows)."""
    from recis.nn import EmbeddingCollection, TableConfig
    from recis.optim import SparseSGD

    env = ShardingEnv.current()
    ids, lengths, coef = replicated_batch(env.rank)
    out = {}
    for fused in (False, True):
        ec = EmbeddingCollection([TableConfig("r", 4, combiner="mean", seed=3)], output="dict", backend=backend)
        model = shard(ec, env, Planner(overrides={"r": "replicated"}), verbose=False)
        assert model.group_plans[0].sharding == "replicated"
        opt = SparseSGD(model, lr=lr, fused=fused)
        pooled = model(KeyedJaggedTensor.from_lengths_sync(["r"], ids, lengths))["r"]
        (pooled * coef).sum().backward()
        opt.step()
        out[fused] = table_contents(model)["r"]
    return out


def nonfinite_skip_run(steps: int, batch: int, bad_step: int, bad_rank: int):
    """Rank body: the Trainer with on_nonfinite="skip" where only rank `bad_rank` sees a NaN in
    its batch of step `bad_step`; returns (steps taken, batches skipped, dense parameters)."""
    from recis.train import Trainer, TrainerConfig

    env = ShardingEnv.current()
    model = shard(make_model(), env, Planner(), verbose=False)
    sparse, dense = make_optimizers(model)
    per_rank = batch // env.world_size
    lo, hi = env.rank * per_rank, (env.rank + 1) * per_rank
    data = [slice_batch(b, lo, hi) for b in global_batches(steps, batch)]
    if env.rank == bad_rank:
        data[bad_step].dense = data[bad_step].dense.clone()
        data[bad_step].dense[0, 0] = float("nan")
    trainer = Trainer(wrap_dense(model, env), sparse, dense,
                      config=TrainerConfig(progress=False, on_nonfinite="skip"), env=env)
    trainer.fit(data)
    return trainer.step, trainer.skipped_nonfinite, {n: p.detach().clone() for n, p in model.named_parameters()}


def backend_threads() -> List[str]:
    """Names of this process's threads that belong to a gloo backend (Linux: /proc/self/task)."""
    import os

    names = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            names.append(f.read().strip())
    return sorted(n for n in names if "gloo" in n)


def shutdown_after_training(steps: int, batch: int):
    """Rank body: sharded tables, DDP and a subgroup train a few steps; then, with the model, its
    optimizers and envs no longer referenced, recis.distributed.shutdown(). Returns the backend
    threads before and after, and whether a process group is left."""
    from recis.distributed import shutdown

    env = ShardingEnv.current()
    model = shard(make_model(), env, Planner(), verbose=False)
    per_rank = batch // env.world_size
    lo, hi = env.rank * per_rank, (env.rank + 1) * per_rank
    train_steps(model, [slice_batch(b, lo, hi) for b in global_batches(steps, batch)], env=env)
    before = backend_threads()
    del model, env
    shutdown()
    return before, backend_threads(), dist.is_initialized()


def prequential_run(sizes: List[List[int]], window: int):
    """Rank body: a logistic model trained by SGD on this rank's batches (sizes[rank]; no gradient
    sync: the point is the merged scoring), with prequential evaluation in windows of `window`
    examples. Returns (the logits and labels each batch was scored with, the prequential history,
    the prequential logs)."""
    import types

    from recis.train import Hook, Trainer, TrainerConfig

    env = ShardingEnv.current()
    gen = torch.Generator().manual_seed(100 + env.rank)
    data = []
    for n in sizes[env.rank]:
        x = torch.randn(n, 3, generator=gen)
        y = (torch.rand(n, generator=gen) < torch.sigmoid(x[:, 0] * 2)).float()
        data.append(types.SimpleNamespace(dense=x, labels=y, size=n))

    class Logistic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 1)

        def forward(self, batch):
            return self.linear(batch.dense).squeeze(1)

    class Scores(Hook):
        def __init__(self):
            self.seen = []

        def on_batch(self, trainer, batch, output, loss):
            self.seen.append((output.detach().double().clone(), batch.labels.double().clone()))

    torch.manual_seed(0)
    model, scores = Logistic(), Scores()
    trainer = Trainer(model, None, torch.optim.SGD(model.parameters(), lr=0.5), hooks=[scores], env=env,
                      config=TrainerConfig(progress=False, prequential=True, prequential_window=window))
    trainer.fit(data)
    return scores.seen, trainer.prequential_history, trainer.prequential.logs()
