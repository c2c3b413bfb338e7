"""fused=True: rows are updated during backward; results equal the deferred (step) path."""
import pytest
import torch

from recis.nn import EmbeddingCollection, HashEmbedding, TableConfig, Uniform, sparse_tables
from recis.optim import (SparseAdagrad, SparseAdam, SparseAdamW, SparseFTRL, SparseRowwiseAdagrad, SparseSGD)

OPTIMIZERS = [
    lambda t, f: SparseSGD(t, lr=0.3, weight_decay=0.01, fused=f),
    lambda t, f: SparseAdagrad(t, lr=0.2, lr_decay=0.01, fused=f),
    lambda t, f: SparseRowwiseAdagrad(t, lr=0.2, weight_decay=0.01, fused=f),
    lambda t, f: SparseAdam(t, lr=0.05, weight_decay=0.01, fused=f),
    lambda t, f: SparseAdamW(t, lr=0.05, fused=f),
    lambda t, f: SparseFTRL(t, lr=0.2, l1=0.001, l2=0.01, fused=f),
]
IDS = ["sgd", "adagrad", "rowwise", "adam", "adamw", "ftrl"]


def _train(make_opt, fused, combiner, steps=4):
    emb = HashEmbedding(6, combiner=combiner, initializer=Uniform(-0.5, 0.5), seed=3)
    opt = make_opt(sparse_tables(emb), fused)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        values = torch.randint(-20, 20, (40,), generator=gen)
        offsets = torch.tensor([0, 3, 3, 10, 25, 40])
        weights = torch.rand(40, generator=gen)
        out = emb(values, offsets if combiner else None, weights if combiner == "sum" else None)
        target = torch.randn(out.shape, generator=gen)
        ((out - target) ** 2).sum().backward()
        opt.step()
        opt.zero_grad()
    state = emb.table.export()
    order = state["ids"].argsort()
    return {k: v[order] for k, v in state.items()}, emb


@pytest.mark.parametrize("combiner", ["sum", "mean", None])
@pytest.mark.parametrize("make_opt", OPTIMIZERS, ids=IDS)
def test_fused_equals_deferred(make_opt, combiner):
    deferred, _ = _train(make_opt, False, combiner)
    fused, emb = _train(make_opt, True, combiner)
    assert torch.equal(deferred["ids"], fused["ids"])
    torch.testing.assert_close(fused["rows"], deferred["rows"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused["slots"], deferred["slots"], rtol=1e-6, atol=1e-6)
    assert emb.group.optimizer_step == 4


def test_fused_rows_move_during_backward_and_step_is_a_no_op():
    emb = HashEmbedding(4, initializer=Uniform(-1, 1))
    opt = SparseSGD([emb.table], lr=1.0, fused=True)
    out = emb(torch.tensor([5, 6]), torch.tensor([0, 2]))
    before = emb.table.lookup(torch.tensor([5, 6]))
    out.sum().backward()
    after = emb.table.lookup(torch.tensor([5, 6]))
    torch.testing.assert_close(after, before - 1.0)
    opt.step()
    torch.testing.assert_close(emb.table.lookup(torch.tensor([5, 6])), after)


def test_fused_nonfinite_row_is_left_untouched_and_reported():
    emb = HashEmbedding(2, combiner=None, initializer=Uniform(-1, 1))
    opt = SparseSGD([emb.table], lr=1.0, fused=True)
    out = emb(torch.tensor([1, 2]))
    before = emb.table.lookup(torch.tensor([1, 2]))
    grad = torch.tensor([[float("nan"), 0.0], [1.0, 1.0]])
    with pytest.raises(FloatingPointError, match="1 rows"):
        out.backward(grad)
    after = emb.table.lookup(torch.tensor([1, 2]))
    assert torch.equal(after[0], before[0])            # the NaN row is untouched
    torch.testing.assert_close(after[1], before[1] - 1.0)  # the finite one was updated
    assert opt.nonfinite_rows == 1


def test_fused_skip_nonfinite_warns():
    emb = HashEmbedding(2, combiner=None, initializer=Uniform(-1, 1))
    opt = SparseSGD([emb.table], lr=1.0, fused=True, skip_nonfinite=True)
    out = emb(torch.tensor([1]))
    with pytest.warns(RuntimeWarning, match="skipped 1 rows"):
        out.backward(torch.tensor([[float("inf"), 0.0]]))
    assert opt.nonfinite_rows == 1


def test_fused_embedding_collection_matches_deferred():
    def run(fused):
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        ec = EmbeddingCollection([TableConfig("a", 4, ["fa"], initializer=Uniform(-1, 1)),
                                  TableConfig("b", 4, ["fb"], initializer=Uniform(-1, 1))])
        opt = SparseRowwiseAdagrad(sparse_tables(ec), lr=0.1, fused=fused)
        kjt = KeyedJaggedTensor.from_lengths_sync(["fa", "fb"], torch.tensor([1, 2, 3, 1, 9]),
                                                  torch.tensor([2, 1, 1, 1]))
        for _ in range(3):
            ec(kjt).values().pow(2).sum().backward()
            opt.step()
        return [ec.tables()[n].export()["rows"] for n in ("a", "b")]

    for x, y in zip(run(False), run(True)):
        torch.testing.assert_close(x, y)


def test_second_optimizer_on_a_table_is_refused():
    emb = HashEmbedding(2)
    keep = SparseSGD([emb.table], fused=True)  # noqa: F841  (alive: still owns the table)
    with pytest.raises(ValueError, match="one sparse optimizer"):
        SparseAdam([emb.table])
