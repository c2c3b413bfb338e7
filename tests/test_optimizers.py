"""Sparse optimizers against dense references.

SGD / Adagrad / Adam / AdamW are compared with torch.optim on a dense weight that holds the same
rows (indexed compactly: the k-th id of IDS is dense row k), fed the same batches through
torch.nn.functional.embedding_bag and the same loss. Row-wise Adagrad and FTRL are compared
with the published formulas, written here in float64.
"""
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from recis.nn import HashEmbedding, Uniform, sparse_tables
from recis.optim import (SparseAdagrad, SparseAdam, SparseAdamW, SparseFTRL, SparseRowwiseAdagrad,
                         SparseSGD)

IDS = [11, -5, 2**62, 0, 999, -(2**63), 7, 12345]
DIM = 8
RTOL, ATOL = 1e-6, 1e-6
# Row-wise Adagrad, FTRL and lazy Adam run in float32 in recis and in float64 in the reference.
FORMULA_RTOL, FORMULA_ATOL = 1e-6, 1e-6


# --------------------------------------------------------------------------- helpers

def _make_emb(dim=DIM, seed=3):
    return HashEmbedding(dim, combiner="sum", initializer=Uniform(-0.5, 0.5), seed=seed)


def _rows(emb, ids=IDS):
    """Current values of `ids` (in that order), read back with find + gather."""
    rows = emb.table.find(torch.tensor(ids, dtype=torch.int64))
    assert bool((rows >= 0).all())
    return emb.table.gather(rows)


