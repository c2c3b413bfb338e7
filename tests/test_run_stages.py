"""YAML jobs as stages (checkpoint.init_from) and the `metrics:` section, with the toy bandit
tower of test_trainer_rollout registered in-process."""
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score
from test_trainer_rollout import DIM, TRUE_W, Bandit

from recis.checkpoint import CheckpointManager, IncompatibleCheckpointError
from recis.cli import main
from recis.run import Job, RunConfig
from recis.towers import Tower, TowerOutput, register_tower, unregister_tower
from recis.testing import KillAt, Killed

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


@pytest.fixture(autouse=True)
def bandit_tower():
    register_tower("bandit_test", Bandit)
    yield
    unregister_tower("bandit_test")


def _write(path, rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, DIM)).astype(np.float32)
    label = (x @ TRUE_W.numpy().T).argmax(1) + 1
    pq.write_table(pa.table({**{f"x{i}": x[:, i] for i in range(DIM)}, "label": label.astype(np.float32)}), path)


def job_dict(tmp_path, ckpt, **model):
    if not (tmp_path / "train.parquet").exists():
        _write(tmp_path / "train.parquet", 256, 0)
        _write(tmp_path / "eval.parquet", 128, 1)
    return {
        "data": {"train": "train.parquet", "eval": "eval.parquet", "batch_size": 16, "shuffle_buffer": 64},
        "features": {"features": [{"name": f"x{i}", "kind": "dense", "column": f"x{i}"} for i in range(DIM)]
                     + [{"name": "label", "kind": "label", "column": "label"}]},
        "model": {"name": "bandit_test", **model},
        "metrics": {"confusion": {"labels": [1, 2, 3, 4]}},
        "optim": {"dense": {"name": "adam", "lr": 0.05}},
        "trainer": {"epochs": 2, "max_steps": 12, "progress": False, "seed": 0},
        "checkpoint": {"dir": str(tmp_path / ckpt), "every": 3, "keep_last": 5},
    }


def build(tmp_path, job) -> Job:
    return Job(RunConfig.from_dict(job, base_dir=str(tmp_path)))


def test_a_yaml_tower_job_prints_accuracy_and_macro_f1_of_its_confusion_metric(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    job = job_dict(tmp_path, "ckpt", minibatches=1, inner_steps=1)
    job["trainer"].update(log_dir=str(tmp_path / "logs"), log_every=4)
    config.write_text(yaml.safe_dump(job))
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"accuracy: \d\.\d{4}", out) and re.search(r"macro_f1: \d\.\d{4}", out) and "f1_3" in out
    result = json.loads((tmp_path / "result.json").read_text())
    # the same numbers from the trained model's predictions, by scikit-learn
    j = build(tmp_path, job)
    j.trainer.checkpoint.load("latest", model=j.model)
    pred, true = [], []
    j.model.eval()
    with torch.no_grad():
        for batch in j.eval_data:
            pred.append(j.model(batch).predicted)
            true.append(batch.labels)
    pred, true = torch.cat(pred).numpy(), torch.cat(true).numpy()
    assert result["accuracy"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)
    assert result["macro_f1"] == pytest.approx(f1_score(true, pred, labels=[1, 2, 3, 4], average="macro"), abs=1e-12)
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    assert "macro_f1" in rows[0] and "reward_mean" in rows[0]


def test_metrics_section_errors_name_the_metric(tmp_path):
    job = job_dict(tmp_path, "ckpt")
    with pytest.raises(ValueError, match=r"metrics: unknown metric 'f1_macro'; known metrics: \['auc', "):
        RunConfig.from_dict({**job, "metrics": ["auc", "f1_macro"]}, str(tmp_path))
    with pytest.raises(TypeError, match=r"metrics.confusion \(ConfusionMatrix\)"):
        RunConfig.from_dict({**job, "metrics": {"confusion": {"classes": [1, 2]}}}, str(tmp_path))
    deepfm = {**job, "model": {"name": "deepfm"}, "metrics": ["confusion"]}
    with pytest.raises(TypeError, match="labels"):
        RunConfig.from_dict(deepfm, str(tmp_path))
    deepfm["metrics"] = {"confusion": {"labels": [1, 2, 3, 4]}}
    deepfm["features"] = {"features": [{"name": "x0", "kind": "sparse", "column": "x0", "ops": [{"op": "bucketize",
                                                                                                 "boundaries": [0.0]}]},
                                       {"name": "label", "kind": "label", "column": "label"}]}
    with pytest.raises(ValueError, match=r"metrics \['confusion'\] compare predicted classes .* model 'deepfm' "
                                         "returns logits only"):
        build(tmp_path, deepfm)


