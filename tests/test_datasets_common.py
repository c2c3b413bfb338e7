"""Shared dataset machinery: cache location, atomic cache entries, the rolling Parquet writer and
the train/test split rules, each against an independent reference."""
import math
import os
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.datasets import cache_dir
from recis.datasets._cache import atomic_directory
from recis.datasets._parquet import write_batches
from recis.datasets._splits import holdout_count, latest_test_mask, random_test_mask

SCHEMA = pa.schema([("x", pa.int64()), ("s", pa.string())])


def _batches(sizes, start=0):
    out = []
    for n in sizes:
        xs = list(range(start, start + n))
        out.append(pa.record_batch([pa.array(xs, pa.int64()), pa.array([f"v{x}" for x in xs])],
                                   schema=SCHEMA))
        start += n
    return out


# --- cache ------------------------------------------------------------------------------------
def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("RECIS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "recis"
    monkeypatch.setenv("RECIS_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("RECIS_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "recis"


def test_atomic_directory_publishes_only_complete_entries(tmp_path):
    final = tmp_path / "a" / "entry"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert not final.exists()
    assert os.listdir(final.parent) == []  # no temporary left behind
    with atomic_directory(final) as tmp:
        (tmp / "whole").write_text("y")
    assert (final / "whole").read_text() == "y"
    assert sorted(os.listdir(final.parent)) == ["entry"]


def test_atomic_directory_keeps_the_winner_of_a_race(tmp_path):
    final = tmp_path / "entry"
    with atomic_directory(final) as tmp:
        (tmp / "mine").write_text("late")
        final.mkdir()  # another process finished first
        (final / "theirs").write_text("early")
    assert os.listdir(final) == ["theirs"]
    assert os.listdir(tmp_path) == ["entry"]


# --- Parquet writer -----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), max_size=8), rows_per_file=st.integers(1, 50),
       row_group_size=st.integers(1, 30))
def test_write_batches_splits_rows_exactly(tmp_path_factory, sizes, rows_per_file, row_group_size):
    dst = tmp_path_factory.mktemp("out")
    paths = write_batches(_batches(sizes), dst, SCHEMA, rows_per_file=rows_per_file,
                          row_group_size=row_group_size)
    total = sum(sizes)
    expected_counts = [rows_per_file] * (total // rows_per_file)
    if total % rows_per_file or total == 0:
        expected_counts.append(total % rows_per_file)
    assert [pq.ParquetFile(p).metadata.num_rows for p in paths] == expected_counts
    assert [p.name for p in paths] == [f"part-{i:05d}.parquet" for i in range(len(paths))]
    for p in paths:
        groups = [pq.ParquetFile(p).metadata.row_group(i).num_rows
                  for i in range(pq.ParquetFile(p).metadata.num_row_groups)]
        assert all(g <= row_group_size for g in groups)
    back = pa.concat_tables([pq.read_table(p) for p in paths])
    assert back.column("x").to_pylist() == list(range(total))
    assert back.column("s").to_pylist() == [f"v{x}" for x in range(total)]
    assert sorted(os.listdir(dst)) == [p.name for p in paths]  # no temporaries


def test_write_batches_refuses_existing_parts_and_cleans_up_on_error(tmp_path):
    write_batches(_batches([3]), tmp_path, SCHEMA, rows_per_file=2)
    with pytest.raises(FileExistsError, match="part-"):
        write_batches(_batches([3]), tmp_path, SCHEMA, rows_per_file=2)
    bad = pa.record_batch([pa.array([1.0])], names=["x"])
    out = tmp_path / "new"
    with pytest.raises(TypeError, match="expected x: int64"):
        write_batches(_batches([5]) + [bad], out, SCHEMA, rows_per_file=2)
    assert os.listdir(out) == []
    with pytest.raises(ValueError, match="rows_per_file"):
        write_batches([], out, SCHEMA, rows_per_file=0)


# --- splits -------------------------------------------------------------------------------------
@given(n=st.integers(0, 10 ** 7), frac=st.sampled_from([0.1, 0.2, 0.25, 0.5, 0.05, 1 / 3]))
def test_holdout_count_rounds_half_up_exactly(n, frac):
    exact = n * Fraction(frac).limit_denominator(1_000_000)
    assert holdout_count(n, frac) == math.floor(exact + Fraction(1, 2))


def test_holdout_count_rejects_bad_fractions():
    for bad in (0, 1, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="test_fraction"):
            holdout_count(10, bad)


def test_random_test_mask_is_seeded():
    a = random_test_mask(1001, 0.1, seed=3)
    assert a.sum() == 100
    assert np.array_equal(a, random_test_mask(1001, 0.1, seed=3))
    assert not np.array_equal(a, random_test_mask(1001, 0.1, seed=4))
    with pytest.raises(ValueError, match="seed"):
        random_test_mask(10, 0.1, seed=-1)


def _latest_reference(groups, times, tiebreak, frac):
    """Per group: sort its rows by (time, tiebreak) and mark the last round_half_up(n * frac)."""
    mask = [False] * len(groups)
    by_group = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    f = Fraction(frac).limit_denominator(1_000_000)
    for rows in by_group.values():
        rows.sort(key=lambda i: (times[i], tiebreak[i]))
        k = math.floor(len(rows) * f + Fraction(1, 2))
        for i in rows[len(rows) - k:] if k else []:
            mask[i] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6)), max_size=60),
       frac=st.sampled_from([0.1, 0.3, 0.5]))
def test_latest_test_mask_matches_reference(rows, frac):
    groups = np.array([g for g, _ in rows], dtype=np.int64)
    times = np.array([t for _, t in rows], dtype=np.int64)
    tiebreak = np.arange(len(rows))[::-1].copy()  # distinct; later rows break ties first
    got = latest_test_mask(groups, times, tiebreak, frac)
    assert got.tolist() == _latest_reference(groups.tolist(), times.tolist(), tiebreak.tolist(), frac)
