"""ArrowDataset against whole-file pyarrow/pandas reads: formats, batching, shuffle, epochs, sources."""
import os

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_io_helpers import FORMATS, ids_of, reference_rows, write, write_id_files

from recis.io import ArrowDataset, to_tensors


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(tmp_path, fmt):
    paths = write_id_files(str(tmp_path), [37, 0, 25, 50], fmt, rows_per_group=16)
    want = reference_rows(paths, fmt)
    data = ArrowDataset(str(tmp_path), batch_size=7)
    batches = list(data)
    assert [b.num_rows for b in batches] == [7] * 16  # 112 rows, batches span file boundaries
    got = pa.Table.from_batches(batches).to_pydict()
    assert got == want
    assert data.stats.rows == 112 and data.stats.batches == len(batches) and data.stats.files_read == 4


def test_csv_nulls_and_all_null_column_round_trip(tmp_path):
    path = str(tmp_path / "a.csv")
    with open(path, "w") as f:
        f.write("id,x,empty\n1,0.5,\n2,,\n3,1.5,\n")
    got = pa.Table.from_batches(list(ArrowDataset(path, batch_size=2))).to_pydict()
    assert got == {"id": [1, 2, 3], "x": [0.5, None, 1.5], "empty": [None, None, None]}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=4), st.integers(1, 25), st.booleans())
def test_batches_have_exact_size_and_keep_every_row(tmp_path_factory, sizes, batch_size, drop_last):
    root = str(tmp_path_factory.mktemp("d"))
    write_id_files(root, sizes, "parquet", rows_per_group=7)
    data = ArrowDataset(root, batch_size=batch_size, drop_last=drop_last, read_batch_size=5)
    batches = list(data)
    total = sum(sizes)
    full, rest = divmod(total, batch_size)
    expected = [batch_size] * full + ([rest] if rest and not drop_last else [])
    assert [b.num_rows for b in batches] == expected
    assert ids_of(batches) == list(range(total))[: sum(expected)]
    assert data.stats.rows_dropped == (rest if drop_last else 0)


def test_shuffle_is_a_reproducible_permutation(tmp_path):
    write_id_files(str(tmp_path), [40, 33, 27], "parquet", rows_per_group=10)

    def run(seed):
        return ids_of(ArrowDataset(str(tmp_path), batch_size=16, shuffle_buffer=32, seed=seed))

    a, b, c = run(1), run(1), run(2)
    assert sorted(a) == list(range(100)) and a == b and a != c
    assert a != list(range(100))