def test_stages_chain_by_init_from_and_a_killed_stage_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # init_from is relative to the working directory, like checkpoint.dir
    first = build(tmp_path, {**job_dict(tmp_path, "sft", seed=0), "trainer": {
        "max_steps": 6, "progress": False, "seed": 0}})
    first.train()
    assert [c.step for c in CheckpointManager(tmp_path / "sft").checkpoints()] == [4, 6]  # and one at the end
    start = {k: v.clone() for k, v in first.model.policy.state_dict().items()}

    def second(ckpt):
        job = job_dict(tmp_path, ckpt, seed=5, kl=0.5)  # another init: only init_from makes them equal
        job["checkpoint"]["init_from"] = "sft"
        return build(tmp_path, job)

    fresh = second("grpo_a")
    assert fresh.init_checkpoint.resolve() == (tmp_path / "sft" / "step-000000000006").resolve()
    for k, v in fresh.model.policy.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert fresh.model.loaded == 1 and fresh.trainer.step == 0 and fresh.dense_optimizer.state_dict()["state"] == {}
    for k, v in fresh.model.reference.items():  # the tower's reference is the stage's start
        assert torch.equal(v, start[k])
    fresh.train()
    assert fresh.trainer.step == 12

    killed = second("grpo_b")
    killed.trainer.hooks.append(KillAt(10))
    with pytest.raises(Killed):
        killed.train()
    assert [c.step for c in CheckpointManager(tmp_path / "grpo_b").checkpoints()] == [4, 8]
    resumed = second("grpo_b")
    resumed.train()
    assert resumed.trainer.step == 12 and resumed.model.loaded == 1
    for (name, p), (_, q) in zip(fresh.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(fresh.model.sampler.get_state(), resumed.model.sampler.get_state())


class Other(Tower):
    def __init__(self):
        super().__init__()
        self.policy = torch.nn.Linear(DIM, 6)
        self.head = torch.nn.Linear(DIM, 1)

    def forward(self, batch):  # only saved by the test; a tower of other shapes
        return TowerOutput(self.head(batch.dense).squeeze(1))


def test_init_from_a_checkpoint_of_another_model_or_a_missing_path_is_refused_by_name(tmp_path):
    path = CheckpointManager(tmp_path / "other").save(1, Other())
    job = job_dict(tmp_path, "ckpt")
    job["checkpoint"]["init_from"] = str(tmp_path / "other")
    with pytest.raises(IncompatibleCheckpointError) as e:
        build(tmp_path, job)
    assert str(e.value) == (
        f"checkpoint.init_from: checkpoint {path} does not fit the model (Bandit): the checkpoint has keys that "
        "the model lacks: ['head.bias', 'head.weight']; shapes differ: policy.bias: checkpoint (6,), model (4,); "
        "policy.weight: checkpoint (6, 3), model (4, 3) (a checkpoint of another model?)")
    job["checkpoint"]["init_from"] = str(tmp_path / "nope" / "ckpt")
    with pytest.raises(FileNotFoundError, match=r"checkpoint.init_from .*nope/ckpt does not exist"):
        build(tmp_path, job)
    with pytest.raises(ValueError, match="checkpoint.init_from must name a checkpoint"):
        RunConfig.from_dict({**job, "checkpoint": {"init_from": ""}}, str(tmp_path))


def test_the_stage_configs_of_the_docs_parse():
    text = open(os.path.join(DOCS, "checkpoints.md")).read()
    section = text.split("## Stages", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    configs = [RunConfig.from_dict(yaml.safe_load(b), "docs") for b in blocks]
    assert [c.checkpoint.init_from for c in configs] == [None, "runs/sft/ckpt", "runs/dpo/ckpt"]
    assert all(set(c.metrics) == {"confusion"} for c in configs)


def test_stage_config_sets_files_outputs_start_and_overrides_and_names_unknown_options(tmp_path):
    from recis.run.stages import run_stage, stage_config

    job = job_dict(tmp_path, "unused", minibatches=1, inner_steps=1)
    cfg = RunConfig.from_dict(job, base_dir=str(tmp_path))
    _write(tmp_path / "other.parquet", 64, 2)
    cfg = stage_config(cfg, tmp_path / "run", train=tmp_path / "other.parquet", trainer={"max_steps": 3},
                       optim={"dense": {"lr": 0.01}}, model={"inner_steps": 2})
    assert cfg.data.train == str(tmp_path / "other.parquet") and cfg.data.eval.endswith("eval.parquet")
    assert cfg.trainer.log_dir == str(tmp_path / "run") and cfg.trainer.max_steps == 3 and not cfg.trainer.progress
    assert cfg.checkpoint.dir == os.path.join(str(tmp_path / "run"), "checkpoints")
    assert cfg.optim.dense == {"name": "adam", "lr": 0.01} and cfg.model.args["inner_steps"] == 2
    done = run_stage(cfg)
    assert done["job"].trainer.step == 3 and done["seconds"] > 0
    assert CheckpointManager(cfg.checkpoint.dir).latest() is not None
    with pytest.raises(ValueError, match="trainer: unknown option 'max_step'"):
        stage_config(RunConfig.from_dict(job, base_dir=str(tmp_path)), tmp_path / "r", trainer={"max_step": 3})
    with pytest.raises(ValueError, match="optim: unknown section 'dens'"):
        stage_config(RunConfig.from_dict(job, base_dir=str(tmp_path)), tmp_path / "r", optim={"dens": {"lr": 1}})
    with pytest.raises(ValueError, match="max_steps"):  # the overrides are checked like the YAML's values
        stage_config(RunConfig.from_dict(job, base_dir=str(tmp_path)), tmp_path / "r", trainer={"max_steps": -1})

