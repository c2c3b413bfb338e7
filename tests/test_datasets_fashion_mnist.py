"""Fashion-MNIST: idx parsing, the package checks, the atomic cache and the splits on a tiny fake
.deb built with `dpkg-deb -b` (fast, no network), `measure()` against hand-computed values, the
job registration, and the real package (slow: `apt-get download`, one cached copy per session;
honours RECIS_CACHE_DIR) decoded with Pillow against the idx pixels."""
import gzip
import io
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recis.datasets import fashion_mnist as fm

import _fake_fashion_mnist as fake_package  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

N_TRAIN, N_TEST = 6, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((N_TRAIN + N_TEST, 28, 28), np.uint8)
    for k, im in enumerate(images):  # a blob of a different size and place each
        r, c = 2 + k, 3 + k
        im[r:r + 6 + k, c:c + 4 + k] = rng.integers(0, 256, (6 + k, 4 + k))
    labels = np.arange(N_TRAIN + N_TEST) % 10
    return images, labels


def _contents(images, labels):
    return fake_package.contents(images, labels, N_TRAIN)


_idx, _build_deb, _sha = fake_package.idx_bytes, fake_package.build_deb, fake_package.sha256


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake package: (deb, images, labels, cache) with fm's constants pointing at it."""
    images, labels = _data()
    deb = fake_package.install(tmp_path, monkeypatch, images, labels, N_TRAIN)
    return deb, images, labels, tmp_path / "cache"


def _png(b):
    im = Image.open(io.BytesIO(b))
    assert im.mode == "L" and im.size == (28, 28)
    return np.asarray(im)


def test_read_idx_checks_magic_and_length(tmp_path):
    images, labels = _data()
    p = tmp_path / "im.gz"
    p.write_bytes(_idx("images", images))
    np.testing.assert_array_equal(fm.read_idx(p, "images"), images)
    q = tmp_path / "lab.gz"
    q.write_bytes(_idx("labels", labels))
    np.testing.assert_array_equal(fm.read_idx(q, "labels"), labels)
    with pytest.raises(ValueError, match=r"lab.gz: idx magic number 0x00000801, expected 0x00000803"):
        fm.read_idx(q, "images")
    p.write_bytes(gzip.compress(gzip.decompress(_idx("images", images))[:-5]))
    with pytest.raises(ValueError, match=r"im.gz: 7051 bytes of data, expected 7056"):
        fm.read_idx(p, "images")
    p.write_bytes(_idx("images", np.zeros((2, 27, 28))))
    with pytest.raises(ValueError, match=r"im.gz: images of 27x28 pixels"):
        fm.read_idx(p, "images")
    p.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"im.gz: not a readable gzip file"):
        fm.read_idx(p, "images")


def test_fake_package_builds_the_catalogue_and_splits(fake):
    deb, images, labels, cache = fake
    files = fm.load(validation=2, seed=3, cache=cache, deb=deb)
    assert files.counts == {"train": 4, "valid": 2, "test": 3}
    order = np.random.default_rng(3).permutation(N_TRAIN)   # the documented hold-out
    expected = {"train": order[2:], "valid": order[:2], "test": np.arange(N_TRAIN, N_TRAIN + N_TEST)}
    for split, rows in expected.items():
        table = pq.read_table(getattr(files, split))
        assert table.schema == fm.SCHEMA
        got = table.to_pylist()
        assert [r["item_id"] for r in got] == rows.tolist()
        arr_images, arr_labels = fm.arrays(split, validation=2, seed=3, cache=cache)
        np.testing.assert_array_equal(arr_images, images[rows])
        np.testing.assert_array_equal(arr_labels, labels[rows])
        for r, i in zip(got, rows):
            np.testing.assert_array_equal(_png(r["image"]), images[i])
            assert r["label"] == labels[i] and r["category"] == fm.CATEGORIES[labels[i]]
            m = fm.measure(images[i])
            for k in fm.METADATA[1:]:
                assert r[k] == pytest.approx(m[k]) if isinstance(m[k], float) else r[k] == m[k], k
    assert sorted(os.listdir(cache / "fashion-mnist")) == ["parquet-v1", "raw"]
    assert sorted(os.listdir(cache / "fashion-mnist" / "parquet-v1")) == ["catalogue", "valid2-seed3"]
    assert sorted(os.listdir(cache / "fashion-mnist" / "raw")) == sorted([*fm.FILES, "SOURCE.json"])
    assert fm.load(validation=2, seed=3, cache=cache) == files  # cached: no package needed


