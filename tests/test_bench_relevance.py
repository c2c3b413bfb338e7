"""benchmarks/relevance_ebrm.py (EBRM vs cross-encoder vs bi-encoder) in a tiny configuration: a tiny
random BERT on a task built from a synthetic catalogue, so nothing is downloaded."""
import os
import sys

import pyarrow as pa
import pytest
from sklearn.metrics import accuracy_score, f1_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "plugins", "relevance", "tests"))

import relevance_testing  # noqa: E402,F401 (makes the plugin and its towers discoverable when not installed)
import relevance_ebrm as bench  # noqa: E402

from recis_relevance.task import build_task, tiny_encoder_options  # noqa: E402

GENRES = [["Comedy"], ["Comedy", "Romance"], ["Horror"], ["Drama", "Comedy"], ["Action"], ["Romance"],
          ["Horror", "Comedy"], ["Drama"]]


def _task():
    n = 48
    items = pa.table({"item_id": list(range(1, n + 1)), "title": [f"Story {i} (19{50 + i % 50})" for i in range(n)],
                      "year": pa.array([1950 + i for i in range(n)], pa.int32()),
                      "genres": [GENRES[i % len(GENRES)] for i in range(n)]})
    return build_task(items, queries=16, per_query=8, seed=2)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    task = _task()
    cfg = bench.BenchConfig(**tiny_encoder_options(task), epochs=1, batch_size=16, eval_batch_size=8, lr=1e-3)
    return task, cfg, bench.run(cfg, task, str(tmp_path_factory.mktemp("bench")))


def _expected_cold_hit_rate(table: pa.Table, batch_size: int) -> float:
    """A set model of the cold pass: each batch looks up its distinct (query, entity) pairs once;
    a pair computed in an earlier batch is a hit."""
    seen, hits, lookups = set(), 0, 0
    rows = table.to_pylist()
    for start in range(0, len(rows), batch_size):
        pairs = {(r["query"], e) for r in rows[start:start + batch_size] for e in r["entities"]}
        hits += len(pairs & seen)
        lookups += len(pairs)
        seen |= pairs
    return hits / lookups


@pytest.mark.slow  # the shared fixture trains three tiny towers (~5-15 s on 2 busy cores)
def test_report_structure_and_metrics_match_sklearn(report):
    task, cfg, rep = report
    labels = task.test["label"].to_pylist()
    assert rep["task"]["labels"] == labels and rep["task"]["test_items"] == len(labels)
    assert [r["model"] for r in rep["models"]] == list(bench.MODELS)
    for r in rep["models"]:
        expected = {"uncached", "cold", "warm"} if r["model"] == "ebrm" else {"cold", "warm"}
        assert set(r["inference"]) == expected, r["model"]
        for p in r["inference"].values():
            assert p["items"] == len(labels) and p["items_per_s"] > 0 and p["seconds"] > 0
        assert len(r["pred"]) == len(labels) and set(r["pred"]) <= {1, 2, 3, 4}
        assert r["accuracy"] == pytest.approx(accuracy_score(labels, r["pred"]))
        assert r["macro_f1"] == pytest.approx(f1_score(labels, r["pred"], labels=[1, 2, 3, 4], average="macro",
                                                       zero_division=0))
        per_grade = f1_score(labels, r["pred"], labels=[1, 2, 3, 4], average=None, zero_division=0)
        assert [r["f1_per_grade"][str(g)] for g in (1, 2, 3, 4)] == pytest.approx(list(per_grade))
        assert r["train_examples"] == task.train.num_rows * cfg.epochs and r["train_seconds"] > 0
    md = bench.markdown(rep)
    assert all(f"| {n} |" in md for n in ("EBRM", "cross-encoder", "bi-encoder"))


@pytest.mark.slow  # the shared fixture trains three tiny towers (~5-15 s on 2 busy cores)
def test_warm_ebrm_hits_the_cache_fully_and_agrees_with_uncached(report):
    task, cfg, rep = report
    ebrm = rep["models"][0]
    assert ebrm["inference"]["warm"]["hit_rate"] == 1.0
    assert ebrm["inference"]["cold"]["hit_rate"] == pytest.approx(_expected_cold_hit_rate(task.test,
                                                                                           cfg.eval_batch_size))
    assert ebrm["inference"]["uncached"]["hit_rate"] is None  # the encoder scored every pair
    for k in ("uncached", "warm"):
        assert ebrm["pass_agreement"][k]["same_grades"], k
        assert ebrm["pass_agreement"][k]["max_abs_prob_diff"] <= 1e-6, k
    for r in rep["models"][1:]:  # no cache: both passes recompute, with the same result
        assert r["inference"]["cold"]["hit_rate"] is None and r["pass_agreement"]["warm"]["same_grades"]


@pytest.mark.slow  # the shared fixture trains three tiny towers (~5-15 s on 2 busy cores)
def test_comparison_is_computed_from_the_rows(report):
    _, _, rep = report
    ebrm, cross = rep["models"][0], rep["models"][1]
    cmp = rep["comparison"]
    base = cross["inference"]["warm"]["items_per_s"]
    for k in ("uncached", "cold", "warm"):
        assert cmp[f"ebrm_{k}_over_cross_items_per_s"] == pytest.approx(ebrm["inference"][k]["items_per_s"] / base)
    assert cmp["ebrm_minus_cross_macro_f1"] == pytest.approx(ebrm["macro_f1"] - cross["macro_f1"])
    assert cmp["targets"] == {"macro_f1_at_least_cross": cmp["ebrm_minus_cross_macro_f1"] >= 0,
                              "warm_speedup_at_least_5x": cmp["ebrm_warm_over_cross_items_per_s"] >= 5}
    assert bench.compare({"ebrm": ebrm}) == {}


def test_the_jobs_differ_only_in_the_model():
    cfg = bench.BenchConfig(encoder="some/encoder")
    jobs = {m: bench.job_values(m, cfg, "train.parquet") for m in bench.MODELS}
    models = {m: jobs[m].pop("model") for m in bench.MODELS}
    assert jobs["ebrm"] == jobs["relevance_cross_encoder"] == jobs["relevance_bi_encoder"]
    shared = ("encoder", "tokenizer", "pooling", "max_length", "grades", "label_base", "relevant_grade")
    assert len({tuple(str(a[k]) for k in shared) for a in models.values()}) == 1
    assert "or_types" in models["ebrm"] and "or_types" not in models["relevance_cross_encoder"]
    assert jobs["ebrm"]["features"]["features"][-1]["kind"] == "label"


@pytest.mark.parametrize("bad, match", [({"epochs": 0}, "epochs must be an int >= 1"),
                                        ({"lr": 0.0}, r"lr must be > 0"),
                                        ({"models": ("ebrm", "ebrm")}, "distinct names"),
                                        ({"models": ("bm25",)}, "distinct names")])
def test_bad_config_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bench.BenchConfig(**bad)
