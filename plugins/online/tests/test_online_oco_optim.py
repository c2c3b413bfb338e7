"""BOGD_IP, its ensembles and projected OGD as torch optimizers: options, infeasible starts,
NaN gradients, exact resume, feasibility with oracle calls only, the covering's alive count and
the entry points."""
import copy
import io
import math
import tomllib
from pathlib import Path

import pytest
import torch
from oco_testing import SHAPES, make

from recis_online.oco import learners, optim, projections
from recis.optim import available_optimizers, load_optimizer
from recis_online.oco.optim import BOGDIP, BOGDIPAdaptive, BOGDIPEnsemble, ProjectedOGD
from recis_online.oco.sets import make_set
from recis_online.oco.streams import SwitchingLogistic

#: the optimizers this plugin registers (entry-point group recis.optimizers, from pyproject.toml)
OPTIMIZER_NAMES = sorted(n for n, t in available_optimizers("dense").items() if t.startswith("recis_online."))

F64 = torch.float64
PLUGIN = Path(__file__).resolve().parents[1]
OPTIONS = {
    "bogd_ip": dict(eta=0.05, block=8, eps=1e-2),
    "bogd_ip_ensemble": dict(eta_min=0.01, experts=4, meta_lr=0.5, block=8, eps=1e-2),
    "bogd_ip_adaptive": dict(eta_scale=1.0, block=8, eps=1e-2),
    "projected_ogd": dict(eta=0.05),
}


def _grads(seed, n, shapes):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=F64) for s in shapes] for _ in range(n)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.to(p.dtype)
        opt.step()


@pytest.mark.parametrize("name", list(OPTIMIZER_NAMES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resume_mid_block_is_bitwise_exact(name, dtype):
    """Stop at round 37 (mid-block for B = 8), save, build a new optimizer on restored parameters,
    load_state_dict, continue: the parameters and the whole state equal an uninterrupted run."""
    cls = load_optimizer(name, "dense")
    shapes = [(6,), (4, 3)]
    sets = [("l1_ball", {}), ("nuclear_ball", {})] if name != "projected_ogd" else [("l1_ball", {}), ("l2_ball", {})]
    grads = _grads(0, 90, shapes)

    def build(values=None):
        ps = [torch.nn.Parameter(torch.zeros(s, dtype=dtype) if values is None else values[i].clone())
              for i, s in enumerate(shapes)]
        groups = [{"params": [ps[0]], "set": sets[0][0]}, {"params": [ps[1]], "set": sets[1][0], "radius": 2.0}]
        return ps, cls(groups, **OPTIONS[name])

    ps_a, opt_a = build()
    _run(opt_a, ps_a, grads)

    ps_b, opt_b = build()
    _run(opt_b, ps_b, grads[:37])
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in ps_b], "opt": opt_b.state_dict()}, buf)
    if name != "projected_ogd":
        assert opt_b.state[ps_b[0]]["position"] == 37 % 8 != 0
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    ps_c, opt_c = build(saved["params"])
    opt_c.load_state_dict(saved["opt"])
    _run(opt_c, ps_c, grads[37:])

    for pa, pc in zip(ps_a, ps_c):
        assert torch.equal(pa, pc)
    for pa, pc in zip(ps_a, ps_c):
        _assert_same(opt_a.state[pa], opt_c.state[pc])
    assert opt_a.oracle_calls() == opt_c.oracle_calls()


def _assert_same(a, b, path="state"):
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_state_dict_holds_the_full_state():
    p = torch.nn.Parameter(torch.full((5,), 0.2, dtype=F64))
    opt = BOGDIPEnsemble([p], set="simplex", **OPTIONS["bogd_ip_ensemble"])
    _run(opt, [p], _grads(1, 13, [(5,)]))
    st = opt.state_dict()["state"][0]
    for key in ("expert_x", "expert_y", "log_weights", "etas", "position", "block_index", "grad_sum", "oracle_calls", "x"):
        assert key in st, key
    assert st["position"] == 5 and st["block_index"] == 2 and len(st["expert_x"]) == 4
    assert torch.allclose(st["grad_sum"], sum(g[0] for g in _grads(1, 13, [(5,)])[8:]))
    p2 = torch.nn.Parameter(torch.full((5,), 0.2, dtype=F64))
    opt2 = BOGDIPAdaptive([p2], set="simplex", **OPTIONS["bogd_ip_adaptive"])
    _run(opt2, [p2], _grads(1, 20, [(5,)]))
    inst = opt2.state_dict()["state"][0]["instances"]
    assert {"x", "y", "scale", "start", "end", "R", "C"} <= set(inst[0])


