"""Rows the transform cannot use: named by file, row and column, or skipped and counted; image
decoding runs in the prefetch thread; augmentation is seeded per row (resume-exact, per epoch)."""
import io
import os
import pickle
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import recis.features.engine as engine_module
from recis.features import FeatureEngine
from recis.io import ArrowDataset, BadRowError, StreamingArrowDataset
from recis.train import Trainer, TrainerConfig

SIZE = 8


def png(i: int) -> bytes:
    pixels = ((np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 7 + 31 * i) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write(path, ids, bad=(), row_group_size=None):
    """A Parquet file of `ids` with a PNG per row; rows at positions `bad` hold broken bytes."""
    images = [png(i)[:30] if k in bad else png(i) for k, i in enumerate(ids)]
    table = pa.table({"id": pa.array(ids, pa.int64()), "image": pa.array(images, pa.binary()),
                      "label": pa.array([float(i % 2) for i in ids])})
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def make_engine(augment=None):
    image = {"channels": 1, "size": [SIZE, SIZE]} | ({"augment": augment} if augment else {})
    return FeatureEngine([{"name": "photo", "kind": "image", "column": "image", "image": image},
                          {"name": "id", "kind": "passthrough", "column": "id"},
                          {"name": "label", "kind": "label", "column": "label"}])


@pytest.fixture
def files(tmp_path):
    """a.parquet: ids 0..11, bad row 3; b.parquet: ids 100..111, bad rows 5 and 6."""
    a = write(tmp_path / "a.parquet", list(range(12)), bad={3}, row_group_size=5)
    b = write(tmp_path / "b.parquet", list(range(100, 112)), bad={5, 6}, row_group_size=5)
    return tmp_path, a, b


def ids(batches):
    return [i for b in batches for i in b.extras["id"].to_pylist()]


MODES = [dict(prefetch=0, shuffle_buffer=0), dict(prefetch=2, shuffle_buffer=0),
         dict(prefetch=0, shuffle_buffer=7), dict(prefetch=2, shuffle_buffer=16)]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"prefetch{m['prefetch']}-shuffle{m['shuffle_buffer']}")
def test_a_corrupt_image_is_named_by_file_row_and_column(files, mode):
    root, a, b = files
    data = ArrowDataset([a], batch_size=4, transform=make_engine(), **mode)
    with pytest.raises(BadRowError) as err:
        list(data)
    e = err.value
    assert (e.path, e.row, e.column, e.feature) == (a, 3, "image", "photo")
    assert f"file {a!r}, row 3 (0-based), column 'image' (feature 'photo'): does not decode as an image" in str(e)
    again = pickle.loads(pickle.dumps(e))  # crosses DataLoader worker processes
    assert (again.path, again.row, again.column, str(again)) == (e.path, e.row, e.column, str(e))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"prefetch{m['prefetch']}-shuffle{m['shuffle_buffer']}")
def test_skip_delivers_every_other_row_and_counts_the_bad_ones(files, mode):
    root, a, b = files
    data = ArrowDataset(str(root), batch_size=4, transform=make_engine(), on_error="skip", **mode)
    batches = list(data)
    got = ids(batches)
    expected = sorted(set(range(12)) - {3} | set(range(100, 112)) - {105, 106})
    assert sorted(got) == expected and len(got) == len(expected)
    if not mode["shuffle_buffer"]:
        assert got == expected
    for batch in batches:  # each image still belongs to its row
        for k, i in enumerate(batch.extras["id"].to_pylist()):
            ref = np.asarray(Image.open(io.BytesIO(png(i))), dtype=np.float32) / 255
            assert torch.equal(batch.tensors["photo"][k, 0], torch.from_numpy(ref))
    s = data.stats
    assert (s.rows_skipped, s.rows, s.files_skipped) == (3, len(expected), 0)
    assert sorted(s.skipped_rows) == sorted([f"{a}:3", f"{b}:5", f"{b}:6"])
    assert all("column 'image' (feature 'photo'): does not decode" in r for r in s.skipped_rows.values())


