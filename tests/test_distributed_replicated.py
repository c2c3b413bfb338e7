"""Replicated tables: every rank sees the union of the ranks' ids, and each replica takes the
update of the gradient averaged over ranks (as DDP averages dense gradients). Real 2-rank gloo
processes, plain SGD (no optimizer state), against a reference computed here with torch autograd."""
import pytest
import torch

import _dist_workers as w
from recis.distributed.local import run_local
from recis.nn import EmbeddingCollection, TableConfig

LR = 0.5


def reference_rows(world: int):
    """(sorted union ids, rows after one SGD step on the mean over ranks of each rank's gradient)."""
    batches = [w.replicated_batch(r) for r in range(world)]
    union = torch.unique(torch.cat([ids for ids, _, _ in batches]))  # sorted
    single = EmbeddingCollection([TableConfig("r", 4, combiner="mean", seed=3)])
    initial = single.tables()["r"].initial_rows(union)
    grads = []
    for ids, lengths, coef in batches:
        rows = initial.clone().requires_grad_(True)
        picked = rows[torch.searchsorted(union, ids)]
        bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        sums = torch.zeros(lengths.numel(), 4).index_add(0, bag, picked)
        pooled = sums / lengths.clamp(min=1).unsqueeze(1).float()  # mean; an empty bag pools to 0
        (pooled * coef).sum().backward()
        grads.append(rows.grad)
    return union, initial - LR * torch.stack(grads).mean(0), initial


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_replicas_take_the_rank_averaged_sgd_step_and_agree(backend):
    results = run_local(w.replicated_sgd_step, 2, LR, backend, timeout_s=180)
    union, want, initial = reference_rows(2)
    assert not torch.allclose(want, initial)  # the step moves the rows
    for fused in (False, True):
        for r in results:
            got = r.value[fused]
            assert torch.equal(got["ids"], union), f"rank {r.rank} (fused={fused}) holds {got['ids'].tolist()}"
            torch.testing.assert_close(got["rows"], want, rtol=1e-6, atol=1e-6,
                                       msg=f"rank {r.rank} (fused={fused}) replica rows")
        assert torch.equal(results[0].value[fused]["rows"], results[1].value[fused]["rows"])
