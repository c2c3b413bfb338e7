"""YAML jobs and the `recis` command line: config errors name the key; a job trains end to end."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recis.cli import main
from recis.run import Job, RunConfig

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _write_ctr(path, rows, seed, row_group_size=None):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 50, rows)
    item = rng.integers(0, 40, rows)
    dense = rng.normal(size=rows)
    logit = 2.0 * ((user % 2) == (item % 2)) - 1.0 + dense
    label = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.float32)
    pq.write_table(pa.table({"user": [f"u{u}" for u in user], "item": item.astype(np.int64), "x": dense,
                             "label": label}), path, row_group_size=row_group_size)


def _job_dict(tmp_path):
    _write_ctr(tmp_path / "train.parquet", 4096, 0)
    _write_ctr(tmp_path / "test.parquet", 1024, 1)
    return {
        "data": {"train": "train.parquet", "eval": "test.parquet", "batch_size": 128, "shuffle_buffer": 1024},
        "features": {"features": [
            {"name": "user", "kind": "sparse", "column": "user", "ops": [{"op": "hash"}]},
            {"name": "item", "kind": "sparse", "column": "item", "ops": [{"op": "hash"}]},
            {"name": "x", "kind": "dense", "column": "x"},
            {"name": "uid", "kind": "passthrough", "column": "user"},
            {"name": "label", "kind": "label", "column": "label"}]},
        "model": {"name": "deepfm", "embedding_dim": 8, "hidden": [16],
                  "initializer": {"name": "truncated_normal", "std": 0.01}},
        "optim": {"sparse": {"name": "rowwise_adagrad", "lr": 0.1}, "dense": {"name": "adam", "lr": 0.01}},
        "trainer": {"epochs": 3, "progress": False, "log_every": 10, "seed": 0, "log_dir": str(tmp_path / "logs")},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 40, "keep_last": 2},
    }


def test_cli_trains_a_yaml_job_and_evaluates_its_checkpoint(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(_job_dict(tmp_path)))
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["auc"] > 0.7 and result["examples"] == 1024
    assert "auc" in capsys.readouterr().out
    assert (tmp_path / "logs" / "curve.png").exists()
    assert main(["eval", str(config)]) == 0
    assert "logloss" in capsys.readouterr().out


def test_config_errors_name_the_key(tmp_path):
    job = _job_dict(tmp_path)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\] in trainer"):
        RunConfig.from_dict({**job, "trainer": {"epoch": 1}}, str(tmp_path))
    with pytest.raises(TypeError, match=r"data.batch_size must be an integer >= 1, got str \(.128.\)"):
        RunConfig.from_dict({**job, "data": {**job["data"], "batch_size": "128"}}, str(tmp_path))
    with pytest.raises(ValueError, match="model.name must be one of"):
        Job(RunConfig.from_dict({**job, "model": {"name": "deepfn"}}, str(tmp_path)))
    with pytest.raises(ValueError, match="optim.sparse.name must be one of"):
        Job(RunConfig.from_dict({**job, "optim": {"sparse": {"name": "adamm"}, "dense": {"name": "adam"}}},
                                str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        RunConfig.from_yaml(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".yaml")))
def test_example_configs_parse(name):
    cfg = RunConfig.from_yaml(os.path.join(EXAMPLES, name))
    assert cfg.model.name


@pytest.mark.slow
def test_movielens_example_runs(tmp_path):
    """The demo's own config, shortened: MovieLens-1M download (cached), features, DeepFM, eval."""
    cfg = RunConfig.from_yaml(os.path.join(EXAMPLES, "movielens_deepfm.yaml"))
    cfg.trainer.max_steps, cfg.trainer.eval_every, cfg.trainer.progress = 30, None, False
    cfg.trainer.log_dir = str(tmp_path)
    result = Job(cfg).train()
    assert result["examples"] == 100_021 and 0.5 < result["auc"] < 1


def test_resume_off_with_checkpoints_of_an_earlier_run_is_refused_before_training(tmp_path):
    from recis.run import Job, RunConfig

    job = _job_dict(tmp_path)
    job["trainer"]["max_steps"] = 40
    Job(RunConfig.from_dict(job, base_dir=str(tmp_path))).train()
    job["checkpoint"]["resume"] = False
    again = Job(RunConfig.from_dict(job, base_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"checkpoint.dir .*ckpt holds checkpoints of an earlier run \(latest "
                                         r"step-000000000040\) and checkpoint.resume is false"):
        again.train()
    assert again.trainer.step == 0
