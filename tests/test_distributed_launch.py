"""`torchrun --nproc-per-node 2 -m recis train CONFIG.yaml`: a YAML job on 2 CPU ranks, its
sharded checkpoint evaluated by one process, and a restart that resumes from it."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from recis.checkpoint import CheckpointManager
from recis.cli import main
from test_run import _job_dict, _write_ctr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(config, *args, timeout=300):
    # --standalone: the agent's store binds port 0 itself and the ranks use that store, so no port
    # is picked here and left free for another process (a concurrent test run) to take first.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "recis", "train", str(config), *args]
    env = dict(os.environ, RECIS_DIST_TIMEOUT_S="60")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_torchrun_trains_on_two_ranks_and_one_process_evaluates(tmp_path):
    job = _job_dict(tmp_path)
    _write_ctr(tmp_path / "train.parquet", 4096, 0, row_group_size=256)
    _write_ctr(tmp_path / "test.parquet", 1024, 1, row_group_size=256)
    job["trainer"]["epochs"] = 2
    job["checkpoint"]["every"] = 10  # 16 steps per epoch on each rank
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    out = torchrun(config, "--json", str(tmp_path / "result.json"))
    assert "recis sharding plan for 2 rank(s)" in out
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and result["examples"] == 1024 and result["auc"] > 0.7
    latest = CheckpointManager(tmp_path / "ckpt").latest()
    assert (latest.path / "sparse-00001-of-00002.safetensors").is_file()
    # One process loads the 2-rank checkpoint (W = 2 -> 1) and evaluates it.
    assert main(["eval", str(config)]) == 0
    # A restart resumes from the latest checkpoint and runs the remaining epoch.
    job["trainer"]["epochs"] = 3
    config.write_text(yaml.safe_dump(job))
    torchrun(config, "--json", str(tmp_path / "resumed.json"))
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["auc"] > 0.7 and 0 < resumed["train_examples"] < 2 * 4096
