"""EBRM through `recis train` (entry point, feature engine, Trainer, sparse + dense optimizers,
checkpoints): it trains, resumes exactly, and the example runs in a small configuration."""
from relevance_testing import WORDS, tiny, tiny_encoder  # noqa: F401 (first: puts the plugin on the path)
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recis.cli import main
from recis.run import Job, RunConfig
from recis.towers import TowerNotFoundError, load_tower
from recis_relevance.task import build_task, feature_config


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _items():
    genres = [["Comedy"], ["Comedy", "Romance"], ["Horror"], ["Drama", "Comedy"], ["Action"], ["Romance"],
              ["Horror", "Comedy"], ["Drama"]]
    n = 40
    return pa.table({"item_id": list(range(1, n + 1)), "title": [f"Story {i} (19{50 + i})" for i in range(n)],
                     "year": pa.array([1950 + i for i in range(n)], pa.int32()),
                     "genres": [genres[i % len(genres)] for i in range(n)]})


def _job(tmp_path, every=4, resume=True):
    task = build_task(_items(), queries=16, per_query=8, seed=1)
    pq.write_table(task.train, tmp_path / "train.parquet")
    pq.write_table(task.test, tmp_path / "test.parquet")
    return {"data": {"train": "train.parquet", "eval": "test.parquet", "batch_size": 16, "shuffle_buffer": 64},
            "features": feature_config(sparse=True),
            "model": {"name": "ebrm", "encoder": tiny_encoder(), "tokenizer": {"vocab": list(WORDS)},
                      "grades": 4, "label_base": 1, "relevant_grade": 3, "or_types": ["genre"],
                      "sparse_features": ["query_id", "item_id", "entity_ids"], "sparse_dim": 4},
            "optim": {"sparse": {"name": "rowwise_adagrad", "lr": 0.05}, "dense": {"name": "adamw", "lr": 1e-3},
                      "groups": {"head": {"lr": 1e-2}}},
            "trainer": {"epochs": 2, "progress": False, "log_every": 2, "seed": 0},
            "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": every, "keep_last": 10, "resume": resume}}


def test_recis_train_runs_an_ebrm_config_and_resumes_exactly(tmp_path):
    job = _job(tmp_path)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["train", str(tmp_path / "job.yaml")]) == 0
    full = Job(RunConfig.from_dict({**job, "checkpoint": {**job["checkpoint"], "dir": str(tmp_path / "c2")}},
                                   str(tmp_path)))
    full.train()
    steps = full.trainer.step
    assert steps > 8 and {g["lr"] for g in full.dense_optimizer.param_groups} == {1e-3, 1e-2}
    assert len(full.model.ids.tables()["query_id"]) > 0  # the hash tables trained beside the encoder

    # an interrupted run: stop at step 8, then a new process-like Job resumes from its checkpoint
    cut = {**job, "checkpoint": {**job["checkpoint"], "dir": str(tmp_path / "c3")}}
    first = Job(RunConfig.from_dict(cut, str(tmp_path)))
    first.cfg.trainer.max_steps = first.trainer.config.max_steps = 8
    first.train()
    assert first.trainer.step == 8
    second = Job(RunConfig.from_dict(cut, str(tmp_path)))
    second.train()
    assert second.trainer.step == steps
    for (n, x), (_, y) in zip(full.model.named_parameters(), second.model.named_parameters()):
        assert torch.equal(x, y), n
    for name, table in full.model.ids.tables().items():  # same ids, same rows (row order may differ)
        other = second.model.ids.tables()[name]
        ids = table.export()["ids"]
        assert sorted(ids.tolist()) == sorted(other.export()["ids"].tolist())
        assert torch.equal(table.lookup(ids), other.lookup(ids)), name


def test_unknown_tower_lists_the_installed_ones(tmp_path):
    with pytest.raises(TowerNotFoundError, match=r"installed towers.*'ebrm'.*'relevance_bi_encoder'"):
        load_tower("ebrn")
    job = _job(tmp_path)
    with pytest.raises(ValueError, match=r"installed tower \(installed towers: \[.*'ebrm'"):
        Job(RunConfig.from_dict({**job, "model": {**job["model"], "name": "ebrn"}}, str(tmp_path)))
    bad = {**job, "features": {"features": [f for f in job["features"]["features"] if f["name"] != "entities"]}}
    with pytest.raises(ValueError, match="pass-through column 'entities'"):
        Job(RunConfig.from_dict(bad, str(tmp_path)))
    with pytest.raises(ValueError, match=r"optim.groups names \['encodr'\]"):
        Job(RunConfig.from_dict({**job, "optim": {**job["optim"], "groups": {"encodr": {"lr": 1.0}}}},
                                str(tmp_path)))


@pytest.mark.parametrize("name", ["relevance_cross_encoder", "relevance_bi_encoder"])
def test_baselines_train_through_recis_train(tmp_path, name):
    job = _job(tmp_path)
    job["model"] = {"name": name, "encoder": tiny_encoder(), "tokenizer": {"vocab": list(WORDS)}, "grades": 4,
                    "label_base": 1, "relevant_grade": 3}
    job["trainer"]["epochs"] = 1
    job["checkpoint"] = {"dir": None}
    result = Job(RunConfig.from_dict(job, str(tmp_path))).train()
    assert 0 <= result["auc"] <= 1 and result["examples"] > 0


@pytest.mark.slow
def test_the_example_runs_small(tmp_path):
    import runpy

    example = runpy.run_path(os.path.join(ROOT, "examples", "ebrm_movielens.py"))
    result = example["main"](["--small", "--out", str(tmp_path / "run"), "--queries", "24", "--epochs", "1"])
    cold, warm = result["test_cold_cache"], result["test_warm_cache"]
    assert warm["cache_hit_rate"] == 1.0 and warm["macro_f1"] == cold["macro_f1"]
    assert result["qe_pretrain"]["labels"] > 0 and (tmp_path / "run" / "ebrm_result.json").exists()
    forced = result["example"][next(k for k in result["example"] if k.startswith("with "))]
    assert forced["grade"] == 1 and forced["grade_probs"][0] == pytest.approx(1.0)