@pytest.mark.parametrize("name", list(OPTIMIZER_NAMES))
def test_nan_gradient_raises_naming_round_and_parameter_before_any_change(name):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    cls = load_optimizer(name, "dense")
    opt = cls(model.named_parameters(), set="l2_ball", **OPTIONS[name])
    params = list(model.parameters())
    _run(opt, params, _grads(2, 5, [p.shape for p in params]))
    before_params = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict())
    params[0].grad = torch.ones_like(params[0])
    params[1].grad = torch.tensor([[0.0, float("nan")]], dtype=F64)
    with pytest.raises(FloatingPointError, match=r"round 6: the gradient of parameter '1.weight' is not finite"):
        opt.step()
    for p, b in zip(params, before_params):
        assert torch.equal(p.detach(), b)
    _assert_same(before_state["state"], opt.state_dict()["state"])
    params[1].grad = torch.tensor([[float("inf"), 0.0]], dtype=F64)
    with pytest.raises(FloatingPointError, match="round 6"):
        opt.step()


@pytest.mark.parametrize("name", list(OPTIMIZER_NAMES))
def test_infeasible_start_is_projected_with_a_warning_or_refused(name):
    cls = load_optimizer(name, "dense")
    start = torch.tensor([3.0, -1.0, 0.5], dtype=F64)
    p = torch.nn.Parameter(start.clone())
    with pytest.warns(UserWarning, match="started outside K"):
        opt = cls([p], set="l1_ball", radius=1.0, **OPTIONS[name])
    K = make_set("l1_ball", (3,), radius=1.0)
    assert K.contains(p.detach(), 1e-9)
    exact = projections.project(K, start)
    eps = OPTIONS[name].get("eps", 0.0)
    assert float(((p.detach() - exact) ** 2).sum()) <= 2 * eps + 1e-12  # FW: eps-approximate; exact for OGD
    assert torch.equal(opt.state[p]["x"], p.detach())
    q = torch.nn.Parameter(start.clone())
    with pytest.raises(ValueError, match=r"parameter param_groups\[0\]\.params\[0\] \(shape \(3,\)\) starts outside K"):
        cls([q], set="l1_ball", radius=1.0, on_infeasible_start="raise", **OPTIONS[name])


@pytest.mark.parametrize("name", ["bogd_ip", "bogd_ip_ensemble", "bogd_ip_adaptive"])
def test_iterates_stay_in_K_with_oracle_calls_only_while_plain_ogd_leaves_K(name, monkeypatch):
    K = make_set("l1_ball", (10,), radius=1.0)
    stream = SwitchingLogistic(K, T=600, d=10, switches=2, seed=3, label_noise=0.0)

    def forbidden(*args, **kwargs):
        raise AssertionError("an exact projection was called")

    for mod in (optim, learners):
        monkeypatch.setattr(mod, "project", forbidden)
    for fn in ("project", "project_simplex", "project_l1_ball", "project_l2_ball", "project_box", "project_nuclear_ball"):
        monkeypatch.setattr(projections, fn, forbidden)
    monkeypatch.setattr(torch.linalg, "svd", forbidden)

    def play(opt, p):
        outside = 0
        for t in range(stream.T):
            x = p.detach()
            outside += not K.contains(x, 1e-9)
            p.grad = stream.grad(t, x)
            opt.step()
        return outside

    p = torch.nn.Parameter(torch.zeros(10, dtype=F64))
    opt = load_optimizer(name, "dense")([p], set="l1_ball", radius=1.0, horizon=stream.T, grad_bound=stream.grad_bound)
    assert play(opt, p) == 0
    assert opt.oracle_calls() > 0
    q = torch.nn.Parameter(torch.zeros(10, dtype=F64))
    sgd = torch.optim.SGD([q], lr=0.05)
    assert play(sgd, q) > stream.T // 4  # the same stream pushes unprojected OGD out of K


