"""An online job whose head an online optimizer trains (optim.params), killed mid-block and
restarted from its last checkpoint, ends with the model, the optimizer's whole state (experts,
meta weights, block position, accumulated gradient) and the prequential metrics of an
uninterrupted run, bit for bit; a restart that loses the optimizer's state does not."""
from pathlib import Path

import pytest
import torch

from recis.nn import sparse_tables
from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed, assert_bitwise_equal

from ctr_testing import small_stream  # noqa: F401 (a fixture)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "online_movielens.yaml"
OPTIMIZERS = {
    "bogd_ip_adaptive": {"eta_scale": 1.0},
    "bogd_ip_ensemble": {"eta_min": 0.05},
}


def _job(stream, ckpt: Path, name: str) -> Job:
    cfg = RunConfig.from_yaml(str(EXAMPLE))
    cfg.data.stream.root = str(stream.root)
    cfg.data.stream.stop_after_idle = 0.3
    cfg.data.batch_size = 200                     # 30 rounds
    cfg.trainer.progress, cfg.trainer.log_every, cfg.trainer.prequential_window = False, 5, 500
    cfg.optim.params[0].optimizer = {"name": name, "set": "l1_ball", "radius": 1.0, "block": 3, "eps": 1e-3,
                                     "horizon": 30, **OPTIMIZERS[name]}
    cfg.checkpoint.dir, cfg.checkpoint.every = str(ckpt), 4
    return Job(cfg)


def _tables(model):
    out = {}
    for t in sparse_tables(model):
        ids = t.export()["ids"].sort().values
        out[t.name] = (ids, t.lookup(ids))
    return out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_killed_mid_block_resumes_bitwise(small_stream, tmp_path, name):
    stream = small_stream
    full = _job(stream, tmp_path / "full", name)
    full.train()
    assert full.trainer.step == 30

    killed = _job(stream, tmp_path / "killed", name)
    killed.trainer.hooks.append(KillAt(18))       # last checkpoint at step 16: round 16 of blocks of 3
    with pytest.raises(Killed):
        killed.train()
    resumed = _job(stream, tmp_path / "killed", name)
    resumed.train()
    assert resumed.trainer.step == 30
    assert_bitwise_equal(dict(resumed.model.named_parameters()), dict(full.model.named_parameters()), "params")
    assert_bitwise_equal(_tables(resumed.model), _tables(full.model), "tables")
    assert_bitwise_equal(resumed.trainer.dense_optimizer.state_dict(), full.trainer.dense_optimizer.state_dict(), "optim")
    assert resumed.trainer.prequential_history == full.trainer.prequential_history

    # the baseline: the same restart with a fresh online optimizer (its experts, weights and block
    # position lost) ends elsewhere
    lost = _job(stream, tmp_path / "lost", name)
    lost.trainer.hooks.append(KillAt(18))
    with pytest.raises(Killed):
        lost.train()
    fresh = _job(stream, tmp_path / "lost", name)
    saved = fresh.trainer.dense_optimizer.state_dict()
    fresh.trainer.resume(train=fresh.train_data)
    fresh.trainer.dense_optimizer.load_state_dict(saved)   # drop what the checkpoint restored
    fresh.trainer.fit(fresh.train_data)
    head = dict(fresh.model.head.named_parameters())
    assert any(not torch.equal(p, dict(full.model.head.named_parameters())[n]) for n, p in head.items())
