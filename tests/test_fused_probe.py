"""The training lookup dedups its values in the same pass that probes the id map: every value is
hashed and probed once, and only new ids are hashed again (to claim their slot). Checked through
the C++ table's debug counters (probe_counters), and against a lookup that repeats the same
batch (stale per-call slot marks must not leak into the next call)."""
import torch

from conftest import ids_tensor, offsets_for
from recis.nn import FrequencyAdmission, HashEmbedding, Uniform

DIM = 4
INIT = Uniform(-1.0, 1.0)


def counters(emb):
    return dict(emb.group._impl.probe_counters())


def delta(before, after):
    return {k: after[k] - before[k] for k in before}


def test_lookup_hashes_and_probes_each_value_once():
    emb = HashEmbedding(DIM, combiner="sum", initializer=INIT, seed=7)
    emb.train()
    ids = [5, 9, 5, 5, -3, 9, 11, 5]  # n = 8 values, u = 4 unique keys
    with torch.no_grad():
        c0 = counters(emb)
        emb(ids_tensor(ids), offsets_for([3, 5]))
        c1 = counters(emb)
        # First call: 8 hashes + probes for the fused dedup/probe, 4 more to place the new ids.
        assert delta(c0, c1) == {"key_hashes": 8 + 4, "map_probes": 8 + 4}
        out1 = emb(ids_tensor(ids), offsets_for([3, 5]))
        c2 = counters(emb)
        # All hits: exactly one hash and one probe per value, no separate dedup pass (that
        # would hash n + u = 12 times).
        assert delta(c1, c2) == {"key_hashes": 8, "map_probes": 8}
        out2 = emb(ids_tensor(ids), offsets_for([3, 5]))
    assert torch.equal(out1, out2)
    assert len(emb.table) == 4


def test_fused_probe_keeps_counts_and_admission():
    """Hits and misses interleave; admission counts every occurrence of a new id."""
    emb = HashEmbedding(DIM, combiner="sum", initializer=INIT, seed=3, missing="zeros",
                        admission=FrequencyAdmission(min_count=3, sketch_width=1 << 10))
    emb.train()
    with torch.no_grad():
        for _ in range(3):
            emb(ids_tensor([1]), offsets_for([1]))
        assert emb.table.find(ids_tensor([1])).item() >= 0
        c0 = counters(emb)
        # Id 2 is seen 3 times in one batch: admitted now; id 4 twice: not yet.
        emb(ids_tensor([1, 2, 4, 2, 1, 2, 4]), offsets_for([7]))
        c1 = counters(emb)
    assert delta(c0, c1) == {"key_hashes": 7 + 1, "map_probes": 7 + 1}
    found = emb.table.find(ids_tensor([1, 2, 4])).tolist()
    assert found[0] >= 0 and found[1] >= 0 and found[2] == -1

