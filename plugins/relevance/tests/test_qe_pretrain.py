"""QE pretraining of EBRM: per-head labels from logs and from the constraints a query states, the
`qe` objective (it trains every head the AND reads; the match-only vanilla leaves the conflict
heads untouched), and the pretraining as a recis job whose checkpoint starts the relevance job."""
from relevance_testing import WORDS, tiny, tiny_encoder  # noqa: F401 (first: puts the plugin on the path)
import math
import random
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.run import Job, RunConfig
from recis_relevance import EBRMTower
from recis_relevance.entities import Entity
from recis_relevance.pretrain import (ClickLog, QueryConstraint, conflict_level, movie_query_constraints,
                                      qe_head_labels, qe_loss, qe_table)
from recis_relevance.task import DECADES, NEAR, build_task, feature_config, grade, query_text


ITEMS = {1: ["genre: Comedy", "year: 1995"], 2: ["genre: Comedy", "genre: Horror", "year: 1993"],
         3: ["genre: Drama", "year: 1971"], 4: ["genre: Comedy", "year: 1988"]}


def test_head_labels_from_logs_and_stated_conflicts():
    logs = [ClickLog("1990s comedy not horror", [1, 2, 3, 4], [1, 2]), ClickLog("comedy films", [3, 4], [4])]
    got = qe_head_labels(logs, ITEMS, grades=4, constraints=lambda q: movie_query_constraints(
        q, ["Comedy", "Drama", "Horror"], near=NEAR))
    N = None
    want = [  # query 1: positives (items 1, 2), log negatives (genre of 3), then conflicts that are neither
        ("1990s comedy not horror", "genre: Comedy", (1.0, 1.0, 1.0, 1.0)),
        ("1990s comedy not horror", "year: 1995", (1.0, 1.0, 1.0, 1.0)),
        ("1990s comedy not horror", "genre: Horror", (0.0, 0.0, 0.0, 0.0)),  # clicked, but the query excludes it
        ("1990s comedy not horror", "year: 1993", (1.0, 1.0, 1.0, 1.0)),
        ("1990s comedy not horror", "genre: Drama", (0.0, N, N, N)),  # log negative: the match head only
        ("1990s comedy not horror", "year: 1971", (0.0, N, 0.0, 0.0)),  # far outside the decade: level 2 up
        ("1990s comedy not horror", "year: 1988", (0.0, N, N, 0.0)),  # 2 years out: not exact (level 3)
        ("comedy films", "genre: Comedy", (1.0, 1.0, 1.0, 1.0)), ("comedy films", "year: 1988", (1.0, 1.0, 1.0, 1.0)),
        ("comedy films", "genre: Drama", (0.0, N, N, N)), ("comedy films", "year: 1971", (0.0, N, N, N))]
    assert got == want
    paper = qe_head_labels(logs, ITEMS, grades=2, log_negatives="all")  # binary, log rule only: one score
    assert ("comedy films", "genre: Drama", (0.0, 0.0)) in paper and all(
        t in ((1.0, 1.0), (0.0, 0.0)) for _, _, t in paper)
    with pytest.raises(ValueError, match="log_negatives must be one of"):
        qe_head_labels(logs, ITEMS, grades=2, log_negatives="some")


@pytest.mark.parametrize("seed", range(3))
def test_stated_conflicts_agree_with_the_task_rules(seed):
    """For every template, the constraints read from the query text give each year entity the
    conflict level that the task's grading rule (task.grade, with NEAR) implies, and an excluded
    genre level 1."""
    rng = random.Random(seed)
    genres = ["Comedy", "Horror", "Sci-Fi", "Children's", "Film-Noir"]
    for _ in range(60):
        want, avoid = rng.sample(genres, 2)
        avoid = avoid if rng.random() < 0.5 else None
        decade = rng.choice((None,) + DECADES)
        q = query_text(want, avoid, decade, rng)
        cons = movie_query_constraints(q, genres, near=NEAR)
        for year in range(1925, 2005):
            g = grade([want], year, want, None, decade)  # the year's own effect on the grade
            expect = {4: None, 3: 3, 2: 2}[g]
            assert conflict_level(cons, f"year: {year}", 4) == expect, (q, year)
        for other in genres:
            assert conflict_level(cons, f"genre: {other}", 4) == (1 if other == avoid else None), (q, other)


