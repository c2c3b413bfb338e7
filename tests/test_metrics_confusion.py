"""ConfusionMatrix against scikit-learn (f1_score macro / per class, accuracy_score,
confusion_matrix), merging, a real 2-process gloo sync, and the metric registry."""
import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from _metric_sync import write_sync_report
from recis.metrics import METRICS, ConfusionMatrix, build_metrics

OUTSIDE = -7.0  # a predicted value that is none of the classes (e.g. an unparseable answer)


@st.composite
def cases(draw):
    labels = draw(st.lists(st.integers(-3, 9), min_size=2, max_size=5, unique=True))
    n = draw(st.integers(1, 60))
    true = draw(st.lists(st.sampled_from(labels), min_size=n, max_size=n))
    pred = draw(st.lists(st.sampled_from(labels + [OUTSIDE]), min_size=n, max_size=n))
    weights = draw(st.one_of(st.none(), st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    chunk = draw(st.integers(1, n))
    return labels, np.array(true, dtype=float), np.array(pred, dtype=float), weights, chunk


@settings(max_examples=150, deadline=None)
@given(cases())
def test_matches_sklearn(case):
    labels, true, pred, weights, chunk = case
    w = None if weights is None else np.array(weights, dtype=float)
    m = ConfusionMatrix(labels)
    for i in range(0, len(true), chunk):  # streaming updates
        s = slice(i, i + chunk)
        m.update(torch.tensor(pred[s]), torch.tensor(true[s]), None if w is None else torch.tensor(w[s]))
    got = m.results()
    if w is not None and w.sum() == 0:
        assert all(math.isnan(v) for v in got.values()) and math.isnan(m.compute())
        return
    k = len(labels)
    # sklearn's confusion_matrix leaves out examples predicted outside the labels: our first K columns
    ref_cm = confusion_matrix(true, pred, labels=labels, sample_weight=w)
    np.testing.assert_allclose(m.matrix()[:, :k].numpy(), ref_cm, rtol=0, atol=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(true, pred, sample_weight=w), abs=1e-12)
    macro = f1_score(true, pred, labels=labels, average="macro", sample_weight=w, zero_division=0)
    assert got["macro_f1"] == pytest.approx(macro, abs=1e-12) and m.compute() == got["macro_f1"]
    per_class = f1_score(true, pred, labels=labels, average=None, sample_weight=w, zero_division=0)
    for label, ref in zip(labels, per_class):
        assert got[f"f1_{label}"] == pytest.approx(ref, abs=1e-12), label
    assert list(got) == ["accuracy", "macro_f1"] + [f"f1_{label}" for label in labels]


@settings(max_examples=60, deadline=None)
@given(cases(), st.data())
def test_merging_two_halves_equals_the_whole(case, data):
    labels, true, pred, _, _ = case
    cut = data.draw(st.integers(0, len(true)))
    whole, a, b = ConfusionMatrix(labels), ConfusionMatrix(labels), ConfusionMatrix(labels)
    whole.update(torch.tensor(pred), torch.tensor(true))
    a.update(torch.tensor(pred[:cut]), torch.tensor(true[:cut]))
    b.update(torch.tensor(pred[cut:]), torch.tensor(true[cut:]))
    assert torch.equal(a.merge(b).matrix(), whole.matrix())
    assert a.results() == whole.results()


def test_inputs_and_options_are_checked_by_name():
    m = ConfusionMatrix([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"label 5 at index 2 is not one of the classes \['1', '2', '3', '4'\]"):
        m.update(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
    assert math.isnan(m.compute())  # a refused batch changes nothing
    with pytest.raises(ValueError, match="at least 2 class label values"):
        ConfusionMatrix([1])
    with pytest.raises(ValueError, match="distinct"):
        ConfusionMatrix([1, 2, 1.0])
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix([1, 2]).merge(ConfusionMatrix([1, 2, 3]))
    half = ConfusionMatrix([0.5, 1.5])
    half.update(torch.tensor([0.5]), torch.tensor([0.5]))
    assert set(half.results()) == {"accuracy", "macro_f1", "f1_0.5", "f1_1.5"}


def test_registry_selects_metrics_by_name_and_names_the_unknown_ones():
    assert "confusion" in METRICS
    assert sorted(build_metrics()) == ["auc", "calibration", "logloss"]
    m = build_metrics({"confusion": {"labels": [1, 2, 3, 4]}, "auc": None})
    assert isinstance(m["confusion"], ConfusionMatrix) and m["confusion"].labels == [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"unknown metric 'f1'; known metrics: \['auc', 'calibration', 'confusion'"):
        build_metrics(["auc", "f1"])
    with pytest.raises(TypeError, match=r"metrics.confusion \(ConfusionMatrix\): .*labels"):
        build_metrics(["confusion"])
    with pytest.raises(TypeError, match=r"metrics.gauc \(GAUC\): .*weighing"):
        build_metrics({"gauc": {"weighing": "clicks"}})


# ---- a real 2-process gloo group ------------------------------------------------------------
WORLD = 2
LABELS = [1, 2, 3, 4]


def shard(rank):
    """Rank 0 gets 700 examples, rank 1 250, with weights and some predictions outside the classes."""
    g = torch.Generator().manual_seed(40 + rank)
    n = 700 if rank == 0 else 250
    true = torch.randint(1, 5, (n,), generator=g).double()
    noise = torch.randint(0, 6, (n,), generator=g)
    pred = torch.where(noise < 3, true, noise.double())  # half right; 0 and 5 are none of the classes
    weights = torch.randint(1, 3, (n,), generator=g).double()
    return pred, true, weights


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        pred, true, weights = shard(rank)
        m = ConfusionMatrix(LABELS)
        for i in range(0, len(pred), 128):
            m.update(pred[i:i + 128], true[i:i + 128], weights[i:i + 128])
        write_sync_report(m, lambda x: x.results(), ConfusionMatrix(LABELS if rank == 0 else [1, 2, 3]), out_dir,
                          rank)
    finally:
        dist.destroy_process_group()


def test_sync_over_two_gloo_ranks_equals_one_process_on_all_the_data(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    parts = [shard(r) for r in range(WORLD)]
    pred, true, weights = (torch.cat([p[i] for p in parts]).numpy() for i in range(3))
    whole = ConfusionMatrix(LABELS)
    whole.update(torch.tensor(pred), torch.tensor(true), torch.tensor(weights))
    expected = whole.results()
    assert expected["macro_f1"] == pytest.approx(f1_score(true, pred, labels=LABELS, average="macro",
                                                          sample_weight=weights), abs=1e-12)
    for rank, res in enumerate(results):
        assert res["synced"] == pytest.approx(expected, abs=1e-12), rank
        assert res["restored"] == res["local"] != res["synced"]
        assert "ranks [" in res["mismatch"] and "labels" in res["mismatch"]
    own = ConfusionMatrix(LABELS)
    own.update(*(t for t in parts[1][:2]), parts[1][2])
    assert results[1]["local"] == pytest.approx(own.results(), abs=1e-12)
