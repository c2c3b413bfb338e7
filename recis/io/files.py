"""Data files on a local file system: which names are data, which format, whether complete.

A name is not data when any part of its path below the listed root starts with "." or "_"
(hidden files, `_SUCCESS` markers, `_temporary/` directories) or ends with a temporary suffix
(`.tmp`, `.temp`, `.inprogress`, `.partial`, `.part`, `.crc`, `.copying`).

>>> is_data_name("dt=2026112700/part-0.parquet"), is_data_name("dt=1/.part-0.parquet.crc")
(True, False)
>>> is_data_name("_temporary/0/part-0.parquet"), is_data_name("part-0.parquet.inprogress")
(False, False)
>>> infer_format(["a/x.parquet", "a/y.parquet"]), infer_format(["events.csv.gz"])
('parquet', 'csv')
"""
import os
import zlib
from typing import List, Optional, Sequence, Tuple

from recis.io.errors import UnknownFormatError

TEMP_SUFFIXES = (".tmp", ".temp", ".inprogress", ".partial", ".part", ".crc", ".copying")
_COMPRESSION = (".gz", ".bz2", ".zst", ".lz4", ".zstd")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".orc": "orc", ".csv": "csv"}
FORMATS = ("parquet", "orc", "csv")


def is_data_name(relpath: str) -> bool:
    """False for hidden, underscore-prefixed and temporary names (see the module docstring)."""
    parts = relpath.replace(os.sep, "/").split("/")
    if any(p.startswith((".", "_")) for p in parts if p):
        return False
    return not parts[-1].lower().endswith(TEMP_SUFFIXES)


def check_data_key(key) -> str:
    """`key` if it is a data file's path relative to a root, as `scan_files` gives them: '/'-separated,
    no empty, '.' or '..' component, not absolute, no backslash or NUL, and a data name. A key
    read back from saved state can therefore never name a file outside the root.

    >>> check_data_key("dt=1/part-0.parquet")
    'dt=1/part-0.parquet'
    >>> check_data_key("../outside/secret.csv")
    Traceback (most recent call last):
    ...
    ValueError: file key '../outside/secret.csv' is not a data file's path relative to the root (no '..', '.', empty or absolute components, no backslash, not hidden or temporary)
    """
    parts = key.split("/") if isinstance(key, str) else []
    if (not parts or key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts)
            or not is_data_name(key)):
        raise ValueError(f"file key {key!r} is not a data file's path relative to the root (no '..', '.', empty or "
                         "absolute components, no backslash, not hidden or temporary)")
    return key


def format_of(path: str) -> Optional[str]:
    """The format named by a file's extension (compression suffixes ignored), or None."""
    name = path.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSIONS.get(os.path.splitext(name)[1])


def infer_format(paths: Sequence[str]) -> str:
    """The one format that the files' extensions name; an error if they name none or several
    (an UnknownFormatError naming the first file whose name says no format)."""
    found = {}
    for p in paths:
        fmt = format_of(p)
        if fmt is None:
            raise UnknownFormatError(p)
        found.setdefault(fmt, p)
    if len(found) != 1:
        detail = ", ".join(f"{p!r} is {f}" for f, p in found.items()) or "no files"
        raise ValueError(f"cannot infer one format ({detail}); pass format=")
    return next(iter(found))


def list_data_files(root: str) -> List[str]:
    """Data files under `root` (a file or a directory, recursively), sorted by path."""
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such file or directory: {root!r}")
    return [os.path.join(root, rel) for rel, _ in scan_files(root)]


def scan_files(root: str) -> List[Tuple[str, os.stat_result]]:
    """(relative path, stat) of the data files below directory `root`, sorted by relative path.
    A missing root is empty (a time window that has not started yet)."""
    out = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel_dir)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if not is_data_name(rel):
                continue
            try:
                if entry.is_dir():
                    stack.append(rel)
                elif entry.is_file():
                    out.append((rel, entry.stat()))
            except FileNotFoundError:  # removed while listing
                continue
    out.sort(key=lambda x: x[0])
    return out


def has_complete_footer(path: str, fmt: str, size: int) -> bool:
    """Whether a file's bytes show a finished writer: Parquet has the magic `PAR1` at both ends,
    ORC starts with `ORC` and ends with a postscript that ends with `ORC` (then its length byte).
    CSV has no such marker (always True): stability and markers decide for it."""
    if fmt not in ("parquet", "orc"):
        return True
    if size < (12 if fmt == "parquet" else 8):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(size - 4)
            tail = f.read(4)
    except OSError:
        return False
    if fmt == "parquet":
        return head == b"PAR1" and tail == b"PAR1"
    return head[:3] == b"ORC" and tail[:3] == b"ORC" and 0 < tail[3] < size


def stable_shard(key: str, num_shards: int) -> int:
    """The shard of a streaming file: crc32 of its path relative to the root, so every process
    agrees whatever it has seen so far."""
    return zlib.crc32(key.encode("utf-8")) % num_shards
