"""Reader for RecBole's atomic files (`.inter`, `.user`, `.item`).

An atomic file is tab-separated text whose header names each column with its type,
`name:type`, e.g. `user_id:token	rating:float`. `token` and `token_seq` columns are read as
strings, `float` as float64 and `float_seq` as list<float64>; sequences are space-separated.
Empty fields are null. Lines may end in `\\r\\n`.
"""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recis.datasets._csv import first_line

_READ_TYPES = {"token": pa.string(), "token_seq": pa.string(), "float": pa.float64(),
               "float_seq": pa.string()}


def parse_header(path: Path, line: str) -> List[Tuple[str, str]]:
    """[(name, type), ...] of an atomic file's header line."""
    out = []
    for field in line.split("\t"):
        name, sep, kind = field.strip().rpartition(":")
        if not sep or not name or kind not in _READ_TYPES:
            raise ValueError(f"{path}: header field {field!r} is not 'name:type' with a type in "
                             f"{sorted(_READ_TYPES)}")
        out.append((name, kind))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: header names columns {dup} more than once")
    return out


def read_atomic(path: Path, required: Sequence[str] = ()) -> pa.Table:
    """The table of one atomic file; `required` columns must be present (an error names the file
    and the missing columns otherwise)."""
    path = Path(path)
    line = first_line(path)
    if line is None:
        raise ValueError(f"{path}: empty file, expected a RecBole atomic header line")
    header = parse_header(path, line)
    names = [n for n, _ in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {names}")
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: _READ_TYPES[k] for n, k in header}, null_values=[""],
                strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"{path}: cannot parse it as a RecBole atomic file: {e}") from e
    kinds: Dict[str, str] = dict(header)
    for name, kind in kinds.items():
        if kind == "token_seq":
            table = table.set_column(table.schema.get_field_index(name), name, split_tokens(table[name]))
        elif kind == "float_seq":
            values = pc.cast(split_tokens(table[name]), pa.list_(pa.float64()))
            table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


def split_tokens(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whitespace-separated strings -> list<string>; a null or blank field becomes [].

    >>> split_tokens(pa.chunked_array([["Comedy  Drama ", "", None]])).to_pylist()
    [['Comedy', 'Drama'], [], []]
    """
    trimmed = pc.utf8_trim_whitespace(column)
    trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    pieces = pc.utf8_split_whitespace(trimmed)
    return pc.fill_null(pieces, pa.scalar([], pieces.type))
