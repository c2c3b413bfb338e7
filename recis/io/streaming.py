"""StreamingArrowDataset: new files in a directory (or time windows) as they land.

Online learning reads this: files are read once each, in the order they become complete (see
recis.io.watch for "complete"; several at one poll go in order of window, then name). Each file
belongs to one shard, by a stable hash of its path relative to the root, so every rank and
worker agrees without coordination. The state records, per shard, the files started so far in
reading order and the position in them, so a resumed run continues mid-file exactly and never
re-reads a consumed file (the list grows by one name per file: about 50 bytes each).

Stopping: `stop_after_idle=s` ends the stream after s seconds without a new file, like the end
of a static dataset (rows buffered for a batch come out as a last shorter batch, or are dropped
and counted with drop_last). `until=W` (with windows) ends it once window W is read: at the
first poll that finds no new file and none still settling in the windows up to W, when W was
closed before that poll (a later window's directory exists, or W holds the marker; see
recis.io.watch). Files of later windows are never read. Between polls the stream waits
`poll_interval` seconds (an empty window costs one directory listing per window per poll, no
busy loop). `stop()` (or setting `stop_event`) ends the iteration at the next
batch: buffered and prefetched rows are not delivered, and the state resumes before them.
"""
import threading
import time
from typing import Optional, Sequence, Union

import pyarrow as pa

from recis.config_utils import Range, check_value
from recis.io.base import ArrowIterableBase, LoaderConfig
from recis.io.errors import DataFileError, UnknownFormatError
from recis.io.files import format_of, infer_format
from recis.io.pipeline import Cursor, make_batches
from recis.io.reader import FileReader, Unit, infer_schema
from recis.io.schema import format_name, make_format, project
from recis.io.watch import DirectoryWatcher