def _batches(n_steps, seed=0, all_present=True, n_bags=3, subsets=None, ids=IDS):
    """Jagged batches over `ids`. With all_present every id is in every batch (plus duplicates);
    `subsets` (a list of id-index lists, one per step) restricts each batch to those ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(n_steps):
        if subsets is not None:
            base = torch.tensor(subsets[step], dtype=torch.int64)
        elif all_present:
            base = torch.randperm(len(ids), generator=g)
        else:
            base = torch.randint(0, len(ids), (len(ids) // 2,), generator=g)
        extra = base[torch.randint(0, base.numel(), (4,), generator=g)]
        idx = torch.cat([base, extra])[torch.randperm(base.numel() + 4, generator=g)]
        cuts = torch.sort(torch.randint(0, idx.numel() + 1, (n_bags - 1,), generator=g)).values
        offsets = torch.cat([torch.tensor([0]), cuts, torch.tensor([idx.numel()])]).to(torch.int64)
        values = torch.tensor(ids, dtype=torch.int64)[idx]
        target = torch.randn(n_bags, DIM, generator=g)
        out.append((values, offsets, idx, target))
    return out


def _loss(out, target):
    # Nonlinear in the rows, so each step's gradient depends on the current weights.
    return 0.5 * ((out - target) ** 2).sum() + 0.1 * (out ** 3).sum()


def _dense_out(w, idx, offsets):
    return F.embedding_bag(idx, w, offsets, mode="sum", include_last_offset=True)


def _run_against_torch(sparse_factory, dense_factory, n_steps=5, all_present=True, subsets=None, seed=0,
                       insert_first=False, rtol=RTOL, atol=ATOL, scheduler=None):
    emb = _make_emb()
    if insert_first:
        emb.table.find_or_insert(torch.tensor(IDS))
    opt = sparse_factory(sparse_tables(emb))
    emb.table.find_or_insert(torch.tensor(IDS))
    w = torch.nn.Parameter(_rows(emb).clone())
    ref_opt = dense_factory([w])
    scheds = (scheduler(opt), scheduler(ref_opt)) if scheduler else ()
    for step, (values, offsets, idx, target) in enumerate(
            _batches(n_steps, seed=seed, all_present=all_present, subsets=subsets)):
        _loss(emb(values, offsets), target).backward()
        opt.step()
        opt.zero_grad()
        _loss(_dense_out(w, idx, offsets), target).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        for s in scheds:
            s.step()
        torch.testing.assert_close(_rows(emb), w.detach(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"step {step}: {m}")
    return emb, opt, w


# --------------------------------------------------------------------------- torch.optim references

TORCH_CASES = {
    "sgd": (lambda t: SparseSGD(t, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    "sgd_wd": (lambda t: SparseSGD(t, lr=0.05, weight_decay=0.1),
               lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.1)),
    "adagrad": (lambda t: SparseAdagrad(t, lr=0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    "adagrad_all": (lambda t: SparseAdagrad(t, lr=0.1, lr_decay=0.05, weight_decay=0.1,
                                            initial_accumulator_value=0.2, eps=1e-6),
                    lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.05, weight_decay=0.1,
                                                  initial_accumulator_value=0.2, eps=1e-6)),
    "adam": (lambda t: SparseAdam(t, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam_all": (lambda t: SparseAdam(t, lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
                 lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    "adamw": (lambda t: SparseAdamW(t, lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    "adamw_all": (lambda t: SparseAdamW(t, lr=0.02, betas=(0.7, 0.9), eps=1e-7, weight_decay=0.3),
                  lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.7, 0.9), eps=1e-7, weight_decay=0.3)),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch_optim_every_row_every_step(case):
    sparse, dense = TORCH_CASES[case]
    _run_against_torch(sparse, dense, n_steps=5)


@pytest.mark.parametrize("case", ["sgd", "adagrad", "adagrad_all"])
def test_sgd_adagrad_with_absent_rows(case):
    """Without weight decay, a dense torch SGD/Adagrad leaves rows with zero grad where they are,
    so batches that miss some ids still agree."""
    sparse, dense = TORCH_CASES[case]
    if case == "adagrad_all":  # weight decay would move the absent rows in torch: drop it
        sparse = lambda t: SparseAdagrad(t, lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, eps=1e-6)  # noqa
        dense = lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, eps=1e-6)  # noqa
    _run_against_torch(sparse, dense, n_steps=5, all_present=False, seed=4)


def test_adagrad_rows_inserted_before_optimizer_get_initial_accumulator():
    sparse, dense = TORCH_CASES["adagrad_all"]
    _run_against_torch(sparse, dense, n_steps=3, insert_first=True)


def test_adam_is_lazy_like_torch_sparse_adam():
    """Batches touching different subsets: compare with torch.optim.SparseAdam on a sparse-grad
    embedding bag (same lazy semantics, bias correction by the optimizer's step count).
    torch.optim.SparseAdam adds eps to sqrt(v) before the bias correction of v, Adam after it;
    a tiny eps makes that difference negligible."""
    subsets = [[0, 1, 2, 3], [0, 4, 5], [1, 2, 6, 7], [0, 3], [5, 6, 7, 4], [0]]
    emb = _make_emb()
    opt = SparseAdam(sparse_tables(emb), lr=0.05, betas=(0.8, 0.9), eps=1e-12)
    emb.table.find_or_insert(torch.tensor(IDS))
    bag = torch.nn.EmbeddingBag(len(IDS), DIM, mode="sum", sparse=True, include_last_offset=True)
    with torch.no_grad():
        bag.weight.copy_(_rows(emb))
    ref_opt = torch.optim.SparseAdam(bag.parameters(), lr=0.05, betas=(0.8, 0.9), eps=1e-12)
    for step, (values, offsets, idx, target) in enumerate(_batches(len(subsets), subsets=subsets)):
        before = _rows(emb)
        _loss(emb(values, offsets), target).backward()
        opt.step()
        _loss(bag(idx, offsets), target).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        after = _rows(emb)
        torch.testing.assert_close(after, bag.weight.detach(), rtol=RTOL, atol=ATOL,
                                   msg=lambda m: f"step {step}: {m}")
        absent = [k for k in range(len(IDS)) if k not in subsets[step]]
        assert torch.equal(after[absent], before[absent]), f"step {step}: an absent row moved"


@pytest.mark.parametrize("factory", [
    lambda t: SparseSGD(t, lr=0.1, weight_decay=0.5),
    lambda t: SparseAdagrad(t, lr=0.1, weight_decay=0.5),
    lambda t: SparseRowwiseAdagrad(t, lr=0.1, weight_decay=0.5),
    lambda t: SparseAdam(t, lr=0.1, weight_decay=0.5),
    lambda t: SparseAdamW(t, lr=0.1, weight_decay=0.5),
    lambda t: SparseFTRL(t, lr=0.1, l1=0.01, l2=0.1),
], ids=["sgd", "adagrad", "rowwise_adagrad", "adam", "adamw", "ftrl"])
def test_untouched_rows_do_not_move(factory):
    """Laziness: even with weight decay, a row absent from every batch keeps its value and slots."""
    emb = _make_emb()
    opt = factory(sparse_tables(emb))
    emb.table.find_or_insert(torch.tensor(IDS))
    state0 = emb.table.export()
    subsets = [[0, 1, 2], [0, 3], [1, 2, 3]]
    for values, offsets, _, target in _batches(3, subsets=subsets):
        _loss(emb(values, offsets), target).backward()
        opt.step()
    after = _rows(emb)
    before = state0["rows"][[state0["ids"].tolist().index(i) for i in IDS]]
    assert torch.equal(after[4:], before[4:])
    assert not torch.equal(after[:4], before[:4])
    state1 = emb.table.export()
    order0 = {i: k for k, i in enumerate(state0["ids"].tolist())}
    order1 = {i: k for k, i in enumerate(state1["ids"].tolist())}
    for i in IDS[4:]:
        assert torch.equal(state1["slots"][order1[i]], state0["slots"][order0[i]])


# --------------------------------------------------------------------------- published formulas

def _rowwise_adagrad_ref(lr, eps, weight_decay, init_acc):
    def init(w):
        return torch.full((w.shape[0],), float(init_acc), dtype=torch.float64)

    def update(w, s, g, touched):
        for r in touched:
            gr = g[r] + weight_decay * w[r]
            s[r] += (gr * gr).mean()
            w[r] -= lr * gr / (torch.sqrt(s[r]) + eps)
    return init, update


def _ftrl_ref(alpha, beta, l1, l2, lr_power, init_acc):
    p = -lr_power

    def init(w):
        return (torch.zeros_like(w), torch.full_like(w, float(init_acc)))

    def update(w, state, g, touched):
        z, n = state
        for r in touched:
            n_new = n[r] + g[r] ** 2
            sigma = (n_new ** p - n[r] ** p) / alpha
            z[r] += g[r] - sigma * w[r]
            n[r] = n_new
            w[r] = torch.where(z[r].abs() <= l1, torch.zeros_like(z[r]),
                               -(z[r] - torch.sign(z[r]) * l1) / ((beta + n_new ** p) / alpha + l2))
    return init, update


def _adam_ref(lr, betas, eps, weight_decay, decoupled):
    """torch.optim.Adam / AdamW's update (see their docs), applied only to the touched rows, with
    the bias correction of the optimizer's global step count t."""
    b1, b2 = betas

    def init(w):
        return {"t": 0, "m": torch.zeros_like(w), "v": torch.zeros_like(w)}

    def update(w, st, g, touched):
        st["t"] += 1
        t, m, v = st["t"], st["m"], st["v"]
        for r in touched:
            gr = g[r].clone()
            if decoupled:
                w[r] *= 1 - lr * weight_decay
            else:
                gr += weight_decay * w[r]
            m[r] = b1 * m[r] + (1 - b1) * gr
            v[r] = b2 * v[r] + (1 - b2) * gr * gr
            w[r] -= lr / (1 - b1 ** t) * m[r] / (v[r].sqrt() / math.sqrt(1 - b2 ** t) + eps)
    return init, update


def _run_against_formula(sparse_opt, ref, n_steps=6, subsets=None, seed=1):
    emb = _make_emb()
    opt = sparse_opt(sparse_tables(emb))
    emb.table.find_or_insert(torch.tensor(IDS))
    init, update = ref
    w = _rows(emb).double()
    state = init(w)
    batches = _batches(n_steps, seed=seed, subsets=subsets)
    for step, (values, offsets, idx, target) in enumerate(batches):
        _loss(emb(values, offsets), target).backward()
        opt.step()
        wg = w.clone().requires_grad_(True)
        _loss(_dense_out(wg, idx, offsets), target.double()).backward()
        update(w, state, wg.grad, sorted(set(idx.tolist())))
        torch.testing.assert_close(_rows(emb).double(), w, rtol=FORMULA_RTOL, atol=FORMULA_ATOL,
                                   msg=lambda m: f"step {step}: {m}")
    return emb, w, state


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.2, eps=1e-4, weight_decay=0.05, initial_accumulator_value=0.3),
])
@pytest.mark.parametrize("lazy", [False, True])
def test_rowwise_adagrad_matches_formula(kwargs, lazy):
    full = dict(lr=0.01, eps=1e-8, weight_decay=0.0, initial_accumulator_value=0.0)
    full.update(kwargs)
    subsets = [[0, 1, 2], [2, 3, 4, 5], [0, 6, 7], [1, 2], [7], [0, 1, 2, 3, 4, 5, 6, 7]] if lazy else None
    emb, w, s = _run_against_formula(lambda t: SparseRowwiseAdagrad(t, **kwargs),
                                     _rowwise_adagrad_ref(full["lr"], full["eps"], full["weight_decay"],
                                                          full["initial_accumulator_value"]),
                                     subsets=subsets)
    state = emb.table.export()
    assert state["slots"].shape == (len(IDS), 1), "row-wise Adagrad keeps one accumulator per row"
    pos = {i: k for k, i in enumerate(state["ids"].tolist())}
    acc = state["slots"][[pos[i] for i in IDS], 0].double()
    torch.testing.assert_close(acc, s, rtol=FORMULA_RTOL, atol=FORMULA_ATOL)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.3, beta=0.5, l1=0.05, l2=0.2, initial_accumulator_value=0.5),
    dict(lr=0.2, beta=1.0, l1=0.0, l2=0.0, lr_power=-0.25, initial_accumulator_value=0.1),
])
@pytest.mark.parametrize("lazy", [False, True])
def test_ftrl_matches_formula(kwargs, lazy):
    full = dict(lr=0.05, beta=1.0, l1=0.0, l2=0.0, lr_power=-0.5, initial_accumulator_value=0.1)
    full.update(kwargs)
    subsets = [[0, 1, 2], [2, 3, 4, 5], [0, 6, 7], [1, 2], [7], [0, 1, 2, 3, 4, 5, 6, 7]] if lazy else None
    emb, w, (z, n) = _run_against_formula(
        lambda t: SparseFTRL(t, **kwargs),
        _ftrl_ref(full["lr"], full["beta"], full["l1"], full["l2"], full["lr_power"],
                  full["initial_accumulator_value"]),
        subsets=subsets)
    state = emb.table.export()
    assert state["slots"].shape == (len(IDS), 2 * DIM)
    pos = [{i: k for k, i in enumerate(state["ids"].tolist())}[i] for i in IDS]
    slots = state["slots"][pos].double()
    torch.testing.assert_close(slots[:, :DIM], z, rtol=FORMULA_RTOL, atol=FORMULA_ATOL)
    torch.testing.assert_close(slots[:, DIM:], n, rtol=FORMULA_RTOL, atol=FORMULA_ATOL)


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_lazy_adam_matches_formula(decoupled):
    """Rows absent from a step keep value and moments; present rows use the global step count."""
    cls = SparseAdamW if decoupled else SparseAdam
    subsets = [[0, 1, 2, 3], [0, 4, 5], [1, 2, 6, 7], [0, 3], [5, 6, 7, 4], [0]]
    _run_against_formula(lambda t: cls(t, lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.2),
                         _adam_ref(0.05, (0.8, 0.9), 1e-6, 0.2, decoupled), n_steps=len(subsets), subsets=subsets)


