"""CheckpointManager: exact resume, what is on disk, retention, and refusals.

The references are an uninterrupted training run (resume must equal it bitwise) and direct
reads of the files with safetensors / json, compared with the live tables' exports.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_exports_equal
from recis.checkpoint import (CheckpointError, CheckpointManager, IncompatibleCheckpointError, NonFiniteStateError,
                              check_finite, load_checkpoint)
from recis.checkpoint.codec import decode, encode
from recis.nn.hash_table import STATE_KEYS
from recis.testing import assert_bitwise_equal
from test_checkpoint_common import (TinyCTR, assert_same_state, assert_same_training, make_batch, make_training,
                                    model_state, train_step)


def save_all(mgr, step, model, opts, **kw):
    return mgr.save(step, model, opts, {"step": step, "rng": torch.get_rng_state(), "reader": {"offsets": [3, 1]}},
                    **kw)


@pytest.mark.parametrize("fused", [False, True])
def test_resume_equals_uninterrupted_training_bitwise(tmp_path, fused):
    """Stop at step k, reload into a fresh model and optimizers (and the RNG, for dropout),
    continue: the losses and the final state equal those of the run that never stopped."""
    k, more = 5, 5
    model, opts = make_training(fused=fused)
    for s in range(k):
        train_step(model, opts, s)
    save_all(CheckpointManager(tmp_path), k, model, opts)
    expected = [train_step(model, opts, s) for s in range(k, k + more)]

    torch.manual_seed(1234)  # the restored RNG state must win over whatever is current
    fresh, fresh_opts = make_training(fused=fused, seed=99)  # other initial dense weights
    extra = CheckpointManager(tmp_path).load("latest", fresh, fresh_opts)
    assert extra["step"] == k and extra["reader"] == {"offsets": [3, 1]}
    torch.set_rng_state(extra["rng"])
    got = [train_step(fresh, fresh_opts, s) for s in range(k, k + more)]
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    assert_same_training(model, opts, fresh, fresh_opts)
    assert len(model.ec.tables()["user"]) > 0 and opts["schedule"].get_last_lr() == fresh_opts["schedule"].get_last_lr()


def test_files_hold_the_tables_dense_state_and_manifest(tmp_path):
    model, opts = make_training()
    for s in range(4):
        train_step(model, opts, s)
    path = save_all(CheckpointManager(tmp_path), 4, model, opts)
    assert path.name == "step-000000000004"
    assert sorted(p.name for p in path.iterdir()) == ["dense.safetensors", "manifest.json", "sparse.safetensors",
                                                      "state.json", "state.safetensors"]
    sparse = load_file(str(path / "sparse.safetensors"))
    for name, table in model.ec.tables().items():
        assert_exports_equal({k: sparse[f"ec.{name}.{k}"] for k in STATE_KEYS}, table.export())
    user, item = model.ec.groups
    assert int(sparse["ec.user._group.step"]) == user.step == 4
    assert int(sparse["ec.item._group.optimizer_step"]) == item.optimizer_step == 4
    # The sketch in its own dtype (uint32 counters), as the group's state holds it.
    assert sparse["ec.user._group.sketch"].dtype == torch.uint32
    assert_bitwise_equal(sparse["ec.user._group.sketch"], user.group_state()["sketch"])
    dense = load_file(str(path / "dense.safetensors"))
    assert set(dense) == {k for k in model.state_dict() if not k.startswith("ec.")}
    assert torch.equal(dense["mlp.0.weight"], model.mlp[0].weight)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "recis.checkpoint" and manifest["version"] == 1 and manifest["step"] == 4
    assert manifest["kind"] == "full" and manifest["parent"] is None
    assert manifest["tables"]["ec.user"]["embedding_dim"] == 8
    assert manifest["tables"]["ec.user"]["slot_kind"] == "rowwise_adagrad"
    assert manifest["tables"]["ec.item"]["tables"] == ["ec.item", "ec.cate"]
    assert manifest["tables"]["ec.item"]["slot_width"] == 8  # Adam: m and v per column
    assert manifest["tables"]["ec.user"]["eviction"]["ttl"] == {"ttl_steps": 3, "interval_steps": 2}
    assert set(manifest["files"]) == {"sparse.safetensors", "dense.safetensors", "state.json", "state.safetensors"}
    assert manifest["optimizers"]["item"] == "recis.optim.optimizers.SparseAdam"
    state = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    assert_same_state(decode(state["optimizers"]["dense"], tensors), opts["dense"].state_dict())
    assert decode(state["optimizers"]["item"], tensors)["param_groups"][0]["betas"] == (0.9, 0.999)


def test_keep_last_keeps_newest_and_the_chains_they_need(tmp_path):
    model, opts = make_training()
    mgr = CheckpointManager(tmp_path, keep_last=2, full_every=3)
    kinds = []
    for s in range(1, 8):
        train_step(model, opts, s)
        kinds.append(save_all(mgr, s, model, opts).name)
    infos = mgr.checkpoints()
    # Saves 1, 4, 7 are full; 5 and 6 are incremental on 4. The last two are 6 and 7; 6 needs 5 and 4.
    assert [(i.step, i.kind) for i in infos] == [(4, "full"), (5, "incremental"), (6, "incremental"), (7, "full")]
    assert infos[2].parent == infos[1].path.name and infos[2].chain_length == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [i.path.name for i in infos]
    assert mgr.latest().step == 7


def test_latest_ignores_directories_without_a_valid_manifest(tmp_path):
    model, opts = make_training()
    mgr = CheckpointManager(tmp_path)
    save_all(mgr, 1, model, opts)
    (tmp_path / "step-000000000009").mkdir()  # no manifest
    bad = tmp_path / "step-000000000010"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": "recis.checkpoint", "vers')  # torn
    (tmp_path / ".tmp-step-000000000011-1-x").mkdir()
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert mgr.latest().step == 1


def test_same_step_is_not_overwritten(tmp_path):
    model, opts = make_training()
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model, opts)
    with pytest.raises(FileExistsError, match="step-000000000001 already exists"):
        mgr.save(1, model, opts)


def test_nan_in_state_is_refused_and_nothing_is_written(tmp_path):
    model, opts = make_training()
    train_step(model, opts, 0)
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model, opts)
    check_finite(model, opts)  # fine so far
    with torch.no_grad():
        model.mlp[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteStateError, match=r"'dense/mlp.0.weight' \(1 of"):
        mgr.save(2, model, opts)
    with pytest.raises(NonFiniteStateError, match="mlp.0.weight"):
        check_finite(model, opts)
    assert [i.step for i in mgr.checkpoints()] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000001"]
    # A NaN table row is named too.
    fresh, fresh_opts = make_training()
    table = fresh.ec.tables()["item"]
    table.find_or_insert(torch.tensor([5]))
    table.load({"ids": torch.tensor([5]), "rows": torch.full((1, 4), float("inf"))})
    with pytest.raises(NonFiniteStateError, match="sparse/ec.item.rows"):
        CheckpointManager(tmp_path / "other").save(1, fresh, fresh_opts)


def test_pending_gradients_are_refused(tmp_path):
    model, opts = make_training()
    kjt, labels = make_batch(1)
    torch.nn.functional.binary_cross_entropy_with_logits(model(kjt), labels).backward()  # no optimizer step
    with pytest.raises(CheckpointError, match=r"pending sparse gradients.*optimizer.step\(\)"):
        CheckpointManager(tmp_path).save(1, model, opts)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_incompatible_table_config_is_refused_with_both_values(tmp_path):
    model, opts = make_training()
    train_step(model, opts, 0)
    CheckpointManager(tmp_path).save(1, model, opts)
    other, other_opts = make_training(user_dim=16)
    before = model_state(other)
    with pytest.raises(IncompatibleCheckpointError, match="'ec.user': embedding_dim is 8 in the checkpoint but 16 in "
                                                          "the model"):
        CheckpointManager(tmp_path).load("latest", other, other_opts)
    assert_same_state(model_state(other), before)  # nothing was loaded


def test_other_sparse_optimizer_or_missing_optimizer_is_refused(tmp_path):
    from recis.optim import SparseAdagrad

    model, opts = make_training()
    train_step(model, opts, 0)
    CheckpointManager(tmp_path).save(1, model, opts)
    fresh, fresh_opts = make_training()
    with pytest.raises(IncompatibleCheckpointError, match="no state for optimizer 'extra'"):
        CheckpointManager(tmp_path).load("latest", fresh, {**fresh_opts, "extra": fresh_opts["dense"]})
    other = TinyCTR()  # a fresh model whose user tables carry another optimizer's slots
    wrong = SparseAdagrad(other.ec.groups[0].tables)
    with pytest.raises(IncompatibleCheckpointError, match="saved for 'rowwise_adagrad' but the model's tables use "
                                                          "'adagrad'"):
        CheckpointManager(tmp_path).load("latest", other)
    with pytest.raises(IncompatibleCheckpointError, match="SparseRowwiseAdagrad, got .*SparseAdagrad"):
        CheckpointManager(tmp_path).load("latest", None, {"user": wrong})


def test_load_checkpoint_takes_a_root_or_a_checkpoint_dir(tmp_path):
    model, opts = make_training()
    mgr = CheckpointManager(tmp_path, keep_last=None)
    p1 = mgr.save(1, model, opts, {"n": 1})
    train_step(model, opts, 1)
    mgr.save(2, model, opts, {"n": 2})
    assert load_checkpoint(tmp_path, make_training()[0])["n"] == 2
    assert load_checkpoint(p1, make_training()[0])["n"] == 1
    assert CheckpointManager(tmp_path).load(p1.name)["n"] == 1


def test_codec_round_trips_nested_state_and_names_unstorable_values():
    obj = {"a": (1, 2.5, None, True), 3: [float("nan"), float("-inf")], (1, "x"): {"$k": torch.arange(3)},
           "t": torch.ones(2), "s": "text"}
    tensors = {}
    doc = json.loads(json.dumps(encode(obj, tensors), allow_nan=False))
    back = decode(doc, tensors)
    assert back["a"] == (1, 2.5, None, True) and back["s"] == "text"
    assert str(back[3]) == "[nan, -inf]"
    assert torch.equal(back[(1, "x")]["$k"], torch.arange(3)) and torch.equal(back["t"], torch.ones(2))
    with pytest.raises(TypeError, match=r"extra/reader/fn: cannot store a function"):
        encode({"reader": {"fn": lambda: 0}}, {}, "extra")


def test_non_strict_load_accepts_other_seeds_but_not_other_shapes(tmp_path):
    from recis.nn import EmbeddingCollection, TableConfig

    def ec(seed, dim=4):
        return EmbeddingCollection([TableConfig("t", dim, ["f"], seed=seed)])

    a = ec(1)
    a.tables()["t"].find_or_insert(torch.tensor([1, 2]))
    CheckpointManager(tmp_path).save(1, a)
    with pytest.raises(IncompatibleCheckpointError, match=r"'t': seeds is \[1\] in the checkpoint but \[2\] in the "
                                                          r"model"):
        CheckpointManager(tmp_path).load("latest", ec(2))
    b = ec(2)
    CheckpointManager(tmp_path).load("latest", b, strict=False)
    assert_exports_equal(b.tables()["t"].export(), a.tables()["t"].export())
    with pytest.raises(IncompatibleCheckpointError, match="embedding_dim is 4 in the checkpoint but 2"):
        CheckpointManager(tmp_path).load("latest", ec(1, dim=2), strict=False)


class WithExtraState(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("tied", self.lin.weight.data[0])  # shares memory with a parameter
        self.vocab = {"a": 1}

    def get_extra_state(self):
        return {"vocab": dict(self.vocab), "version": (1, 2)}

    def set_extra_state(self, state):
        self.vocab = state["vocab"]


def test_plain_torch_model_with_shared_buffers_and_extra_state(tmp_path):
    model = WithExtraState()
    model.vocab["b"] = 2
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.lin(torch.ones(3)).sum().backward()
    opt.step()
    CheckpointManager(tmp_path).save(7, model, {"sgd": opt})
    fresh = WithExtraState()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    assert CheckpointManager(tmp_path).load("latest", fresh, {"sgd": fresh_opt}) == {}
    assert fresh.vocab == {"a": 1, "b": 2}
    assert torch.equal(fresh.lin.weight, model.lin.weight) and torch.equal(fresh.tied, model.tied)
    assert_same_state(fresh_opt.state_dict(), opt.state_dict())