class StreamingArrowDataset(ArrowIterableBase):
    """Batches from the files that land under `root` (options as ArrowDataset, plus):

    windows: None (all of root, recursively), a list of subdirectory names read in that order
        (e.g. ["dt=2026112700", "dt=2026112701"]; they need not exist yet), or a glob pattern
        relative to root ("dt=*").
    poll_interval: seconds between directory listings. settle_s, marker: see recis.io.watch.
    stop_after_idle: end after this many seconds without a new file (None: run until stop()).
    until: the last window to read (a name in `windows`, or matching its pattern): the stream
        ends once that window is closed and read (see the module notes; None: no end).
    stop_event: an Event to stop on (e.g. a multiprocessing.Event shared with DataLoader workers);
        stop() sets it.

    Without schema=, the schema is the first file's; give schema= when early files may have
    all-null columns.
    """

    kind = "streaming"

    def __init__(self, root, *, windows: Union[None, str, Sequence[str]] = None, format=None,
                 columns: Optional[Sequence[str]] = None, schema: Optional[pa.Schema] = None,
                 batch_size: int = 1024, drop_last: bool = False, shuffle_buffer: int = 0, seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None, transform=None,
                 on_error: str = "raise", prefetch: int = 0, pin_memory="auto", read_batch_size: int = 65536,
                 yield_state: bool = False, poll_interval: float = 1.0, settle_s: float = 1.0,
                 marker: Optional[str] = None, stop_after_idle: Optional[float] = None, stop_event=None,
                 until: Optional[str] = None):
        config = LoaderConfig(batch_size, drop_last, shuffle_buffer, seed, on_error, prefetch, pin_memory,
                              read_batch_size, yield_state)
        super().__init__(config, transform, rank, world_size)
        check_value("poll_interval", poll_interval, float, Range(gt=0))
        check_value("stop_after_idle", stop_after_idle, Optional[float], Range(ge=0))
        if schema is not None and not isinstance(schema, pa.Schema):
            raise TypeError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}")
        self._format = make_format(format) if format is not None else None
        fmt_name = format_name(self._format) if self._format is not None else None
        self.watcher = DirectoryWatcher(root, windows, settle_s=settle_s, marker=marker, format_name=fmt_name,
                                        until=until)
        self.columns = list(columns) if columns is not None else None
        self._schema = schema
        self.poll_interval = poll_interval
        self.stop_after_idle = stop_after_idle
        self._stop_event = stop_event
        self._reader: Optional[FileReader] = None

    # --- stopping ------------------------------------------------------------------------
    @property
    def stop_event(self):
        if self._stop_event is None:
            self._stop_event = threading.Event()
        return self._stop_event

    def stop(self):
        """End the current iteration at the next batch (the state resumes after the last batch received)."""
        self.stop_event.set()

    def _stopped(self) -> bool:
        return self._stop_event is not None and self._stop_event.is_set()

    def __getstate__(self):
        d = dict(self.__dict__)
        if isinstance(d.get("_stop_event"), threading.Event):
            d["_stop_event"] = None  # a thread event does not cross processes; pass a multiprocessing one
        return d

    # --- state ---------------------------------------------------------------------------
    def _config_state(self) -> dict:
        c = self.config
        return {"batch_size": c.batch_size, "shuffle_buffer": c.shuffle_buffer, "seed": c.seed,
                "columns": self.columns}

    @property
    def schema(self) -> Optional[pa.Schema]:
        """The expected schema (projected to the columns); None until the first file when inferred."""
        return self._reader.schema if self._reader is not None else (
            project(self._schema, self.columns, "<schema>") if self._schema is not None else None)

    # --- stream --------------------------------------------------------------------------
    def _reader_for(self, key: str, path: str) -> Optional[FileReader]:
        """The reader (made from the first file when the schema is inferred); None when that
        file cannot give a schema and on_error="skip" (the file is counted as skipped)."""
        if self._format is None and format_of(key) is None:  # e.g. a README landing in the directory
            if self.config.on_error == "raise":
                raise UnknownFormatError(path)
            self.stats.skip(path, str(UnknownFormatError(path)))
            return None
        if self._reader is None:
            file_format = self._format or make_format(infer_format([key]))
            schema, inferred_from = self._schema, None
            try:
                if schema is None:
                    schema, inferred_from = infer_schema(file_format, [path], promote_nulls=False)
                read_schema = project(schema, self.columns, inferred_from or "<schema>")
            except DataFileError as e:
                if self.config.on_error == "raise":
                    raise
                self.stats.skip(path, str(e))
                return None
            self._reader = FileReader(file_format, read_schema, read_batch_size=self.config.read_batch_size,
                                      on_error=self.config.on_error, stats=self.stats, inferred_from=inferred_from)
        return self._reader

    def _start_stateful(self):
        if isinstance(self._stop_event, threading.Event):
            self._stop_event.clear()  # a new iteration after stop(); a caller's own event is theirs to clear
        return super()._start_stateful()

    def _shard_stream(self, shard: int, num_shards: int, cursor: Optional[Cursor]):
        c = self.config
        start = cursor if cursor is not None else Cursor(files=[])
        log = list(start.files or [])
        rows = self._rows(log, start.unit, start.row, shard, num_shards)

        def resolve(i: int):  # unit index -> (path, key, first row): a unit is a whole file
            return self.watcher.path(log[i]), log[i], 0

        for batch, n, after, origin in make_batches(rows, start, batch_size=c.batch_size, drop_last=c.drop_last,
                                                    shuffle_buffer=c.shuffle_buffer, seed_key=(c.seed, 1, 0, shard),
                                                    files=log, origins=True):
            yield batch, n, after, origin.bind(resolve) if origin is not None else None

    def _rows(self, log, start_unit: int, start_row: int, shard: int, num_shards: int):
        consumed = set(log)
        i, last_new = start_unit, time.monotonic()
        while not self._stopped():
            while i < len(log):
                key = log[i]
                path = self.watcher.path(key)
                reader = self._reader_for(key, path)
                rows = reader.read(Unit(path, key), start_row if i == start_unit else 0) if reader else ()
                for batch, row, last in rows:
                    yield batch, i, row, last
                    if self._stopped():
                        return
                i += 1
                last_new = time.monotonic()
            closed = self.watcher.closed()  # before the listing: files written before the window closed are in it
            new = self.watcher.poll(consumed, shard, num_shards)
            self.stats.files_waiting = self.watcher.waiting
            if new:
                log.extend(new)
                consumed.update(new)
                continue
            if closed and not self.watcher.waiting:
                return
            if self.stop_after_idle is not None and time.monotonic() - last_new >= self.stop_after_idle:
                return
            self.stop_event.wait(self.poll_interval)
