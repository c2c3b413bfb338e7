"""Criteo and Avazu readers against independent references (pandas.read_csv and the csv module)
on the real samples in ../shared/data/ctr_samples (skipped when absent), in every variant of the
original formats (TSV without header, CSV with header, gzip, label-less test files)."""
import csv
import datetime
import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from recis.datasets import avazu, criteo
from recis.datasets.synthetic import CriteoLike

INT64_MAX = 2 ** 63 - 1
DENSE, SPARSE = criteo.dense_columns(), criteo.sparse_columns()


@pytest.fixture(scope="module")
def samples() -> Path:
    env = os.environ.get("RECIS_CTR_SAMPLES")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/ctr_samples"
    if not (path / "criteo_sample.txt").is_file() or not (path / "avazu_sample.txt").is_file():
        pytest.skip(f"real CTR samples not found at {path} (set RECIS_CTR_SAMPLES to their folder)")
    return path


def _csv_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _criteo_reference(header, rows):
    """The expected Python values of each column, decoded by hand."""
    out = {name: [] for name in header}
    for row in rows:
        for name, cell in zip(header, row):
            if cell == "":
                out[name].append(None)
            elif name == "label":
                out[name].append(int(cell))
            elif name in DENSE:
                out[name].append(float(cell))
            else:
                out[name].append(cell)
    return out


def _int_literal(cell):
    return cell if cell == "" else str(int(float(cell)))


def _write_tsv(path, rows, opener=open):
    with opener(path, "wt", newline="") as f:
        for row in rows:
            f.write("\t".join(row) + "\n")


# --- Criteo ---------------------------------------------------------------------------------------
def test_criteo_sample_matches_csv_module(samples):
    header, rows = _csv_rows(samples / "criteo_sample.txt")
    table = criteo.dataset(samples / "criteo_sample.txt").to_table()
    assert table.schema.equals(criteo.schema())
    assert header == table.schema.names and table.num_rows == len(rows) == 200
    assert table.to_pydict() == _criteo_reference(header, rows)
    assert any("." in row[3] for row in rows)  # the sample writes integers as floats: '260.0'


def test_criteo_sample_matches_pandas(samples):
    table = criteo.dataset(samples / "criteo_sample.txt").to_table()
    df = pd.read_csv(samples / "criteo_sample.txt")
    assert table["label"].to_pylist() == df["label"].tolist()
    for name in DENSE:
        np.testing.assert_array_equal(table[name].to_numpy(), df[name].to_numpy(np.float64))
    for name in SPARSE:
        assert table[name].to_pylist() == [None if pd.isna(v) else v for v in df[name]]


def test_criteo_original_tsv_variants_in_one_directory(samples, tmp_path):
    header, rows = _csv_rows(samples / "criteo_sample.txt")
    rows = [[row[0]] + [_int_literal(c) for c in row[1:14]] + row[14:] for row in rows]
    src = tmp_path / "criteo"
    src.mkdir()
    _write_tsv(src / "day_0", rows[:70])  # original: TSV, no header
    _write_tsv(src / "day_1.gz", rows[70:140], gzip.open)  # as the 1TB release ships
    _write_tsv(src / "day_2_test", [row[1:] for row in rows[140:170]])  # test split: no label
    (src / "day_3_empty").write_text("")
    (src / "day_4.csv").write_text(",".join(header) + "\n" + "\n".join(",".join(r) for r in rows[170:]) + "\n")
    (src / ".hidden_partial").write_text("garbage\tthat\tmust\tnot\tbe\tread\n")
    table = criteo.dataset(src).to_table()
    expected = _criteo_reference(header, rows)
    expected["label"][140:170] = [None] * 30
    assert table.to_pydict() == expected
    ints = criteo.dataset(src, dense_type=pa.int64()).to_table()
    assert ints.schema.field("I5").type == pa.int64()
    assert ints["I5"].to_pylist() == [None if v is None else int(v) for v in expected["I5"]]
    floats = criteo.dataset(src / "day_0", dense_type=pa.float32()).to_table()
    assert floats["I5"].to_pylist() == [None if v is None else float(np.float32(v))
                                        for v in expected["I5"][:70]]


