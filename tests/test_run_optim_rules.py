"""Per-parameter optimizers in YAML jobs (optim.params): first match wins, rules that take nothing
and unknown names are refused by name, options are checked before anything is built, a job with
two dense optimizers resumes exactly, and `recis train` runs a job with a per-group optimizer."""
import fnmatch
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from test_optim_registry import HalfSGD
from test_run import _job_dict
from test_trainer import assert_same_model

from recis.checkpoint import CheckpointManager
from recis.cli import main
from recis.optim import OptimizerSet, register_optimizer, unregister_optimizer
from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed
from recis.towers import Tower, TowerOutput, register_tower, unregister_tower

DIM = 4
TRUE_W = np.array([1.5, -2.0, 1.0, 0.5])


class Encoded(Tower):
    """A dense tower with a declared group `encoder`; its head is the undeclared group `default`."""

    def __init__(self, n_dense: int, hidden: int = 8):
        super().__init__()
        self.encoder, self.head = torch.nn.Linear(n_dense, hidden), torch.nn.Linear(hidden, 1)
        self.declare("encoder", self.encoder)

    @classmethod
    def from_features(cls, features, **args):
        return cls(len(features.dense), **args)

    def forward(self, batch):
        return TowerOutput(self.head(torch.tanh(self.encoder(batch.dense))).squeeze(1))


@pytest.fixture(autouse=True)
def encoded_tower():
    register_tower("encoded_test", Encoded)
    yield
    unregister_tower("encoded_test")


def _build(tmp_path, job) -> Job:
    return Job(RunConfig.from_dict(job, base_dir=str(tmp_path)))


def _ctr(tmp_path, params, **trainer):
    job = _job_dict(tmp_path)
    job["optim"]["params"] = params
    job["trainer"].update(log_dir=None, **trainer)
    return job


def test_rules_take_parameters_first_match_wins_and_a_zero_lr_rule_freezes_its_layer(tmp_path):
    rules = [{"match": "deep.0.*", "optimizer": {"name": "sgd", "lr": 0.0}},
             {"match": "deep.*", "optimizer": {"name": "adagrad", "lr": 0.05}}]
    job = _build(tmp_path, _ctr(tmp_path, rules, max_steps=20))
    opts = job.dense_optimizer
    assert isinstance(opts, OptimizerSet) and list(opts) == ["dense.adam", "params.0.sgd", "params.1.adagrad"]
    # the expected partition, from the rules by fnmatch in order
    expected = {"dense.adam": [], "params.0.sgd": [], "params.1.adagrad": []}
    for name, p in job.model.named_parameters():
        owner = next((f"params.{i}.{r['optimizer']['name']}" for i, r in enumerate(rules)
                      if fnmatch.fnmatchcase(name, r["match"])), "dense.adam")
        expected[owner].append(p)
    for name, params in expected.items():
        got = [p for g in opts[name].param_groups for p in g["params"]]
        assert [id(p) for p in got] == [id(p) for p in params], name
    assert type(opts["params.1.adagrad"]) is torch.optim.Adagrad and len(expected["params.1.adagrad"]) == 2
    start = {n: p.detach().clone() for n, p in job.model.named_parameters()}
    job.train()
    for n, p in job.model.named_parameters():
        assert torch.equal(p, start[n]) == n.startswith("deep.0."), n  # lr 0 keeps deep.0; the rest trains
    # without the rule, the same job trains deep.0 as well
    (tmp_path / "plain").mkdir()
    plain = _build(tmp_path / "plain", _ctr(tmp_path / "plain", [], max_steps=20))
    plain_start = {n: p.detach().clone() for n, p in plain.model.named_parameters()}
    plain.train()
    assert not torch.equal(plain.model.deep[0].weight, plain_start["deep.0.weight"])


def test_rules_that_take_nothing_and_unknown_names_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"optim.params\[0\] \(match 'head.\*'\) matches no trainable parameter of "
                                         r"model 'deepfm'; its parameters: \['bias', 'dense_linear.weight', "):
        _build(tmp_path, _ctr(tmp_path, [{"match": "head.*", "optimizer": {"name": "sgd"}}]))
    with pytest.raises(ValueError, match=r"optim.params\[1\] \(match 'deep.0.weight'\) takes no parameter: every "
                                         r"parameter it matches is taken by an earlier rule \(optim.params\[0\]"):
        _build(tmp_path, _ctr(tmp_path, [{"match": "deep.*", "optimizer": {"name": "sgd"}},
                                         {"match": "deep.0.weight", "optimizer": {"name": "adam"}}]))
    with pytest.raises(ValueError, match=r"optim.params\[0\].optimizer.name must be one of \['adadelta', .*'sgd'\] .*, "
                                         r"got 'bogd_ipp'$"):
        _build(tmp_path, _ctr(tmp_path, [{"match": "deep.*", "optimizer": {"name": "bogd_ipp"}}]))
    with pytest.raises(ValueError, match=r"got 'rowwise_adagrad' \(a sparse optimizer\)"):
        _build(tmp_path, _ctr(tmp_path, [{"match": "deep.*", "optimizer": {"name": "rowwise_adagrad"}}]))
    with pytest.raises(ValueError, match=r"optim.params\[0\] \(group 'encoder'\): group rules are for towers; "
                                         r"model 'deepfm' declares no parameter groups"):
        _build(tmp_path, _ctr(tmp_path, [{"group": "encoder", "optimizer": {"name": "sgd"}}]))


