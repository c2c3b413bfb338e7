"""Positioned record batches -> batches of exactly `batch_size` rows, each tagged with the cursor
that a resumed run starts from.

Without shuffling, the cursor is the position of the next row: (unit, row). With
`shuffle_buffer = B`, the shard's row stream is cut into consecutive windows of B rows; each
window is permuted by a generator seeded from (seed, epoch, shard, window index) and emitted in
that order. The cursor is then (window start unit and row, window index, window size, rows of
the window already delivered): a resumed run re-reads that window only (at most B rows),
permutes it the same way and skips what was delivered. Rows never mix across windows; the
order of units is shuffled per epoch by the dataset, so windows differ from epoch to epoch.

>>> import pyarrow as pa
>>> rows = [(pa.record_batch({"x": list(range(5))}), 0, 0, True), (pa.record_batch({"x": [5, 6]}), 1, 0, True)]
>>> [(b["x"].to_pylist(), c.unit, c.row) for b, n, c in make_batches(iter(rows), Cursor(), batch_size=3)]
[([0, 1, 2], 0, 3), ([3, 4, 5], 1, 1), ([6], 2, 0)]

With origins=True each item also carries a RowOrigin (recis.io.origin): the unit and row in the
unit of every batch row.

>>> [o.units_rows()[1].tolist() for b, n, c, o in make_batches(iter(rows), Cursor(), batch_size=3, origins=True)]
[[0, 1, 2], [3, 4, 0], [1]]
"""
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from recis.io.files import check_data_key
from recis.io.origin import RowOrigin

# (batch, unit index, index of its first row in the unit, whether it ends the unit)
Rows = Iterator[Tuple[pa.RecordBatch, int, int, bool]]

_CURSOR_FIELDS = ("epoch", "unit", "row", "window", "window_rows", "skip")


@dataclass
class Cursor:
    """Where a shard's stream resumes (see the module docstring). `files` (streaming only) is the
    shard's append-only log of files in reading order, of which the first `files_len` belong to
    this cursor."""

    epoch: int = 0
    unit: int = 0
    row: int = 0
    window: int = 0
    window_rows: int = 0
    skip: int = 0
    files: Optional[List[str]] = field(default=None, repr=False, compare=False)
    files_len: int = 0

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _CURSOR_FIELDS}
        if self.files is not None:
            out["files"] = self.files[: self.files_len]
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Cursor":
        if not isinstance(d, dict):
            raise ValueError(f"a shard state must be a dict, got {type(d).__name__}")
        values = {}
        for k in _CURSOR_FIELDS:
            v = d.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"shard state field {k!r} must be an int >= 0, got {v!r}")
            values[k] = v
        files = d.get("files")
        if files is not None:
            if not isinstance(files, list):
                raise ValueError("shard state field 'files' must be a list of file names")
            files = [check_data_key(f) for f in files]
        return cls(**values, files=files, files_len=len(files) if files is not None else 0)


class _Seq:
    """Rows in stream order: the cursor after k rows is the next row's position (the next unit's
    start after the last row of a unit, so a resumed run does not reopen a finished file)."""

    __slots__ = ("epoch", "unit", "row", "end", "files")

    def __init__(self, epoch, unit, row, end, files):
        self.epoch, self.unit, self.row, self.end, self.files = epoch, unit, row, end, files

    def locate(self, used: int, take: int):
        return np.full(take, self.unit, np.int64), self.row + used + np.arange(take, dtype=np.int64)

    def after(self, k: int) -> Cursor:
        unit, row = (self.unit + 1, 0) if self.end is not None and k == self.end else (self.unit, self.row + k)
        return Cursor(self.epoch, unit, row, files=self.files, files_len=_len(self.files))


