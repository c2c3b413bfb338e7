"""Criteo Display Advertising Challenge data in its original text format.

Each row is `label`, 13 integer features `I1..I13` and 26 categorical features `C1..C26`
(8-hex-digit hashes); a missing value is an empty field. The original files are tab-separated
without a header (the test split has no label column); the comma-separated variant with a
`label,I1,...,C26` header (DeepCTR's sample, many Kaggle copies) is read too, as are `.gz`/`.bz2`
files. Files of different variants may be mixed in one dataset.

Dtypes: `label` is int8 (null in a file without labels); `C1..C26` are strings (null when
missing); `I1..I13` are float64 by default: exact for every integer below 2**53, null when
missing, and the variants that print integers as floats (`260.0`) parse. `dense_type=pa.int64()`
keeps them integer but then every value must be an integer literal (as in the original TSV);
`pa.float32()` halves memory but rounds counts above 2**24.

>>> import tempfile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> path = pathlib.Path(tmp.name) / "day_0"
>>> row = ["1", "5", "", "260"] + ["0"] * 10 + ["68fd1e64", ""] + ["05db9164"] * 24
>>> _ = path.write_text("\\t".join(row) + "\\n")
>>> table = dataset(path).to_table()
>>> table.num_rows, table["I1"][0].as_py(), table["I2"][0].as_py(), table["C2"][0].as_py()
(1, 5.0, None, None)
>>> tmp.cleanup()
"""
from pathlib import Path
from typing import Iterator, List, Optional

import pyarrow as pa
import pyarrow.dataset as ds

from recis.datasets._cache import PathLike
from recis.datasets._csv import (DEFAULT_BLOCK_SIZE, Sources, TextLayout, scan_batches, text_dataset,
                                 text_to_parquet)
from recis.datasets._parquet import DEFAULT_ROW_GROUP_SIZE
from recis.io.errors import IOStats

LABEL = "label"
NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_TYPES = (pa.float64(), pa.float32(), pa.int64())


def dense_columns(num_dense: int = NUM_DENSE) -> List[str]:
    """`['I1', ..., 'I<num_dense>']`."""
    return [f"I{i}" for i in range(1, num_dense + 1)]


def sparse_columns(num_sparse: int = NUM_SPARSE) -> List[str]:
    """`['C1', ..., 'C<num_sparse>']`."""
    return [f"C{i}" for i in range(1, num_sparse + 1)]


def schema(num_dense: int = NUM_DENSE, num_sparse: int = NUM_SPARSE,
           dense_type: pa.DataType = pa.float64()) -> pa.Schema:
    """The Criteo schema: `label` int8, `I*` as `dense_type`, `C*` strings (all nullable).

    >>> s = schema(2, 1)
    >>> s.names, str(s.field("I1").type), str(s.field("C1").type)
    (['label', 'I1', 'I2', 'C1'], 'double', 'string')
    """
    if dense_type not in DENSE_TYPES:
        raise TypeError(f"dense_type must be one of {[str(t) for t in DENSE_TYPES]}, got {dense_type}")
    for name, n in (("num_dense", num_dense), ("num_sparse", num_sparse)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    return pa.schema([pa.field(LABEL, pa.int8())]
                     + [pa.field(c, dense_type) for c in dense_columns(num_dense)]
                     + [pa.field(c, pa.string()) for c in sparse_columns(num_sparse)])


def feature_config(num_dense: int = NUM_DENSE, num_sparse: int = NUM_SPARSE) -> dict:
    """A suggested feature config for the Criteo columns (plain data, a fresh copy): each `I*`
    filled with 0 where missing and `log1p`-ed (negatives keep their sign), each `C*` hashed (a
    missing one is an empty bag), and the label.

    >>> [(f["name"], f["kind"]) for f in feature_config(1, 1)["features"]]
    [('I1', 'dense'), ('C1', 'sparse'), ('label', 'label')]
    """
    schema(num_dense=num_dense, num_sparse=num_sparse)  # validates the counts
    dense = [{"name": c, "kind": "dense", "column": c,
              "ops": [{"op": "fill_missing", "value": 0.0}, {"op": "log1p"}]} for c in dense_columns(num_dense)]
    sparse = [{"name": c, "kind": "sparse", "column": c, "ops": [{"op": "hash"}]} for c in sparse_columns(num_sparse)]
    return {"features": dense + sparse + [{"name": LABEL, "kind": "label", "column": LABEL}]}


def layout(dense_type: pa.DataType = pa.float64()) -> TextLayout:
    """The text layout of the original files (the label may be absent: the test split)."""
    return TextLayout("Criteo", schema(dense_type=dense_type), optional=(LABEL,),
                      default_delimiter="\t")


def dataset(src: Sources, *, dense_type: pa.DataType = pa.float64(),
            block_size: int = DEFAULT_BLOCK_SIZE, on_error: str = "raise",
            stats: Optional[IOStats] = None) -> ds.Dataset:
    """A streaming `pyarrow.dataset.Dataset` over Criteo text files (a file, a directory, or a
    list of them), with the schema `schema(dense_type=dense_type)`. A file that is not in the
    Criteo format (a README) raises, or with on_error="skip" is left out and counted in `stats`
    (a recis.io.IOStats)."""
    return text_dataset(src, layout(dense_type), block_size, on_error, stats)


def batches(src: Sources, *, dense_type: pa.DataType = pa.float64(),
            block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[pa.RecordBatch]:
    """Streams the record batches of Criteo text files in order with bounded memory (a few dozen
    `block_size`s); an unreadable file raises an error naming it."""
    return scan_batches(src, layout(dense_type), block_size)


def to_parquet(src: Sources, dst_dir: PathLike, *, rows_per_file: int = 1 << 22,
               dense_type: pa.DataType = pa.float64(), row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
               block_size: int = DEFAULT_BLOCK_SIZE, compression: str = "snappy") -> List[Path]:
    """Converts Criteo text files to `dst_dir/part-00000.parquet`, ... with bounded memory.

    Returns the written paths in row order; an unreadable file raises an error naming it."""
    return text_to_parquet(src, dst_dir, layout(dense_type), rows_per_file=rows_per_file,
                           row_group_size=row_group_size, block_size=block_size,
                           compression=compression)
