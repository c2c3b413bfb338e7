"""Sharding across (rank x DataLoader worker): the union of all shards is the dataset, each row once."""
import multiprocessing as mp
import os
import tempfile
from collections import Counter
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_io_helpers import ids_of, write_id_files

from recis.io import ArrowDataset, to_tensors
from recis.io.sharding import resolve_shard


def _shard_ids(root, rank, world_size, worker, workers, epoch=0, **kwargs):
    info = SimpleNamespace(id=worker, num_workers=workers)
    with mock.patch("torch.utils.data.get_worker_info", return_value=info):
        data = ArrowDataset(root, rank=rank, world_size=world_size, **kwargs)
        data.set_epoch(epoch)
        return ids_of(data)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5), rows_per_group=st.integers(1, 15),
       world_size=st.integers(1, 4), workers=st.integers(1, 3), shuffle=st.sampled_from([0, 1, 9]),
       batch_size=st.integers(1, 16), epoch=st.integers(0, 2))
def test_union_of_all_shards_is_the_dataset(sizes, rows_per_group, world_size, workers, shuffle, batch_size, epoch):
    with tempfile.TemporaryDirectory() as root:
        write_id_files(root, sizes, "parquet", rows_per_group=rows_per_group, with_lists=False)
        seen = Counter()
        for rank in range(world_size):
            for worker in range(workers):
                ids = _shard_ids(root, rank, world_size, worker, workers, batch_size=batch_size,
                                 shuffle_buffer=shuffle, seed=3, epoch=epoch)
                seen.update(ids)
        assert seen == Counter(range(sum(sizes)))


def test_row_groups_split_a_single_file_across_shards(tmp_path):
    write_id_files(str(tmp_path), [100], "parquet", rows_per_group=10, with_lists=False)
    parts = [_shard_ids(str(tmp_path), r, 4, 0, 1) for r in range(4)]
    assert all(parts) and sorted(sum(parts, [])) == list(range(100))
    assert parts[1] == list(range(10, 20)) + list(range(50, 60)) + list(range(90, 100))  # row groups 1, 5, 9


def test_csv_files_are_not_split(tmp_path):
    write_id_files(str(tmp_path), [10], "csv")
    parts = [_shard_ids(str(tmp_path), r, 2, 0, 1) for r in range(2)]
    assert parts == [list(range(10)), []]


def test_single_process_needs_no_process_group():
    assert not torch.distributed.is_initialized()
    assert resolve_shard() == (0, 1)
    with pytest.raises(ValueError, match="rank"):
        resolve_shard(rank=2, world_size=2)


def test_real_dataloader_with_two_workers(tmp_path):
    write_id_files(str(tmp_path), [30, 25, 20, 15], "parquet", with_lists=False)
    data = ArrowDataset(str(tmp_path), batch_size=8, transform=to_tensors, columns=["id"])
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    ids = [i for b in loader for i in b["id"].tolist()]
    assert sorted(ids) == list(range(90))
    # worker 0 reads files 0 and 2, worker 1 files 1 and 3; DataLoader alternates their batches
    w0 = list(range(0, 30)) + list(range(55, 75))
    assert [i for i in ids if i in set(w0)] == w0


def _rank_main(rank, root, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out.put((rank, ids_of(ArrowDataset(root, batch_size=4))))  # rank and world size from the group
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_come_from_the_process_group(tmp_path):
    root = str(tmp_path / "data")
    write_id_files(root, [7, 5, 6], "parquet", with_lists=False)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    init_file = os.path.join(str(tmp_path), "pg")
    procs = [ctx.Process(target=_rank_main, args=(r, root, init_file, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == list(range(7)) + list(range(12, 18)) and results[1] == list(range(7, 12))
