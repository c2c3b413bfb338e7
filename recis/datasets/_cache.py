"""Where datasets are cached, and how a cache entry is written so that it is never half there."""
import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]


def cache_dir(override: Optional[PathLike] = None) -> Path:
    """The root of recis' dataset cache.

    In order: ``override``, ``$RECIS_CACHE_DIR``, ``$XDG_CACHE_HOME/recis``, ``~/.cache/recis``.
    The directory is not created here.

    >>> import os
    >>> str(cache_dir("/data/cache"))
    '/data/cache'
    """
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("RECIS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "recis"


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_directory(final: PathLike) -> Iterator[Path]:
    """Yields an empty temporary directory next to ``final``; renames it to ``final`` on success.

    If the body raises, the temporary directory is removed and ``final`` is untouched, so an
    interrupted build never leaves a half-written cache entry. If another process created
    ``final`` in the meantime, its copy is kept and ours is discarded (both are complete).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)  # lost a race against another complete writer
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_files(raw: PathLike, files: Mapping[str, Tuple[int, str]], force: bool = False) -> bool:
    """Whether the cache entry `raw` holds every file of `files` (name -> (size in bytes,
    SHA-256)) already: True when it does, False when there is no entry yet (`force` removes an
    existing one first). An entry with a missing file or a file of another size is an error that
    names the file (the entry was written atomically, so something else changed it)."""
    raw = Path(raw)
    if force and raw.exists():
        shutil.rmtree(raw)
    if not raw.is_dir():
        return False
    for name, (size, _) in files.items():
        if not (raw / name).is_file() or (raw / name).stat().st_size != size:
            raise ValueError(f"{raw / name}: cached file is missing or has the wrong size "
                             f"(expected {size} bytes); call download(force=True)")
    return True
