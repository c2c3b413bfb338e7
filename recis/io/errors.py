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

#: What a dataset does with a file it cannot read, or a row its transform cannot use (an image
#: that does not decode, see recis.features.RowError): raise an error naming the file (and row and
#: column), or skip it (counted in IOStats with the reason, and logged).
ON_ERROR = ("raise", "skip")
#: Most skipped rows whose file, row and reason IOStats keeps (rows_skipped counts them all).
MAX_SKIPPED_ROWS = 1000
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


class BadRowError(DataFileError, ValueError):
    """A row of a file that the dataset's transform cannot use (e.g. an image feature's bytes do
    not decode): `path`, `row` (0-based, in the file), `column`, `feature`, `reason`; `rows`
    lists (path, row, reason) of every bad row of that batch."""

    def __init__(self, path: str, row: int, column: str, feature: str, reason: str, rows=()):
        more = len(rows) - 1 if rows else 0
        extra = f" ({more} more bad row{'s' if more != 1 else ''} in this batch)" if more > 0 else ""
        super().__init__(path, f"file {path!r}, row {row} (0-based), column {column!r} (feature {feature!r}): "
                               f"{reason}{extra}; on_error='skip' drops such rows (counted in stats.rows_skipped)")
        self.row, self.column, self.feature, self.reason = row, column, feature, reason
        self.rows = list(rows) or [(path, row, reason)]


class RowError(ValueError):
    """Rows of a record batch that a feature cannot turn into its tensor (an image that does not
    decode, a tensor row of the wrong length, a null). `rows` are 0-based rows of the record
    batch the engine was called with, `reasons` one per row; `feature`, `column` and `kind` say
    whose. Any dataset transform may raise it (the FeatureEngine does for image and tensor
    features); a recis.io dataset maps the rows to files and rows in them (BadRowError) or skips
    them, per on_error."""

    def __init__(self, feature: str, column: str, kind: str, rows: Sequence[int], reasons: Sequence[str]):
        self.feature, self.column, self.kind = feature, column, kind
        self.rows, self.reasons = tuple(int(r) for r in rows), tuple(reasons)
        more = len(self.rows) - 1
        extra = f" ({more} more bad row{'s' if more != 1 else ''} in this batch: " \
                f"{', '.join(map(str, self.rows[1:6]))}{', ...' if more > 5 else ''})" if more else ""
        super().__init__(f"{kind} feature {feature!r} (column {column!r}): row {self.rows[0]} of the record batch "
                         f"(0-based): {self.reasons[0]}{extra}")

    def __reduce__(self):  # crosses DataLoader worker processes
        return (RowError, (self.feature, self.column, self.kind, self.rows, self.reasons))


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
    yet complete at the last poll. rows_skipped / skipped_rows: rows dropped from their batch with
    on_error="skip" because the transform could not use them (skipped_rows: "path:row" -> the
    column and reason, for the first MAX_SKIPPED_ROWS of them)."""

    rows: int = 0
    batches: int = 0
    rows_dropped: int = 0
    files_read: int = 0
    files_skipped: int = 0
    skipped: Dict[str, str] = field(default_factory=dict)
    files_waiting: int = 0
    rows_skipped: int = 0
    skipped_rows: Dict[str, str] = field(default_factory=dict)

    def skip(self, path: str, reason: str, log: bool = True):
        self.files_skipped += 1
        self.skipped[path] = reason
        if log:
            _log.warning("skipped file %s: %s", path, reason)

    def skip_rows(self, bad, column: str, feature: str, log: bool = True):
        """Counts bad rows [(path, row in the file, reason)] of one batch (one log line)."""
        self.rows_skipped += len(bad)
        for path, row, reason in bad:
            if len(self.skipped_rows) < MAX_SKIPPED_ROWS:
                self.skipped_rows[f"{path}:{row}"] = f"column {column!r} (feature {feature!r}): {reason}"
        if log and bad:
            path, row, reason = bad[0]
            _log.warning("skipped %d row(s) of column %r (feature %r), first: file %s row %d: %s", len(bad), column,
                         feature, path, row, reason)

    def reset(self):
        self.__init__()
