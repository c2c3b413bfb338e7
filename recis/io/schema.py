"""The expected schema of a dataset and the check of each file against it.

A file's column may differ from the expected type only by a lossless widening: a wider integer,
a wider float, an integer into a float that holds it exactly, string <-> large_string,
binary <-> large_binary, dictionary<T> -> T, list<T> <-> large_list<T> with a compatible T, or
the null type (an all-null column written without a type) into anything.

>>> import pyarrow as pa
>>> compatible(pa.int32(), pa.int64()), compatible(pa.int64(), pa.int32()), compatible(pa.null(), pa.string())
(True, False, True)
>>> compatible(pa.list_(pa.int32()), pa.large_list(pa.int64())), compatible(pa.string(), pa.int64())
(True, False)
"""
import copy
import re
from typing import Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from recis.io.errors import MissingColumnError, SchemaMismatchError
from recis.io.files import FORMATS

_INT_BITS = {pa.int8(): 8, pa.int16(): 16, pa.int32(): 32, pa.int64(): 64}
_UINT_BITS = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32, pa.uint64(): 64}
_FLOAT_MANTISSA = {pa.float16(): 11, pa.float32(): 24, pa.float64(): 53}


def type_family(t: pa.DataType) -> Optional[str]:
    """'string', 'binary' or 'list' for the variants of those types that hold the same values."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list"
    return None


def compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column of type `found` reads losslessly as `expected` (see the module docstring)."""
    if found.equals(expected) or pa.types.is_null(found):
        return True
    if pa.types.is_dictionary(found):
        inner = expected.value_type if pa.types.is_dictionary(expected) else expected
        return compatible(found.value_type, inner)
    fam = type_family(found)
    if fam is not None and fam == type_family(expected):
        return fam != "list" or compatible(found.value_type, expected.value_type)
    if found in _INT_BITS:
        bits = _INT_BITS[found]
        if expected in _INT_BITS:
            return _INT_BITS[expected] >= bits
        return expected in _FLOAT_MANTISSA and _FLOAT_MANTISSA[expected] >= bits - 1
    if found in _UINT_BITS:
        bits = _UINT_BITS[found]
        if expected in _UINT_BITS:
            return _UINT_BITS[expected] >= bits
        if expected in _INT_BITS:
            return _INT_BITS[expected] > bits
        return expected in _FLOAT_MANTISSA and _FLOAT_MANTISSA[expected] >= bits
    if found in _FLOAT_MANTISSA and expected in _FLOAT_MANTISSA:
        return _FLOAT_MANTISSA[expected] >= _FLOAT_MANTISSA[found]
    return False


def make_format(fmt) -> ds.FileFormat:
    """A pyarrow FileFormat from 'parquet' | 'orc' | 'csv' or a FileFormat instance."""
    if isinstance(fmt, ds.FileFormat):
        return fmt
    if fmt == "parquet":
        return ds.ParquetFileFormat()
    if fmt == "orc":
        return ds.OrcFileFormat()
    if fmt == "csv":
        return ds.CsvFileFormat()
    raise ValueError(f"format must be one of {FORMATS} or a pyarrow.dataset.FileFormat, got {fmt!r}")


def format_name(file_format: ds.FileFormat) -> str:
    name = file_format.default_extname
    if name not in FORMATS:
        raise ValueError(f"unsupported file format {name!r}; recis.io reads {FORMATS}")
    return name


def with_csv_types(file_format: ds.FileFormat, schema: pa.Schema) -> ds.FileFormat:
    """For CSV: a copy of the format that parses every column of `schema` as its type (so every
    file gets the same types, and a bad value is a conversion error naming the column); other
    formats are returned unchanged. Null-typed columns keep per-file inference."""
    if not isinstance(file_format, ds.CsvFileFormat):
        return file_format
    scan = file_format.default_fragment_scan_options
    convert = copy.copy(scan.convert_options)
    types = dict(scan.convert_options.column_types)
    for f in schema:
        if not pa.types.is_null(f.type):
            types.setdefault(f.name, f.type)
    convert.column_types = types
    return ds.CsvFileFormat(parse_options=file_format.parse_options, convert_options=convert,
                            read_options=scan.read_options)


def project(schema: pa.Schema, columns: Optional[Sequence[str]], where: str) -> pa.Schema:
    """The schema restricted to `columns` (in that order), without metadata. `where` names the
    file (or dataset) the schema comes from, for the error when a column is absent."""
    if columns is None:
        return schema.remove_metadata()
    fields = []
    for name in columns:
        idx = schema.get_all_field_indices(name)
        if not idx:
            raise MissingColumnError(where, name, schema.names)
        fields.append(schema.field(idx[0]))
    return pa.schema(fields)


def check_file_schema(path: str, physical: pa.Schema, expected: pa.Schema, partition_keys: Iterable[str] = ()):
    """Every expected column must be in the file (or be a partition key) with a compatible type."""
    keys = set(partition_keys)
    for f in expected:
        if f.name in keys:
            continue
        idx = physical.get_all_field_indices(f.name)
        if not idx:
            raise MissingColumnError(path, f.name, physical.names)
        found = physical.field(idx[0]).type
        if not compatible(found, f.type):
            raise SchemaMismatchError(path, f.name, f.type, found)


_CSV_CONVERSION = re.compile(r"CSV column #(\d+).*conversion error to ([^:]+): invalid value '(.*?)'", re.S)


def csv_conversion_error(path: str, message: str, inferred: pa.Schema,
                         expected: pa.Schema) -> Optional[SchemaMismatchError]:
    """A SchemaMismatchError for Arrow's CSV conversion error message (None if it is not one).
    `inferred` is the file's schema as Arrow infers it without the expected types (may be empty)."""
    m = _CSV_CONVERSION.search(message)
    if m is None:
        return None
    idx, to_type, value = int(m.group(1)), m.group(2), m.group(3)
    column = inferred.names[idx] if idx < len(inferred.names) else None
    exp = expected.field(column).type if column is not None and column in expected.names else to_type
    found = inferred.field(idx).type if column is not None else "a value that is not " + to_type
    return SchemaMismatchError(path, column, exp, found, f"invalid value {value!r}")