def test_qe_loss_is_the_masked_mean_bce():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.0, -0.7]])
    targets = torch.tensor([[1.0, 0.0, 7.0], [0.0, 1.0, 1.0]])  # 7: masked, never read
    mask = torch.tensor([[True, True, False], [True, False, True]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = lambda x, y: -(y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x)))  # noqa: E731
    want = [(bce(0.3, 1) + bce(-1.2, 0)) / 2, (bce(1.5, 0) + bce(-0.7, 1)) / 2]
    assert qe_loss(logits, targets, mask).tolist() == pytest.approx(want, abs=1e-6)
    w = torch.tensor([2.0, 1.0, 1.0])
    assert float(qe_loss(logits, targets, mask, w)[0]) == pytest.approx((2 * bce(0.3, 1) + bce(-1.2, 0)) / 3, abs=1e-6)


def _qe_batch(labels):
    t = qe_table(labels)
    return SimpleNamespace(extras={c: t[c] for c in ("query", "entities", "qe_target")}, labels=None, sparse=None)


def _qe_tower(tiny):
    torch.manual_seed(0)
    return EBRMTower(**tiny, grades=4, label_base=1, relevant_grade=3, or_types=["genre"], objective="qe")


def test_the_qe_objective_trains_the_heads_the_and_reads(tiny):
    """Per-head QE labels give the conflict heads c_k (which the AND reads for every entity) a
    gradient; the vanilla, match-only labels (what pretraining trained before) give them exactly
    none. After a few steps, the item that carries the excluded genre scores lower in the AND."""
    q = "comedy movies not horror"
    labels = [(q, "genre: Horror", (0.0, 0.0, 0.0, 0.0)), (q, "genre: Comedy", (1.0, 1.0, 1.0, 1.0)),
              (q, "year: 1995", (1.0, 1.0, 1.0, 1.0))]
    vanilla = [(q, e, (t[0], None, None, None)) for q, e, t in labels]
    item = [["genre: Comedy", "genre: Horror", "year: 1995"]]
    runs = {}
    for name, rows in (("heads", labels), ("vanilla", vanilla)):
        tower = _qe_tower(tiny)
        tower.eval()
        with torch.no_grad():
            before = tower.score([q], item)["levels"][0, 0].item()
        head0 = tower.head.weight.detach().clone()
        opt = torch.optim.Adam(tower.parameters(), lr=0.02)
        tower.train()
        for step in range(30):
            opt.zero_grad()
            tower(_qe_batch(rows)).loss.backward()
            if step == 0:
                runs[name + "_grad"] = tower.head.weight.grad.abs().sum(1)
            opt.step()
        tower.eval()
        with torch.no_grad():
            runs[name] = (before, tower.score([q], item)["levels"][0, 0].item(),
                          torch.sigmoid(tower.qe_logits([(q, "genre: Horror")], use_cache=False))[0, 1].item())
        runs[name + "_moved"] = (tower.head.weight.detach() - head0).abs().sum(1)
    assert torch.all(runs["heads_grad"] > 0) and torch.all(runs["heads_moved"][1:] > 0)
    assert runs["vanilla_grad"][0] > 0 and torch.all(runs["vanilla_grad"][1:] == 0)
    assert torch.all(runs["vanilla_moved"][1:] == 0)  # the heads the AND reads for every entity stay put
    before, after, c1 = runs["heads"]
    assert c1 < 0.2 and after < before - 0.3  # the excluded genre now vetoes the item at level 1


