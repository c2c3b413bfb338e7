"""What the static and streaming datasets share: options, shards, state, prefetch, counters.

State
-----
`state_dict()` is JSON-serialisable:
``{"format": "recis.io/1", "kind": ..., "config": {...}, "num_shards": N, "shards": {"<shard>": cursor}}``
with one cursor per shard (shard = rank * num_workers + worker, see recis.io.sharding) that this
process has consumed from. It reflects the batches the consumer received (not those produced
ahead by prefetch). `load_state_dict(state)` makes the next iteration in this process resume
from it; a resumed run yields exactly the batches the uninterrupted run would have yielded.

- num_workers=0 (with or without prefetch): `dataset.state_dict()` is exact.
- DataLoader workers: each worker iterates its own copy of the dataset, so the main process's
  object does not see their progress. Pass `yield_state=True`: every item is then
  `(batch, state)` where state holds that worker's shard; keep the latest per worker and
  combine them with `merge_states`. Loading the merged state and iterating a DataLoader with the
  same world size and num_workers resumes every worker's sequence exactly; the interleaving of
  workers is DataLoader's round robin, which restarts at worker 0. The loaded state stays on the
  dataset object for later DataLoader iterators until `load_state_dict(None)`.
"""
import abc
import hashlib
import json
from dataclasses import dataclass, fields
from typing import ClassVar, Dict, Iterable, Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import torch

from recis.config_utils import bounded, check_types
from recis.io.errors import ON_ERROR, BadRowError, IOStats, RowError
from recis.io.pipeline import Cursor
from recis.io.prefetch import Prefetcher, resolve_pin_memory
from recis.io.sharding import resolve_shard

STATE_FORMAT = "recis.io/1"


