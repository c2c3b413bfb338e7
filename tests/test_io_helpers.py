"""Helpers for the recis.io tests: writing files in each format and independent references.

The references read whole files with pyarrow's own readers (or pandas), not with recis.io.
"""
import os
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.orc as orc
import pyarrow.parquet as pq

FORMATS = ("parquet", "orc", "csv")
EXT = {"parquet": ".parquet", "orc": ".orc", "csv": ".csv"}


def write(path: str, table: pa.Table, fmt: str, rows_per_group: int = 0) -> str:
    """Writes `table` as `fmt` (row groups / stripes of about `rows_per_group` rows if given)."""
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=rows_per_group or None)
    elif fmt == "orc":
        orc.write_table(table, path)
    elif fmt == "csv":
        pcsv.write_csv(table, path)
    else:
        raise ValueError(fmt)
    return path


def id_table(start: int, n: int, with_lists: bool = True) -> pa.Table:
    """Rows with a unique int64 id plus a float, a string and (optionally) a list column."""
    ids = np.arange(start, start + n, dtype=np.int64)
    cols = {"id": ids, "x": ids.astype(np.float64) / 2, "s": pa.array([f"s{i}" for i in ids], pa.string())}
    if with_lists:
        cols["tags"] = pa.array([[int(i), int(i) * 2][: int(i) % 3] for i in ids], pa.list_(pa.int64()))
    return pa.table(cols)


def write_id_files(root: str, sizes: Sequence[int], fmt: str = "parquet", rows_per_group: int = 0,
                   with_lists: bool = True) -> List[str]:
    """Files part-000.. with consecutive ids (file i holds sizes[i] rows); returns their paths."""
    os.makedirs(root, exist_ok=True)
    paths, start = [], 0
    for i, n in enumerate(sizes):
        path = os.path.join(root, f"part-{i:03d}{EXT[fmt]}")
        write(path, id_table(start, n, with_lists and fmt != "csv"), fmt, rows_per_group)
        paths.append(path)
        start += n
    return paths


def reference_rows(paths: Sequence[str], fmt: str) -> Dict[str, list]:
    """All rows of the files, in file order, read by pyarrow's whole-file readers / pandas."""
    tables = []
    for p in paths:
        if fmt == "parquet":
            tables.append(pq.read_table(p))
        elif fmt == "orc":
            tables.append(orc.read_table(p))
        else:
            tables.append(pa.Table.from_pandas(pd.read_csv(p, keep_default_na=False), preserve_index=False))
    return pa.concat_tables(tables, promote_options="permissive").to_pydict()


def ids_of(batches) -> List[int]:
    return [i for b in batches for i in b.column("id").to_pylist()]


def test_reference_reads_what_was_written(tmp_path):
    paths = write_id_files(str(tmp_path), [3, 2], "parquet")
    assert reference_rows(paths, "parquet")["id"] == [0, 1, 2, 3, 4]
