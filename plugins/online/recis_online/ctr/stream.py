"""MovieLens-1M replayed in timestamp order as a stream of time windows, with a planted shift.

The ratings of `recis.datasets.movielens` (both parts of its "time" split together: every rating
once) are ordered by (timestamp, user_id, item_id) -- the replay order -- and written as
equal-count windows: `window=00000/ratings.parquet`, `window=00001/...`, each `window_rows`
rows (the last one shorter) and marked complete by an empty `_SUCCESS` file, so that a
`StreamingArrowDataset(root, windows="window=*")` (a job's `data.stream`) or an `ArrowDataset`
over `StreamFiles.files` reads them front to back. Equal counts, not calendar
weeks, because ML-1M is front-loaded: half of its ratings fall before 2000-11-01, and the last
two years hold few (a weekly window would range from hundreds to over 100k ratings).
`_STREAM.json` in the root (not a data file: `_` names are skipped) records the options, the
rows, the shift and each window's first and last timestamp.

Columns: `recis.datasets.movielens.SCHEMA` plus `position` (int64, the row's index in the replay
order of this stream, 0..T-1). `rating` is always the source's; `label` is rating >= 4 except
where the planted shift flips it.

Subsampling (`fraction`, `part`, `sample_seed`): the replay order's rows get uniform draws
u = numpy.random.default_rng(sample_seed).random(N); part p keeps the rows with
p * fraction <= u < (p + 1) * fraction, in replay order. Parts are disjoint, so a validation
stream (part 1) never shares a rating with the reported one (part 0).

The planted shift (`shift_at`, `shift_genres`, `shift_seed`): T is the stream's row count and
s = floor(shift_at * T) the shift row. The genres are the distinct primary genres of the
stream's movies, sorted; `round(shift_genres * count)` of them are drawn without replacement by
numpy.random.default_rng(shift_seed).choice. A movie's primary genre is the first of its
`genres` list (this copy lists them alphabetically). Every row with position >= s whose primary
genre was drawn has label = 1 - (rating >= 4); no other row changes.

>>> primary_genres(pa.array([["Comedy", "Drama"], ["Action"]]))
array(['Comedy', 'Action'], dtype=object)
>>> choose_genres(["A", "B", "C", "D"], 0.5, seed=0)
['C', 'D']
>>> StreamOptions(fraction=0.6, part=1)
Traceback (most recent call last):
...
ValueError: StreamOptions: part 1 with fraction 0.6 needs (part + 1) * fraction <= 1, got 1.2
"""
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recis.config_utils import bounded, check_types
from recis.datasets import movielens
from recis.datasets._cache import PathLike, atomic_directory, cache_dir

__all__ = ["StreamOptions", "StreamFiles", "replay_order", "primary_genres", "choose_genres", "shift_mask",
           "stream_table", "build_stream", "STREAM_SCHEMA", "WINDOW_GLOB", "MARKER"]

_FORMAT = 2  # bump when the files written for the same options change
WINDOW_GLOB = "window=*"
MARKER = "_SUCCESS"
STREAM_SCHEMA = movielens.SCHEMA.append(pa.field("position", pa.int64()))
_ROW_GROUP = 16 * 1024


@dataclass
class StreamOptions:
    """How the stream is cut, subsampled and shifted (see the module docstring).

    `shift_at`: the shift row as a fraction of the stream (None: no shift); `shift_genres`: the
    fraction of the primary genres whose labels flip from there on."""

    window_rows: int = bounded(50_000, ge=1)
    fraction: float = bounded(1.0, gt=0, le=1)
    part: int = bounded(0, ge=0)
    sample_seed: int = bounded(0, ge=0, lt=1 << 32)
    shift_at: Optional[float] = bounded(0.5, gt=0, lt=1)
    shift_genres: float = bounded(0.5, gt=0, le=1)
    shift_seed: int = bounded(0, ge=0, lt=1 << 32)

    def __post_init__(self):
        check_types(self, "StreamOptions")
        if (self.part + 1) * self.fraction > 1 + 1e-12:
            raise ValueError(f"StreamOptions: part {self.part} with fraction {self.fraction} needs "
                             f"(part + 1) * fraction <= 1, got {(self.part + 1) * self.fraction:g}")


@dataclass(frozen=True)
class StreamFiles:
    """A built stream: its root, window directory names and files in replay order, its row
    count T, the shift row (None without a shift) and the flipped genres."""

    root: Path
    windows: List[str]
    files: List[str]
    num_rows: int
    shift_row: Optional[int]
    shifted_genres: List[str]
    window_rows: int


# ---- functional pieces ------------------------------------------------------------------------
def replay_order(table: pa.Table) -> np.ndarray:
    """Indices that sort `table` by (timestamp, user_id, item_id)."""
    ts, users, items = (table[c].to_numpy() for c in ("timestamp", "user_id", "item_id"))
    return np.lexsort((items, users, ts))