@dataclass
class LoaderOptions:
    """How a dataset batches, shuffles, prefetches and reads its files (validated here; see
    ArrowDataset for their meaning). A job's `data` section embeds them (recis.run.config.DataConfig)."""

    batch_size: int = bounded(1024, ge=1)
    drop_last: bool = False
    shuffle_buffer: int = bounded(0, ge=0)
    seed: int = bounded(0, ge=0, lt=1 << 64)
    on_error: str = "raise"
    prefetch: int = bounded(0, ge=0)
    pin_memory: Union[str, bool] = "auto"
    read_batch_size: int = bounded(65536, ge=1)

    # How errors name the options: "" as the dataset's arguments, or a config section ("data").
    where: ClassVar[str] = ""

    def __post_init__(self):
        check_types(self, self.where)
        prefix = f"{self.where}." if self.where else ""
        if self.on_error not in ON_ERROR:
            raise ValueError(f"{prefix}on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        try:
            resolve_pin_memory(self.pin_memory)
        except ValueError as e:  # its message starts with the option's name
            raise ValueError(f"{prefix}{e}") from None

    def loader_options(self) -> Dict[str, object]:
        """These options as the datasets' keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(LoaderOptions)}


@dataclass
class LoaderConfig(LoaderOptions):
    """A dataset's options: the LoaderOptions, and whether each item comes with its state."""

    yield_state: bool = False


def merge_states(states: Iterable[dict]) -> dict:
    """One state from the states of several shards (e.g. the latest per DataLoader worker).

    >>> a = {"format": "recis.io/1", "kind": "static", "config": {}, "num_shards": 2, "shards": {"0": {}}}
    >>> sorted(merge_states([a, dict(a, shards={"1": {}})])["shards"])
    ['0', '1']
    """
    merged = None
    for s in states:
        if merged is None:
            merged = json.loads(json.dumps(s))
            continue
        for key in ("format", "kind", "config", "num_shards"):
            if s.get(key) != merged.get(key):
                raise ValueError(f"cannot merge states with different {key!r}: {merged.get(key)!r} vs {s.get(key)!r}")
        merged["shards"].update(json.loads(json.dumps(s["shards"])))
    if merged is None:
        raise ValueError("merge_states needs at least one state")
    return merged


def fingerprint(keys: Iterable[str]) -> str:
    """A short digest of a list of names (the files a state refers to)."""
    h = hashlib.sha1()
    for k in keys:
        h.update(k.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


class ArrowIterableBase(torch.utils.data.IterableDataset):
    """Shared machinery; subclasses provide `_shard_stream` and `_config_state`."""

    kind = "static"

    def __init__(self, config: LoaderConfig, transform=None, rank: Optional[int] = None,
                 world_size: Optional[int] = None):
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.config = config
        self.transform = transform
        self.rank, self.world_size = rank, world_size
        self.stats = IOStats()
        self._resume: Optional[dict] = None
        self._committed: Dict[str, Cursor] = {}
        self._num_shards: Optional[int] = None
        self._shard: Optional[int] = None

    # --- subclass hooks (IterableDataset's metaclass is ABCMeta, so these are enforced) ----
    @abc.abstractmethod
    def _shard_stream(self, shard: int, num_shards: int, cursor: Optional[Cursor]) -> Iterator[tuple]:
        """(record batch or None, rows, cursor after it, RowOrigin or None) for one shard from
        `cursor` on (recis.io.origin: where each row of the batch comes from)."""

    @abc.abstractmethod
    def _config_state(self) -> dict:
        """What a state must match to be loaded (options that change batches or positions)."""

    def _stopped(self) -> bool:
        return False

    def _adopt(self, state: Optional[dict]):
        """Adopts a state's top-level entries (None: a fresh start); on load and on iteration start."""

    def _extra_state(self) -> dict:
        """Top-level entries a subclass adds to its state."""
        return {}

    # --- iteration -----------------------------------------------------------------------
    def __iter__(self):
        if self.config.prefetch:
            return iter(Prefetcher(self, depth=self.config.prefetch, pin_memory=self.config.pin_memory))
        return self._consume(self._start_stateful())

    def _start_stateful(self) -> Iterator[tuple]:
        """Picks the shard and resume cursor now (in the consumer) and returns the producer."""
        shard, num_shards = resolve_shard(self.rank, self.world_size)
        state = self._resume
        cursor = self._take_resume(shard, num_shards)
        self._adopt(state)
        self._shard, self._num_shards = shard, num_shards
        self._committed = {str(shard): cursor} if cursor is not None else {}
        return self._produce(shard, num_shards, cursor)

    def _produce(self, shard, num_shards, cursor):
        transform = self.transform
        for batch, rows, after, origin in self._shard_stream(shard, num_shards, cursor):
            if transform is None or batch is None:
                yield batch, rows, after
                continue
            item, rows = self._transform(transform, batch, rows, origin)
            yield item, rows, after

    def _transform(self, transform, batch, rows: int, origin):
        """transform(batch) (with origin= when the transform takes one); a RowError's rows are
        named by file and row (on_error="raise") or dropped and counted, and the rest transformed
        again (on_error="skip"). Returns (item, rows delivered); (None, 0) when no row is left."""
        takes = getattr(transform, "takes_origin", False) and origin is not None
        while True:
            try:
                return (transform(batch, origin=origin) if takes else transform(batch)), rows
            except RowError as e:
                if origin is None or not e.rows or max(e.rows) >= batch.num_rows:
                    raise
                bad = [(path, row, reason) for (path, row), reason in zip(origin.where(e.rows), e.reasons)]
                if self.config.on_error == "raise":
                    path, row, reason = bad[0]
                    raise BadRowError(path, row, e.column, e.feature, reason, bad) from None
                self.stats.skip_rows(bad, e.column, e.feature)
                keep = np.setdiff1d(np.arange(batch.num_rows), np.asarray(e.rows, np.int64))
                if keep.size == 0:
                    return None, 0
                batch, origin, rows = batch.take(pa.array(keep)), origin.subset(keep), int(keep.size)

    def _consume(self, items: Iterator[tuple]):
        key = str(self._shard)
        stats = self.stats
        for item, rows, after in items:
            if self._stopped():
                return
            self._committed[key] = after
            if item is None:
                stats.rows_dropped += rows
                continue
            stats.rows += rows
            stats.batches += 1
            yield (item, self.state_dict()) if self.config.yield_state else item

    # --- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The JSON-serialisable position after the last batch received (see the module doc)."""
        return {"format": STATE_FORMAT, "kind": self.kind, "config": self._config_state(),
                "num_shards": self._num_shards, **self._extra_state(),
                "shards": {k: c.to_json() for k, c in sorted(self._committed.items())}}

    def load_state_dict(self, state: Optional[dict]):
        """Resume the next iteration from `state` (None: start from the beginning again)."""
        if state is None:
            self._resume, self._committed, self._num_shards = None, {}, None
            self._adopt(None)
            return
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a recis.io state (expected format {STATE_FORMAT!r}, got {found!r})")
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')} dataset, this one is {self.kind}")
        mine, theirs = self._config_state(), state.get("config", {})
        for k in sorted(set(mine) | set(theirs)):
            if mine.get(k) != theirs.get(k):
                raise ValueError(f"state was saved with {k}={theirs.get(k)!r}, this dataset has {k}={mine.get(k)!r}")
        shards = state.get("shards")
        if not isinstance(shards, dict):
            raise ValueError("state 'shards' must be a dict of shard -> cursor")
        cursors = {str(k): Cursor.from_json(v) for k, v in shards.items()}
        self._resume = json.loads(json.dumps(state))
        self._committed, self._num_shards = cursors, state.get("num_shards")
        self._adopt(self._resume)

    def _take_resume(self, shard: int, num_shards: int) -> Optional[Cursor]:
        state = self._resume
        if state is None:
            return None
        if state["shards"] and state.get("num_shards") != num_shards:
            raise ValueError(f"state was saved with {state.get('num_shards')} shards (world_size x DataLoader "
                             f"workers); this iteration has {num_shards}")
        if torch.utils.data.get_worker_info() is None:
            self._resume = None  # one-shot in the process that owns the object
        entry = state["shards"].get(str(shard))
        return Cursor.from_json(entry) if entry is not None else None