def test_adaptive_keeps_floor_log2_m_plus_one_instances_alive():
    p = torch.nn.Parameter(torch.full((4,), 0.25, dtype=F64))
    opt = BOGDIPAdaptive([p], set="simplex", block=2, eps=1e-2)
    alive, starts = [], []
    for t in range(2 * 100):
        p.grad = torch.ones(4, dtype=F64) * (t % 3 - 1)
        opt.step()
        st = opt.state[p]
        if st["position"] == 0:
            m = st["block_index"]
            alive.append((m, len(st["instances"])))
            for inst in st["instances"]:
                assert inst["start"] <= m <= inst["end"] and inst["end"] - inst["start"] + 1 == 2 ** inst["scale"]
                assert inst["start"] % 2 ** inst["scale"] == 0
    for m, n in alive:
        assert n == int(math.floor(math.log2(m))) + 1, (m, n)
    assert opt.state[p]["max_alive"] == int(math.log2(101)) + 1 <= 7
    # a horizon caps the scales: at most floor(log2(T/B)) + 1 alive
    q = torch.nn.Parameter(torch.full((4,), 0.25, dtype=F64))
    capped = BOGDIPAdaptive([q], set="simplex", block=2, eps=1e-2, horizon=32)
    for _ in range(200):
        q.grad = torch.ones(4, dtype=F64)
        capped.step()
    assert capped.state[q]["max_alive"] == 4 + 1


def test_options_are_checked_by_name():
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"bogd_ip\.eta must be a finite number > 0 or null, got -1\.0"):
        BOGDIP([p], eta=-1.0, block=2, eps=1e-3)
    with pytest.raises(ValueError, match=r"bogd_ip_ensemble: give eps or horizon"):
        BOGDIPEnsemble([p], eta_min=0.1, block=2, experts=3, meta_lr=1.0)
    with pytest.raises(ValueError, match="on_infeasible_start must be one of project, raise"):
        BOGDIPAdaptive([p], block=2, eps=1e-3, on_infeasible_start="clip")
    with pytest.raises(ValueError, match=r"parameter param_groups\[0\]\.params\[0\] \(shape \(3,\)\): nuclear_ball is a set of matrices"):
        BOGDIP([p], set="nuclear_ball", eta=0.1, block=2, eps=1e-3)
    with pytest.raises(ValueError, match=r"bogd_ip\.radius must be a finite number > 0, got -2\.0"):
        BOGDIP([{"params": [p], "set": "simplex", "radius": -2.0}], eta=0.1, block=2, eps=1e-3)
    hyper = pytest.importorskip("recis.optim.hyper")
    with pytest.raises(ValueError, match="optim.params\\[0\\].optimizer.lr is not an option of BOGDIP"):
        hyper.check_options("optim.params[0].optimizer", {"lr": 0.1}, constructor=BOGDIP)
    hyper.check_options("optim.params[0].optimizer", {"set": "l1_ball", "radius": 4.0, "eta": 0.05, "block": 16},
                        constructor=BOGDIP)