def test_checksums_and_contents_are_checked(fake, tmp_path, monkeypatch):
    deb, images, labels, cache = fake
    wrong = fm.DEB_SHA256
    monkeypatch.setattr(fm, "DEB_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=rf"fake.deb: SHA-256 {wrong}, expected 0000"):
        fm.download(cache, deb=deb)
    assert os.listdir(cache / "fashion-mnist") == []
    # one idx file altered (same size): the package's checksum is right, the file's is not
    contents = _contents(images, labels)
    name = "t10k-labels-idx1-ubyte.gz"
    expected = fm.FILES[name]
    contents[name] = _idx("labels", (labels[N_TRAIN:] + 1) % 10)
    assert len(contents[name]) == expected[0]
    bad = _build_deb(tmp_path, contents, name="bad")
    monkeypatch.setattr(fm, "DEB_SHA256", _sha(bad.read_bytes()))
    with pytest.raises(ValueError, match=rf"{fm.DATA_DIR}/{name} has SHA-256 [0-9a-f]{{64}}, expected {expected[1]}"):
        fm.download(cache, deb=bad)
    assert os.listdir(cache / "fashion-mnist") == []
    # anything outside the dataset and doc directories, or a link, refuses the package
    for rel, b in (("usr/bin/evil", b"#!/bin/sh"), (f"{fm.DATA_DIR}/link", None), ("etc/x.conf", b"")):
        evil = _build_deb(tmp_path, _contents(images, labels), extra={rel: b}, name="evil" + str(len(rel)))
        monkeypatch.setattr(fm, "DEB_SHA256", _sha(evil.read_bytes()))
        parent = rel.rsplit("/", 1)[0]  # a directory outside is refused first
        with pytest.raises(ValueError, match=rf"member '\./({rel}|{parent})' (lies outside|is not a regular file)"):
            fm.download(cache, deb=evil)
    other = _build_deb(tmp_path, _contents(images, labels), name="other", package="other-package")
    monkeypatch.setattr(fm, "DEB_SHA256", _sha(other.read_bytes()))
    with pytest.raises(ValueError, match=r"is other-package .*, expected dataset-fashion-mnist"):
        fm.download(cache, deb=other)
    assert os.listdir(cache / "fashion-mnist") == []


def test_interrupted_builds_leave_nothing(fake, monkeypatch):
    deb, images, labels, cache = fake

    def interrupted(dest):
        (dest / "partial.deb").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fm, "apt_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fm.load(cache=cache, validation=2)
    assert os.listdir(cache / "fashion-mnist") == []
    calls = []

    def encode_then_fail(image):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(image)

    real = fm.encode_png
    monkeypatch.setattr(fm, "encode_png", encode_then_fail)
    with pytest.raises(KeyboardInterrupt):
        fm.load(cache=cache, validation=2, deb=deb)
    assert sorted(os.listdir(cache / "fashion-mnist")) == ["raw"]  # the raw files are complete
    monkeypatch.setattr(fm, "encode_png", real)
    monkeypatch.setattr(fm.pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        fm.load(cache=cache, validation=2)
    assert os.listdir(cache / "fashion-mnist" / "parquet-v1") == []  # its temporary directory is gone


def test_env_var_names_the_package(fake, monkeypatch):
    deb, _, _, cache = fake
    monkeypatch.setenv(fm.ENV_DEB, str(deb))
    assert fm.load(validation=1, cache=cache).counts == {"train": 5, "valid": 1, "test": 3}


def test_split_arguments_are_checked(fake):
    deb, _, _, cache = fake
    with pytest.raises(ValueError, match=r"validation must lie in 1\.\.5"):
        fm.load(validation=6, cache=cache, deb=deb)
    with pytest.raises(TypeError, match="seed must be an int"):
        fm.load(seed="0/../../x", cache=cache, deb=deb)
    with pytest.raises(ValueError, match="split must be one of"):
        fm.arrays("eval", cache=cache, deb=deb)


def test_measure_hand_computed():
    img = np.zeros((28, 28), np.uint8)
    img[5, 10], img[5, 11], img[6, 10] = 100, 200, 50
    img[0, 0] = 25  # below 0.1 * 255: not the item's
    m = fm.measure(img)
    assert m["coverage"] == pytest.approx(3 / 784)
    assert m["intensity"] == pytest.approx(350 / 3)
    assert (m["width"], m["height"]) == (2, 2)
    # box columns 10..11; mirrored: (5,10)<->(5,11), (6,10)<->(6,11): |a-b| = 100+100+50+50
    assert m["symmetry"] == pytest.approx(1 - 300 / 700)
    # adjacent item pixels: (5,10)-(5,11) differ by 100, (5,10)-(6,10) by 50
    assert m["roughness"] == pytest.approx(75 / 255)
    assert (m["shade"], m["coverage_band"], m["width_band"], m["height_band"], m["texture"]) == \
        ("dark", "low", "narrow", "short", "patterned")
    empty = fm.measure(np.zeros((28, 28), np.uint8))
    assert (empty["coverage"], empty["width"], empty["height"], empty["symmetry"], empty["roughness"]) == \
        (0.0, 0, 0, 1.0, 0.0)
    full = fm.measure(np.full((28, 28), 255, np.uint8))
    assert (full["shade"], full["coverage_band"], full["width_band"], full["height_band"], full["texture"],
            full["symmetry"]) == ("light", "high", "wide", "tall", "plain", 1.0)
    # a band's lower threshold belongs to the band above: width 20 is medium, 19 narrow
    for w, band in ((19, "narrow"), (20, "medium"), (26, "medium"), (27, "wide")):
        im = np.zeros((28, 28), np.uint8)
        im[3, :w] = 200
        assert fm.measure(im)["width_band"] == band
    with pytest.raises(ValueError, match=r"uint8 \[28, 28\] image, got float64"):
        fm.measure(np.zeros((28, 28)))


def test_measure_batch_equals_measure_per_image():
    images = np.random.default_rng(1).integers(0, 256, (9000, 28, 28), dtype=np.uint8)  # > one chunk
    images[::3] //= 4
    images[:, :, 20:] = 0
    batch = fm.measure_batch(images)
    for i in (0, 1, 2, 8191, 8192, 8999):
        single = fm.measure(images[i])
        assert {k: v[i] for k, v in batch.items()} == pytest.approx(single)


def test_job_dataset_registration(fake, monkeypatch):
    from recis.run.config import DataConfig
    from recis.run.datasets import DATASETS

    deb, _, _, cache = fake
    monkeypatch.setenv("RECIS_CACHE_DIR", str(cache))
    monkeypatch.setenv(fm.ENV_DEB, str(deb))
    ds = DATASETS["fashion_mnist"]
    train, valid = ds.sources(DataConfig(dataset="fashion_mnist", seed=2, options={"validation": 2}))
    files = fm.load(validation=2, seed=2)
    assert (train, valid) == (str(files.train), str(files.valid))
    _, test = ds.sources(DataConfig(dataset="fashion_mnist", options={"validation": 2, "eval_split": "test"}))
    assert test == str(files.test)
    with pytest.raises(ValueError, match=r"eval_split must be 'valid' or 'test', got 'eval'"):
        DataConfig(dataset="fashion_mnist", options={"eval_split": "eval"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rows'\] in data.options"):
        DataConfig(dataset="fashion_mnist", options={"rows": 3})
    assert [f["name"] for f in ds.feature_config(None)["features"]][:2] == ["image", "label"]


# Slow on a cold cache only: the first run downloads the 31 MB package with apt and builds the
# Parquet files (about 10 s); later runs read the cache (RECIS_CACHE_DIR or ~/.cache/recis).
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_real_package():
    files = fm.load()
    assert files.counts == {"train": 55000, "valid": 5000, "test": 10000}
    catalogue = files.test.parent
    train = pq.read_table(catalogue / "train.parquet")
    assert (train.num_rows, pq.read_metadata(files.test).num_rows) == (60000, 10000)
    row = train.slice(0, 1).to_pylist()[0]
    assert (row["item_id"], row["label"], row["category"]) == (0, 9, "Ankle boot")
    raw = fm.download()
    images = fm.read_idx(raw / "train-images-idx3-ubyte.gz", "images")
    np.testing.assert_array_equal(_png(row["image"]), images[0])
    assert {k: row[k] for k in ("shade", "width_band", "texture")} == \
        {k: fm.measure(images[0])[k] for k in ("shade", "width_band", "texture")}
    test_images, test_labels = fm.arrays("test")
    assert test_images.shape == (10000, 28, 28) and np.bincount(test_labels).tolist() == [1000] * 10


def test_suggested_features_decode_the_catalogue(fake):
    """feature_config() on the catalogue's Parquet: the image feature gives the normalised pixels
    (recomputed here from the idx arrays), the class index is the label, metadata pass through."""
    from recis.features import FeatureEngine

    deb, images, labels, cache = fake
    files = fm.load(validation=2, seed=0, cache=cache, deb=deb)
    engine = FeatureEngine.from_config(fm.feature_config())
    table = pq.read_table(files.train)
    batch = engine(table)
    rows = table["item_id"].to_numpy()
    expected = (images[rows].astype(np.float32) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(batch.tensors["image"].numpy(), expected[:, None], rtol=1e-6, atol=1e-6)
    assert batch.labels.tolist() == labels[rows].tolist()
    assert batch.extras["category"].to_pylist() == [fm.CATEGORIES[k] for k in labels[rows]]