def test_ftrl_l1_gives_exact_zeros():
    emb = HashEmbedding(4, combiner="sum", initializer=Uniform(-0.5, 0.5), seed=1)
    opt = SparseFTRL(sparse_tables(emb), lr=0.1, l1=100.0)
    out = emb(torch.tensor([1, 2, 3]), torch.tensor([0, 3]))
    out.backward(torch.full_like(out, 0.01))
    opt.step()
    assert torch.equal(_rows(emb, [1, 2, 3]), torch.zeros(3, 4))


# --------------------------------------------------------------------------- schedulers, state_dict

@pytest.mark.parametrize("case", ["sgd", "adam_all", "adagrad"])
def test_lr_scheduler_matches_torch(case):
    sparse, dense = TORCH_CASES[case]
    _run_against_torch(sparse, dense, n_steps=4,
                       scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5))


def test_step_lr_changes_the_lr_of_the_next_step():
    emb = HashEmbedding(4, combiner="sum", initializer=Uniform(-1, 1), seed=0)
    opt = SparseSGD(sparse_tables(emb), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.25)
    values, offsets, grad = torch.tensor([5]), torch.tensor([0, 1]), torch.tensor([[1.0, 2.0, -4.0, 8.0]])
    emb.table.find_or_insert(values)
    deltas = []
    for _ in range(3):
        before = _rows(emb, [5])
        emb(values, offsets).backward(grad)
        opt.step()
        sched.step()
        deltas.append(_rows(emb, [5]) - before)
    for k, lr in enumerate([1.0, 0.25, 0.0625]):
        torch.testing.assert_close(deltas[k], -lr * grad, rtol=RTOL, atol=ATOL)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25 ** 3)