def test_rows_are_named_in_the_file_when_row_groups_are_shards(tmp_path):
    """One file of 4 row groups read by 4 ranks: each rank's bad row is named by its row in the file."""
    path = write(tmp_path / "one.parquet", list(range(16)), bad={1, 9, 14}, row_group_size=4)
    found = []
    for rank in range(4):
        data = ArrowDataset(path, batch_size=3, transform=make_engine(), rank=rank, world_size=4)
        try:
            list(data)
        except BadRowError as e:
            found.append(e.row)
    assert sorted(found) == [1, 9, 14]
    skipped = []
    for rank in range(4):
        data = ArrowDataset(path, batch_size=3, transform=make_engine(), rank=rank, world_size=4, on_error="skip")
        assert len(ids(data)) == 4 - (rank in (0, 2, 3))
        skipped += list(data.stats.skipped_rows)
    assert sorted(skipped) == [f"{path}:1", f"{path}:14", f"{path}:9"]


def test_a_batch_of_only_bad_rows_is_skipped_whole(tmp_path):
    path = write(tmp_path / "x.parquet", list(range(6)), bad={2, 3})
    data = ArrowDataset(path, batch_size=2, transform=make_engine(), on_error="skip")
    assert [b.size for b in data] == [2, 2] and data.stats.rows_skipped == 2 and data.stats.batches == 2
    assert data.state_dict()["shards"]["0"]["epoch"] == 1  # the position still moved past them


def test_streaming_dataset_names_and_skips_bad_rows(tmp_path):
    a = write(tmp_path / "a.parquet", list(range(6)), bad={4})
    os.utime(a, (1, 1))
    opts = dict(batch_size=4, transform=make_engine(), poll_interval=0.02, settle_s=0.02, stop_after_idle=0.3)
    with pytest.raises(BadRowError) as err:
        list(StreamingArrowDataset(str(tmp_path), prefetch=2, **opts))
    assert (err.value.path, err.value.row, err.value.column) == (a, 4, "image")
    data = StreamingArrowDataset(str(tmp_path), on_error="skip", shuffle_buffer=4, **opts)
    assert sorted(ids(data)) == [0, 1, 2, 3, 5] and data.stats.skipped_rows == {
        f"{a}:4": data.stats.skipped_rows[f"{a}:4"]} and data.stats.rows_skipped == 1


def test_dataloader_workers(files):
    root, a, b = files
    make = lambda on_error: ArrowDataset(str(root), batch_size=4, transform=make_engine(),  # noqa: E731
                                         on_error=on_error)
    loader = torch.utils.data.DataLoader(make("skip"), batch_size=None, num_workers=2)
    assert sorted(ids(loader)) == sorted(set(range(12)) - {3} | set(range(100, 112)) - {105, 106})
    with pytest.raises(Exception, match=r"file '.*\.parquet', row [356] \(0-based\), column 'image'"):
        list(torch.utils.data.DataLoader(make("raise"), batch_size=None, num_workers=2))


# ---- where decoding runs -----------------------------------------------------------------


class PixelModel(torch.nn.Module):
    def __init__(self, threads):
        super().__init__()
        self.head = torch.nn.Linear(SIZE * SIZE, 1)
        self.threads = threads

    def forward(self, batch):
        self.threads.append(threading.current_thread())
        return self.head(batch.tensors["photo"].flatten(1)).squeeze(1)


def test_training_never_decodes_with_prefetch(tmp_path, monkeypatch):
    path = write(tmp_path / "x.parquet", list(range(40)))
    decoders = []
    real = engine_module.decode_images

    def recording(*args, **kwargs):
        decoders.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "decode_images", recording)
    steps = []
    model = PixelModel(steps)
    trainer = Trainer(model, None, torch.optim.SGD(model.parameters(), lr=0.1),
                      config=TrainerConfig(epochs=1, progress=False))
    trainer.fit(ArrowDataset(path, batch_size=8, transform=make_engine(), prefetch=2))
    assert len(decoders) == 5 and len(steps) == 5 and trainer.step == 5
    assert {t.name for t in decoders} == {"recis-io-prefetch"}
    assert set(steps) == {threading.main_thread()} and not set(steps) & set(decoders)


