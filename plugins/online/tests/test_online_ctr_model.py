"""The online logistic tower in jobs: its head stays in the l1 ball under BOGD_IP (and leaves it
under unconstrained Adam on the same job), the YAML example runs as a streaming prequential job,
and bad model options are refused by name."""
from pathlib import Path

import pytest
import torch

from recis.towers import FeatureInfo
from recis_online.ctr.experiment import run_online
from recis_online.ctr.model import OnlineLogisticConfig, OnlineLogisticTower

from ctr_testing import small_stream  # noqa: F401 (a fixture)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "online_movielens.yaml"


def test_head_stays_in_the_l1_ball_under_bogd_ip_and_leaves_it_under_adam(small_stream):
    radius = 0.3
    job = dict(batch_size=128, window=1000, log_every=10)  # log steps too (they read each optimizer's groups)
    bogd = run_online(small_stream.files, {"name": "bogd_ip", "set": "l1_ball", "radius": radius, "eta": 0.5,
                                           "block": 2, "eps": 1e-3}, **job)
    adam = run_online(small_stream.files, {"name": "adam", "lr": 0.05}, **job)
    assert bogd.examples == adam.examples == 6000
    for name, l1 in bogd.head_max_l1.items():  # every step, each parameter in its own copy of the ball
        assert l1 <= radius * (1 + 1e-6), (name, l1)
    assert bogd.head_max_l1["head.weight"] > 0.5 * radius  # it moved, up to the ball's boundary
    assert adam.head_max_l1["head.weight"] > 3 * radius   # the same job unconstrained leaves the ball
    assert len(bogd.history) == 6 and all(0 <= h["auc"] <= 1 for h in bogd.history)


def test_yaml_example_runs_as_a_streaming_prequential_job(small_stream, tmp_path):
    from recis.run import Job, RunConfig

    cfg = RunConfig.from_yaml(str(EXAMPLE))
    assert cfg.data.stream is not None and cfg.trainer.prequential
    cfg.data.stream.root = str(small_stream.root)
    cfg.data.stream.stop_after_idle = 0.5
    cfg.trainer.log_dir = str(tmp_path / "logs")
    cfg.trainer.prequential_window = 1000
    cfg.trainer.progress = False
    cfg.trainer.log_every = 10
    job = Job(cfg)
    job.train()
    assert job.trainer.examples == 6000  # every window read once, in order
    assert [h["window"] for h in job.trainer.prequential_history] == list(range(1, 7))
    radius = cfg.optim.params[0].optimizer["radius"]
    for name, p in job.model.head.named_parameters():
        assert float(p.detach().abs().sum()) <= radius * (1 + 1e-6), name
    with open(tmp_path / "logs" / "metrics.csv") as f:  # the prequential metrics reach the step logs
        header = f.readline().strip().split(",")
    assert {"preq_auc", "preq_logloss", "preq_window_auc"} <= set(header)


def test_tower_from_features_and_bad_options():
    info = FeatureInfo(sparse=("user_id", "item_id", "genres"))
    t = OnlineLogisticTower.from_features(info, embedding_dim=4)
    assert t.head.in_features == 12 and t.config.sparse_features == ["user_id", "item_id", "genres"]
    assert float(t.head.weight.detach().abs().sum()) == 0.0  # starts at 0: inside every ball
    sub = OnlineLogisticTower.from_features(info, sparse_features=["item_id"], embedding_dim=4)
    assert sub.head.in_features == 4
    with pytest.raises(ValueError, match=r"online_logistic.sparse_features \['title'\] are not sparse features"):
        OnlineLogisticTower.from_features(info, sparse_features=["title"])
    with pytest.raises(ValueError, match="online_logistic.combiner must be 'sum' or 'mean'"):
        OnlineLogisticConfig(combiner="max")
    with pytest.raises(TypeError, match="online_logistic.embedding_dim must be an integer"):
        OnlineLogisticConfig(embedding_dim=2.5)


def test_table_seed_changes_the_tables_not_the_head():
    a, b, c = (OnlineLogisticTower(["user_id"], embedding_dim=4, seed=s) for s in (0, 0, 1))
    seeds = [[t.seed for t in m.tables.configs] for m in (a, b, c)]
    assert seeds[0] == seeds[1] != seeds[2]
    assert torch.equal(a.head.weight, c.head.weight)