def test_state_dict_round_trip_continues_identically():
    """Module + optimizer state saved after 3 Adam steps and loaded into fresh objects continue
    exactly like the originals (step count for bias correction, lr, betas, slots)."""
    batches = _batches(5, seed=7)
    a = _make_emb()
    opt_a = SparseAdam(sparse_tables(a), lr=0.03, betas=(0.8, 0.95), weight_decay=0.01)
    for values, offsets, _, target in batches[:3]:
        _loss(a(values, offsets), target).backward()
        opt_a.step()
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    b = _make_emb(seed=99)  # different seed: every row must come from the state
    opt_b = SparseAdam(sparse_tables(b), lr=1.0)  # different hyperparameters: must come from the state
    b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.param_groups[0]["lr"] == pytest.approx(0.03)
    assert tuple(opt_b.param_groups[0]["betas"]) == pytest.approx((0.8, 0.95))
    assert torch.equal(_rows(b), _rows(a))
    for values, offsets, _, target in batches[3:]:
        for m, o in ((a, opt_a), (b, opt_b)):
            _loss(m(values, offsets), target).backward()
            o.step()
        torch.testing.assert_close(_rows(b), _rows(a), rtol=0, atol=0)


def test_step_count_lives_in_the_table_state():
    """Adam's bias-correction step is table state: it travels with the module's state_dict."""
    emb = _make_emb()
    opt = SparseAdam(sparse_tables(emb), lr=0.01)
    for values, offsets, _, target in _batches(2):
        _loss(emb(values, offsets), target).backward()
        opt.step()
    assert emb.group.optimizer_step == 2
    assert int(emb.state_dict()["table._group.optimizer_step"]) == 2
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.01


