"""Errors raised by recis.io and the counters that account for every row and file.

Every per-file error names the file; column errors also name the column and, for type
mismatches, the expected and found types.

>>> err = MissingColumnError("data/part-0.parquet", "user_id", ["item_id", "label"])
>>> print(err)
column 'user_id' not found in file 'data/part-0.parquet' (the file has columns: item_id, label)
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

#: What a dataset does with a file it cannot read: raise an error naming it, or skip it (counted
#: in IOStats with the reason, and logged).
ON_ERROR = ("raise", "skip")
_log = logging.getLogger("recis.io")


class DataFileError(Exception):
    """Base class of the per-file errors; `path` is the file that caused it."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message

    def __str__(self):
        return self.message

    def __reduce__(self):  # exceptions cross DataLoader worker processes by pickling
        return (_rebuild_error, (type(self), self.__dict__))


def _rebuild_error(cls, state):
    err = cls.__new__(cls)
    Exception.__init__(err, state["message"])
    err.__dict__.update(state)
    return err


class MissingColumnError(DataFileError, KeyError):
    """A requested column is not in a file."""

    def __init__(self, path: str, column: str, available: Sequence[str] = ()):
        names = ", ".join(available) if available else "none"
        super().__init__(path, f"column {column!r} not found in file {path!r} (the file has columns: {names})")
        self.column = column


class SchemaMismatchError(DataFileError, TypeError):
    """A column's type in a file cannot be read as the dataset's type for that column."""

    def __init__(self, path: str, column: Optional[str], expected, found, detail: str = ""):
        col = f"column {column!r}" if column is not None else "a column"
        extra = f": {detail}" if detail else ""
        super().__init__(path, f"{col} in file {path!r} has type {found}, expected {expected}{extra}")
        self.column, self.expected, self.found = column, expected, found


class CorruptFileError(DataFileError):
    """A file cannot be read: truncated, not in the expected format, or unreadable."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, f"cannot read file {path!r}: {reason}")
        self.reason = reason


class UnknownFormatError(DataFileError, ValueError):
    """A file's name does not say its format (no .parquet / .orc / .csv extension) and the
    dataset was given no format: a README or a .json file in a data directory."""

    def __init__(self, path: str):
        super().__init__(path, f"cannot infer the format of {path!r} from its name; pass "
                               "format='parquet'|'orc'|'csv' (or on_error='skip' to skip such files)")


@dataclass
class IOStats:
    """Counters of one dataset object in one process (each DataLoader worker has its own).

    rows / batches: delivered to the consumer. rows_dropped: rows of a last short batch dropped
    by drop_last. files_read: read units whose last batch was read (a file, or one row group of
    a split Parquet file; with prefetch, counted when read ahead). files_skipped / skipped: files given up with on_error="skip", with the reason (rows
    delivered before a mid-file error stay delivered). files_waiting: streaming files seen but not
    yet complete at the last poll."""

    rows: int = 0
    batches: int = 0
    rows_dropped: int = 0
    files_read: int = 0
    files_skipped: int = 0
    skipped: Dict[str, str] = field(default_factory=dict)
    files_waiting: int = 0

    def skip(self, path: str, reason: str, log: bool = True):
        self.files_skipped += 1
        self.skipped[path] = reason
        if log:
            _log.warning("skipped file %s: %s", path, reason)

    def reset(self):
        self.__init__()