def test_epochs_reshuffle_deterministically_and_set_epoch(tmp_path):
    write_id_files(str(tmp_path), [30, 30], "parquet")
    data = ArrowDataset(str(tmp_path), batch_size=8, shuffle_buffer=20, seed=5, epochs=3)
    batches = list(data)
    sizes = [b.num_rows for b in batches]
    assert sizes == [8, 8, 8, 8, 8, 8, 8, 4] * 3  # batches do not span epochs
    epochs = [ids_of(batches[i * 8:(i + 1) * 8]) for i in range(3)]
    assert all(sorted(e) == list(range(60)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    one = ArrowDataset(str(tmp_path), batch_size=8, shuffle_buffer=20, seed=5)
    one.set_epoch(2)
    assert ids_of(one) == epochs[2]


def test_columns_select_and_order(tmp_path):
    write_id_files(str(tmp_path), [5], "parquet")
    data = ArrowDataset(str(tmp_path), columns=["s", "id"], batch_size=10)
    (batch,) = list(data)
    assert batch.schema.names == ["s", "id"] and batch.column("id").to_pylist() == [0, 1, 2, 3, 4]


def test_hidden_temporary_and_marker_files_are_not_data(tmp_path):
    write_id_files(str(tmp_path), [4], "parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".part-9.parquet.crc").write_text("junk")
    (tmp_path / "part-8.parquet.inprogress").write_text("junk")
    os.makedirs(tmp_path / "_temporary")
    (tmp_path / "_temporary" / "x.parquet").write_text("junk")
    assert ids_of(ArrowDataset(str(tmp_path))) == [0, 1, 2, 3]


def test_typed_csv_pyarrow_dataset_source(tmp_path):
    """What a Criteo-style reader hands over: headerless TSV with a typed schema."""
    path = tmp_path / "day_0.txt"
    path.write_text("1\t5\tab12\n0\t\tff00\n1\t7\t\n")
    schema = pa.schema([("label", pa.int8()), ("i1", pa.int64()), ("c1", pa.string())])
    fmt = ds.CsvFileFormat(parse_options=pcsv.ParseOptions(delimiter="\t"),
                           read_options=pcsv.ReadOptions(column_names=schema.names),
                           convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    source = ds.dataset(str(path), format=fmt, schema=schema)
    (batch,) = list(ArrowDataset(source, batch_size=10))
    assert batch.schema == schema
    assert batch.to_pydict() == {"label": [1, 0, 1], "i1": [5, None, 7], "c1": ["ab12", "ff00", None]}


def test_partitioned_pyarrow_dataset_keeps_partition_columns(tmp_path):
    for dt in (1, 2):
        os.makedirs(tmp_path / f"dt={dt}")
        pq.write_table(pa.table({"id": [dt * 10, dt * 10 + 1]}), tmp_path / f"dt={dt}" / "x.parquet")
    source = ds.dataset(str(tmp_path), format="parquet", partitioning="hive")
    got = pa.Table.from_batches(list(ArrowDataset(source, batch_size=3))).to_pydict()
    assert got == {"id": [10, 11, 20, 21], "dt": [1, 1, 2, 2]}


def test_null_typed_column_takes_a_later_files_type(tmp_path):
    pq.write_table(pa.table({"id": [0, 1], "v": pa.nulls(2)}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2], "v": pa.array([7], pa.int32())}), tmp_path / "b.parquet")
    data = ArrowDataset(str(tmp_path), batch_size=10)
    assert data.schema.field("v").type == pa.int32()
    (batch,) = list(data)
    assert batch.column("v").to_pylist() == [None, None, 7]
    assert to_tensors(batch, fill_null=-1)["v"].tolist() == [-1, -1, 7]


def test_lossless_widening_across_files(tmp_path):
    pq.write_table(pa.table({"id": pa.array([0], pa.int64())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([1], pa.int32())}), tmp_path / "b.parquet")
    (batch,) = list(ArrowDataset(str(tmp_path), batch_size=4))
    assert batch.schema.field("id").type == pa.int64() and batch.column("id").to_pylist() == [0, 1]


def test_transform_output_is_yielded(tmp_path):
    write_id_files(str(tmp_path), [6], "parquet")
    data = ArrowDataset(str(tmp_path), batch_size=4, transform=to_tensors)
    out = list(data)
    assert [o["id"].tolist() for o in out] == [[0, 1, 2, 3], [4, 5]]
    assert isinstance(out[0]["tags"].values, torch.Tensor)


def test_bad_options_are_rejected(tmp_path):
    write_id_files(str(tmp_path), [2], "parquet")
    for kwargs, word in [({"batch_size": 0}, "batch_size"), ({"shuffle_buffer": -1}, "shuffle_buffer"),
                         ({"on_error": "ignore"}, "on_error"), ({"epochs": 0}, "epochs"),
                         ({"format": "avro"}, "format"), ({"seed": -1}, "seed")]:
        with pytest.raises(ValueError, match=word):
            ArrowDataset(str(tmp_path), **kwargs)
    with pytest.raises(FileNotFoundError, match="nope"):
        ArrowDataset(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="infer"):
        write(str(tmp_path / "data.bin"), pa.table({"a": [1]}), "parquet")
        ArrowDataset(str(tmp_path))


def test_explicit_format_and_list_of_paths(tmp_path):
    a = write(str(tmp_path / "a.dat"), pa.table({"id": [1, 2]}), "parquet")
    b = write(str(tmp_path / "b.dat"), pa.table({"id": [3]}), "parquet")
    assert ids_of(ArrowDataset([b, a], format="parquet")) == [3, 1, 2]  # the given order of sources


def test_union_of_csv_datasets_with_different_layouts(tmp_path):
    """A UnionDataset whose children parse differently (what a reader of mixed-layout files returns)."""
    (tmp_path / "a.csv").write_text("id,c\n1,x\n2,y\n")
    (tmp_path / "b.tsv").write_text("3\tz\n")
    schema = pa.schema([("id", pa.int64()), ("c", pa.string())])
    tsv = ds.CsvFileFormat(parse_options=pcsv.ParseOptions(delimiter="\t"),
                           read_options=pcsv.ReadOptions(column_names=schema.names))
    source = ds.dataset([ds.dataset(str(tmp_path / "a.csv"), format="csv", schema=schema),
                         ds.dataset(str(tmp_path / "b.tsv"), format=tsv, schema=schema)])
    got = pa.Table.from_batches(list(ArrowDataset(source, batch_size=2))).to_pydict()
    assert got == {"id": [1, 2, 3], "c": ["x", "y", "z"]}
    parts = [ids_of(ArrowDataset(source, rank=r, world_size=2)) for r in range(2)]
    assert parts == [[1, 2], [3]]


def test_empty_in_memory_dataset_yields_nothing():
    schema = pa.schema([("id", pa.int64())])
    data = ArrowDataset(ds.dataset(schema.empty_table()))
    assert list(data) == [] and data.schema == schema
    with pytest.raises(TypeError, match="write it to Parquet"):
        ArrowDataset(ds.dataset(pa.table({"id": [1]})))


def test_dictionary_columns_stay_dictionary_encoded(tmp_path):
    write_id_files(str(tmp_path), [9, 7], "parquet", rows_per_group=4)
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=["s"]))
    batches = list(ArrowDataset(str(tmp_path), format=fmt, batch_size=5, shuffle_buffer=6, seed=2))
    assert all(pa.types.is_dictionary(b.schema.field("s").type) for b in batches)
    plain = list(ArrowDataset(str(tmp_path), batch_size=5, shuffle_buffer=6, seed=2))
    assert [b.column("s").to_pylist() for b in batches] == [b.column("s").to_pylist() for b in plain]
