"""Reading one unit (a file, or one row group of a Parquet file) as record batches.

Each file is checked against the expected schema before its first batch (missing column, type
mismatch), its batches are cast to the expected schema, and any failure becomes a
DataFileError naming the file: raised with on_error="raise", or counted in IOStats and the
file given up with on_error="skip" (rows it delivered before a mid-file error stay delivered).
Batches stream from the file (never a whole table), so memory is bounded by the read batch size.
"""
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.dataset as ds

from recis.io.errors import CorruptFileError, DataFileError, IOStats, SchemaMismatchError
from recis.io.schema import check_file_schema, csv_conversion_error, format_name, with_csv_types


@dataclass(eq=False)
class Unit:
    """What a shard reads: `path` whole, or only its Parquet row group `part`. `key` names it in
    states (the path relative to the dataset root, plus '#<row group>'); `source` is the index of
    its (format, file system) in the reader (several for a pyarrow UnionDataset)."""

    path: str
    key: str
    part: Optional[int] = None
    partition: Optional[ds.Expression] = None
    source: int = 0


class _Source:
    """A file format (as given, and with CSV column types forced) and its file system."""

    def __init__(self, file_format: ds.FileFormat, filesystem, schema: pa.Schema):
        self.name = format_name(file_format)
        self.base_format = file_format
        self.file_format = with_csv_types(file_format, schema)
        self.filesystem = filesystem if filesystem is not None else pa.fs.LocalFileSystem()