def test_entry_points_name_the_classes():
    meta = tomllib.loads((PLUGIN / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["recis.optimizers"]
    assert set(eps) == set(OPTIMIZER_NAMES)
    for name, target in eps.items():
        module, attr = target.split(":")
        cls = getattr(__import__(module, fromlist=[attr]), attr)
        assert cls is load_optimizer(name, "dense") and issubclass(cls, torch.optim.Optimizer)
        assert cls.optimizer_kind == "dense"
    assert "recis_online.oco" in meta["tool"]["setuptools"]["packages"]


def test_projected_ogd_matches_the_formula():
    K = make("l2_ball")
    p = torch.nn.Parameter(torch.zeros(SHAPES["l2_ball"], dtype=F64))
    opt = ProjectedOGD([p], set="l2_ball", radius=1.5, eta=0.3)
    x = torch.zeros(SHAPES["l2_ball"], dtype=F64)
    for gs in _grads(4, 10, [SHAPES["l2_ball"]]):
        p.grad = gs[0]
        opt.step()
        y = x - 0.3 * gs[0]
        x = y * min(1.0, 1.5 / float(y.norm()))  # the l2 projection written out
        assert torch.allclose(p.detach(), x, atol=1e-12)
    assert opt.state[p]["projections"] == 10 and K.contains(x)


def test_bogd_ip_plays_one_point_per_block_and_steps_the_block_gradient():
    """Within a block the played point does not move; at the block's end the new point is the
    infeasible projection of y - eta * (sum of the block's gradients), recomputed here."""
    from recis_online.oco.infeasible import infeasible_projection

    p = torch.nn.Parameter(torch.zeros(8, dtype=F64))
    opt = BOGDIP([p], set="l1_ball", radius=1.5, eta=0.2, block=4, eps=1e-3)
    K = make("l1_ball")
    x = y = torch.zeros(8, dtype=F64)
    grads = _grads(5, 12, [(8,)])
    for b in range(3):
        block = grads[4 * b: 4 * b + 4]
        for g in block:
            assert torch.equal(p.detach(), x)
            p.grad = g[0]
            opt.step()
        x, y, _ = infeasible_projection(K, x, y - 0.2 * sum(g[0] for g in block), 1e-3)
        assert torch.equal(p.detach(), x) and torch.equal(opt.state[p]["y"], y)


def test_a_group_added_later_gets_its_own_set_and_learner():
    a = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    b = torch.nn.Parameter(torch.full((3,), 1.0 / 3, dtype=F64))
    opt = BOGDIP([a], set="l2_ball", eta=0.1, block=2, eps=1e-2)
    opt.add_param_group({"params": [b], "set": "simplex"})
    for _ in range(6):
        a.grad = torch.ones(4, dtype=F64)
        b.grad = torch.tensor([1.0, 0.0, -1.0], dtype=F64)
        opt.step()
    assert opt._learners[b].K.name == "simplex" and make_set("simplex", (3,)).contains(b.detach(), 1e-9)
    assert float(b.detach()[2]) > 1.0 / 3 and float(a.detach().norm()) <= 1.0 + 1e-9


def test_resume_needs_the_saved_state_uncast():
    """Baselines of the resume test: restarting from the parameters alone (mid-block gradient sum
    and y lost), or loading with torch's default (which casts the state to a float32 parameter's
    dtype), does not continue as the uninterrupted run does."""
    grads = _grads(7, 60, [(6,)])

    def fresh(value=None):
        p = torch.nn.Parameter(torch.zeros(6, dtype=torch.float32) if value is None else value.clone())
        return p, BOGDIP([p], set="l1_ball", **OPTIONS["bogd_ip"])

    pa, oa = fresh()
    _run(oa, [pa], grads)
    pb, ob = fresh()
    _run(ob, [pb], grads[:29])
    saved = copy.deepcopy(ob.state_dict())
    value = pb.detach()

    pc, oc = fresh(value)  # parameters only
    _run(oc, [pc], grads[29:])
    assert not torch.equal(pa, pc)
    pd, od = fresh(value)  # torch's cast-to-dtype load
    torch.optim.Optimizer.load_state_dict(od, saved)
    assert od.state[pd]["y"].dtype == torch.float32
    _run(od, [pd], grads[29:])
    assert not torch.equal(oa.state[pa]["y"], od.state[pd]["y"].to(F64))
    pe, oe = fresh(value)  # ours
    oe.load_state_dict(saved)
    _run(oe, [pe], grads[29:])
    assert torch.equal(pa, pe) and torch.equal(oa.state[pa]["y"], oe.state[pe]["y"])
