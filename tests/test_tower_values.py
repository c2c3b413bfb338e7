"""Towers without a binary logit (has_logits = False) and the `tower` metric: a small denoising
tower (defined here, registered in-process) trains from a YAML job, checkpoints and resumes
bit-identically on the CPU; its tower metric equals the mean of per-example errors recomputed in
the test; TowerValues reduces over 2 real gloo ranks; binary metrics and predict are refused
naming the metric and the tower."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from _metric_sync import write_sync_report
from recis.checkpoint import CheckpointManager
from recis.cli import main
from recis.metrics import TowerValues, UndefinedMetricError, build_metrics
from recis.run import Job, RunConfig
from recis.towers import Tower, TowerOutput, register_tower, unregister_tower
from recis.testing import KillAt, Killed
from recis.train import Trainer

DIM, SIGMA, TOL = 4, 0.5, 0.1


class Denoiser(Tower):
    """Denoising regression on the dense features: x + SIGMA * noise -> x by a small MLP.
    Training noise comes from the tower's own generator (saved with checkpoints); evaluation
    noise is a fixed function of each example (`eval_noise`), so it does not depend on how the
    examples are batched or sharded. Reports the per-example squared error `denoise_mse` and
    `within_tol` (error < TOL)."""

    has_logits = False

    def __init__(self, hidden=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(DIM, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, DIM))
        self.noise = torch.Generator().manual_seed(seed + 1)

    def generators(self):
        return {"noise": self.noise}

    @staticmethod
    def eval_noise(x):
        return torch.sin(37.0 * x + torch.arange(DIM) * 1.3) * math.sqrt(2)

    def forward(self, batch):
        x = batch.dense
        noise = torch.randn(x.shape, generator=self.noise) if self.training else self.eval_noise(x)
        err = ((self.net(x + SIGMA * noise) - x) ** 2).mean(1)
        return TowerOutput(loss=err.mean(), values={"denoise_mse": err.detach(), "within_tol": (err < TOL).float()})


class LogitFree(Denoiser):
    """Claims a logit (has_logits stays True) but returns none: refused at run time."""

    has_logits = True


@pytest.fixture(autouse=True)
def towers():
    register_tower("denoiser_test", Denoiser)
    register_tower("logit_free_test", LogitFree)
    yield
    unregister_tower("denoiser_test")
    unregister_tower("logit_free_test")


def _write(path, rows, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 2))
    x = np.stack([z[:, 0], z[:, 1], z[:, 0] + z[:, 1], z[:, 0] - z[:, 1]], 1).astype(np.float32)  # a 2-D manifold
    pq.write_table(pa.table({**{f"x{i}": x[:, i] for i in range(DIM)}, "label": np.zeros(rows, np.float32)}), path,
                   row_group_size=32)  # row groups for 2 ranks to share


def job_dict(tmp_path, ckpt="ckpt", **extra):
    if not (tmp_path / "train.parquet").exists():
        _write(tmp_path / "train.parquet", 320, 0)
        _write(tmp_path / "eval.parquet", 100, 1)
    job = {
        "data": {"train": "train.parquet", "eval": "eval.parquet", "batch_size": 16, "eval_batch_size": 16,
                 "shuffle_buffer": 64},
        "features": {"features": [{"name": f"x{i}", "kind": "dense", "column": f"x{i}"} for i in range(DIM)]
                     + [{"name": "label", "kind": "label", "column": "label"}]},
        "model": {"name": "denoiser_test"},
        "optim": {"dense": {"name": "adam", "lr": 0.02}},
        "trainer": {"epochs": 2, "max_steps": 30, "eval_every": 10, "progress": False, "seed": 0},
        "checkpoint": {"dir": str(tmp_path / ckpt), "every": 5, "keep_last": 10},
    }
    job.update(extra)
    return job


def build(tmp_path, job) -> Job:
    return Job(RunConfig.from_dict(job, base_dir=str(tmp_path)))


def _reference_means(tower, path):
    """The tower's values recomputed with torch ops on all the rows of the Parquet file at
    `path` at once, averaged per example."""
    table = pq.read_table(path)
    x = torch.tensor(np.stack([table[f"x{i}"].to_numpy() for i in range(DIM)], 1))
    noise = torch.sin(37.0 * x + torch.arange(DIM) * 1.3) * math.sqrt(2)
    with torch.no_grad():
        err = ((tower.net(x + SIGMA * noise) - x) ** 2).mean(1).double()
    assert len(err) == 100
    return float(err.mean()), float((err < TOL).double().mean())


def test_a_logit_free_tower_trains_from_yaml_and_reports_its_tower_metric(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    job = job_dict(tmp_path)
    job["trainer"].update(log_dir=str(tmp_path / "logs"), log_every=5)
    config.write_text(yaml.safe_dump(job))
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    assert "denoise_mse" in capsys.readouterr().out
    result = json.loads((tmp_path / "result.json").read_text())
    assert "auc" not in result and "logloss" not in result  # the default metrics of such a tower: [tower]
    j = build(tmp_path, job)
    assert list(j.trainer.metrics) == ["tower"]
    untrained = j.trainer.evaluate(j.eval_data)["denoise_mse"]
    j.trainer.checkpoint.load("latest", model=j.model)
    mse, within = _reference_means(j.model, tmp_path / "eval.parquet")
    assert result["denoise_mse"] == pytest.approx(mse, rel=1e-6)
    assert result["within_tol"] == pytest.approx(within, abs=1e-12)
    assert result["loss"] == pytest.approx(mse, rel=1e-5)  # the eval loss: the same errors' mean
    assert result["denoise_mse"] < 0.25 * untrained  # it learned
    header = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "denoise_mse" in header and "within_tol" in header  # training logs carry the values too


def _history(trainer):
    return [{k: v for k, v in h.items() if k != "eval_seconds"} for h in trainer.history]


def test_an_interrupted_job_resumes_bit_identically(tmp_path):
    full = build(tmp_path, job_dict(tmp_path, "full"))
    full.train()
    killed = build(tmp_path, job_dict(tmp_path, "killed"))
    killed.trainer.hooks.append(KillAt(17))
    with pytest.raises(Killed):
        killed.train()
    assert [c.step for c in CheckpointManager(tmp_path / "killed").checkpoints()][-1] == 15
    resumed = build(tmp_path, job_dict(tmp_path, "killed"))
    resumed.train()
    assert resumed.trainer.step == full.trainer.step == 30
    for (name, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(full.model.noise.get_state(), resumed.model.noise.get_state())
    assert _history(resumed.trainer) == _history(full.trainer)
    assert [h["step"] for h in full.trainer.history] == [10.0, 20.0, 30.0]
    assert all(math.isfinite(h["denoise_mse"]) for h in full.trainer.history)


def test_binary_metrics_and_predict_are_refused_by_name(tmp_path):
    for metrics in (["auc", "tower"], {"logloss": None, "calibration": None}):
        with pytest.raises(ValueError, match=r"metrics \['(auc|logloss)'.*\] need a binary logit, but tower "
                                             r"'denoiser_test' \(Denoiser\) has none \(has_logits = False\)"):
            build(tmp_path, job_dict(tmp_path, metrics=metrics))
    j = build(tmp_path, job_dict(tmp_path, metrics={"tower": {"names": ["within_tol"]}}))
    assert j.trainer.evaluate(j.eval_data).keys() >= {"within_tol", "loss"}
    assert "denoise_mse" not in j.trainer.evaluate(j.eval_data)
    with pytest.raises(ValueError, match=r"Trainer.predict .* Denoiser has no binary logit"):
        j.trainer.predict(j.eval_data)
    # a tower that claims a logit but returns none: the binary metric names itself and the tower
    j = build(tmp_path, job_dict(tmp_path, model={"name": "logit_free_test"}))
    assert sorted(j.trainer.metrics) == ["auc", "calibration", "logloss"]
    with pytest.raises(ValueError, match=r"metric 'auc' \(AUC\) needs a binary logit, but LogitFree returned a "
                                         "TowerOutput without logits"):
        j.trainer.evaluate(j.eval_data)
    with pytest.raises(ValueError, match=r"Trainer.predict .* the tower returned no logits"):
        j.trainer.predict(j.eval_data)
    # the tower metric needs a tower, and the names it is given
    deepfm = job_dict(tmp_path, model={"name": "deepfm"}, metrics=["tower"])
    deepfm["features"]["features"][0] = {"name": "x0", "kind": "sparse", "column": "x0",
                                         "ops": [{"op": "bucketize", "boundaries": [0.0]}]}
    with pytest.raises(ValueError, match=r"metrics \['tower'\] average a tower's TowerOutput.values: model 'deepfm'"):
        build(tmp_path, deepfm)
    j = build(tmp_path, job_dict(tmp_path, metrics={"tower": {"names": ["video_reward"]}}))
    with pytest.raises(ValueError, match=r"metric 'tower' on Denoiser: TowerValues: names \['video_reward'\] are not "
                                         r"among the values reported \(\['denoise_mse', 'within_tol'\]\)"):
        j.trainer.evaluate(j.eval_data)


def test_trainer_checks_the_values_a_tower_reports():
    class Bad(Denoiser):
        def __init__(self, values):
            super().__init__()
            self.bad = values

        def forward(self, batch):
            out = super().forward(batch)
            return TowerOutput(loss=out.loss, values=self.bad(batch), stats={"kl": 0.0})

    class Batch:
        def __init__(self, n):
            self.dense, self.labels, self.size = torch.zeros(n, DIM), torch.zeros(n), n

    cases = [(lambda b: {"r": torch.zeros(3)}, ValueError, r"Bad TowerOutput.values\['r'\] must have one number per "
                                                           r"example \(\[5\]\), got shape \(3,\)"),
             (lambda b: {"r": [0.0] * 5}, TypeError, r"values\['r'\] must be a tensor \[B\], got list"),
             (lambda b: {"kl": torch.zeros(5)}, ValueError, "'kl' both in TowerOutput.values and TowerOutput.stats")]
    for values, error, message in cases:
        trainer = Trainer(Bad(values), metrics={"tower": TowerValues()})
        with pytest.raises(error, match=message):
            trainer.evaluate([Batch(5)])
    # [B, 1] values are accepted; the mean is per example over batches of different sizes
    out = Trainer(Bad(lambda b: {"r": torch.arange(float(b.size))[:, None]}), metrics={"tower": TowerValues()}
                  ).evaluate([Batch(5), Batch(3)])
    assert out["r"] == (0 + 1 + 2 + 3 + 4 + 0 + 1 + 2) / 8 and out["examples"] == 8.0
    with pytest.raises(ValueError, match=r"metrics \['auc'\] need a binary logit, but tower Denoiser has none"):
        Trainer(Denoiser(), metrics=build_metrics(["auc"]))


def test_tower_values_metric_means_merge_and_errors():
    m = TowerValues()
    m.update({"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([True, False, False])})
    m.update({"a": torch.tensor([10.0])}, weights=torch.tensor([2.0]))
    assert m.results() == {"a": pytest.approx((6 + 20) / 5), "b": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match=r"several values \['a', 'b'\]; use results\(\)"):
        m.compute()
    other = TowerValues()
    other.update({"c": torch.tensor([4.0, 6.0])})
    assert m.merge(other).results()["c"] == 5.0
    assert TowerValues(names=["a"]).compute() != TowerValues(names=["a"]).compute()  # NaN: nothing seen
    with pytest.raises(UndefinedMetricError, match="'a' is undefined"):
        TowerValues(names=["a"], undefined="raise").results()
    with pytest.raises(ValueError, match=r"values\['b'\] has 2 values but values\['a'\] has 1"):
        TowerValues().update({"a": torch.tensor([1.0]), "b": torch.tensor([1.0, 2.0])})
    with pytest.raises(ValueError, match=r"values\['a'\] must be finite; 1 values are not"):
        TowerValues().update({"a": torch.tensor([1.0, math.nan])})
    with pytest.raises(ValueError, match="names lists a name twice"):
        TowerValues(names=["a", "a"])
    with pytest.raises(TypeError, match=r"call update\(TowerOutput.values\)"):
        TowerValues().update_batch(None)
    m.reset()
    assert m.results() == {} and m.names == []


WORLD = 2


def _shard(rank):
    """Rank 0: 700 examples reporting a and b; rank 1: 300 reporting a and c, with weights."""
    g = torch.Generator().manual_seed(10 + rank)
    n = 700 if rank == 0 else 300
    a = torch.randn(n, generator=g).double()
    other = (torch.rand(n, generator=g) < 0.3).double()
    weights = torch.randint(1, 4, (n,), generator=g).double()
    return {"a": a, "b" if rank == 0 else "c": other}, weights


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        values, weights = _shard(rank)
        m = TowerValues()
        for i in range(0, len(weights), 128):
            m.update({k: v[i:i + 128] for k, v in values.items()}, weights[i:i + 128])
        write_sync_report(m, lambda x: x.results(), TowerValues(names=["a"] if rank == 0 else ["b"]), out_dir, rank)
    finally:
        dist.destroy_process_group()


def test_sync_over_two_gloo_ranks_equals_the_mean_of_all_examples(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    parts = [_shard(r) for r in range(WORLD)]
    w = torch.cat([p[1] for p in parts])
    a = torch.cat([p[0]["a"] for p in parts])
    expected = {"a": float((a * w).sum() / w.sum()),
                "b": float((parts[0][0]["b"] * parts[0][1]).sum() / parts[0][1].sum()),
                "c": float((parts[1][0]["c"] * parts[1][1]).sum() / parts[1][1].sum())}
    for rank, r in enumerate(results):
        assert r["synced"] == pytest.approx(expected, rel=1e-12)
        assert r["local"] == r["restored"] and sorted(r["local"]) == (["a", "b"] if rank == 0 else ["a", "c"])
        assert "configured differently" in r["mismatch"]


def _job_rank(tmp):
    register_tower("denoiser_test", Denoiser)
    job = build(tmp, {**job_dict(tmp), "checkpoint": {}})
    result = job.train()
    return result, {k: v.clone() for k, v in job.model.state_dict().items() if k.startswith("net.")}


@pytest.mark.slow  # two spawned ranks import torch: ~20 s on 2 cores
def test_a_two_rank_job_reduces_the_tower_metric_over_all_eval_examples(tmp_path):
    from recis.distributed.local import run_local

    job_dict(tmp_path)  # writes the data: 4 eval row groups (32, 32, 32, 4 rows), so one rank pads its evaluation
    ranks = run_local(_job_rank, WORLD, tmp_path, timeout_s=300)
    (r0, state0), (r1, state1) = (r.value for r in ranks)
    for k in state0:
        assert torch.equal(state0[k], state1[k]), k  # the dense weights stayed in sync
    tower = Denoiser()
    tower.load_state_dict(state0, strict=False)
    mse, within = _reference_means(tower, tmp_path / "eval.parquet")
    for r in (r0, r1):
        assert r["world_size"] == 2 and r["examples"] == 100.0
        assert r["denoise_mse"] == pytest.approx(mse, rel=1e-6)
        assert r["within_tol"] == pytest.approx(within, abs=1e-12)
