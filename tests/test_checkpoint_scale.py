"""Checkpoints that scale with what changed: the tables export only the rows touched since a
step (C++ and Triton, against a filter of the full export), an increment holds those rows and
the ids gone since its parent (not every live id), a resharding load reads only the rows the
rank will own (by bucket run, checked against the block checksums), table counters are
restored, and the admission sketch keeps its uint32 counters."""
import json

import pytest
import torch
from safetensors.torch import load_file

from recis.testing import sorted_export
from recis.checkpoint import CheckpointCorruptError, CheckpointManager, ranged
from recis.checkpoint.placement import BUCKETS, arrange, bucket_run, buckets_of
from recis.distributed.local import run_local
from recis.distributed.owner import owner_of
from recis.nn import TableGroup, Uniform
from recis.testing import assert_bitwise_equal
from test_checkpoint_common import make_training, train_step


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_export_since_is_the_full_export_filtered_by_last_seen(backend):
    g = TableGroup(4, ["a", "b"], [3, 4], initializer=Uniform(-1, 1), backend=backend)
    a, b = g.tables
    for step, ids in enumerate([range(0, 50), range(40, 70), range(65, 80)]):
        g.load_group_state({"step": torch.tensor(step + 1)})
        a.find_or_insert(torch.tensor(list(ids)))  # explicit inserts stamp the current step
        b.find_or_insert(torch.tensor(list(ids))[::3])
    for table in (a, b):
        full = table.export()
        for since in (0, 1, 2, 3, 4, 2**40):
            keep = full["last_seen"] >= since
            want = sorted_export({k: v[keep] for k, v in full.items()})
            assert_bitwise_equal(sorted_export(table.export(since=since)), want, f"{table.name} since {since}")
    with pytest.raises(ValueError, match="export.since."):
        a.export(since=-1)


def test_export_since_is_the_same_on_both_backends():
    groups = [TableGroup(3, ["t"], [9], initializer=Uniform(-1, 1), backend=be) for be in ("cpp", "triton")]
    for g in groups:
        for step, ids in enumerate([torch.arange(30), torch.arange(20, 45)]):
            g.load_group_state({"step": torch.tensor(step + 5)})
            g.tables[0].find_or_insert(ids)
    cpp, tri = (sorted_export(g.tables[0].export(since=6)) for g in groups)
    assert cpp["ids"].tolist() == list(range(30, 45))  # inserted at step 6 (a find does not stamp)
    assert_bitwise_equal(cpp, {k: v.cpu() for k, v in tri.items()})


def test_placement_runs_hold_exactly_the_rows_of_each_owner():
    ids = torch.randint(-(2**63), 2**63 - 1, (5000,), generator=torch.Generator().manual_seed(0))
    state = {"ids": ids, "rows": torch.arange(5000.0)[:, None].repeat(1, 3)}
    laid, index = arrange(state, seed=77)
    assert torch.equal(laid["rows"][:, 0].long(), torch.sort(laid["rows"][:, 0]).values.long()[
        torch.argsort(torch.argsort(laid["rows"][:, 0]))])  # rows moved with their ids
    assert torch.equal(torch.sort(laid["ids"]).values, torch.sort(ids).values)
    assert bool((buckets_of(laid["ids"], 77)[1:] >= buckets_of(laid["ids"], 77)[:-1]).all())
    for world in (1, 2, 4, 8, 1024):
        for rank in range(world):
            lo, hi = bucket_run(rank, world)
            run = laid["ids"][int(index[lo]):int(index[hi])]
            owned = ids[owner_of(ids, 77, world) == rank]
            assert torch.equal(torch.sort(run).values, torch.sort(owned).values), (world, rank)
    assert bucket_run(0, 3) is None and bucket_run(0, 2 * BUCKETS) is None


def test_increment_reads_and_writes_only_touched_rows_and_loads_exactly(tmp_path):
    from recis.nn import sparse_tables
    from recis.optim import SparseAdagrad
    from recis.nn import EmbeddingCollection, TableConfig

    def make():
        model = torch.nn.Module()
        model.ec = EmbeddingCollection([TableConfig("t", 8, ["t"], seed=5)])
        return model, {"sparse": SparseAdagrad(sparse_tables(model), lr=0.1)}

    model, opts = make()
    table = model.ec.tables()["t"]
    ids = torch.arange(20000) * 3 + 1
    table.load({"ids": ids, "rows": torch.randn(20000, 8), "slots": torch.rand(20000, 8),
                "last_seen": torch.zeros(20000, dtype=torch.int64)})  # rows of a long training
    table.group.load_group_state({"step": torch.tensor(5)})
    mgr = CheckpointManager(tmp_path, keep_last=None)
    full = mgr.save(1, model, opts)
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    hit = ids[:200]
    model.ec.train()
    kjt = KeyedJaggedTensor.from_lengths_sync(["t"], hit, torch.ones(200, dtype=torch.int64))
    model.ec(kjt).values().sum().backward()
    opts["sparse"].step()
    table.erase(ids[-7:])
    inc = mgr.save(2, model, opts, incremental=True)
    sparse = load_file(str(inc / "sparse.safetensors"))
    assert sorted(sparse["ec.t.ids"].tolist()) == sorted(hit.tolist())
    assert sorted(sparse["ec.t.removed_ids"].tolist()) == sorted(ids[-7:].tolist())
    assert int(sparse["ec.t.live_count"]) == 20000 - 7
    size = lambda p: (p / "sparse.safetensors").stat().st_size  # noqa: E731
    assert size(inc) < 0.03 * size(full)
    fresh, fopts = make()
    before = ranged.bytes_read()
    CheckpointManager(tmp_path).load(full, fresh, fopts)
    full_read = ranged.bytes_read() - before
    fresh, fopts = make()
    before = ranged.bytes_read()
    CheckpointManager(tmp_path).load(inc, fresh, fopts)
    assert ranged.bytes_read() - before - full_read < 0.05 * full_read  # the increment's own bytes
    assert_bitwise_equal(sorted_export(fresh.ec.tables()["t"].export()), sorted_export(table.export()))