def test_qe_objective_errors_are_named(tiny):
    tower = _qe_tower(tiny)
    bad = _qe_batch([("q", "genre: Comedy", (1.0, 1.0, 1.0, 1.0))])
    bad.extras["entities"] = pa.array([["genre: Comedy", "year: 1995"]])
    with pytest.raises(ValueError, match="one entity per row from 'entities'"):
        tower(bad)
    short = _qe_batch([("q", "genre: Comedy", (1.0, 1.0))])
    with pytest.raises(ValueError, match="'qe_target' must hold a list of 4 targets"):
        tower(short)
    with pytest.raises(ValueError, match="objective must be one of"):
        EBRMTower(**tiny, objective="pretrain")
    with pytest.raises(ValueError, match="qe_head_weights must give 2 weights"):
        EBRMTower(**tiny, qe_head_weights=[1.0])
    with pytest.raises(ValueError, match="level"):
        QueryConstraint("year", level=0)
    assert Entity.parse("year: 1995").value == "1995"


def _items():
    genres = [["Comedy"], ["Comedy", "Romance"], ["Horror"], ["Drama", "Comedy"], ["Action"], ["Romance"],
              ["Horror", "Comedy"], ["Drama"]]
    n = 40
    return pa.table({"item_id": list(range(1, n + 1)), "title": [f"Story {i} (19{50 + i})" for i in range(n)],
                     "year": pa.array([1950 + i for i in range(n)], pa.int32()),
                     "genres": [genres[i % len(genres)] for i in range(n)]})


def _values(tmp_path, task):
    pq.write_table(task.train, tmp_path / "train.parquet")
    return {"data": {"train": str(tmp_path / "train.parquet"), "batch_size": 8, "shuffle_buffer": 64, "seed": 0},
            "features": feature_config(sparse=True),
            "model": {"name": "ebrm", "encoder": tiny_encoder(), "tokenizer": {"vocab": list(WORDS)}, "grades": 4,
                      "label_base": 1, "relevant_grade": 3, "or_types": ["genre"],
                      "sparse_features": ["query_id", "item_id", "entity_ids"], "sparse_dim": 4},
            "optim": {"sparse": {"name": "rowwise_adagrad", "lr": 0.05}, "dense": {"name": "adamw", "lr": 1e-3}},
            "trainer": {"epochs": 2, "log_every": 2, "seed": 0}, "checkpoint": {"dir": None, "every": 3, "keep_last": 10}}


def test_qe_pretraining_is_a_job_that_resumes_exactly_and_starts_the_relevance_job(tmp_path):
    from recis_relevance.qe_stage import qe_job_values, relevance_job_values, write_qe_files

    task = build_task(_items(), queries=12, per_query=8, seed=1)
    values = _values(tmp_path, task)
    files = write_qe_files(task.train, str(tmp_path / "qe"), grades=4, near=NEAR, val=task.test)
    assert files["train_rows"] > 0 and all(n > 0 for n in files["train_labelled_heads"])

    def qe_job(name, max_steps=None):
        v = qe_job_values(values, files["train"], str(tmp_path / name), qe_eval=files["val"])
        if max_steps is not None:
            v["trainer"]["max_steps"] = max_steps
        return Job(RunConfig.from_dict(v))

    full = qe_job("full")
    result = full.train()
    assert 0 < result["qe_loss"] < 2 and 0 <= result["qe_accuracy"] <= 1  # the tower metric on the QE rows
    cut = qe_job("cut", max_steps=3)
    cut.train()
    resumed = qe_job("cut")  # a new Job: resumes from step 3 of its own checkpoints
    resumed.train()
    assert resumed.trainer.step == full.trainer.step
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n

    rel = Job(RunConfig.from_dict(relevance_job_values(values, str(tmp_path / "rel"),
                                                       str(tmp_path / "full" / "checkpoints"))))
    assert rel.model.config.objective == "relevance"
    for (n, a), (_, b) in zip(full.model.named_parameters(), rel.model.named_parameters()):
        assert torch.equal(a, b), n  # the relevance job starts from the QE stage's weights
    scratch = Job(RunConfig.from_dict(relevance_job_values(values, str(tmp_path / "scratch"))))
    assert not torch.equal(scratch.model.head.weight, rel.model.head.weight)
