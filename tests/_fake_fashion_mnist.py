"""A fake `dataset-fashion-mnist` package for tests: small idx files in a real .deb built with
`dpkg-deb -b`, and recis.datasets.fashion_mnist's constants pointed at it (no network)."""
import gzip
import hashlib
import os
import subprocess

import numpy as np

from recis.datasets import fashion_mnist as fm


def idx_bytes(kind, array, magic=None):
    """A gzipped idx file of `array` (uint8), magic 0x803 for images, 0x801 for labels."""
    magic = {"images": 0x803, "labels": 0x801}[kind] if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def contents(images, labels, n_train):
    """idx file name -> bytes, the first n_train items the train split, the rest test."""
    return {"train-images-idx3-ubyte.gz": idx_bytes("images", images[:n_train]),
            "train-labels-idx1-ubyte.gz": idx_bytes("labels", labels[:n_train]),
            "t10k-images-idx3-ubyte.gz": idx_bytes("images", images[n_train:]),
            "t10k-labels-idx1-ubyte.gz": idx_bytes("labels", labels[n_train:])}


def build_deb(tmp_path, files, extra=None, name="fake", package=fm.PACKAGE):
    """A .deb holding `files` under the dataset directory, a doc file, and `extra` (path ->
    bytes, or None for a symbolic link to /etc/passwd)."""
    root = tmp_path / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {fm.DEB_VERSION}\nArchitecture: all\nMaintainer: test <t@example.com>\n"
        "Description: test package\n")
    data = root / fm.DATA_DIR
    data.mkdir(parents=True)
    (root / "usr/share/doc/dataset-fashion-mnist").mkdir(parents=True)
    (root / "usr/share/doc/dataset-fashion-mnist/copyright").write_text("test")
    for n, b in files.items():
        (data / n).write_bytes(b)
    for rel, b in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if b is None:
            os.symlink("/etc/passwd", root / rel)
        else:
            (root / rel).write_bytes(b)
    deb = tmp_path / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def install(tmp_path, monkeypatch, images, labels, n_train, apt=False):
    """Builds the fake package of (images, labels) and points fm's checksums and counts at it;
    `apt_download` then copies the .deb as apt would (apt=True) or fails. Returns the .deb's path."""
    files = contents(images, labels, n_train)
    deb = build_deb(tmp_path, files)
    monkeypatch.setattr(fm, "DEB_SHA256", sha256(deb.read_bytes()))
    monkeypatch.setattr(fm, "FILES", {n: (len(b), sha256(b)) for n, b in files.items()})
    monkeypatch.setattr(fm, "COUNTS", {"train": n_train, "test": len(images) - n_train})

    def fake_apt(dest):
        if not apt:
            raise AssertionError("must not download")
        target = dest / deb.name
        target.write_bytes(deb.read_bytes())
        return target

    monkeypatch.setattr(fm, "apt_download", fake_apt)
    monkeypatch.delenv(fm.ENV_DEB, raising=False)
    return deb
