"""Where each row of a batch comes from: its file and its row in the file (provenance).

`make_batches(..., origins=True)` gives every batch a `RowOrigin`: lazy (nothing is computed
until asked) and cheap to keep. `units_rows()` maps batch rows to (unit index in the shard's
epoch order, row in the unit), for the sequential and the shuffle-window paths alike; a dataset
binds a resolver (unit index -> file path, file key, index of the unit's first row in its file)
and `locate()` / `where()` then give file keys and paths with rows in the file. A transform that
takes an origin (a FeatureEngine) seeds per-row augmentation from `epoch` and `locate()`; a row
error is mapped to files with `where()`.

>>> import numpy as np
>>> class Seq:  # a piece of unit 3 whose first row is row 10 of the unit
...     def locate(self, used, take):
...         return np.full(take, 3), 10 + used + np.arange(take)
>>> o = RowOrigin(0, [(Seq(), 2, 3)])
>>> [x.tolist() for x in o.units_rows()]
[[3, 3, 3], [12, 13, 14]]
>>> o = o.bind(lambda unit: ("/data/part-3.parquet", "part-3.parquet", 100))
>>> o.locate()[1].tolist(), o.where([1])
([112, 113, 114], [('/data/part-3.parquet', 113)])
>>> o.subset(np.array([0, 2])).locate()[1].tolist()
[112, 114]
"""
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["RowOrigin", "Resolver"]

#: unit index -> (file path, file key, index in the file of the unit's first row)
Resolver = Callable[[int], Tuple[str, str, int]]


class RowOrigin:
    """Provenance of one batch: `parts` are (position, rows used before, rows taken) in batch
    order, where position.locate(used, take) gives the parts' (units, rows in unit) arrays."""

    __slots__ = ("epoch", "_parts", "_units", "_rows", "_resolve")

    def __init__(self, epoch: int, parts: Sequence[tuple] = (), units: Optional[np.ndarray] = None,
                 rows: Optional[np.ndarray] = None, resolve: Optional[Resolver] = None):
        self.epoch = epoch
        self._parts = list(parts)
        self._units, self._rows = units, rows
        self._resolve = resolve

    def __len__(self) -> int:
        return len(self._units) if self._units is not None else sum(take for _, _, take in self._parts)

    def bind(self, resolve: Resolver) -> "RowOrigin":
        self._resolve = resolve
        return self

    def units_rows(self) -> Tuple[np.ndarray, np.ndarray]:
        """(unit index, row in the unit) of every batch row (int64 arrays)."""
        if self._units is None:
            found = [pos.locate(used, take) for pos, used, take in self._parts]
            empty = np.zeros(0, np.int64)
            self._units = np.concatenate([np.asarray(u, np.int64) for u, _ in found]) if found else empty
            self._rows = np.concatenate([np.asarray(r, np.int64) for _, r in found]) if found else empty
        return self._units, self._rows

    def _files(self, batch_rows=None) -> Tuple[List[str], List[str], np.ndarray]:
        if self._resolve is None:
            raise RuntimeError("this RowOrigin has no resolver (bind the dataset's unit -> file mapping first)")
        units, rows = self.units_rows()
        if batch_rows is not None:
            idx = np.asarray(batch_rows, np.int64)
            units, rows = units[idx], rows[idx]
        cache = {}
        paths, keys, offsets = [], [], np.empty(len(units), np.int64)
        for i, u in enumerate(units.tolist()):
            if u not in cache:
                cache[u] = self._resolve(u)
            path, key, offset = cache[u]
            paths.append(path)
            keys.append(key)
            offsets[i] = offset
        return paths, keys, rows + offsets

    def locate(self) -> Tuple[List[str], np.ndarray]:
        """Per batch row: the file key (stable across runs: the path relative to the dataset root)
        and the row's index in the file."""
        _, keys, rows = self._files()
        return keys, rows

    def where(self, batch_rows: Sequence[int]) -> List[Tuple[str, int]]:
        """(file path, row in the file) of the given batch rows."""
        paths, _, rows = self._files(batch_rows)
        return list(zip(paths, rows.tolist()))

    def subset(self, keep: np.ndarray) -> "RowOrigin":
        """The origin of batch.take(keep)."""
        units, rows = self.units_rows()
        keep = np.asarray(keep, np.int64)
        return RowOrigin(self.epoch, units=units[keep], rows=rows[keep], resolve=self._resolve)
