"""benchmarks/relevance_ebrm.py (EBRM with and without QE pretraining vs cross-encoder vs
bi-encoder) in a tiny configuration: a tiny random BERT on a task built from a synthetic
catalogue, so nothing is downloaded."""
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, f1_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "plugins", "relevance", "tests"))

import relevance_testing  # noqa: E402,F401 (makes the plugin and its towers discoverable when not installed)
import relevance_ebrm as bench  # noqa: E402

from recis_relevance.task import RelevanceTask, tiny_encoder_options  # noqa: E402

GENRES = [["Comedy"], ["Comedy", "Romance"], ["Horror"], ["Drama", "Comedy"], ["Action"], ["Romance"],
          ["Horror", "Comedy"], ["Drama"]]


def _items():
    n = 48
    return pa.table({"item_id": list(range(1, n + 1)), "title": [f"Story {i} (19{50 + i % 50})" for i in range(n)],
                     "year": pa.array([1950 + i for i in range(n)], pa.int32()),
                     "genres": [GENRES[i % len(GENRES)] for i in range(n)]})


def _config(files, **kw):
    task = RelevanceTask(pq.read_table(files.train), pq.read_table(files.test))
    opts = dict(queries=20, per_query=8, test_fraction=0.3, val_fraction=0.25, task_seed=2, max_epochs=3,
                patience=1, qe_max_epochs=2, batch_size=16, eval_batch_size=8, lr=1e-3, seeds=(0, 1))
    opts.update(kw)
    return bench.BenchConfig(**{**opts, **tiny_encoder_options(task)})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    base = bench.BenchConfig(queries=20, per_query=8, test_fraction=0.3, val_fraction=0.25, task_seed=2)
    files, info = bench.write_files(base, _items(), str(tmp / "data"))
    cfg = _config(files)
    return files, info, cfg, bench.run_seeds(cfg, files, str(tmp))


def test_the_split_holds_out_test_and_validation_queries(tmp_path):
    base = bench.BenchConfig(queries=20, per_query=8, test_fraction=0.3, val_fraction=0.25, task_seed=2)
    files, info = bench.write_files(base, _items(), str(tmp_path))
    q = {k: set(pq.read_table(getattr(files, k))["query_id"].to_pylist()) for k in ("train", "val", "test")}
    assert not q["train"] & q["val"] and not q["train"] & q["test"] and not q["val"] & q["test"]
    assert info["test_queries"] == len(q["test"]) == round(0.3 * 20) and info["val_queries"] == len(q["val"]) > 0


@pytest.mark.slow  # the shared fixture trains four tiny models on two seeds (~30-60 s on 2 busy cores)
def test_report_rows_metrics_and_summary(report):
    files, _, cfg, rep = report
    labels = pq.read_table(files.test)["label"].to_pylist()
    assert [(r["model"], r["seed"]) for r in rep["rows"]] == [(m, s) for s in (0, 1) for m in bench.MODELS]
    for r in rep["rows"]:
        expected = {"uncached", "cold", "warm"} if r["model"].startswith("ebrm") else {"cold", "warm"}
        assert set(r["inference"]) == expected, r["model"]
        assert r["true"] == labels and len(r["pred"]) == len(labels)
        assert r["accuracy"] == pytest.approx(accuracy_score(labels, r["pred"]))
        assert r["macro_f1"] == pytest.approx(f1_score(labels, r["pred"], labels=[1, 2, 3, 4], average="macro",
                                                       zero_division=0))
        per_grade = f1_score(labels, r["pred"], labels=[1, 2, 3, 4], average=None, zero_division=0)
        assert [r["f1_per_grade"][str(g)] for g in (1, 2, 3, 4)] == pytest.approx(list(per_grade))
        # epochs: the best validation epoch, of those run (early stopping after `patience` bad epochs)
        curve = r["val_curve"]
        assert 1 <= r["epochs"] <= cfg.max_epochs and len(curve) == round(r["epochs_run"])
        assert curve[r["epochs"] - 1] == max(curve) == r["val_macro_f1"]
        assert curve.index(max(curve)) == r["epochs"] - 1
        assert (r["qe"] is not None) == (r["model"] == "ebrm_qe")
    for name, s in rep["summary"].items():
        vals = [r["macro_f1"] for r in rep["rows"] if r["model"] == name]
        assert s["macro_f1"]["mean"] == pytest.approx(sum(vals) / 2)
        assert (s["macro_f1"]["min"], s["macro_f1"]["max"]) == (min(vals), max(vals))
    cross = rep["summary"]["relevance_cross_encoder"]
    for name in ("ebrm_qe", "ebrm"):
        c = rep["comparison"][name]
        assert c["macro_f1_minus_cross"] == pytest.approx(rep["summary"][name]["macro_f1"]["mean"]
                                                          - cross["macro_f1"]["mean"])
        assert c["warm_items_per_s_over_cross"] == pytest.approx(
            rep["summary"][name]["items_per_s_warm"]["mean"] / cross["items_per_s_warm"]["mean"])
    md = bench.markdown(rep)
    assert all(f"| {n} |" in md for n in ("EBRM + QE pretraining", "EBRM", "cross-encoder", "bi-encoder"))


