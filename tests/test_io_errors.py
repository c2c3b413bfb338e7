"""Bad input: errors name the file (and column, and types); skipped files are counted."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_io_helpers import ids_of, write, write_id_files

from recis.io import ArrowDataset, CorruptFileError, MissingColumnError, SchemaMismatchError


def test_missing_column_names_file_and_column(tmp_path):
    pq.write_table(pa.table({"id": [1], "user": [5]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2]}), tmp_path / "b.parquet")
    data = ArrowDataset(str(tmp_path), columns=["id", "user"])
    with pytest.raises(MissingColumnError) as err:
        list(data)
    assert err.value.path.endswith("b.parquet") and err.value.column == "user"
    assert "b.parquet" in str(err.value) and "'user'" in str(err.value)


def test_column_absent_from_the_schema_names_the_file_it_came_from(tmp_path):
    pq.write_table(pa.table({"id": [1]}), tmp_path / "a.parquet")
    with pytest.raises(MissingColumnError, match=r"'nope' not found in file '.*a\.parquet'"):
        ArrowDataset(str(tmp_path), columns=["nope"])


def test_type_mismatch_reports_expected_found_and_file(tmp_path):
    pq.write_table(pa.table({"id": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(SchemaMismatchError) as err:
        list(ArrowDataset(str(tmp_path)))
    e = err.value
    assert e.path.endswith("b.parquet") and e.column == "id"
    assert e.expected == pa.int64() and e.found == pa.string()
    assert "type string, expected int64" in str(e) and "b.parquet" in str(e)


def test_narrowing_is_a_mismatch(tmp_path):
    pq.write_table(pa.table({"id": pa.array([1], pa.int64())}), tmp_path / "a.parquet")
    schema = pa.schema([("id", pa.int32())])
    with pytest.raises(SchemaMismatchError, match="type int64, expected int32"):
        list(ArrowDataset(str(tmp_path), schema=schema))


def test_csv_bad_value_is_a_mismatch_naming_the_column(tmp_path):
    (tmp_path / "a.csv").write_text("id,name\n1,x\n2,y\n")
    (tmp_path / "b.csv").write_text("id,name\n3,z\nfour,w\n")
    with pytest.raises(SchemaMismatchError) as err:
        list(ArrowDataset(str(tmp_path)))
    assert err.value.path.endswith("b.csv") and err.value.column == "id"
    assert err.value.expected == pa.int64() and "'four'" in str(err.value)


def _truncate(path, fraction):
    """Cuts a file to `fraction` of its size; a CSV file inside its last row's last field
    separator, so that row lacks a column (a CSV cut inside a value is still valid CSV)."""
    with open(path, "rb") as f:
        data = f.read()
    keep = data.rindex(b",") if path.endswith(".csv") else int(len(data) * fraction)
    with open(path, "wb") as f:
        f.write(data[:keep])


@pytest.mark.parametrize("fmt, cut", [("parquet", 0.5), ("parquet", 0.98), ("orc", 0.6), ("csv", None)])
def test_truncated_file_raises_naming_it_or_is_skipped_and_counted(tmp_path, fmt, cut):
    paths = write_id_files(str(tmp_path), [20, 20, 20], fmt, with_lists=False)
    _truncate(paths[1], cut)
    with pytest.raises(CorruptFileError) as err:
        list(ArrowDataset(str(tmp_path), batch_size=8))
    assert err.value.path == paths[1] and os.path.basename(paths[1]) in str(err.value)
    data = ArrowDataset(str(tmp_path), batch_size=8, on_error="skip")
    ids = ids_of(list(data))
    assert ids[:20] == list(range(20)) and ids[-20:] == list(range(40, 60))
    assert data.stats.files_skipped == 1 and paths[1] in data.stats.skipped
    # every row is accounted for: delivered, or in the one skipped file
    assert data.stats.rows == len(ids) and set(range(20, 40)) >= set(ids[20:-20])


def test_not_a_parquet_file_is_corrupt(tmp_path):
    write_id_files(str(tmp_path), [3], "parquet")
    (tmp_path / "zz.parquet").write_bytes(b"hello, not parquet")
    with pytest.raises(CorruptFileError, match="zz.parquet"):
        list(ArrowDataset(str(tmp_path)))
    data = ArrowDataset(str(tmp_path), on_error="skip")
    assert ids_of(data) == [0, 1, 2] and data.stats.files_skipped == 1


def test_schema_error_with_skip_is_counted(tmp_path):
    pq.write_table(pa.table({"id": [1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"other": [2]}), tmp_path / "b.parquet")
    data = ArrowDataset(str(tmp_path), on_error="skip")
    assert ids_of(data) == [1]
    assert data.stats.files_skipped == 1 and "'id' not found" in data.stats.skipped[str(tmp_path / "b.parquet")]


def test_first_file_corrupt_infers_from_the_next_with_skip(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1 truncated")
    pq.write_table(pa.table({"id": [4, 5]}), tmp_path / "b.parquet")
    with pytest.raises(CorruptFileError, match="a.parquet"):
        ArrowDataset(str(tmp_path))
    data = ArrowDataset(str(tmp_path), on_error="skip")
    assert ids_of(data) == [4, 5] and data.stats.files_skipped == 1


@pytest.mark.parametrize("fmt", ["parquet", "orc", "csv"])
def test_empty_files_work(tmp_path, fmt):
    empty = pa.table({"id": pa.array([], pa.int64())})
    write(str(tmp_path / f"a.{fmt}"), pa.table({"id": [1, 2]}), fmt)
    write(str(tmp_path / f"b.{fmt}"), empty, fmt)
    write(str(tmp_path / f"c.{fmt}"), pa.table({"id": [3]}), fmt)
    if fmt == "csv":
        (tmp_path / "d.csv").write_text("")  # zero bytes: no header, no rows
    data = ArrowDataset(str(tmp_path), batch_size=2)
    assert [b.column("id").to_pylist() for b in data] == [[1, 2], [3]]
    assert data.stats.files_skipped == 0


def test_all_empty_dataset_with_schema_yields_nothing(tmp_path):
    write(str(tmp_path / "a.parquet"), pa.table({"id": pa.array([], pa.int64())}), "parquet")
    assert list(ArrowDataset(str(tmp_path), epochs=None)) == []  # forever over nothing ends


def test_all_null_columns(tmp_path):
    schema = pa.schema([("id", pa.int64()), ("v", pa.float32()), ("tags", pa.list_(pa.int64()))])
    pq.write_table(pa.table({"id": [1, 2], "v": pa.nulls(2, pa.float32()), "tags": pa.nulls(2, schema[2].type)}),
                   tmp_path / "a.parquet")
    (batch,) = list(ArrowDataset(str(tmp_path), schema=schema))
    assert batch.schema == schema and batch.column("v").null_count == 2 and batch.column("tags").null_count == 2