def test_criteo_to_parquet_keeps_rows_and_order(samples, tmp_path):
    paths = criteo.to_parquet(samples / "criteo_sample.txt", tmp_path / "pq", rows_per_file=64,
                              row_group_size=20, block_size=4096)
    assert [pq.ParquetFile(p).metadata.num_rows for p in paths] == [64, 64, 64, 8]
    back = pa.concat_tables([pq.read_table(p) for p in paths])
    assert back.equals(criteo.dataset(samples / "criteo_sample.txt").to_table())


def test_criteo_errors_name_the_file(samples, tmp_path):
    with pytest.raises(ValueError, match=r"criteo_sample.txt: cannot read it as Criteo data.*int64"):
        criteo.to_parquet(samples / "criteo_sample.txt", tmp_path / "x", dense_type=pa.int64())
    assert not list((tmp_path / "x").glob("*.parquet"))
    short = tmp_path / "short.tsv"
    short.write_text("1\t2\t3\n")
    with pytest.raises(ValueError, match=r"short.tsv: expected 39 or 40 '\\t'-separated Criteo fields, found 3"):
        criteo.dataset(short)
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("label,I1,I2,Cx\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"bad.csv: header does not match.*missing columns \['I3'.*unknown columns \['Cx'\]"):
        criteo.dataset(bad_header)
    with pytest.raises(FileNotFoundError, match="no such file or directory: .*nope"):
        criteo.dataset(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        criteo.dataset(tmp_path / "empty_dir")
    with pytest.raises(TypeError, match="dense_type"):
        criteo.dataset(short, dense_type=pa.int32())
    # a broken row far into a file (a later parse block) is reported with the file's name
    good = "\t".join(["1"] + ["5"] * 13 + ["68fd1e64"] * 26) + "\n"
    late = tmp_path / "late.tsv"
    late.write_text(good * 5000 + "1\t2\n" + good)
    with pytest.raises(ValueError, match=r"late.tsv: cannot read it as Criteo data.*Expected 40 columns, got 2"):
        criteo.to_parquet(late, tmp_path / "y", block_size=64 * 1024)
    # a truncated download
    whole = gzip.compress((good * 20000).encode())
    cut = tmp_path / "day_9.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"day_9.gz: cannot read it as Criteo data"):
        list(criteo.batches(cut))
    garbage = tmp_path / "day_8.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match=r"day_8.gz: cannot read the file"):
        criteo.dataset(garbage)


def _peak_arrow_bytes(batches):
    before, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in batches:
        peak = max(peak, pa.total_allocated_bytes() - before)
        rows += batch.num_rows
    return peak, rows


def test_criteo_streams_large_files_in_bounded_memory(tmp_path):
    gen = CriteoLike(seed=1, cardinalities=100_000, dense_null_fraction=0.2, sparse_null_fraction=0.1)
    whole = pa.Table.from_batches(list(gen.batches(60_000)))
    one, four = tmp_path / "day_0", tmp_path / "day_1"
    pacsv.write_csv(whole, one, pacsv.WriteOptions(include_header=False, delimiter="\t",
                                                     quoting_style="none"))
    assert criteo.dataset(one).to_table().equals(whole)  # generated rows survive the text format
    assert pa.Table.from_batches(list(criteo.batches(one, block_size=1 << 16))).equals(whole)
    four.write_bytes(one.read_bytes() * 4)
    block = 1 << 18
    peak_one, rows_one = _peak_arrow_bytes(criteo.batches(one, block_size=block))
    peak_four, rows_four = _peak_arrow_bytes(criteo.batches(four, block_size=block))
    size = os.path.getsize(four)
    print(f"\npeak Arrow memory streaming {size / 2 ** 20:.0f} MiB: {peak_four / 2 ** 20:.1f} MiB "
          f"({size / 4 / 2 ** 20:.0f} MiB: {peak_one / 2 ** 20:.1f} MiB), blocks of {block >> 10} KiB")
    assert (rows_one, rows_four) == (60_000, 240_000)
    assert peak_four < size / 4 and peak_four < 1.5 * peak_one + block * 8  # flat in file size


# --- Avazu -----------------------------------------------------------------------------------------
def _avazu_reference(header, rows):
    out = {name: [] for name in header}
    for row in rows:
        for name, cell in zip(header, row):
            out[name].append(int(cell) if name in ("id", "click", "hour") else cell)
    return out


def test_avazu_sample_matches_csv_module_with_exact_uint64_ids(samples):
    header, rows = _csv_rows(samples / "avazu_sample.txt")
    table = avazu.dataset(samples / "avazu_sample.txt").to_table()
    assert table.schema.equals(avazu.SCHEMA) and header == avazu.COLUMNS
    assert table.to_pydict() == _avazu_reference(header, rows)
    ids = table["id"].to_pylist()
    assert sum(i > INT64_MAX for i in ids) > 10  # the sample does hold ids beyond int64
    assert ids == [int(row[0]) for row in rows]


def test_avazu_sample_matches_pandas(samples):
    table = avazu.dataset(samples / "avazu_sample.txt").to_table()
    df = pd.read_csv(samples / "avazu_sample.txt", dtype={c: str for c in avazu.CATEGORICAL_COLUMNS},
                     keep_default_na=False)
    assert df["id"].dtype == np.uint64
    np.testing.assert_array_equal(table["id"].to_numpy(), df["id"].to_numpy())
    assert table["click"].to_pylist() == df["click"].tolist()
    assert table["hour"].to_pylist() == df["hour"].tolist()
    for name in avazu.CATEGORICAL_COLUMNS:
        assert table[name].to_pylist() == df[name].tolist()


def test_avazu_test_split_reordered_header_and_gzip(samples, tmp_path):
    header, rows = _csv_rows(samples / "avazu_sample.txt")
    src = tmp_path / "avazu"
    src.mkdir()
    order = [1, 0] + list(range(2, len(header)))  # `click,id,...`: columns are found by name
    with gzip.open(src / "a_train.csv.gz", "wt") as f:
        f.write("\n".join(",".join(r[i] for i in order) for r in [header] + rows[:60]) + "\n")
    keep = [i for i, name in enumerate(header) if name != "click"]  # the test split has no click
    (src / "b_test.csv").write_text(
        "\n".join(",".join(r[i] for i in keep) for r in [header] + rows[60:]) + "\n")
    (src / "c_header_only.csv").write_text(",".join(header) + "\n")
    expected = _avazu_reference(header, rows)
    expected["click"][60:] = [None] * 40
    assert avazu.dataset(src).to_table().to_pydict() == expected
    assert pa.Table.from_batches(list(avazu.batches(src)), avazu.SCHEMA).to_pydict() == expected
    paths = avazu.to_parquet(src, tmp_path / "pq", rows_per_file=30)
    back = pa.concat_tables([pq.read_table(p) for p in paths])
    assert back.schema.field("id").type == pa.uint64() and back.to_pydict() == expected


def test_avazu_errors_name_the_file(samples, tmp_path):
    _, rows = _csv_rows(samples / "avazu_sample.txt")
    no_header = tmp_path / "no_header.csv"
    no_header.write_text(",".join(rows[0]) + "\n")
    with pytest.raises(ValueError, match="no_header.csv: expected a header line naming the Avazu columns"):
        avazu.dataset(no_header)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,click,hour,site\n1,0,14102100,x\n")
    with pytest.raises(ValueError, match=r"wrong.csv: header does not match the Avazu format: "
                                         r"missing columns \['C1'.*unknown columns \['site'\]"):
        avazu.dataset(wrong)
    big = tmp_path / "big.csv"
    big.write_text(",".join(avazu.COLUMNS) + "\n" + ",".join([str(2 ** 64)] + rows[0][1:]) + "\n")
    with pytest.raises(ValueError, match="big.csv: cannot read it as Avazu data"):
        list(avazu.batches(big))


def test_hour_to_timestamp_matches_datetime(samples):
    hours = avazu.dataset(samples / "avazu_sample.txt").to_table()["hour"]
    got = avazu.hour_to_timestamp(hours).to_pylist()
    assert got == [datetime.datetime.strptime(str(h), "%y%m%d%H") for h in hours.to_pylist()]
    with pytest.raises(ValueError, match="not a YYMMDDHH code"):
        avazu.hour_to_timestamp(pa.array([14133100]))
    with pytest.raises(TypeError, match="integer YYMMDDHH"):
        avazu.hour_to_timestamp(pa.array(["14102100"]))