# --------------------------------------------------------------------------- accumulation, zero_grad

@pytest.mark.parametrize("factory,dense", [
    (lambda t: SparseAdam(t, lr=0.05, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1)),
    (lambda t: SparseAdagrad(t, lr=0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
], ids=["adam", "adagrad"])
def test_gradient_accumulation(factory, dense):
    """Two backward passes then one step == one backward of the summed loss (and == torch)."""
    (v1, o1, i1, t1), (v2, o2, i2, t2) = _batches(2, seed=11, all_present=False)
    assert set(i1.tolist()) & set(i2.tolist()), "the batches must share ids"
    acc, single = _make_emb(), _make_emb()
    opt_acc, opt_single = factory(sparse_tables(acc)), factory(sparse_tables(single))
    for m in (acc, single):
        m.table.find_or_insert(torch.tensor(IDS))
    w = torch.nn.Parameter(_rows(acc).clone())
    ref = dense([w])
    rows0 = _rows(acc)
    touched = sorted(set(i1.tolist()) | set(i2.tolist()))
    absent = [k for k in range(len(IDS)) if k not in touched]
    assert absent

    _loss(acc(v1, o1), t1).backward()
    _loss(acc(v2, o2), t2).backward()
    opt_acc.step()

    # one forward over both batches, one backward of the summed loss
    values = torch.cat([v1, v2])
    offsets = torch.cat([o1, o2[1:] + o1[-1]])
    out = single(values, offsets)
    (_loss(out[:3], t1) + _loss(out[3:], t2)).backward()
    opt_single.step()

    (_loss(_dense_out(w, i1, o1), t1) + _loss(_dense_out(w, i2, o2), t2)).backward()
    ref.step()
    torch.testing.assert_close(_rows(acc), _rows(single), rtol=RTOL, atol=ATOL)
    # torch's dense optimizer also moves absent rows (weight decay); compare the touched ones
    torch.testing.assert_close(_rows(acc)[touched], w.detach()[touched], rtol=RTOL, atol=ATOL)
    assert torch.equal(_rows(acc)[absent], rows0[absent])


def test_zero_grad_drops_pending_grads():
    (v1, o1, _, t1), (v2, o2, _, t2) = _batches(2, seed=5)
    a, b = _make_emb(), _make_emb()
    opt_a = SparseAdam(sparse_tables(a), lr=0.05)
    opt_b = SparseAdam(sparse_tables(b), lr=0.05)
    _loss(a(v1, o1), t1).backward()
    before = _rows(a)
    opt_a.zero_grad()
    opt_a.step()
    assert torch.equal(_rows(a), before), "a step after zero_grad must not move any row"
    _loss(a(v2, o2), t2).backward()
    opt_a.step()
    # b sees only the second batch: the dropped gradient and the empty step leave no trace
    b.table.find_or_insert(torch.tensor(IDS))
    _loss(b(v2, o2), t2).backward()
    opt_b.step()
    torch.testing.assert_close(_rows(a), _rows(b), rtol=0, atol=0)


# --------------------------------------------------------------------------- sparse + dense

def test_sparse_and_dense_optimizers_train_together():
    torch.manual_seed(0)
    emb = _make_emb()
    mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    assert list(emb.parameters()) == [], "the table is not a dense parameter"
    sparse_opt = SparseAdagrad(sparse_tables(emb), lr=0.1)
    dense_opt = torch.optim.Adam(mlp.parameters(), lr=0.01)
    emb.table.find_or_insert(torch.tensor(IDS))

    w = torch.nn.Parameter(_rows(emb).clone())
    ref_mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    ref_mlp.load_state_dict(mlp.state_dict())
    ref_sparse = torch.optim.Adagrad([w], lr=0.1)
    ref_dense = torch.optim.Adam(ref_mlp.parameters(), lr=0.01)

    mlp0 = [p.detach().clone() for p in mlp.parameters()]
    rows0 = _rows(emb)
    losses = []
    for values, offsets, idx, target in _batches(6, seed=3):
        y = target[:, :1]
        loss = ((mlp(emb(values, offsets)) - y) ** 2).mean()
        loss.backward()
        sparse_opt.step(), dense_opt.step()
        sparse_opt.zero_grad(), dense_opt.zero_grad()
        losses.append(loss.item())
        ref_loss = ((ref_mlp(_dense_out(w, idx, offsets)) - y) ** 2).mean()
        ref_loss.backward()
        ref_sparse.step(), ref_dense.step()
        ref_sparse.zero_grad(), ref_dense.zero_grad()
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    torch.testing.assert_close(_rows(emb), w.detach(), rtol=RTOL, atol=ATOL)
    for p, q, p0 in zip(mlp.parameters(), ref_mlp.parameters(), mlp0):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(p.detach(), p0)
    assert not torch.equal(_rows(emb), rows0)


# --------------------------------------------------------------------------- non-finite gradients

def _nonfinite_setup(factory, bad_value):
    emb = HashEmbedding(4, combiner="sum", initializer=Uniform(-1, 1), seed=0)
    opt = factory(sparse_tables(emb))
    values, offsets = torch.tensor([1, 2, 3, 4, 2]), torch.tensor([0, 2, 5])  # id 2 in both bags
    grad = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 2.0, -2.0]])
    grad_bad = grad.clone()
    grad_bad[0, 1] = bad_value  # rows of ids 1 and 2 get a non-finite gradient
    return emb, opt, values, offsets, grad, grad_bad


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("factory", [lambda t: SparseSGD(t, lr=1.0), lambda t: SparseAdam(t, lr=0.1)],
                         ids=["sgd", "adam"])
