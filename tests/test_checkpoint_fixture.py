"""Checkpoints written by recis at commit 31b6f66 (tests/fixtures/checkpoint_v1, made by
tests/fixtures/make_checkpoint_fixture.py) still load, bit-exactly, into a model built by the
public API: a full + incremental chain of one process, and a 2-rank sharded checkpoint loaded
by 1 and by 2 processes (the logits of an eval batch after loading: to float32 rounding, see
check_loaded). Nothing here may be regenerated: the files are the old format."""
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recis.checkpoint import CheckpointManager, load_checkpoint
from recis.distributed.local import run_local
from recis.testing import assert_bitwise_equal

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_checkpoint_fixture as fx  # noqa: E402

FIXTURE = FIXTURES / "checkpoint_v1"


def expected(prefix: str):
    return {k: v for k, v in load_file(str(FIXTURE / "expected.safetensors")).items() if k.startswith(prefix + "/")}


def check_loaded(model, opts, prefix: str):
    """Everything the checkpoint holds, bit for bit; the logits of the eval batch to float32
    rounding. The logits pass through ``nn.Linear``, whose CPU kernel (MKL) picks its code path,
    and so its summation order, by CPU model: the stored ones come from the host that made the
    fixture, and differ from this host's in their last bits (7e-9 seen, on values up to 0.13)."""
    want = expected(prefix)
    key = f"{prefix}/logits"
    got = fx.contents(model, prefix)
    got.update(fx.dense_optimizer_tensors(opts["dense"], prefix))
    assert_bitwise_equal(got, {k: v for k, v in want.items() if k != key}, prefix)
    torch.testing.assert_close(fx.logits(model, prefix)[key], want[key], rtol=0, atol=1e-7)


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "checkpoint_v1")
    return tmp_path / "checkpoint_v1"


def test_fixture_is_the_old_format_and_small():
    manifests = [p.read_text() for p in FIXTURE.rglob("manifest.json")]
    assert len(manifests) == 3 and all('"version": 1' in m for m in manifests)
    assert sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()) < 200_000


def test_full_plus_incremental_chain_loads_bit_exactly(copy):
    infos = CheckpointManager(copy / "single", keep_last=None).checkpoints()
    assert [(i.step, i.kind, i.chain_length) for i in infos] == [(2, "full", 1), (4, "incremental", 2)]
    model, opts = fx.make_model(seed=7)  # other dense init: everything must come from the files
    extra = load_checkpoint(copy / "single", model, opts)
    assert extra["epoch"] == 2
    assert_bitwise_equal(extra["seen"], torch.tensor([4, 40]), "extra.seen")
    check_loaded(model, opts, "single")
    # Training continues from it (the sketch, slots and optimizer state are usable).
    fx.train(model, opts, *fx.batch(5))
    assert model.ec.groups[0].step == 5


def test_sharded_checkpoint_loads_into_one_process_bit_exactly(copy):
    model, opts = fx.make_model(seed=7)
    extra = load_checkpoint(copy / "sharded", model, opts)
    assert_bitwise_equal(extra, {"seen": torch.tensor([3])}, "extra")
    check_loaded(model, opts, "sharded")


def _load_on_rank(directory: str):
    from recis.distributed import shard

    model, opts = fx.make_model(seed=7)
    model = shard(model, verbose=False)
    CheckpointManager(directory, keep_last=None).load("latest", model, opts)
    return {k: v.clone() for k, v in fx.contents(model, "sharded").items()}


def test_sharded_checkpoint_loads_onto_two_ranks_bit_exactly(copy):
    parts = [r.value for r in run_local(_load_on_rank, 2, str(copy / "sharded"), timeout_s=240)]
    want = expected("sharded")
    for name in ("user", "item", "cate"):
        head = f"sharded/table/{name}/"
        got = {f: torch.cat([p[head + f] for p in parts]) for f in ("ids", "rows", "slots", "counts", "last_seen")}
        order = torch.argsort(got["ids"])
        assert_bitwise_equal({f: v[order] for f, v in got.items()},
                             {f: want[head + f] for f in got}, f"table {name}")
    # Group state (steps and the merged admission sketch) on every rank.
    for k in want:
        if "/group/" in k:
            for rank, p in enumerate(parts):
                assert_bitwise_equal(p[k], want[k], f"rank {rank}: {k}")