def primary_genres(genres) -> np.ndarray:
    """The first genre of each row's list (None for an empty list), as an object array."""
    first = pc.list_element(genres, 0) if len(genres) else pa.array([], pa.string())
    return np.asarray(first.to_pylist(), dtype=object)


def choose_genres(genres: Sequence[str], share: float, seed: int) -> List[str]:
    """round(share * len) of the sorted distinct `genres`, drawn without replacement by
    numpy.random.default_rng(seed), sorted."""
    pool = sorted(set(genres))
    k = int(round(share * len(pool)))
    if not 0 < k <= len(pool):
        raise ValueError(f"shift_genres {share} of {len(pool)} genres selects {k}; it must select 1..{len(pool)}")
    picked = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in picked)


def shift_mask(primary: np.ndarray, position: np.ndarray, shift_row: int, genres: Sequence[str]) -> np.ndarray:
    """True where the planted shift flips the label: position >= shift_row and primary genre in `genres`."""
    return (np.asarray(position) >= shift_row) & np.isin(primary.astype(str), list(genres))


def _all_ratings(cache: Optional[PathLike]) -> pa.Table:
    files = movielens.load("time", cache=cache)  # train + test: every rating once
    return pa.concat_tables([pq.read_table(files.train, schema=movielens.SCHEMA),
                             pq.read_table(files.test, schema=movielens.SCHEMA)])


def stream_table(ratings: pa.Table, options: StreamOptions):
    """(the stream's rows in replay order with `position` and shifted labels, shift row, flipped genres)."""
    ordered = ratings.take(replay_order(ratings))
    u = np.random.default_rng(options.sample_seed).random(ordered.num_rows)
    lo, hi = options.part * options.fraction, (options.part + 1) * options.fraction
    keep = (u >= lo) & (u < hi) if options.fraction < 1 else np.ones(ordered.num_rows, bool)
    table = ordered.filter(pa.array(keep))
    n = table.num_rows
    table = table.append_column("position", pa.array(np.arange(n, dtype=np.int64)))
    if options.shift_at is None or n == 0:
        return table, None, []
    shift_row = int(np.floor(options.shift_at * n))
    primary = primary_genres(table["genres"].combine_chunks())
    genres = choose_genres([g for g in set(primary.tolist()) if g is not None], options.shift_genres,
                           options.shift_seed)
    flip = shift_mask(primary, np.arange(n), shift_row, genres)
    label = table["label"].to_numpy()
    label = np.where(flip, 1 - label, label).astype(np.int8)
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(label, pa.int8()))
    return table, shift_row, genres


def _key(options: StreamOptions) -> str:
    return json.dumps({"format": _FORMAT, "options": asdict(options)}, sort_keys=True)


def build_stream(options: Optional[StreamOptions] = None, *, cache: Optional[PathLike] = None,
                 root: Optional[PathLike] = None, ratings: Optional[pa.Table] = None) -> StreamFiles:
    """Writes the stream of `options` once (atomically) and returns its files.

    `root`: where (default `<cache>/movielens-1m-stream/<digest of the options>`); `ratings`: a
    `movielens.SCHEMA` table to replay instead of all of ML-1M (tests; then give `root`)."""
    options = options or StreamOptions()
    if ratings is not None and root is None:
        raise ValueError("build_stream: with your own ratings, give root= (the cache is ML-1M's)")
    if root is None:
        digest = hashlib.sha256(_key(options).encode()).hexdigest()[:16]
        root = cache_dir(cache) / "movielens-1m-stream" / digest
    root = Path(root)
    if not (root / "_STREAM.json").is_file():
        table, shift_row, genres = stream_table(_all_ratings(cache) if ratings is None else ratings, options)
        with atomic_directory(root) as tmp:
            windows = []
            for w, start in enumerate(range(0, table.num_rows, options.window_rows)):
                part = table.slice(start, options.window_rows)
                name = f"window={w:05d}"
                (tmp / name).mkdir()
                pq.write_table(part, tmp / name / "ratings.parquet", row_group_size=_ROW_GROUP)
                (tmp / name / MARKER).touch()  # the window is complete (data.stream.marker)
                ts = part["timestamp"].to_numpy()
                windows.append({"name": name, "rows": part.num_rows, "first_position": start,
                                "first_timestamp": int(ts.min()), "last_timestamp": int(ts.max())})
            (tmp / "_STREAM.json").write_text(json.dumps(
                {"format": _FORMAT, "options": asdict(options), "rows": table.num_rows, "shift_row": shift_row,
                 "shifted_genres": genres, "windows": windows}, indent=1))
    meta = json.loads((root / "_STREAM.json").read_text())
    if meta.get("format") != _FORMAT or meta.get("options") != asdict(options):
        raise ValueError(f"{root}: holds a stream of other options ({meta.get('options')}); give another root")
    names = [w["name"] for w in meta["windows"]]
    return StreamFiles(root, names, [str(root / n / "ratings.parquet") for n in names], meta["rows"],
                       meta["shift_row"], list(meta["shifted_genres"]), options.window_rows)
