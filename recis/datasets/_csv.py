"""Shared machinery of the Criteo and Avazu readers: delimited text files -> pyarrow datasets.

Each file's first line is sniffed (decompressing `.gz`, `.bz2`, ... as needed) to find its
delimiter and whether it has a header; consecutive files of the same variant become one
`pyarrow.dataset` over the CSV format, and the variants are joined into one dataset with a single
explicit schema. Nothing is loaded whole: pyarrow parses block by block while it is scanned.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from recis.datasets._cache import PathLike
from recis.datasets._parquet import DEFAULT_ROW_GROUP_SIZE, write_batches
from recis.io.errors import ON_ERROR, IOStats

Sources = Union[PathLike, Sequence[PathLike]]
DEFAULT_BLOCK_SIZE = 1 << 20
_SNIFF_BYTES = 1 << 20


@dataclass(frozen=True)
class TextLayout:
    """The columns of one dataset's text format.

    `optional` columns may be absent from a file (the label of a test split); they are null there.
    A file without a header must hold either all columns or all but the optional ones, in schema
    order."""
    name: str
    schema: pa.Schema
    optional: Tuple[str, ...] = ()
    header_required: bool = False
    default_delimiter: str = ","

    def __post_init__(self):
        missing = [c for c in self.optional if c not in self.schema.names]
        if missing:
            raise ValueError(f"{self.name}: optional columns {missing} are not in the schema")


@dataclass(frozen=True)
class _Variant:
    delimiter: str
    column_names: Tuple[str, ...]
    header: bool


def list_files(src: Sources) -> List[Path]:
    """The files named by `src`: a file, a directory (all files below it, sorted, skipping names
    that start with '.' or '_'), or a sequence of those, in the given order."""
    items = [src] if isinstance(src, (str, Path)) or not isinstance(src, Sequence) else list(src)
    files: List[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not any(
                part.startswith((".", "_")) for part in p.relative_to(path).parts))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    if not files:
        raise FileNotFoundError(f"no data files found in {src!r}")
    return files


def first_line(path: Path) -> Optional[str]:
    """The first line of a (possibly compressed) text file without its line ending, or None if
    the file is empty."""
    head = b""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            while len(head) < _SNIFF_BYTES:
                chunk = stream.read(64 * 1024)
                if not chunk:
                    break
                head += chunk
                if b"\n" in chunk:
                    break
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot read the file: {e}") from e
    if not head:
        return None
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the first line is not UTF-8 text ({e})") from None


def _variant(path: Path, line: str, layout: TextLayout) -> _Variant:
    delimiter = "\t" if "\t" in line else ("," if "," in line else layout.default_delimiter)
    fields = line.split(delimiter)
    names = layout.schema.names
    required = [n for n in names if n not in layout.optional]
    if any(f.strip() in names for f in fields):  # a header line
        fields = [f.strip() for f in fields]
        unknown = [f for f in fields if f not in names]
        missing = [n for n in required if n not in fields]
        dup = sorted({f for f in fields if fields.count(f) > 1})
        if unknown or missing or dup:
            raise ValueError(f"{path}: header does not match the {layout.name} format: "
                             f"missing columns {missing}, unknown columns {unknown}, "
                             f"duplicated columns {dup}; expected {names}")
        return _Variant(delimiter, tuple(fields), True)
    if layout.header_required:
        raise ValueError(f"{path}: expected a header line naming the {layout.name} columns "
                         f"{names}, found {line[:200]!r}")
    if len(fields) == len(names):
        return _Variant(delimiter, tuple(names), False)
    if layout.optional and len(fields) == len(required):
        return _Variant(delimiter, tuple(required), False)
    counts = sorted({len(names), len(required)})
    raise ValueError(f"{path}: expected {' or '.join(map(str, counts))} {delimiter!r}-separated "
                     f"{layout.name} fields, found {len(fields)} in the first line")


def _options(variant: _Variant, layout: TextLayout, block_size: int):
    types = {n: layout.schema.field(n).type for n in variant.column_names}
    return dict(
        read_options=pacsv.ReadOptions(column_names=list(variant.column_names),
                                       skip_rows=1 if variant.header else 0, block_size=block_size),
        parse_options=pacsv.ParseOptions(delimiter=variant.delimiter),
        convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""],
                                             strings_can_be_null=True,
                                             quoted_strings_can_be_null=True))


def _format(variant: _Variant, layout: TextLayout, block_size: int) -> ds.CsvFileFormat:
    return ds.CsvFileFormat(**_options(variant, layout, block_size))


def _sniffed(src: Sources, layout: TextLayout, on_error: str = "raise",
             stats: Optional[IOStats] = None) -> Iterator[Tuple[Path, _Variant]]:
    """(path, variant) of each non-empty file of `src`, in order (empty files hold no rows). A
    file whose first line is not the layout's (a README) raises, or with on_error="skip" is
    left out and counted in `stats`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    stats = stats if stats is not None else IOStats()
    for path in list_files(src):
        try:
            line = first_line(path)
            variant = _variant(path, line, layout) if line is not None else None
        except ValueError as e:
            if on_error == "raise":
                raise
            stats.skip(str(path), str(e))
            continue
        if variant is not None:
            yield path, variant


def text_dataset(src: Sources, layout: TextLayout, block_size: int = DEFAULT_BLOCK_SIZE, on_error: str = "raise",
                 stats: Optional[IOStats] = None) -> ds.Dataset:
    """One dataset over all files of `src`, scanned in file order, with `layout.schema`
    (on_error / stats: see _sniffed)."""
    groups: List[Tuple[_Variant, List[str]]] = []
    for path, variant in _sniffed(src, layout, on_error, stats):
        if not groups or groups[-1][0] != variant:
            groups.append((variant, []))
        groups[-1][1].append(str(path))
    if not groups:
        return ds.dataset(layout.schema.empty_table())
    children = [ds.dataset(paths, format=_format(variant, layout, block_size), schema=layout.schema)
                for variant, paths in groups]
    return children[0] if len(children) == 1 else ds.dataset(children)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with the columns of `schema` in its order; absent (optional) columns are null."""
    names = batch.schema.names
    columns = [batch.column(names.index(f.name)) if f.name in names else pa.nulls(batch.num_rows, f.type)
               for f in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def scan_batches(src: Sources, layout: TextLayout,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[pa.RecordBatch]:
    """Record batches (one per parse block) of every file of `src` in order, with
    `layout.schema`. A parse or conversion error names its file.

    Memory stays bounded by a few dozen `block_size`s whatever the file size (pyarrow's
    streaming CSV reader; `pyarrow.dataset` scans may read further ahead)."""
    for path, variant in _sniffed(src, layout):
        try:
            with pa.input_stream(str(path), compression="detect") as stream:
                for batch in pacsv.open_csv(stream, **_options(variant, layout, block_size)):
                    yield _conform(batch, layout.schema)
        except (pa.ArrowException, OSError) as e:  # parse, conversion, decompression errors
            raise ValueError(f"{path}: cannot read it as {layout.name} data: {e}") from e


def text_to_parquet(src: Sources, dst_dir: PathLike, layout: TextLayout, *, rows_per_file: int,
                    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
                    block_size: int = DEFAULT_BLOCK_SIZE, compression: str = "snappy") -> List[Path]:
    """Converts the text files of `src` to Parquet files of at most `rows_per_file` rows each.

    Streams: memory holds a few dozen parse blocks and one row group, whatever the input size."""
    return write_batches(scan_batches(src, layout, block_size), dst_dir, layout.schema,
                         rows_per_file=rows_per_file, row_group_size=row_group_size,
                         compression=compression)
