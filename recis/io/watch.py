"""Finds files that finished landing in a directory or in time-window subdirectories.

A data file (see recis.io.files.is_data_name: hidden, `_`-prefixed and temporary names never
are) is complete when all of these hold:

1. its size and mtime are the same at two polls at least `settle_s` seconds apart;
2. Parquet: it starts and ends with the magic `PAR1`; ORC: it starts with `ORC` and ends with a
   postscript that ends with `ORC` (writers add these last, on close);
3. with `marker` (e.g. "_SUCCESS"), a file of that name exists in the file's directory.

CSV has no footer, so for CSV (1) and (3) decide: writers should write under a temporary name
and rename, or write the marker after the data, or never pause longer than `settle_s`.
Files are keyed by their path relative to the root ("dt=2026112700/part-0.csv") and returned in
order: explicit windows in their given order, then by key.

`until` (a window's name) is the last window watched: later windows are never listed for files.
It is *closed* once a later window's directory exists (later in the given list, or, for a glob
pattern, a matching directory whose name sorts after it) or, with `marker`, once the marker
file is in it. A stream reading the watcher ends when the window was closed before a poll that
finds no new file and none still settling in the windows up to `until` (see
recis.io.streaming).
"""
import fnmatch
import glob
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

from recis.config_utils import Range, check_value
from recis.io.files import check_data_key, format_of, has_complete_footer, is_data_name, scan_files, stable_shard


class DirectoryWatcher:
    """Polls `root` (or its `windows`: a list of subdirectory names, or a glob pattern relative
    to root such as "dt=*") for complete data files.

    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> with open(os.path.join(root, "a.csv"), "w") as f:
    ...     _ = f.write("x\\n1\\n")
    >>> w = DirectoryWatcher(root, settle_s=0.0, format_name="csv")
    >>> w.poll(), w.poll()   # complete once two polls agree
    ([], ['a.csv'])
    >>> for d in ("dt=01", "dt=02"):
    ...     os.makedirs(os.path.join(root, d))
    >>> w = DirectoryWatcher(root, "dt=*", until="dt=01", settle_s=0.0)
    >>> w.window_dirs(), w.closed()     # dt=02 exists: dt=01 is complete
    (['dt=01'], True)
    """

    def __init__(self, root: str, windows: Union[None, str, Sequence[str]] = None, *, settle_s: float = 1.0,
                 marker: Optional[str] = None, format_name: Optional[str] = None, until: Optional[str] = None):
        check_value("settle_s", settle_s, float, Range(ge=0))
        check_value("until", until, Optional[str])
        if windows is not None and not isinstance(windows, str):
            windows = [os.fspath(w) for w in windows]
            bad = [w for w in windows if os.path.isabs(w) or not is_data_name(w)]
            if bad:
                raise ValueError(f"windows must be relative, non-hidden subdirectories of root, got {bad}")
        if until is not None:
            if windows is None:
                raise ValueError(f"until={until!r} names the last window to read, but no windows are given (a list "
                                 "of subdirectories, or a glob pattern such as 'dt=*')")
            if isinstance(windows, str):
                if not fnmatch.fnmatchcase(until, windows):
                    raise ValueError(f"until={until!r} does not match the windows pattern {windows!r}")
            elif until not in windows:
                raise ValueError(f"until={until!r} is not one of the windows {windows}")
        self.root = os.fspath(root)
        self.windows = windows
        self.until = until
        self.settle_s = settle_s
        self.marker = marker
        self.format_name = format_name
        self.waiting = 0
        self._seen: Dict[str, Tuple[int, int, float]] = {}  # key -> (size, mtime_ns, time first seen so)

    def window_dirs(self) -> List[str]:
        """The watched subdirectories, in order ("" is the root itself), up to `until`."""
        if self.windows is None:
            return [""]
        dirs = self._all_windows()
        if self.until is None:
            return dirs
        if isinstance(self.windows, str):
            return [d for d in dirs if d <= self.until]
        return dirs[:dirs.index(self.until) + 1]

    def _all_windows(self) -> List[str]:
        if isinstance(self.windows, str):
            found = glob.glob(os.path.join(glob.escape(self.root), self.windows))
            rel = (os.path.relpath(p, self.root).replace(os.sep, "/") for p in found if os.path.isdir(p))
            return sorted(r for r in rel if is_data_name(r))
        return list(self.windows)

    def closed(self) -> bool:
        """Whether the `until` window is complete: a later window exists, or it holds the marker
        (False without `until`)."""
        if self.until is None:
            return False
        if self.marker and os.path.exists(os.path.join(self.root, self.until, self.marker)):
            return True
        if isinstance(self.windows, str):
            return any(d > self.until for d in self._all_windows())
        later = self.windows[self.windows.index(self.until) + 1:]
        return any(os.path.isdir(os.path.join(self.root, d)) for d in later)

    def poll(self, exclude=frozenset(), shard: int = 0, num_shards: int = 1) -> List[str]:
        """Keys of the complete files of this shard that are not in `exclude`, in order."""
        now = time.monotonic()
        ready, seen = [], {}
        for order, window in enumerate(self.window_dirs()):
            base = os.path.join(self.root, window) if window else self.root
            for rel, st in scan_files(base):
                key = f"{window.rstrip('/')}/{rel}" if window else rel
                if key in exclude or (num_shards > 1 and stable_shard(key, num_shards) != shard):
                    continue
                sig = (st.st_size, st.st_mtime_ns)
                prev = self._seen.get(key)
                if prev is None or prev[:2] != sig:
                    seen[key] = (*sig, now)
                    continue
                seen[key] = prev
                if self._complete(key, os.path.join(base, rel), st.st_size, now - prev[2]):
                    ready.append((order, key))
                    del seen[key]
        self._seen = seen
        self.waiting = len(seen)
        return [key for _, key in sorted(ready)]

    def path(self, key: str) -> str:
        """The file of `key` under the root (a key from saved state is checked first: it can
        never name a file outside the root)."""
        return os.path.join(self.root, *check_data_key(key).split("/"))

    def _complete(self, key: str, path: str, size: int, stable_for: float) -> bool:
        if stable_for < self.settle_s or stable_for <= 0:
            return False
        if self.marker and not os.path.exists(os.path.join(os.path.dirname(path), self.marker)):
            return False
        fmt = self.format_name or format_of(key)
        return has_complete_footer(path, fmt, size) if fmt in ("parquet", "orc") else True