def test_table_counters_and_the_uint32_sketch_are_restored(tmp_path):
    model, opts = make_training()
    for s in range(3):
        train_step(model, opts, s)
    path = CheckpointManager(tmp_path).save(3, model, opts)
    state = json.loads((path / "state.json").read_text())
    want = {g.tables[0].name: {k: g.stats()[k] for k in ("inserts", "evictions", "not_admitted")}
            for g in model.ec.groups}
    assert state["table_stats"] == {f"ec.{k}": v for k, v in want.items()}
    assert want["user"]["not_admitted"] > 0
    sketch = load_file(str(path / "sparse.safetensors"))["ec.user._group.sketch"]
    assert sketch.dtype == torch.uint32
    fresh, fopts = make_training(seed=3)
    CheckpointManager(tmp_path).load("latest", fresh, fopts)
    for g, h in zip(model.ec.groups, fresh.ec.groups):
        assert g.stats() == h.stats()
    assert_bitwise_equal(fresh.ec.groups[0].group_state()["sketch"], sketch)
    train_step(model, opts, 3)
    train_step(fresh, fopts, 3)
    for g, h in zip(model.ec.groups, fresh.ec.groups):
        assert g.stats() == h.stats()


def test_a_damaged_block_is_refused_naming_the_file(tmp_path):
    model, opts = make_training()
    train_step(model, opts, 0)
    path = CheckpointManager(tmp_path).save(1, model, opts)
    f = path / "sparse.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    fresh, fopts = make_training()
    with pytest.raises(CheckpointCorruptError, match="sparse.safetensors"):
        CheckpointManager(tmp_path).load("latest", fresh, fopts)


# ------------------------------------------------------------------ resharding (gloo processes)
ROWS, DIM, SEED = 40000, 4, 21
ROW_BYTES = 8 + 4 * DIM + 4 * DIM + 8 + 8  # id, row, slots, count, last_seen
BLOCK = 4096  # small checksum blocks, so that this small table spans many


def _model():
    from recis.nn import EmbeddingCollection, TableConfig, sparse_tables
    from recis.optim import SparseAdagrad

    model = torch.nn.Module()
    model.ec = EmbeddingCollection([TableConfig("t", DIM, ["t"], seed=SEED)])
    return model, {"sparse": SparseAdagrad(sparse_tables(model), lr=0.1)}


def _all_rows():
    g = torch.Generator().manual_seed(4)
    ids = torch.randperm(10 * ROWS, generator=g)[:ROWS] - 3 * ROWS
    return ids, torch.randn(ROWS, DIM, generator=g), torch.rand(ROWS, DIM, generator=g)


def _save(directory):
    from recis.distributed import shard
    from recis.distributed.env import ShardingEnv

    ranged.BLOCK = BLOCK
    env = ShardingEnv.current()
    model, opts = _model()
    model = shard(model, verbose=False)
    ids, rows, slots = _all_rows()
    mine = owner_of(ids, SEED, env.world_size) == env.rank
    model.ec.tables()["t"].load({"ids": ids[mine], "rows": rows[mine], "slots": slots[mine]})
    CheckpointManager(directory, keep_last=None).save(1, model, opts)
    return True


def _load(directory):
    from recis.distributed import shard
    from recis.distributed.env import ShardingEnv

    env = ShardingEnv.current()
    model, opts = _model()
    model = shard(model, verbose=False)
    before = ranged.bytes_read()
    CheckpointManager(directory, keep_last=None).load("latest", model, opts)
    return env.rank, ranged.bytes_read() - before, sorted_export(model.ec.tables()["t"].export())


def test_resharding_2_to_4_reads_each_ranks_share_and_loads_its_rows(tmp_path):
    run_local(_save, 2, str(tmp_path), timeout_s=240)
    parts = [r.value for r in run_local(_load, 4, str(tmp_path), timeout_s=240)]
    ids, rows, slots = _all_rows()
    total = sum(p.stat().st_size for p in next(tmp_path.glob("step-*")).glob("sparse-*"))
    for rank, read, got in parts:
        mine = owner_of(ids, SEED, 4) == rank
        want = sorted_export({"ids": ids[mine], "rows": rows[mine], "slots": slots[mine]})
        assert_bitwise_equal({k: got[k] for k in want}, want, f"rank {rank}")
        # Its quarter of the rows, plus per shard file the header, the row index (8 KiB) and
        # the partial blocks at both ends of its run of each of the 5 row fields.
        share = int(mine.sum()) * ROW_BYTES
        assert share <= read <= share + 2 * (1 + 3 + 2 * 5) * BLOCK + 4096, (rank, read, share, total)
        assert read < 0.4 * total
