"""Atomic checkpoint directories and verified reads.

A checkpoint is built inside a temporary directory of the checkpoint root,
`.recis-tmp-<name>-<pid>-<random>/<name>/`, whose parent holds the marker file `.recis-tmp`
(written first thing); each file is fsynced and checksummed, the manifest is written last, the
directory is fsynced and then renamed out to its final name (and the root fsynced). A directory
with a final name therefore always holds a complete checkpoint; a crash leaves at most a
temporary directory, which the next save removes. Old checkpoints are deleted by moving them
into such a temporary directory first. Cleanup removes only directories that have both the
prefix and the marker (a regular file with recis' text): never a symbolic link, never a
directory a user made (`.tmp-foo`, `.recis-tmp-foo` without the marker).

Files are read only through safetensors and json, after their checksum, and only if they are
regular files directly inside the checkpoint directory: a symbolic link (wherever it points), a
FIFO or a device in a checkpoint is refused by name.
"""
import hashlib
import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any, Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recis.checkpoint import ranged
from recis.checkpoint.errors import CheckpointCorruptError, CheckpointNotFoundError

MANIFEST = "manifest.json"
TMP_PREFIX = ".recis-tmp-"
TMP_MARKER = ".recis-tmp"
_MARKER_TEXT = "recis checkpoint temporary directory: the next save into this root removes it\n"
_CHUNK = 1 << 22
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | _NOFOLLOW), "rb") as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                return h.hexdigest()
            h.update(block)


def fsync_path(path: Path) -> None:
    """fsyncs a file or a directory (so that its entries are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)


def manifest_digest(manifest: Dict) -> str:
    """sha256 of the manifest without its own digest field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def prepare_tensors(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (what safetensors stores)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


class DirectoryWriter:
    """Writes fsynced, checksummed files into the directory `tmp` and records them in `files`
    (what each rank of a sharded save uses to fill the directory that rank 0 commits)."""

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.files: Dict[str, Dict[str, Any]] = {}

    def _record(self, name: str) -> None:
        path = self.tmp / name
        fsync_path(path)
        if name.endswith(".safetensors"):  # read by ranges: a checksum per block (recis.checkpoint.ranged)
            blocks = ranged.block_digests(path, ranged.BLOCK)
            self.files[name] = {"bytes": path.stat().st_size, "block_bytes": ranged.BLOCK, "blocks": blocks}
        else:
            self.files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}

    def write_tensors(self, name: str, tensors: Dict[str, torch.Tensor]) -> None:
        save_file(prepare_tensors(tensors), str(self.tmp / name))
        self._record(name)

    def write_json(self, name: str, obj: Any) -> None:
        write_text(self.tmp / name, json_text(obj))
        self._record(name)


class AtomicDirectory(DirectoryWriter):
    """`with AtomicDirectory(root, name) as d: d.write_tensors(...); d.commit(manifest)`; an
    exception (or no commit) removes the temporary directory.

    The files go to `d.tmp` = `root/.recis-tmp-<name>-<pid>-<random>/<name>/`; commit renames
    `d.tmp` to `root/<name>` and then removes its marked, empty parent."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = Path(root), name
        self.final = self.root / name
        self.wrapper = self.root / f"{TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        super().__init__(self.wrapper / name)

    def __enter__(self) -> "AtomicDirectory":
        if self.final.exists():
            raise FileExistsError(f"checkpoint {self.final} already exists; remove it or save under another step")
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            fsync_path(self.root.parent)
        make_temporary(self.wrapper)
        self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.wrapper.exists():
            remove_temporary(self.wrapper)
        return False

    def commit(self, manifest: Dict) -> Path:
        """Writes the manifest (with the file list and checksums) last, then renames."""
        manifest = dict(manifest, files=self.files)
        manifest["manifest_sha256"] = manifest_digest(manifest)
        write_text(self.tmp / MANIFEST, json_text(manifest))
        fsync_path(self.tmp / MANIFEST)
        fsync_path(self.tmp)
        if self.final.exists():
            raise FileExistsError(f"checkpoint {self.final} appeared while saving; not replacing it")
        os.rename(self.tmp, self.final)
        fsync_path(self.root)
        remove_temporary(self.wrapper)
        return self.final


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def make_temporary(path: Path) -> Path:
    """Creates the temporary directory `path` (named `.recis-tmp-...`) with its marker file
    written first thing, so that a crash at any later point leaves something cleanup recognizes."""
    if not path.name.startswith(TMP_PREFIX):
        raise ValueError(f"a recis temporary directory's name starts with {TMP_PREFIX!r}, got {path.name!r}")
    path.mkdir()
    write_text(path / TMP_MARKER, _MARKER_TEXT)
    fsync_path(path / TMP_MARKER)
    return path


def is_recis_temporary(path: Path) -> bool:
    """True for a real directory (not a link) named `.recis-tmp-*` that holds recis' marker (a
    regular file with recis' text): what recis created, and nothing a user made."""
    if not path.name.startswith(TMP_PREFIX) or path.is_symlink() or not path.is_dir():
        return False
    marker = path / TMP_MARKER
    try:
        if not stat.S_ISREG(os.lstat(marker).st_mode):
            return False
        with os.fdopen(os.open(marker, os.O_RDONLY | _NOFOLLOW), "rb") as f:
            return f.read(len(_MARKER_TEXT) + 1) == _MARKER_TEXT.encode()
    except OSError:
        return False