@pytest.mark.slow  # the shared fixture trains four tiny models on two seeds (~30-60 s on 2 busy cores)
def test_warm_ebrm_hits_the_cache_fully_and_agrees_with_uncached(report):
    _, _, _, rep = report
    for r in rep["rows"]:
        if r["model"].startswith("ebrm"):
            assert r["inference"]["warm"]["hit_rate"] == 1.0 and r["inference"]["uncached"]["hit_rate"] is None
            for k in ("uncached", "warm"):
                assert r["pass_agreement"][k]["same_grades"], k
                assert r["pass_agreement"][k]["max_abs_prob_diff"] <= 1e-6, k
        else:  # no cache: both passes recompute, with the same result
            assert r["inference"]["cold"]["hit_rate"] is None and r["pass_agreement"]["warm"]["same_grades"]


@pytest.mark.slow
def test_entry_points_for_the_llm_benchmark(report, tmp_path):
    files, _, cfg, _ = report
    opts = {k: getattr(cfg, k) for k in ("encoder", "tokenizer", "lr", "batch_size", "eval_batch_size", "qe_max_epochs")}
    got = bench.train_ebrm(files.train, files.val, files.test, str(tmp_path / "e"), seed=0, max_epochs=2, **opts)
    labels = pq.read_table(files.test)["label"].to_pylist()
    assert got["true"] == labels and len(got["pred"]) == len(labels) and got["train_seconds"] > 0
    assert got["row"]["qe"] is not None and 1 <= got["epochs"] <= 2
    fixed = bench.train_cross_encoder(files.train, None, files.test, str(tmp_path / "c"), seed=0, epochs=1, **opts)
    assert fixed["epochs"] == 1 and fixed["row"]["val_curve"] is None and len(fixed["pred"]) == len(labels)
    with pytest.raises(ValueError, match="needs validation queries"):
        bench.train_cross_encoder(files.train, None, files.test, str(tmp_path / "x"), seed=0, **opts)


def test_the_jobs_differ_only_in_the_model():
    cfg = bench.BenchConfig(encoder="some/encoder")
    jobs = {m: bench.job_values(m, cfg, "train.parquet") for m in bench.MODELS}
    models = {m: jobs[m].pop("model") for m in bench.MODELS}
    assert jobs["ebrm"] == jobs["ebrm_qe"] == jobs["relevance_cross_encoder"] == jobs["relevance_bi_encoder"]
    shared = ("encoder", "tokenizer", "pooling", "max_length", "grades", "label_base", "relevant_grade")
    assert len({tuple(str(a[k]) for k in shared) for a in models.values()}) == 1
    assert "or_types" in models["ebrm"] and "or_types" not in models["relevance_cross_encoder"]
    assert jobs["ebrm"]["features"]["features"][-1]["kind"] == "label"


@pytest.mark.parametrize("bad, match", [({"max_epochs": 0}, "max_epochs must be an int >= 1"),
                                        ({"epochs": 0}, "epochs must be an int >= 1 or None"),
                                        ({"repeats": 0}, "repeats must be an int >= 1"),
                                        ({"lr": 0.0}, r"lr must be > 0"),
                                        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\)"),
                                        ({"seeds": (1, 1)}, "distinct seeds"),
                                        ({"models": ("ebrm", "ebrm")}, "distinct names"),
                                        ({"models": ("bm25",)}, "distinct names")])
def test_bad_config_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bench.BenchConfig(**bad)


def test_speed_only_measures_untrained_towers(tmp_path):
    base = bench.BenchConfig(queries=20, per_query=8, test_fraction=0.3, val_fraction=0.25, task_seed=2)
    files, info = bench.write_files(base, _items(), str(tmp_path))
    cfg = _config(files, models=("ebrm_qe", "ebrm", "relevance_cross_encoder"), eval_batch_size=16, repeats=1)
    out = bench.speed_only(cfg, files)
    assert set(out) == {"ebrm", "relevance_cross_encoder", "ebrm_over_cross"}  # ebrm_qe is the same tower
    assert set(out["ebrm"]) == {"uncached", "cold", "warm"} and out["ebrm"]["warm"]["hit_rate"] == 1.0
    assert all(p["items"] == info["test_items"] for p in out["relevance_cross_encoder"].values())
    assert out["ebrm_over_cross"]["warm"] == pytest.approx(
        out["ebrm"]["warm"]["items_per_s"] / out["relevance_cross_encoder"]["warm"]["items_per_s"])
