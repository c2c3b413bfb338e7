"""Streams record batches into a directory of Parquet files with bounded memory."""
import os
from pathlib import Path
from typing import Iterable, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from recis.datasets._cache import PathLike

DEFAULT_ROW_GROUP_SIZE = 128 * 1024


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class _RollingWriter:
    """Writes `<prefix>-00000.parquet`, `-00001`, ... each of at most `rows_per_file` rows.

    A file is written under a hidden temporary name and renamed when complete, so readers that
    skip hidden files (pyarrow.dataset does) never see a partial file. Memory holds at most one
    row group of buffered rows."""

    def __init__(self, dst_dir: Path, schema: pa.Schema, rows_per_file: int, row_group_size: int,
                 prefix: str, compression: str):
        self.dst_dir, self.schema, self.prefix, self.compression = dst_dir, schema, prefix, compression
        self.rows_per_file, self.row_group_size = rows_per_file, row_group_size
        self.paths: List[Path] = []
        self._writer: Optional[pq.ParquetWriter] = None
        self._tmp: Optional[Path] = None
        self._rows_in_file = 0
        self._buffer: List[pa.RecordBatch] = []
        self._buffered = 0

    def _open(self) -> None:
        final = self.dst_dir / f"{self.prefix}-{len(self.paths):05d}.parquet"
        self._tmp = self.dst_dir / f".{final.name}.tmp"
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=self.compression)
        self.paths.append(final)
        self._rows_in_file = 0

    def _flush_group(self) -> None:
        if self._buffered:
            self._writer.write_table(pa.Table.from_batches(self._buffer, self.schema),
                                     row_group_size=self.row_group_size)
            self._buffer, self._buffered = [], 0

    def _close_file(self) -> None:
        self._flush_group()
        self._writer.close()
        os.replace(self._tmp, self.paths[-1])
        self._writer = self._tmp = None

    def write(self, batch: pa.RecordBatch) -> None:
        start = 0
        while start < batch.num_rows:
            if self._writer is None:
                self._open()
            take = min(batch.num_rows - start, self.rows_per_file - self._rows_in_file,
                       self.row_group_size - self._buffered)
            self._buffer.append(batch.slice(start, take))
            self._buffered += take
            self._rows_in_file += take
            start += take
            if self._buffered == self.row_group_size:
                self._flush_group()
            if self._rows_in_file == self.rows_per_file:
                self._close_file()

    def finish(self) -> List[Path]:
        if self._writer is None and not self.paths:
            self._open()  # no rows at all: one empty file still carries the schema
        if self._writer is not None:
            self._close_file()
        return self.paths

    def abort(self) -> None:
        """Removes everything this writer created (complete files included)."""
        if self._writer is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
        for path in self.paths:
            path.unlink(missing_ok=True)


def write_batches(batches: Iterable[pa.RecordBatch], dst_dir: PathLike, schema: pa.Schema, *,
                  rows_per_file: int, row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
                  prefix: str = "part", compression: str = "snappy") -> List[Path]:
    """Writes `batches` (all with `schema`) to numbered Parquet files in `dst_dir`.

    Returns the paths written, in row order. `dst_dir` is created if needed and must not already
    hold `<prefix>-*.parquet` files (old and new parts would mix). If writing fails part way,
    the files written by this call are removed again."""
    _check_positive("rows_per_file", rows_per_file)
    _check_positive("row_group_size", row_group_size)
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    existing = sorted(dst.glob(f"{prefix}-*.parquet"))
    if existing:
        raise FileExistsError(f"{dst} already holds {len(existing)} {prefix}-*.parquet file(s) "
                              f"(e.g. {existing[0].name}); write into an empty directory")
    writer = _RollingWriter(dst, schema, rows_per_file, row_group_size, prefix, compression)
    try:
        for batch in batches:
            if not batch.schema.equals(schema):
                raise TypeError(f"record batch schema does not match the output schema:\n"
                                f"expected {schema}\nfound {batch.schema}")
            writer.write(batch)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise
