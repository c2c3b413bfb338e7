"""Streaming (online) YAML jobs: a job reads files as they land, ends at its `until` window,
checkpoints every N steps or M minutes, and a job killed mid-window resumes exactly: the same
model, the same prequential metrics, every row read once (with prefetch on)."""
import json
import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_trainer import assert_same_model

import recis.io.watch as watch
from recis.checkpoint import CheckpointManager
from recis.cli import main
from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed
from recis.train import Hook

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
ROWS = 130   # per file: batches of 50 cross files, windows of 120 examples cross batches


def _land(path, first_id, seed):
    rng = np.random.default_rng(seed)
    user, item, x = rng.integers(0, 30, ROWS), rng.integers(0, 20, ROWS), rng.normal(size=ROWS)
    logit = 2.0 * ((user % 2) == (item % 2)) - 1.0 + x
    label = (rng.random(ROWS) < 1 / (1 + np.exp(-2 * logit))).astype(np.float32)
    table = pa.table({"rid": np.arange(first_id, first_id + ROWS, dtype=np.int64), "user": [f"u{u}" for u in user],
                      "item": item.astype(np.int64), "x": x, "label": label})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def landing(tmp_path, windows=("w=00", "w=01", "w=02", "w=03")):
    """Two files per window; row ids count up from 0 in reading order."""
    root = tmp_path / "landing"
    for i, w in enumerate(windows):
        for j in range(2):
            _land(str(root / w / f"part-{j}.parquet"), (2 * i + j) * ROWS, 2 * i + j)
    return root


def job_dict(tmp_path, ckpt="ckpt", **stream):
    return {
        "data": {"stream": {"root": "landing", "windows": "w=*", "until": "w=02", "poll_interval": 0.01,
                            "settle_s": 0.0, **stream}, "batch_size": 50, "prefetch": 2},
        "features": {"features": [
            {"name": "user", "kind": "sparse", "column": "user", "ops": [{"op": "hash"}]},
            {"name": "item", "kind": "sparse", "column": "item", "ops": [{"op": "hash"}]},
            {"name": "x", "kind": "dense", "column": "x"},
            {"name": "rid", "kind": "passthrough", "column": "rid"},
            {"name": "label", "kind": "label", "column": "label"}]},
        "model": {"name": "deepfm", "embedding_dim": 4, "hidden": [8]},
        "optim": {"sparse": {"name": "rowwise_adagrad", "lr": 0.1}, "dense": {"name": "adam", "lr": 0.01}},
        "trainer": {"progress": False, "seed": 0, "log_every": 1, "prequential": True, "prequential_window": 120},
        "checkpoint": {"dir": str(tmp_path / ckpt), "every": 4, "keep_last": 20},
    }


def build(tmp_path, job) -> Job:
    return Job(RunConfig.from_dict(job, base_dir=str(tmp_path)))


class RowIds(Hook):
    """The row ids of every training batch, with the optimizer step that trains on it."""

    def __init__(self):
        self.rows = []

    def on_batch(self, trainer, batch, output, loss):
        self.rows.append((trainer.step + 1, batch.extras["rid"].to_pylist()))

    def upto(self, step):
        return [r for s, ids in self.rows if s <= step for r in ids]


def run(job, *hooks):
    rows = RowIds()
    job.trainer.hooks += [rows, *hooks]
    return job, rows


def test_a_streaming_job_killed_mid_window_resumes_exactly_and_reads_every_row_once(tmp_path):
    landing(tmp_path)   # w=03 exists: w=02 (until) is closed; w=03 is never read
    full, full_rows = run(build(tmp_path, job_dict(tmp_path, "full")))
    full.train()
    ids = full_rows.upto(10 ** 9)
    assert sorted(ids) == list(range(6 * ROWS)) and full.trainer.step == -(-6 * ROWS // 50)
    assert len(full.trainer.prequential_history) == 6 * ROWS // 120

    killed, killed_rows = run(build(tmp_path, job_dict(tmp_path, "killed")), KillAt(10))
    with pytest.raises(Killed):
        killed.train()
    assert [c.step for c in CheckpointManager(tmp_path / "killed").checkpoints()] == [4, 8]
    assert killed.trainer.prequential.in_window > 0   # killed inside a prequential window
    resumed, resumed_rows = run(build(tmp_path, job_dict(tmp_path, "killed")))
    resumed.train()
    assert resumed.trainer.step == full.trainer.step
    # rows trained before the last checkpoint, then the resumed run's: each row exactly once, in order
    assert killed_rows.upto(8) + resumed_rows.upto(10 ** 9) == ids
    assert resumed_rows.rows[0][0] == 9 and resumed_rows.rows[0][1][0] == 400   # mid-file (the 4th: ids 390..519)
    assert_same_model(full.model, resumed.model, exact=True)
    assert resumed.trainer.prequential_history == full.trainer.prequential_history
    assert resumed.trainer.prequential.logs() == full.trainer.prequential.logs()

    again, again_rows = run(build(tmp_path, job_dict(tmp_path, "killed")))   # a finished stream has nothing left
    again.train()
    assert again.trainer.step == full.trainer.step and again_rows.rows == []
    _land(str(tmp_path / "landing" / "w=04" / "part-0.parquet"), 10 ** 6, 9)   # closes w=03
    later = job_dict(tmp_path, "killed", until="w=03")   # a later `until` continues with w=03 only
    more, more_rows = run(build(tmp_path, later))
    more.train()
    assert sorted(more_rows.upto(10 ** 9)) == list(range(6 * ROWS, 8 * ROWS))


def test_until_waits_for_the_window_to_close(tmp_path):
    """Without a later window (or the marker) `until` is not closed yet: the job waits; the
    marker closes it, and files of later windows are never read."""
    landing(tmp_path, ("w=00", "w=01"))
    job = job_dict(tmp_path, until="w=01", marker="_SUCCESS")
    for w in ("w=00", "w=01"):
        (tmp_path / "landing" / w / "_SUCCESS").write_text("")
    built, rows = run(build(tmp_path, job))
    built.train()   # the marker of w=01 closes it
    assert sorted(rows.upto(10 ** 9)) == list(range(4 * ROWS))

    open_ended = job_dict(tmp_path, "open", until="w=01")
    job, rows = run(build(tmp_path, open_ended))
    t = threading.Thread(target=job.train, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while len(rows.upto(10 ** 9)) < 500 and time.monotonic() < deadline:   # 10 full batches
        time.sleep(0.02)
    time.sleep(0.2)
    # every file of w=00..w=01 read (the last 20 rows wait for a full batch), but w=01 is not closed
    assert t.is_alive() and len(rows.upto(10 ** 9)) == 500
    _land(str(tmp_path / "landing" / "w=02" / "part-0.parquet"), 10 ** 6, 9)   # a later window closes it
    t.join(60)
    assert not t.is_alive() and sorted(rows.upto(10 ** 9)) == list(range(4 * ROWS))


def test_sigterm_stops_an_endless_stream_job_with_a_checkpoint_it_resumes_from(tmp_path):
    landing(tmp_path)
    job, rows = run(build(tmp_path, job_dict(tmp_path, until=None)))   # no end: trains until a signal

    def send_when_training():
        deadline = time.monotonic() + 60
        while len(rows.rows) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_when_training, daemon=True).start()
    job.train()   # in the main thread, where the job's handler gets the signal
    steps = job.trainer.step
    assert steps >= 5 and CheckpointManager(tmp_path / "ckpt").latest().step == steps
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is gone with the job
    rest, rest_rows = run(build(tmp_path, job_dict(tmp_path, until=None, stop_after_idle=0.5)))
    rest.train()
    assert rows.upto(steps) + rest_rows.upto(10 ** 9) == list(range(8 * ROWS))


def test_an_empty_window_waits_without_spinning(tmp_path, monkeypatch):
    (tmp_path / "landing" / "w=00").mkdir(parents=True)
    listings = []
    real = watch.scan_files

    def counting(base):
        listings.append(time.monotonic())
        return real(base)

    monkeypatch.setattr(watch, "scan_files", counting)
    job = build(tmp_path, job_dict(tmp_path, poll_interval=0.2, until=None))
    t = threading.Thread(target=job.train, daemon=True)
    t.start()
    time.sleep(1.0)
    n = len(listings)
    job.train_data.stop()
    t.join(30)
    assert not t.is_alive() and job.trainer.step == 0
    # one listing of the one window per poll, polls 0.2 s apart: about 5 in a second (a busy
    # loop would list thousands of times)
    assert 1 <= n <= 8, n


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tick(Hook):
    """Each optimizer step takes 25 seconds of the fake clock."""

    def __init__(self, clock):
        self.clock = clock

    def on_step_end(self, trainer, step, logs):
        self.clock.now += 25.0


def test_checkpoints_every_n_steps_or_m_minutes_whichever_first(tmp_path):
    landing(tmp_path)
    job = job_dict(tmp_path)
    job["checkpoint"]["every_minutes"] = 1.0
    built = build(tmp_path, job)
    clock = FakeClock()
    built.trainer.clock = clock
    built.trainer.hooks.append(Tick(clock))
    built.train()
    # steps end at 25 s, 50 s, ...: a save is due at step 3 (75 s >= 60 s after the start), at
    # every 4th step, and 60 s after the last save of either kind; and the last step (16)
    assert [c.step for c in CheckpointManager(tmp_path / "ckpt").checkpoints()] == [3, 4, 7, 8, 11, 12, 15, 16]


def test_stream_config_errors_name_the_key(tmp_path):
    job = job_dict(tmp_path)
    with pytest.raises(ValueError, match=r"data.stream and data.train are both set"):
        RunConfig.from_dict({**job, "data": {**job["data"], "train": "t.parquet"}}, str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pol_interval'\] in data.stream"):
        RunConfig.from_dict({**job, "data": {**job["data"], "stream": {"root": "x", "pol_interval": 1}}},
                            str(tmp_path))
    with pytest.raises(ValueError, match=r"data.stream: missing required key\(s\) \['root'\]"):
        RunConfig.from_dict({**job, "data": {**job["data"], "stream": {"windows": "w=*"}}}, str(tmp_path))
    with pytest.raises(ValueError, match="data.stream.until 'x=1' does not match data.stream.windows 'w=\\*'"):
        RunConfig.from_dict({**job, "data": {**job["data"], "stream": {"root": "x", "windows": "w=*",
                                                                       "until": "x=1"}}}, str(tmp_path))
    with pytest.raises(ValueError, match="data.stream.poll_interval must be a finite number > 0, got 0"):
        RunConfig.from_dict({**job, "data": {**job["data"], "stream": {"root": "x", "poll_interval": 0}}},
                            str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint.every_minutes must be a finite number > 0"):
        RunConfig.from_dict({**job, "checkpoint": {"every_minutes": -1}}, str(tmp_path))
    with pytest.raises(ValueError, match="data.stream is read once"):
        build(tmp_path, {**job, "trainer": {**job["trainer"], "epochs": 2}})
    with pytest.raises(FileNotFoundError, match=r"data.stream.root .*landing is not a directory"):
        build(tmp_path, job)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**job, "data": {**job["data"], "stream": {"root": "landing", "until": "w=1"}}}))
    with pytest.raises(ValueError, match="data.stream.until names the last window to read; give data.stream.windows"):
        RunConfig.from_yaml(str(config))


def test_recis_train_runs_an_online_yaml_job(tmp_path, capsys):
    landing(tmp_path)
    job = job_dict(tmp_path)
    job["trainer"]["log_dir"] = str(tmp_path / "logs")
    job["trainer"]["tensorboard"] = False
    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump(job))
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["train_examples"] == 6 * ROWS
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    assert "preq_auc" in rows[0] and "preq_window_logloss" in rows[0]
    assert (tmp_path / "logs" / "prequential.png").stat().st_size > 1000


def test_the_online_configs_of_the_docs_parse(tmp_path):
    text = open(os.path.join(DOCS, "online.md")).read()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    assert blocks
    for block in blocks:
        cfg = RunConfig.from_dict(yaml.safe_load(block), str(tmp_path))
        assert cfg.data.stream is not None and cfg.trainer.prequential
