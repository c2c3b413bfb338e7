"""Avazu click-through data (Kaggle CTR prediction) in its original text format.

Comma-separated with a header: `id`, `click`, `hour` (YYMMDDHH) and 21 categorical columns. The
test split has no `click` column; it is null there. `.gz` files are read too.

Dtypes: `id` is **uint64**: the ids go up to 2**64 - 1, beyond int64, and uint64 keeps them
exact (convert with `pyarrow.compute.cast(..., pa.string())` if a consumer needs text); `click`
is int8; `hour` stays the int32 YYMMDDHH code (`hour_to_timestamp` decodes it); the 21
categorical columns are strings, including the numeric-looking ones (`C1`, `banner_pos`, ...).

>>> import tempfile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> path = pathlib.Path(tmp.name) / "train.csv"
>>> _ = path.write_text(",".join(COLUMNS) + "\\n" + "18446744073709551615,1,14102100" + ",x" * 21 + "\\n")
>>> row = dataset(path).to_table().to_pylist()[0]
>>> row["id"], row["click"], row["hour"], row["site_id"]
(18446744073709551615, 1, 14102100, 'x')
>>> tmp.cleanup()
"""
from pathlib import Path
from typing import Iterator, List, Optional, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from recis.datasets._cache import PathLike
from recis.datasets._csv import (DEFAULT_BLOCK_SIZE, Sources, TextLayout, scan_batches, text_dataset,
                                 text_to_parquet)
from recis.datasets._parquet import DEFAULT_ROW_GROUP_SIZE
from recis.io.errors import IOStats

CATEGORICAL_COLUMNS = [
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
COLUMNS = ["id", "click", "hour"] + CATEGORICAL_COLUMNS
SCHEMA = pa.schema([pa.field("id", pa.uint64()), pa.field("click", pa.int8()),
                    pa.field("hour", pa.int32())]
                   + [pa.field(c, pa.string()) for c in CATEGORICAL_COLUMNS])
LAYOUT = TextLayout("Avazu", SCHEMA, optional=("click",), header_required=True)


def feature_config() -> dict:
    """A suggested feature config for the Avazu columns (plain data, a fresh copy): every
    categorical column and `hour` hashed (the row `id` is left out: unique per row), `click` the
    label.

    >>> config = feature_config()["features"]
    >>> [f["name"] for f in config][:3], config[-1]
    (['hour', 'C1', 'banner_pos'], {'name': 'click', 'kind': 'label', 'column': 'click'})
    """
    sparse = [{"name": c, "kind": "sparse", "column": c, "ops": [{"op": "hash"}]}
              for c in ["hour"] + CATEGORICAL_COLUMNS]
    return {"features": sparse + [{"name": "click", "kind": "label", "column": "click"}]}


def dataset(src: Sources, *, block_size: int = DEFAULT_BLOCK_SIZE, on_error: str = "raise",
            stats: Optional[IOStats] = None) -> ds.Dataset:
    """A streaming `pyarrow.dataset.Dataset` over Avazu CSV files (a file, a directory, or a list
    of them), with schema `SCHEMA`. A file that is not in the Avazu format (a README) raises, or
    with on_error="skip" is left out and counted in `stats` (a recis.io.IOStats)."""
    return text_dataset(src, LAYOUT, block_size, on_error, stats)


def batches(src: Sources, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[pa.RecordBatch]:
    """Streams the record batches of Avazu CSV files in order with bounded memory (a few dozen
    `block_size`s); an unreadable file raises an error naming it."""
    return scan_batches(src, LAYOUT, block_size)


def to_parquet(src: Sources, dst_dir: PathLike, *, rows_per_file: int = 1 << 22,
               row_group_size: int = DEFAULT_ROW_GROUP_SIZE, block_size: int = DEFAULT_BLOCK_SIZE,
               compression: str = "snappy") -> List[Path]:
    """Converts Avazu CSV files to `dst_dir/part-00000.parquet`, ... with bounded memory.

    Returns the written paths in row order; an unreadable file raises an error naming it."""
    return text_to_parquet(src, dst_dir, LAYOUT, rows_per_file=rows_per_file,
                           row_group_size=row_group_size, block_size=block_size,
                           compression=compression)


def hour_to_timestamp(hour: Union[pa.Array, pa.ChunkedArray]) -> Union[pa.Array, pa.ChunkedArray]:
    """Decodes YYMMDDHH codes (20YY) to `timestamp[s]` values; nulls stay null.

    >>> hour_to_timestamp(pa.array([14102100, 14103023, None], pa.int32())).to_pylist()
    [datetime.datetime(2014, 10, 21, 0, 0), datetime.datetime(2014, 10, 30, 23, 0), None]
    """
    if not pa.types.is_integer(hour.type):
        raise TypeError(f"hour must be an integer YYMMDDHH array, found {hour.type}")
    text = pc.utf8_lpad(pc.cast(hour, pa.string()), 8, "0")
    try:
        return pc.strptime(text, format="%y%m%d%H", unit="s")
    except pa.ArrowInvalid as e:
        raise ValueError(f"hour holds a value that is not a YYMMDDHH code: {e}") from None