def remove_temporary(path: Path) -> None:
    """Removes a recis temporary directory: its content first and the marker last, so that an
    interrupted removal still leaves a directory that cleanup recognizes."""
    for p in path.iterdir():
        if p.name == TMP_MARKER:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    try:
        (path / TMP_MARKER).unlink()
        path.rmdir()
    except OSError:
        pass  # an interrupted removal left something behind; the next cleanup retries


def remove_tree(path: Path) -> None:
    """Moves the checkpoint `path` into a new marked temporary directory first, so that a crash
    mid-delete never leaves a half-deleted directory under its checkpoint name, and the next
    cleanup finishes the job."""
    trash = make_temporary(path.parent / f"{TMP_PREFIX}delete-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash / path.name)
    fsync_path(path.parent)
    remove_temporary(trash)


def remove_stale_temporaries(root: Path) -> None:
    """Removes the temporary directories that interrupted saves or deletes left in `root` (one
    writer per root): only those `is_recis_temporary` recognizes."""
    if root.is_dir():
        for p in root.iterdir():
            if is_recis_temporary(p):
                remove_temporary(p)


def regular_file(directory: Path, name: str) -> Path:
    """`directory/name`, checked to be a regular file directly inside `directory` (not a link,
    wherever it points, nor a FIFO or a device): what recis writes, and all it reads."""
    path = Path(directory) / name
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise CheckpointCorruptError(f"{name!r} is not a plain file name inside checkpoint {directory}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"checkpoint file {path} is missing") from None
    if stat.S_ISLNK(mode):
        raise CheckpointCorruptError(f"checkpoint file {path} is a symbolic link (to {os.readlink(path)}); checkpoint "
                                     "files must be regular files inside the checkpoint directory")
    if not stat.S_ISREG(mode):
        raise CheckpointCorruptError(f"checkpoint file {path} is not a regular file (mode {oct(mode)})")
    return path


# ---------------------------------------------------------------- reading
def read_manifest(directory: Path, expected_format: str) -> Dict:
    """The manifest of `directory`, checked for JSON syntax, format and its own digest."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {directory} does not exist")
    if not path.is_file() and not path.is_symlink():
        raise CheckpointNotFoundError(f"{path} is missing: {directory} is not a complete checkpoint")
    regular_file(directory, MANIFEST)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorruptError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointCorruptError(f"{path}: format is {found!r}, expected {expected_format!r}")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise CheckpointCorruptError(f"{path}: the manifest's own checksum does not match its content")
    if not isinstance(manifest.get("files"), dict):
        raise CheckpointCorruptError(f"{path}: no file list")
    return manifest


def _listed_file(directory: Path, manifest: Dict, name: str):
    """(path, manifest entry) of a file the manifest lists, after checking that it is there with
    the size the manifest gives."""
    entry = manifest["files"].get(name)
    if entry is None:
        raise CheckpointCorruptError(f"{Path(directory) / MANIFEST} does not list {name}")
    path = regular_file(directory, name)
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CheckpointCorruptError(f"checkpoint file {path} has {size} bytes, the manifest says {entry['bytes']}")
    return path, entry


def verified_path(directory: Path, manifest: Dict, name: str) -> Path:
    """The path of a file the manifest lists, after checking its size and sha256."""
    path, entry = _listed_file(directory, manifest, name)
    size = entry["bytes"]
    if "blocks" in entry:
        with ranged.TensorFile(path, entry) as f:
            f.verify_all()
        return path
    ranged.count_read(size)
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise CheckpointCorruptError(f"checkpoint file {path} fails its checksum: sha256 {digest}, the manifest "
                                     f"says {entry.get('sha256')}")
    return path


def read_tensors(directory: Path, manifest: Dict, name: str) -> Dict[str, torch.Tensor]:
    path = verified_path(directory, manifest, name)
    ranged.count_read(path.stat().st_size)
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointCorruptError(f"checkpoint file {path} is not a valid safetensors file ({e})") from None


def open_tensors(directory: Path, manifest: Dict, name: str) -> "ranged.TensorFile":
    """A safetensors file the manifest lists, opened for reading by rows (ranged.TensorFile):
    its size is checked now, its content block by block as it is read."""
    path, entry = _listed_file(directory, manifest, name)
    return ranged.TensorFile(path, entry)


def read_json(directory: Path, manifest: Dict, name: str) -> Any:
    path = verified_path(directory, manifest, name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorruptError(f"checkpoint file {path} is not valid JSON ({e})") from None


def check_no_unlisted_files(directory: Path, manifest: Dict) -> None:
    """Refuses a checkpoint directory holding files its manifest does not list (e.g. a planted
    torch or Python object file): such a file is never opened, and the checkpoint is not trusted."""
    listed = set(manifest["files"]) | {MANIFEST}
    extra = sorted(p.name for p in Path(directory).iterdir() if p.name not in listed)
    if extra:
        raise CheckpointCorruptError(f"checkpoint {directory} holds files its manifest does not list: {extra}; "
                                     "refusing to load it (remove them if they are yours)")