class FileReader:
    """Reads units of one dataset with the expected `schema` (already projected to the columns).

    >>> import os, tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> path = os.path.join(tempfile.mkdtemp(), "x.parquet")
    >>> pq.write_table(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}), path, row_group_size=2)
    >>> reader = FileReader(ds.ParquetFileFormat(), pa.schema([("a", pa.int64())]))
    >>> [(b.num_rows, row, last) for b, row, last in reader.read(Unit(path, "x.parquet"), start_row=1)]
    [(1, 1, False), (1, 2, True)]
    """

    def __init__(self, file_format: ds.FileFormat, schema: pa.Schema, *, filesystem=None,
                 partition_fields: Sequence[str] = (), read_batch_size: int = 65536,
                 on_error: str = "raise", stats: Optional[IOStats] = None, inferred_from: Optional[str] = None):
        self.schema = schema.remove_metadata()
        self.sources: List[_Source] = []
        self.add_source(file_format, filesystem)
        self.partition_fields = tuple(partition_fields)
        self.read_batch_size = read_batch_size
        self.on_error = on_error
        self.stats = stats if stats is not None else IOStats()
        self.inferred_from = inferred_from

    def add_source(self, file_format: ds.FileFormat, filesystem=None) -> int:
        """Registers another (format, file system) for units; returns its index."""
        self.sources.append(_Source(file_format, filesystem, self.schema))
        return len(self.sources) - 1

    def format_name(self, source: int = 0) -> str:
        return self.sources[source].name

    def fragment(self, unit: Unit) -> ds.Fragment:
        src = self.sources[unit.source]
        frag = src.file_format.make_fragment(unit.path, src.filesystem, unit.partition)
        if unit.part is not None:
            frag.ensure_complete_metadata()
            frag = frag.subset(row_group_ids=[unit.part])
        return frag

    def row_groups(self, unit: Unit) -> int:
        """Number of row groups of a unit's Parquet file (a DataFileError if its footer is unreadable)."""
        frag = self.fragment(Unit(unit.path, unit.key, None, unit.partition, unit.source))
        try:
            frag.ensure_complete_metadata()
        except (pa.ArrowException, OSError) as e:
            raise CorruptFileError(path, str(e)) from None
        return frag.num_row_groups

    def read(self, unit: Unit, start_row: int = 0) -> Iterator[Tuple[pa.RecordBatch, int, bool]]:
        """(batch, index of its first row in the unit, whether it is the unit's last batch) from
        row `start_row` on. Reads one batch ahead to know which is last."""
        prev, err = None, None
        try:
            for item in self._read(unit, start_row):
                if prev is not None:
                    yield prev[0], prev[1], False
                prev = item
        except DataFileError as e:
            err = e
        except (pa.ArrowException, OSError) as e:
            err = self._wrap(unit, e)
        if err is None:
            self.stats.files_read += 1
            if prev is not None:
                yield prev[0], prev[1], True
            return
        if prev is not None:
            yield prev[0], prev[1], False
        self._fail(err)

    def _fail(self, err: DataFileError):
        if self.on_error == "raise":
            raise err
        self.stats.skip(err.path, str(err))

    def _wrap(self, unit: Unit, e: Exception) -> DataFileError:
        msg, src = str(e), self.sources[unit.source]
        if src.name == "csv":
            try:  # the file's columns as inferred without the expected types
                found = src.base_format.make_fragment(unit.path, src.filesystem).physical_schema
            except (pa.ArrowException, OSError):
                found = pa.schema([])
            err = csv_conversion_error(unit.path, msg, found, self.schema)
            if err is not None:
                return err
        return CorruptFileError(unit.path, msg)

    def _read(self, unit: Unit, start_row: int):
        src = self.sources[unit.source]
        if src.name == "csv" and src.filesystem.get_file_info(unit.path).size == 0:
            return  # an empty CSV file has no header and no rows
        frag = self.fragment(unit)
        self.check(unit.path, frag)
        base = 0
        if start_row and src.name == "parquet" and unit.part is None:
            frag, base = _skip_row_groups(frag, start_row)
        batches = frag.to_batches(schema=self.schema, columns=self.schema.names,
                                  batch_size=self.read_batch_size, batch_readahead=2, fragment_readahead=1)
        for batch in batches:
            n = batch.num_rows
            if base + n <= start_row or n == 0:
                base += n
                continue
            if base < start_row:
                batch, base = batch.slice(start_row - base), start_row
            yield self.conform(unit.path, batch), base
            base += batch.num_rows

    def check(self, path: str, frag: ds.Fragment):
        physical = frag.physical_schema
        keys = ds.get_partition_keys(frag.partition_expression) if self.partition_fields else {}
        try:
            check_file_schema(path, physical, self.schema, keys)
        except SchemaMismatchError as e:
            if self.inferred_from and pa.types.is_null(e.expected):
                e.message += (f" (the column's type was inferred as null from {self.inferred_from!r}, "
                              f"which has no values in it; pass schema= to give it a type)")
            raise

    def conform(self, path: str, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.schema.equals(self.schema, check_metadata=True):
            return batch
        if batch.schema.equals(self.schema):
            return batch.replace_schema_metadata(None)
        try:
            return batch.cast(self.schema)
        except (pa.ArrowException, ValueError) as e:
            raise SchemaMismatchError(path, None, self.schema, batch.schema, str(e)) from None


def _skip_row_groups(frag, start_row: int):
    """The fragment reduced to the row groups that hold row `start_row` and later, and the index
    of its first row in the file."""
    frag.ensure_complete_metadata()
    groups = frag.row_groups
    base = 0
    for i, rg in enumerate(groups):
        if base + rg.num_rows > start_row:
            return frag.subset(row_group_ids=[g.id for g in groups[i:]]), base
        base += rg.num_rows
    return frag.subset(row_group_ids=[]), base


def infer_schema(file_format: ds.FileFormat, paths: List[str], *, filesystem=None, on_error: str = "raise",
                 promote_nulls: bool = True) -> Tuple[pa.Schema, Optional[str]]:
    """The schema of the first readable file (and that file); with promote_nulls, columns of
    type null there take their type from the first later file that has one."""
    filesystem = filesystem if filesystem is not None else pa.fs.LocalFileSystem()
    schema, source = None, None
    for path in paths:
        if format_name(file_format) == "csv" and filesystem.get_file_info(path).size == 0:
            continue
        try:
            physical = file_format.make_fragment(path, filesystem).physical_schema
        except (pa.ArrowException, OSError) as e:
            if on_error == "raise":
                raise CorruptFileError(path, str(e)) from None
            continue  # counted when the dataset reaches the file
        if schema is None:
            schema, source = physical.remove_metadata(), path
        else:
            schema = _promote_nulls(schema, physical)
        if not promote_nulls or not any(pa.types.is_null(f.type) for f in schema):
            break
    return schema, source


def _promote_nulls(schema: pa.Schema, other: pa.Schema) -> pa.Schema:
    fields = []
    for f in schema:
        idx = other.get_all_field_indices(f.name)
        if pa.types.is_null(f.type) and idx and not pa.types.is_null(other.field(idx[0]).type):
            f = f.with_type(other.field(idx[0]).type)
        fields.append(f)
    return pa.schema(fields)

