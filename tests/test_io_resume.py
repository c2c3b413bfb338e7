"""Resume: a run stopped anywhere and resumed from its JSON state yields exactly the batches of the
uninterrupted run (with shuffle, epochs, drop_last, row-group shards, prefetch, DataLoader workers)."""
import json
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_io_helpers import write_id_files

from recis.io import ArrowDataset, Prefetcher, merge_states, to_tensors


def _ids(batches):
    return [b.column("id").to_pylist() for b in batches]


def _take(iterator, k):
    out = []
    for _ in range(k):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4), rows_per_group=st.integers(1, 12),
       batch_size=st.integers(1, 12), shuffle=st.sampled_from([0, 1, 5, 17, 64]), epochs=st.integers(1, 3),
       drop_last=st.booleans(), prefetch=st.sampled_from([0, 2]), shards=st.sampled_from([(0, 1), (1, 3)]),
       stops=st.lists(st.integers(0, 30), min_size=1, max_size=3))
def test_resume_equals_uninterrupted(sizes, rows_per_group, batch_size, shuffle, epochs, drop_last, prefetch,
                                     shards, stops):
    with tempfile.TemporaryDirectory() as root:
        write_id_files(root, sizes, "parquet", rows_per_group=rows_per_group, with_lists=False)

        def make(prefetch=0):
            return ArrowDataset(root, batch_size=batch_size, shuffle_buffer=shuffle, seed=11, epochs=epochs,
                                drop_last=drop_last, prefetch=prefetch, read_batch_size=7,
                                rank=shards[0], world_size=shards[1])

        full = _ids(make())
        got, state = [], None
        for k in stops:  # stop after k more batches, save, resume in a fresh object
            data = make(prefetch)
            if state is not None:
                data.load_state_dict(state)
            got += _ids(_take(iter(data), k))
            state = json.loads(json.dumps(data.state_dict()))
        data = make(prefetch)
        data.load_state_dict(state)
        got += _ids(data)
        assert got == full


@pytest.mark.parametrize("shuffle, prefetch, drop_last", [(0, 0, False), (0, 2, True), (7, 0, True), (7, 2, False)])
def test_resume_at_every_batch(tmp_path, shuffle, prefetch, drop_last):
    write_id_files(str(tmp_path), [13, 0, 9, 20], "parquet", rows_per_group=6, with_lists=False)

    def make(prefetch=0):
        return ArrowDataset(str(tmp_path), batch_size=4, shuffle_buffer=shuffle, epochs=2, drop_last=drop_last,
                            prefetch=prefetch, read_batch_size=5, seed=1)

    full = _ids(make())
    for k in range(len(full) + 1):
        data = make(prefetch)
        head = _ids(_take(iter(data), k))
        resumed = make(prefetch)
        resumed.load_state_dict(json.loads(json.dumps(data.state_dict())))
        assert head + _ids(resumed) == full, k


def test_state_is_json_and_describes_the_position(tmp_path):
    write_id_files(str(tmp_path), [10, 10], "parquet", with_lists=False)
    data = ArrowDataset(str(tmp_path), batch_size=4)
    it = iter(data)
    _take(it, 3)  # 12 rows: file 0 done, 2 rows into file 1
    state = json.loads(json.dumps(data.state_dict()))
    assert state["shards"] == {"0": {"epoch": 0, "unit": 1, "row": 2, "window": 0, "window_rows": 0, "skip": 0}}
    assert state["config"]["batch_size"] == 4 and state["num_shards"] == 1


def test_prefetch_state_counts_only_received_batches(tmp_path):
    write_id_files(str(tmp_path), [50], "parquet", with_lists=False)
    full = _ids(ArrowDataset(str(tmp_path), batch_size=5, shuffle_buffer=12, seed=1))
    data = ArrowDataset(str(tmp_path), batch_size=5, shuffle_buffer=12, seed=1)
    pre = Prefetcher(data, depth=4)
    it = iter(pre)
    first = _ids(_take(it, 2))
    import time
    time.sleep(0.2)  # let the thread run ahead
    state = pre.state_dict()
    assert state == data.state_dict()
    it.close()
    resumed = ArrowDataset(str(tmp_path), batch_size=5, shuffle_buffer=12, seed=1)
    resumed.load_state_dict(state)
    assert first + _ids(resumed) == full


