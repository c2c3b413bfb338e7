"""ArrowDataset: Parquet, ORC and CSV files as a sharded, shuffled, resumable stream of batches.

Shard units: each file, or each Parquet row group when the dataset has fewer files than shards
(world_size x DataLoader workers); ORC and CSV files are never split, so with fewer such files
than shards some shards are empty. Units go to shards round robin (unit i to shard
i % num_shards) in source order (the given sources in turn, a directory's files sorted by path),
or, when shuffling, in an order permuted per epoch from (seed, epoch); every row is in exactly
one shard.
"""
import os
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from recis.config_utils import Range, check_value
from recis.io.base import ArrowIterableBase, LoaderConfig, fingerprint
from recis.io.errors import DataFileError, IOStats, UnknownFormatError
from recis.io.files import format_of, infer_format, list_data_files
from recis.io.pipeline import Cursor, make_batches
from recis.io.reader import FileReader, Unit, infer_schema
from recis.io.schema import format_name, make_format, project
from recis.io.sharding import assign_round_robin


class ArrowDataset(ArrowIterableBase):
    """Record batches of exactly `batch_size` rows (the last of each epoch shorter unless
    `drop_last`), or `transform(record_batch)` for each when a transform is given.

    source: a file, a directory (searched recursively; hidden, `_`-prefixed and temporary names
        are not data, see recis.io.files), a list of those, or a pyarrow FileSystemDataset or
        UnionDataset of them (their formats, schema, file systems and partitioning are used).
    format: 'parquet' | 'orc' | 'csv' or a pyarrow.dataset.FileFormat (e.g. a CsvFileFormat with a
        tab delimiter); inferred from the file extensions when omitted.
    columns: the columns to read (default: all of the schema), in that order.
    schema: the expected schema; default the dataset's, else the first file's (null-typed columns
        take the type of the first later file that has one). Files must match it up to lossless
        widening (recis.io.schema), or a SchemaMismatchError names the file, column and types.
    shuffle_buffer: rows per shuffle window (0: no shuffling; >0 also shuffles the unit order per
        epoch); reproducible from `seed`. epochs: passes over the data (None: forever); batches
        do not span epochs. `set_epoch(e)` makes the next iteration start at epoch e.
    prefetch: > 0 reads that many batches ahead on a background thread (recis.io.Prefetcher),
        pinning tensors in the transform's output when CUDA is available (`pin_memory`).
    on_error: 'raise' or 'skip' (a bad file is given up and counted in `stats`; so are the rows
        the transform cannot use, e.g. images that do not decode: see docs/io.md, "Bad rows").
    yield_state: yield `(item, state_dict())` pairs, for resuming with DataLoader workers.

    >>> import os, tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> root = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"id": list(range(10))}), os.path.join(root, "part-0.parquet"))
    >>> [b.num_rows for b in ArrowDataset(root, batch_size=4)]
    [4, 4, 2]
    """

    kind = "static"

    def __init__(self, source, *, format=None, columns: Optional[Sequence[str]] = None,
                 schema: Optional[pa.Schema] = None, batch_size: int = 1024, drop_last: bool = False,
                 shuffle_buffer: int = 0, seed: int = 0, epochs: Optional[int] = 1, rank: Optional[int] = None,
                 world_size: Optional[int] = None, transform=None, on_error: str = "raise", prefetch: int = 0,
                 pin_memory="auto", read_batch_size: int = 65536, yield_state: bool = False):
        config = LoaderConfig(batch_size, drop_last, shuffle_buffer, seed, on_error, prefetch, pin_memory,
                              read_batch_size, yield_state)
        super().__init__(config, transform, rank, world_size)
        check_value("epochs", epochs, Optional[int], Range(ge=1))  # None: forever
        if schema is not None and not isinstance(schema, pa.Schema):
            raise TypeError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}")
        self.epochs = epochs
        self.start_epoch = self._run_start = 0
        files, sources, source_of, partitions, dataset_schema = _resolve_source(source, format, on_error, self.stats)
        self.files: List[str] = files
        self._partitions = partitions
        self._source_of = source_of
        file_format, filesystem = sources[0]
        root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]) if files else ""
        self._keys = {f: os.path.relpath(os.path.abspath(f), root).replace(os.sep, "/") for f in files}
        inferred_from = None
        if schema is None:
            schema = dataset_schema
        if schema is None:
            if not files:
                raise ValueError(f"no data files in {source!r} to infer a schema from; pass schema=")
            schema, inferred_from = infer_schema(file_format, files, filesystem=filesystem, on_error=on_error)
            if schema is None:
                raise ValueError(f"no readable file in {source!r} to infer a schema from; pass schema=")
        read_schema = project(schema, columns, inferred_from or "<the dataset schema>")
        partition_fields = sorted({k for e in partitions.values() for k in ds.get_partition_keys(e)})
        self.schema = read_schema
        self._reader = FileReader(file_format, read_schema, filesystem=filesystem,
                                  partition_fields=partition_fields, read_batch_size=read_batch_size,
                                  on_error=on_error, stats=self.stats, inferred_from=inferred_from)
        for other_format, other_fs in sources[1:]:
            self._reader.add_source(other_format, other_fs)
        self._units_cache = {}
        self._offsets = {}  # unit key -> its first row's index in its file

    def set_epoch(self, epoch: int):
        """The next iteration starts at the beginning of this epoch, like
        DistributedSampler.set_epoch: with epochs=1, call it before each pass to reshuffle. The
        position of an earlier pass (reached, or loaded and not yet used) is dropped, so
        `state_dict()` from now on says "epoch `epoch`, nothing consumed" (a checkpoint taken
        between passes resumes with the next pass, not with the finished one)."""
        check_value("epoch", epoch, int, Range(ge=0))
        self.start_epoch = epoch
        self.load_state_dict(None)

    def _config_state(self) -> dict:
        c = self.config
        return {"batch_size": c.batch_size, "shuffle_buffer": c.shuffle_buffer, "seed": c.seed,
                "columns": self.schema.names, "files": fingerprint(self._keys[f] for f in self.files)}

    # --- units ---------------------------------------------------------------------------
    def units(self, num_shards: int) -> List[Unit]:
        """All shard units for `num_shards` shards, in source order (see the module docstring)."""
        if num_shards not in self._units_cache:
            split = len(self.files) < num_shards
            units = []
            for f in self.files:
                unit = Unit(f, self._keys[f], None, self._partitions.get(f), self._source_of.get(f, 0))
                groups = self._row_groups(unit) if split else None
                if groups is None:
                    units.append(unit)
                else:
                    units.extend(Unit(f, f"{unit.key}#{g}", g, unit.partition, unit.source) for g in range(groups))
            self._units_cache[num_shards] = units
        return self._units_cache[num_shards]

    def _row_groups(self, unit: Unit) -> Optional[int]:
        """Row groups of a Parquet unit; None for other formats and unreadable footers (the whole
        file is then one unit, whose read reports the error)."""
        if self._reader.format_name(unit.source) != "parquet":
            return None
        try:
            return self._reader.row_groups(unit)
        except DataFileError:
            return None

    def epoch_units(self, epoch: int, shard: int, num_shards: int) -> List[Unit]:
        units = self.units(num_shards)
        if self.config.shuffle_buffer:
            order = np.random.default_rng([self.config.seed, 0, epoch]).permutation(len(units))
            units = [units[i] for i in order]
        return assign_round_robin(units, shard, num_shards)

    # --- stream --------------------------------------------------------------------------
    def _adopt(self, state: Optional[dict]):
        self._run_start = state.get("start_epoch", 0) if state is not None else self.start_epoch

    def _extra_state(self) -> dict:
        return {"start_epoch": self._run_start}

    def _shard_stream(self, shard: int, num_shards: int, cursor: Optional[Cursor]):
        c = self.config
        epoch = cursor.epoch if cursor is not None else self._run_start
        end = None if self.epochs is None else self._run_start + self.epochs
        while end is None or epoch < end:
            units = self.epoch_units(epoch, shard, num_shards)
            resumed = cursor is not None and cursor.epoch == epoch
            start = cursor if resumed else Cursor(epoch=epoch)
            produced = 0
            resolve = self._resolver(units)
            for batch, n, after, origin in make_batches(self._rows(units, start.unit, start.row), start,
                                                        batch_size=c.batch_size, drop_last=c.drop_last,
                                                        shuffle_buffer=c.shuffle_buffer,
                                                        seed_key=(c.seed, 1, epoch, shard), origins=True):
                produced += n
                yield batch, n, after, origin.bind(resolve) if origin is not None else None
            epoch += 1
            yield None, 0, Cursor(epoch=epoch), None
            if self.epochs is None and produced == 0 and not resumed:
                return  # an empty shard repeated forever would never yield
            cursor = None

    def _resolver(self, units: List[Unit]):
        """unit index in `units` -> (file path, file key, index in the file of the unit's first row)."""
        def resolve(i: int):
            unit = units[i]
            return unit.path, self._keys[unit.path], self._row_offset(unit)
        return resolve

    def _row_offset(self, unit: Unit) -> int:
        """Rows of the file before a unit (its row groups before `part`; 0 for a whole file)."""
        if not unit.part:
            return 0
        if unit.key not in self._offsets:
            frag = self._reader.fragment(Unit(unit.path, unit.key, None, unit.partition, unit.source))
            frag.ensure_complete_metadata()
            self._offsets[unit.key] = sum(rg.num_rows for rg in frag.row_groups[:unit.part])
        return self._offsets[unit.key]

    def _rows(self, units: List[Unit], start_unit: int, start_row: int):
        for i in range(start_unit, len(units)):
            for batch, row, last in self._reader.read(units[i], start_row if i == start_unit else 0):
                yield batch, i, row, last