# ---- augmentation seeded per row ---------------------------------------------------------


def by_id(batches):
    return {i: b.tensors["photo"][k] for b in batches for k, i in enumerate(b.extras["id"].to_pylist())}


AUG = {"hflip": 0.5, "crop_padding": 2, "seed": 7}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resumed_augmentation_is_bit_identical(files, prefetch):
    root, a, b = files
    make = lambda: ArrowDataset(str(root), batch_size=3, shuffle_buffer=6, epochs=2,  # noqa: E731
                                transform=make_engine(AUG), on_error="skip", prefetch=prefetch, seed=3)
    full = list(make())
    first = make()
    it, head = iter(first), []
    for _ in range(5):
        head.append(next(it))
    state = first.state_dict()
    del it
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(head) + len(rest) == len(full)
    for x, y in zip(head + rest, full):
        assert x.extras["id"].to_pylist() == y.extras["id"].to_pylist()
        assert torch.equal(x.tensors["photo"], y.tensors["photo"])


def _augmented(root, batch_size, epoch):
    """Images by id for one epoch; the shuffle seed follows batch_size, so batches differ."""
    data = ArrowDataset(str(root), batch_size=batch_size, transform=make_engine(AUG), on_error="skip",
                        shuffle_buffer=5, seed=batch_size)
    data.set_epoch(epoch)
    return by_id(data)


def test_augmentation_follows_the_row_not_the_batch_and_differs_by_epoch(files):
    root, a, b = files
    small, big = _augmented(root, 2, 0), _augmented(root, 5, 0)
    assert small.keys() == big.keys() and all(torch.equal(small[i], big[i]) for i in small)
    later = _augmented(root, 2, 1)
    changed = [i for i in small if not torch.equal(small[i], later[i])]
    assert len(changed) > len(small) // 2
    plain = by_id(ArrowDataset(str(root), batch_size=4, transform=make_engine(), on_error="skip"))
    augmented = [i for i in small if not torch.equal(small[i], plain[i])]
    assert len(small) // 2 < len(augmented) < len(small)  # most rows flip or shift, not all


# ---- provenance: every row's origin is its true file and row --------------------------------


class Where:
    """A transform that reports each row's origin next to its id (id = 1000 * file + row)."""

    takes_origin = True

    def __call__(self, batch, origin=None):
        keys, rows = origin.locate()
        return batch.column("id").to_pylist(), keys, rows.tolist(), origin.epoch


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 23), min_size=1, max_size=4), batch_size=st.integers(1, 9),
       shuffle=st.sampled_from([0, 1, 5, 16]), row_group=st.integers(2, 7), world=st.sampled_from([1, 3]),
       prefetch=st.sampled_from([0, 2]))
def test_origins_name_the_true_file_and_row(tmp_path_factory, sizes, batch_size, shuffle, row_group, world, prefetch):
    root = tmp_path_factory.mktemp("origins")
    for f, n in enumerate(sizes):
        pq.write_table(pa.table({"id": pa.array([1000 * f + r for r in range(n)], pa.int64())}),
                       root / f"part-{f}.parquet", row_group_size=row_group)
    seen = 0
    for rank in range(world):
        data = ArrowDataset(str(root), batch_size=batch_size, shuffle_buffer=shuffle, epochs=2, transform=Where(),
                            rank=rank, world_size=world, prefetch=prefetch, read_batch_size=3)
        for got, keys, rows, epoch in data:
            assert [f"part-{i // 1000}.parquet" for i in got] == keys
            assert [i % 1000 for i in got] == rows
            assert epoch in (0, 1)
            seen += len(got)
    assert seen == 2 * sum(sizes)
