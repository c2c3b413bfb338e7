"""The MovieLens stream: replay order, every rating once, disjoint subsamples, and the planted shift
checked against an independent recomputation."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis.datasets import movielens
from recis_online.ctr import STREAM_SCHEMA, StreamOptions, build_stream


@pytest.fixture(scope="module")
def full_stream(tmp_path_factory):
    options = StreamOptions(window_rows=100_000, shift_seed=3)
    stream = build_stream(options, root=tmp_path_factory.mktemp("ml") / "stream")
    table = pa.concat_tables([pq.read_table(f) for f in stream.files])
    return stream, table


@pytest.fixture(scope="module")
def source():
    """Every ML-1M rating, read from the *random* split's files (another order and other files than the stream's)."""
    files = movielens.load("random")
    return pa.concat_tables([pq.read_table(files.train), pq.read_table(files.test)])


def _by_key(table):
    cols = {c: table[c].to_numpy() for c in ("user_id", "item_id", "timestamp", "rating")}
    order = np.lexsort((cols["item_id"], cols["user_id"]))
    return {c: v[order] for c, v in cols.items()}


def test_stream_replays_every_rating_once_in_timestamp_order(full_stream, source):
    stream, table = full_stream
    assert table.schema.equals(STREAM_SCHEMA)
    assert stream.num_rows == table.num_rows == movielens.NUM_RATINGS == source.num_rows
    assert stream.windows == sorted(stream.windows) and len(stream.windows) == 11
    assert [pq.ParquetFile(f).metadata.num_rows for f in stream.files] == [100_000] * 10 + [209]
    np.testing.assert_array_equal(table["position"].to_numpy(), np.arange(table.num_rows))
    ts = table["timestamp"].to_numpy()
    assert (np.diff(ts) >= 0).all()
    # ties in time are broken by (user, item): the key strictly increases
    key = list(zip(ts.tolist(), table["user_id"].to_numpy().tolist(), table["item_id"].to_numpy().tolist()))
    assert all(a < b for a, b in zip(key, key[1:]))
    got, want = _by_key(table), _by_key(source)
    for c in got:  # (user, item) pairs are unique in ML-1M: equal sorted columns = the same ratings, once each
        np.testing.assert_array_equal(got[c], want[c], err_msg=c)
    meta = json.loads((stream.root / "_STREAM.json").read_text())
    assert [w["first_timestamp"] for w in meta["windows"]] == [int(ts[w * 100_000]) for w in range(11)]


def test_planted_shift_flips_exactly_the_chosen_genres_after_half(full_stream):
    stream, table = full_stream
    n = table.num_rows
    rows = table.select(["rating", "label", "genres", "position"]).to_pylist()
    primary = sorted({r["genres"][0] for r in rows})
    assert len(primary) == 18
    rng = np.random.default_rng(3)  # the spec: round(0.5 * 18) sorted genres drawn by default_rng(shift_seed)
    chosen = sorted(primary[i] for i in rng.choice(18, size=9, replace=False))
    assert stream.shifted_genres == chosen and stream.shift_row == n // 2
    flipped = 0
    for r in rows:
        truth = int(r["rating"] >= 4)
        if r["position"] >= n // 2 and r["genres"][0] in chosen:
            assert r["label"] == 1 - truth, r
            flipped += 1
        else:
            assert r["label"] == truth, r
    assert 0 < flipped < n // 2


def test_subsample_parts_are_disjoint_and_cover_the_ratings(tmp_path, source):
    small = source.slice(0, 5000)
    parts = [build_stream(StreamOptions(window_rows=700, fraction=0.5, part=p, shift_at=None, sample_seed=7),
                          root=tmp_path / f"p{p}", ratings=small) for p in (0, 1)]
    tables = [pa.concat_tables([pq.read_table(f) for f in s.files]) for s in parts]
    keys = [set(zip(t["user_id"].to_pylist(), t["item_id"].to_pylist())) for t in tables]
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == set(zip(small["user_id"].to_pylist(), small["item_id"].to_pylist()))
    assert 2000 < len(keys[0]) < 3000  # about half
    for t in tables:
        assert (np.diff(t["timestamp"].to_numpy()) >= 0).all()
        assert t["label"].to_pylist() == [int(r >= 4) for r in t["rating"].to_pylist()]  # no shift
    assert parts[0].shift_row is None and parts[0].shifted_genres == []


def test_stream_options_and_roots_are_checked(tmp_path, source):
    with pytest.raises(ValueError, match="StreamOptions.shift_at must be a finite number in \\(0, 1\\) or null"):
        StreamOptions(shift_at=1.0)
    with pytest.raises(ValueError, match="part 2 with fraction 0.5"):
        StreamOptions(fraction=0.5, part=2)
    small = source.slice(0, 100)
    build_stream(StreamOptions(window_rows=50), root=tmp_path / "s", ratings=small)
    with pytest.raises(ValueError, match="holds a stream of other options"):
        build_stream(StreamOptions(window_rows=60), root=tmp_path / "s", ratings=small)
    with pytest.raises(ValueError, match="give root="):
        build_stream(StreamOptions(), ratings=small)