def _resolve_source(source, format, on_error: str = "raise", stats: Optional[IOStats] = None):
    """(files, [(FileFormat, filesystem)], {file: source index}, {file: partition}, schema or None).
    Without a format, a file whose name says none is an UnknownFormatError, or with
    on_error="skip" left out and counted in `stats`."""
    if isinstance(source, ds.Dataset):
        children = _file_datasets(source)
        files, sources, source_of, partitions = [], [], {}, {}
        for child in children:
            file_format = make_format(format) if format is not None else child.format
            format_name(file_format)
            sources.append((file_format, child.filesystem))
            for frag in sorted(child.get_fragments(), key=lambda f: f.path):
                files.append(frag.path)
                source_of[frag.path] = len(sources) - 1
                if ds.get_partition_keys(frag.partition_expression):
                    partitions[frag.path] = frag.partition_expression
        if not sources:  # an empty in-memory dataset: no files, its schema
            sources.append((make_format(format or "parquet"), None))
        return files, sources, source_of, partitions, source.schema
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise ValueError("source is an empty list")
    files = []
    for s in sources:
        if not isinstance(s, (str, os.PathLike)):
            raise TypeError(f"source must be a path, a list of paths or a pyarrow dataset, got {type(s).__name__}")
        files.extend(list_data_files(os.fspath(s)))
    if format is None:
        if not files:
            raise ValueError(f"no data files in {source!r}")
        if on_error == "skip":
            for f in files:
                if format_of(f) is None:
                    stats.skip(f, str(UnknownFormatError(f)))
            files = [f for f in files if format_of(f) is not None]
            if not files:
                raise ValueError(f"no file in {source!r} has a name that says its format (.parquet, .orc, .csv); "
                                 f"pass format=")
        format = infer_format(files)
    file_format = make_format(format)
    format_name(file_format)
    return files, [(file_format, pa.fs.LocalFileSystem())], {}, {}, None


def _file_datasets(source: ds.Dataset) -> List[ds.FileSystemDataset]:
    """The file datasets under a pyarrow dataset (a UnionDataset's children, in order)."""
    if isinstance(source, ds.FileSystemDataset):
        return [source]
    if isinstance(source, ds.UnionDataset):
        return [d for child in source.children for d in _file_datasets(child)]
    if isinstance(source, ds.InMemoryDataset) and source.count_rows() == 0:
        return []
    raise TypeError(f"a pyarrow dataset source must be made of files (FileSystemDataset or UnionDataset of "
                    f"them), got {type(source).__name__} with rows; write it to Parquet first")