def test_nonfinite_grads_raise_and_leave_rows_untouched(factory, bad):
    emb, opt, values, offsets, grad, grad_bad = _nonfinite_setup(factory, bad)
    emb(values, offsets).backward(grad_bad)
    state0 = emb.table.export()
    with pytest.raises(FloatingPointError):
        opt.step()
    state1 = emb.table.export()
    for key in ("ids", "rows", "slots"):
        assert torch.equal(state0[key], state1[key]), f"{key} changed although step() raised"
    # the failed step is not counted and leaves nothing pending: an empty step is a no-op,
    # and the next good step is exactly the first step of a fresh optimizer
    opt.step()
    assert torch.equal(emb.table.export()["rows"], state0["rows"])
    ref, ref_opt, *_ = _nonfinite_setup(factory, bad)
    for m, o in ((emb, opt), (ref, ref_opt)):
        m(values, offsets).backward(grad)
        o.step()
    torch.testing.assert_close(_rows(emb, [1, 2, 3, 4]), _rows(ref, [1, 2, 3, 4]), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_skip_nonfinite_skips_only_those_rows(bad):
    emb, opt, values, offsets, grad, grad_bad = _nonfinite_setup(
        lambda t: SparseSGD(t, lr=1.0, skip_nonfinite=True), bad)
    out = emb(values, offsets)
    before = _rows(emb, [1, 2, 3, 4])
    out.backward(grad_bad)
    with pytest.warns(RuntimeWarning):
        opt.step()
    after = _rows(emb, [1, 2, 3, 4])
    assert torch.equal(after[:2], before[:2]), "rows with non-finite grads must be skipped"
    # ids 3 and 4 are only in bag 1: SGD with lr=1 subtracts that bag's gradient
    torch.testing.assert_close(after[2:], before[2:] - grad[1], rtol=RTOL, atol=ATOL)
    assert torch.isfinite(after).all()


def test_skip_nonfinite_with_adam_keeps_slots_of_skipped_rows():
    emb, opt, values, offsets, grad, grad_bad = _nonfinite_setup(
        lambda t: SparseAdam(t, lr=0.1, skip_nonfinite=True), float("nan"))
    emb(values, offsets).backward(grad_bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step()
    state = emb.table.export()
    pos = {i: k for k, i in enumerate(state["ids"].tolist())}
    for i in (1, 2):
        assert torch.equal(state["slots"][pos[i]], torch.zeros(8)), "skipped rows keep fresh Adam slots"
    for i in (3, 4):
        assert not torch.equal(state["slots"][pos[i]], torch.zeros(8))
    assert torch.isfinite(state["rows"]).all() and torch.isfinite(state["slots"]).all()


def test_accumulated_gradient_overflowing_to_inf_is_nonfinite():
    """Each backward pass gives a finite gradient, but their sum overflows float32 to +inf:
    the gradient step() would apply is Inf, so it must raise (default) and leave the row alone."""
    emb = HashEmbedding(2, combiner="sum", initializer=Uniform(-1, 1), seed=0)
    opt = SparseSGD(sparse_tables(emb), lr=1.0)
    values, offsets = torch.tensor([1]), torch.tensor([0, 1])
    emb(values, offsets).backward(torch.full((1, 2), 3e38))
    emb(values, offsets).backward(torch.full((1, 2), 3e38))
    before = _rows(emb, [1])
    with pytest.raises(FloatingPointError):
        opt.step()
    assert torch.equal(_rows(emb, [1]), before)
    assert math.isfinite(float(_rows(emb, [1]).abs().max()))