class _Win:
    """Rows `skip`.. of a permuted window; after the window's last row, the next window starts."""

    __slots__ = ("epoch", "start", "window", "rows", "skip", "end", "files", "idx", "layout")

    def __init__(self, epoch, start, window, rows, skip, end, files, idx=None, layout=None):
        self.epoch, self.start, self.window, self.rows = epoch, start, window, rows
        self.skip, self.end, self.files = skip, end, files
        self.idx, self.layout = idx, layout  # window rows of this piece; the window's (starts, units, rows)

    def locate(self, used: int, take: int):
        starts, units, rows = self.layout
        w = self.idx[used:used + take]
        seg = np.searchsorted(starts, w, side="right") - 1
        return units[seg], rows[seg] + (w - starts[seg])

    def after(self, k: int) -> Cursor:
        n = _len(self.files)
        if self.skip + k == self.rows:
            return Cursor(self.epoch, self.end[0], self.end[1], self.window + 1, files=self.files, files_len=n)
        return Cursor(self.epoch, self.start[0], self.start[1], self.window, self.rows, self.skip + k,
                      files=self.files, files_len=n)


def _len(files):
    return 0 if files is None else len(files)


def make_batches(rows: Rows, start: Cursor, *, batch_size: int, drop_last: bool = False, shuffle_buffer: int = 0,
                 seed_key: Tuple[int, ...] = (0,), files: Optional[List[str]] = None, origins: bool = False):
    """Yields (batch, rows, cursor after it); at the end, if drop_last drops a remainder,
    (None, rows dropped, cursor after them). `rows` must start at the cursor's (unit, row).
    origins=True: (batch, rows, cursor, RowOrigin or None) instead."""
    if shuffle_buffer:
        chunks = _windows(rows, start, shuffle_buffer, batch_size, seed_key, files)
    else:
        chunks = ((b, _Seq(start.epoch, u, r, b.num_rows if last else None, files)) for b, u, r, last in rows)
    out = _rebatch(chunks, batch_size, drop_last)
    return out if origins else (item[:3] for item in out)


def _windows(rows: Rows, start: Cursor, size: int, piece: int, seed_key, files):
    window, skip, want = start.window, start.skip, start.window_rows or size
    carry = None
    while True:
        pieces, n, first, end, layout = [], 0, None, None, []
        while n < want:
            if carry is not None:
                item, carry = carry, None
            else:
                item = next(rows, None)
                if item is None:
                    break
            b, u, r, last = item
            take = min(b.num_rows, want - n)
            if take == 0:
                continue
            if first is None:
                first = (u, r)
            pieces.append(b if take == b.num_rows else b.slice(0, take))
            layout.append((n, u, r))
            if take < b.num_rows:
                carry = (b.slice(take), u, r + take, last)
            n += take
            end = (u + 1, 0) if last and take == b.num_rows else (u, r + take)
        if n == 0:
            return
        table = pieces[0] if len(pieces) == 1 else pa.concat_batches(pieces)
        perm = np.random.default_rng([*seed_key, window]).permutation(n)
        layout = tuple(np.array(col, np.int64) for col in zip(*layout))
        for i in range(skip, n, piece):
            idx = perm[i:i + piece]
            yield table.take(pa.array(idx)), _Win(start.epoch, first, window, n, i, end, files, idx, layout)
        window, skip, want = window + 1, 0, size


def _rebatch(chunks, batch_size: int, drop_last: bool):
    pending = deque()  # [batch, rows already used, position]
    buffered = 0
    last = None
    for batch, pos in chunks:
        if batch.num_rows == 0:
            continue
        pending.append([batch, 0, pos])
        buffered += batch.num_rows
        last = (pos, batch.num_rows)
        while buffered >= batch_size:
            yield _cut(pending, batch_size)
            buffered -= batch_size
    if buffered and not drop_last:
        yield _cut(pending, buffered)
    elif buffered:
        pos, n = last
        yield None, buffered, pos.after(n), None


def _cut(pending: deque, n: int):
    parts, need, where = [], n, []
    while need:
        entry = pending[0]
        batch, used, pos = entry
        take = min(need, batch.num_rows - used)
        parts.append(batch.slice(used, take) if (used or take < batch.num_rows) else batch)
        where.append((pos, used, take))
        need -= take
        entry[1] = used + take
        if entry[1] == batch.num_rows:
            pending.popleft()
    out = parts[0] if len(parts) == 1 else pa.concat_batches(parts)
    return out, n, pos.after(used + take), RowOrigin(pos.epoch, where)