def test_rule_options_are_checked_by_name_before_anything_is_built(tmp_path):
    job = _ctr(tmp_path, [{"match": "deep.*", "optimizer": {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.99]}}])
    job["data"]["train"] = "no_such_file.parquet"  # never opened: the options fail first
    with pytest.raises(ValueError, match=r"optim.params\[0\].optimizer.betas is not an option of SGD \(options: "):
        _build(tmp_path, job)
    job["optim"]["params"][0]["optimizer"] = {"name": "rmsprop", "alpha": "high"}
    with pytest.raises(TypeError, match=r"optim.params\[0\].optimizer.alpha must be a finite number"):
        _build(tmp_path, job)


@pytest.mark.parametrize("rule,message", [
    ({"match": "a", "group": "b", "optimizer": {"name": "sgd"}}, r"optim.params\[0\] needs exactly one of match .* "
                                                                  r"got both"),
    ({"optimizer": {"name": "sgd"}}, r"optim.params\[0\] needs exactly one of match .* got neither"),
    ({"match": "", "optimizer": {"name": "sgd"}}, r"optim.params\[0\].match must not be empty"),
    ({"match": "a"}, r"optim.params\[0\]: missing required key\(s\) \['optimizer'\]"),
    ({"match": "a", "optimizer": {"lr": 0.1}}, r"optim.params\[0\].optimizer needs a name"),
    ({"matches": "a", "optimizer": {"name": "sgd"}}, r"unknown key\(s\) \['matches'\] in optim.params\[0\]"),
    ({"match": 3, "optimizer": {"name": "sgd"}}, r"optim.params\[0\].match must be"),
])
def test_malformed_rules_are_named_in_the_config(tmp_path, rule, message):
    job = _job_dict(tmp_path)
    job["optim"]["params"] = [rule]
    with pytest.raises((ValueError, TypeError), match=message):
        RunConfig.from_dict(job, str(tmp_path))


def test_optim_sparse_may_be_any_registered_sparse_optimizer(tmp_path):
    register_optimizer("half_sgd_test", HalfSGD)
    try:
        job = _job_dict(tmp_path)
        job["optim"]["sparse"] = {"name": "half_sgd_test", "lr": 0.2}
        built = _build(tmp_path, job)
        assert type(built.sparse_optimizer) is HalfSGD and built.sparse_optimizer.param_groups[0]["lr"] == 0.1
        job["optim"]["sparse"] = {"name": "half_sgd_test", "eps": 0.1}
        with pytest.raises(ValueError, match=r"optim.sparse.eps is not an option of HalfSGD"):
            _build(tmp_path, job)
    finally:
        unregister_optimizer("half_sgd_test")