def test_transform_runs_in_the_prefetch_thread_and_resumes(tmp_path):
    write_id_files(str(tmp_path), [23], "parquet")
    kw = dict(batch_size=4, transform=to_tensors, shuffle_buffer=8, seed=2)
    full = [b["id"].tolist() for b in ArrowDataset(str(tmp_path), **kw)]
    data = ArrowDataset(str(tmp_path), prefetch=2, **kw)
    head = [b["id"].tolist() for b in _take(iter(data), 3)]
    state = data.state_dict()
    again = ArrowDataset(str(tmp_path), prefetch=2, **kw)
    again.load_state_dict(state)
    assert head + [b["id"].tolist() for b in again] == full


def test_set_epoch_start_is_kept_in_the_state(tmp_path):
    write_id_files(str(tmp_path), [12], "parquet", with_lists=False)
    data = ArrowDataset(str(tmp_path), batch_size=5, shuffle_buffer=6, epochs=2)
    data.set_epoch(4)
    full = _ids(data)
    data = ArrowDataset(str(tmp_path), batch_size=5, shuffle_buffer=6, epochs=2)
    data.set_epoch(4)
    head = _ids(_take(iter(data), 4))
    resumed = ArrowDataset(str(tmp_path), batch_size=5, shuffle_buffer=6, epochs=2)  # no set_epoch
    resumed.load_state_dict(data.state_dict())
    assert head + _ids(resumed) == full and resumed.state_dict()["shards"]["0"]["epoch"] == 6


def test_a_state_saved_after_set_epoch_resumes_with_the_next_pass(tmp_path):
    """Between passes (a checkpoint after an epoch ended), the state is the next pass's start."""
    write_id_files(str(tmp_path), [9], "parquet", with_lists=False)
    data = ArrowDataset(str(tmp_path), batch_size=4, shuffle_buffer=4)
    list(data)
    data.set_epoch(1)
    between = data.state_dict()
    expected = _ids(data)
    resumed = ArrowDataset(str(tmp_path), batch_size=4, shuffle_buffer=4)
    resumed.load_state_dict(between)
    assert _ids(resumed) == expected and len(expected) == 3


def test_a_loaded_state_applies_once_and_a_finished_state_yields_nothing(tmp_path):
    write_id_files(str(tmp_path), [9], "parquet", with_lists=False)
    data = ArrowDataset(str(tmp_path), batch_size=4)
    list(data)
    done = data.state_dict()
    again = ArrowDataset(str(tmp_path), batch_size=4)
    again.load_state_dict(done)
    assert list(again) == []
    assert _ids(again) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]  # the next iteration starts over


def test_incompatible_states_are_refused(tmp_path):
    write_id_files(str(tmp_path), [9], "parquet", with_lists=False)
    data = ArrowDataset(str(tmp_path), batch_size=4)
    _take(iter(data), 1)
    state = data.state_dict()
    with pytest.raises(ValueError, match="batch_size=4.*batch_size=3"):
        ArrowDataset(str(tmp_path), batch_size=3).load_state_dict(state)
    other = ArrowDataset(str(tmp_path), batch_size=4, rank=0, world_size=2)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="1 shards"):
        list(other)
    write_id_files(str(tmp_path / "more"), [3], "parquet", with_lists=False)
    with pytest.raises(ValueError, match="files="):
        ArrowDataset(str(tmp_path), batch_size=4).load_state_dict(state)
    with pytest.raises(ValueError, match="not a recis.io state"):
        data.load_state_dict({"shards": {}})


def _by_worker(loader):
    """Items of a DataLoader over a yield_state dataset, grouped by the shard that made them."""
    out = {}
    for batch, state in loader:
        (shard,) = state["shards"]
        out.setdefault(shard, []).append((batch.column("id").to_pylist(), state))
    return out


def test_dataloader_workers_resume_each_worker_exactly(tmp_path):
    write_id_files(str(tmp_path), [17, 11, 23, 9, 14], "parquet", with_lists=False)

    def make():
        return ArrowDataset(str(tmp_path), batch_size=4, shuffle_buffer=10, seed=7, yield_state=True)

    full = {k: [ids for ids, _ in v] for k, v in _by_worker(torch.utils.data.DataLoader(make(), batch_size=None,
                                                                                        num_workers=2)).items()}
    loader = torch.utils.data.DataLoader(make(), batch_size=None, num_workers=2)
    head, latest = {}, {}
    for i, (batch, state) in enumerate(loader):
        if i == 5:
            break
        (shard,) = state["shards"]
        head.setdefault(shard, []).append(batch.column("id").to_pylist())
        latest[shard] = state
    merged = json.loads(json.dumps(merge_states(latest.values())))
    resumed_data = make()
    resumed_data.load_state_dict(merged)
    rest = _by_worker(torch.utils.data.DataLoader(resumed_data, batch_size=None, num_workers=2))
    for shard in full:
        assert head.get(shard, []) + [ids for ids, _ in rest.get(shard, [])] == full[shard]