def test_a_job_with_two_dense_optimizers_resumes_exactly(tmp_path):
    rules = [{"match": "deep.0.*", "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}]

    def job(name):
        spec = _ctr(tmp_path, rules, max_steps=30)
        spec["checkpoint"] = {"dir": str(tmp_path / name), "every": 10, "keep_last": 5}
        return _build(tmp_path, spec)

    full = job("full")
    full.train()
    killed = job("killed")
    killed.trainer.hooks.append(KillAt(25))
    with pytest.raises(Killed):
        killed.train()
    ckpt = CheckpointManager(tmp_path / "killed")
    assert [c.step for c in ckpt.checkpoints()] == [10, 20]
    resumed = job("killed")
    resumed.train()
    assert resumed.trainer.step == full.trainer.step == 30
    assert_same_model(full.model, resumed.model, exact=True)  # dense parameters and table rows, bitwise
    sa, sb = full.dense_optimizer.state_dict(), resumed.dense_optimizer.state_dict()
    assert sorted(sa) == ["dense.adam", "params.0.sgd"]
    for name in sa:
        for i, st in sa[name]["state"].items():
            for key, v in st.items():
                assert torch.equal(v, sb[name]["state"][i][key]), (name, i, key)
    # the momentum buffers are what the checkpoint must carry: a resume that drops them ends elsewhere
    lossy = job("killed")
    lossy.trainer.resume("step-000000000020", train=lossy.train_data)
    assert lossy.trainer.step == 20 and lossy.dense_optimizer["params.0.sgd"].state
    lossy.dense_optimizer["params.0.sgd"].state.clear()
    lossy.trainer.checkpoint = None  # saves nothing over the resumed run's checkpoints
    lossy.trainer.fit(lossy.train_data)
    assert lossy.trainer.step == 30 and not torch.equal(lossy.model.deep[0].weight, full.model.deep[0].weight)


def _write_dense(path, rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, DIM))
    label = (rng.random(rows) < 1 / (1 + np.exp(-2 * x @ TRUE_W))).astype(np.float32)
    pq.write_table(pa.table({**{f"x{i}": x[:, i] for i in range(DIM)}, "label": label}), path)


def test_recis_train_runs_a_yaml_job_with_a_per_group_optimizer(tmp_path, capsys):
    _write_dense(tmp_path / "train.parquet", 2048, 0)
    _write_dense(tmp_path / "eval.parquet", 1024, 1)
    job = {
        "data": {"train": "train.parquet", "eval": "eval.parquet", "batch_size": 64, "shuffle_buffer": 512},
        "features": {"features": [{"name": f"x{i}", "kind": "dense", "column": f"x{i}"} for i in range(DIM)]
                     + [{"name": "label", "kind": "label", "column": "label"}]},
        "model": {"name": "encoded_test", "hidden": 8},
        "optim": {"dense": {"name": "adam", "lr": 0.02},
                  "params": [{"group": "encoder", "optimizer": {"name": "rmsprop", "lr": 0.01, "alpha": 0.9}}]},
        "trainer": {"epochs": 2, "progress": False, "seed": 0},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 20},
    }
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    again = Job(RunConfig.from_yaml(str(config)))
    assert again.trainer.resume()  # the saved job, both optimizers' state included
    opts = again.dense_optimizer
    assert list(opts) == ["dense.adam", "params.0.rmsprop"] and type(opts["params.0.rmsprop"]) is torch.optim.RMSprop
    encoder = {id(p) for p in again.model.encoder.parameters()}
    assert {id(p) for g in opts["params.0.rmsprop"].param_groups for p in g["params"]} == encoder
    assert {id(p) for g in opts["dense.adam"].param_groups for p in g["params"]} == \
        {id(p) for p in again.model.head.parameters()}
    steps = again.trainer.step
    assert steps == 64 and all(int(s["step"]) == steps for s in opts["params.0.rmsprop"].state.values())
    # the job's AUC is the trained tower's, by scikit-learn, and well above chance
    again.model.eval()
    with torch.no_grad():
        pairs = [(again.model(b).logits, b.labels) for b in again.eval_data]
    logits, labels = torch.cat([p for p, _ in pairs]).numpy(), torch.cat([y for _, y in pairs]).numpy()
    assert result["auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-9) and result["auc"] > 0.8
    # a group rule with an unknown group, and optim.groups for a group a rule took, are refused by name
    with pytest.raises(ValueError, match=r"optim.params\[0\] \(group 'encodr'\): Encoded has no parameter group "
                                         r"'encodr' \(its groups: \['default', 'encoder'\]\)"):
        _build(tmp_path, {**job, "optim": {"params": [{"group": "encodr", "optimizer": {"name": "sgd"}}]}})
    with pytest.raises(ValueError, match=r"optim.groups.encoder sets options of optim.dense, but optim.params rules "
                                         r"take every parameter of group 'encoder'"):
        _build(tmp_path, {**job, "optim": {**job["optim"], "groups": {"encoder": {"lr": 0.1}}}})


def test_a_rule_names_an_optimizer_installed_by_a_plugin(tmp_path, monkeypatch):
    info = tmp_path / "signplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: signplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[recis.optimizers]\nsign_sgd = test_optim_registry:SignSGD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    job = _ctr(tmp_path, [{"match": "deep.2.*", "optimizer": {"name": "sign_sgd", "lr": 0.01}}], max_steps=1)
    built = _build(tmp_path, job)
    rule = built.dense_optimizer["params.0.sign_sgd"]
    assert type(rule).__name__ == "SignSGD" and type(rule).__module__ == "test_optim_registry"
    # one step moves each of deep.2's weights by exactly lr * sign(its gradient)
    w = built.model.deep[2].weight
    start, grads = w.detach().clone(), []
    w.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.detach().clone()))
    built.train()
    assert len(grads) == 1 and torch.equal(w.detach(), start - 0.01 * torch.sign(grads[0]))
    job["optim"]["params"][0]["optimizer"]["momentum"] = 0.9
    with pytest.raises(ValueError, match=r"optim.params\[0\].optimizer.momentum is not an option of SignSGD "
                                         r"\(options: \['lr'\]\)"):
        _build(tmp_path, job)
