"""Sets, linear oracles, exact projections and the Frank-Wolfe infeasible projection."""
import math

import pytest
import torch
from oco_testing import SHAPES, make, random_points, support_min

from recis_online.oco.infeasible import frank_wolfe_projection, infeasible_projection
from recis_online.oco.learners import BOGDIP
from recis_online.oco.projections import project
from recis_online.oco.sets import NuclearBall, make_set

F64 = torch.float64
SETS = list(SHAPES)


@pytest.mark.parametrize("name", SETS)
def test_lmo_attains_the_support_function_and_counts_calls(name):
    K = make(name)
    gen = torch.Generator().manual_seed(1)
    for i in range(20):
        g = torch.randn(SHAPES[name], generator=gen, dtype=F64)
        v = K.lmo(g)
        assert K.contains(v, 1e-9), (name, v)
        assert float((g * v).sum()) == pytest.approx(support_min(K, g), rel=1e-9, abs=1e-9)
        assert K.calls == i + 1
    # no random point of K does better than the oracle's answer
    for z in random_points(K, 50, gen):
        assert K.contains(z, 1e-9)
        assert float((g * z).sum()) >= float((g * v).sum()) - 1e-9


@pytest.mark.parametrize("name", SETS)
def test_exact_projection_satisfies_the_optimality_certificate(name):
    """p = Proj_K(y) iff max_{z in K} <y - p, z - p> <= 0; the max is the support function."""
    K = make(name)
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        y = 2.0 * torch.randn(SHAPES[name], generator=gen, dtype=F64)
        p = project(K, y)
        assert K.contains(p, 1e-9)
        worst = -support_min(K, -(y - p)) - float(((y - p) * p).sum())
        assert worst <= 1e-8, (name, worst)
        z = random_points(K, 1, gen)[0]
        assert torch.linalg.vector_norm(y - p) <= torch.linalg.vector_norm(y - z) + 1e-12


def test_exact_projection_agrees_with_scipy_on_the_simplex():
    scipy_opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    y = np.array([0.9, -0.3, 0.4, 1.2, 0.05])
    res = scipy_opt.minimize(lambda v: 0.5 * ((v - y) ** 2).sum(), np.full(5, 0.2), jac=lambda v: v - y,
                             constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}], bounds=[(0, None)] * 5,
                             method="SLSQP", options={"ftol": 1e-14})
    ours = project(make_set("simplex", (5,)), torch.tensor(y))
    assert np.allclose(ours.numpy(), res.x, atol=1e-7)


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("eps", [1e-2, 1e-3])
def test_infeasible_projection_guarantees_against_100_points(name, eps):
    """x in K, ||x - y||^2 <= 3 eps, and ||y_out - z|| <= ||y0 - z|| for 100 random z in K."""
    K = make(name)
    gen = torch.Generator().manual_seed(3)
    points = random_points(K, 100, gen)
    moved = 0
    for trial in range(6):
        x0 = random_points(K, 1, gen)[0]
        y0 = x0 + (0.5 + trial) * torch.randn(SHAPES[name], generator=gen, dtype=F64)
        before = K.calls
        x, y, stats = infeasible_projection(K, x0, y0, eps)
        assert K.calls - before == stats["oracle_calls"] >= 1
        assert K.contains(x, 1e-9)
        assert float(((x - y) ** 2).sum()) <= 3 * eps
        for z in points:
            assert float(torch.linalg.vector_norm(y - z)) <= float(torch.linalg.vector_norm(y0 - z)) + 1e-12
        moved += stats["y_moves"] > 0
    assert moved > 0  # the y-update branch ran (y0 was far outside K)


def test_without_the_y_pull_the_guarantee_fails():
    """The baseline: returning (FW point, y0) unmoved breaks ||x - y||^2 <= 3 eps for a far y0,
    and the exact-projection distance can be far above 3 eps: the loop's y-step is what makes it hold."""
    K = make("l2_ball")
    y0 = torch.full(SHAPES["l2_ball"], 3.0, dtype=F64)
    x_fw, _ = frank_wolfe_projection(K, y0, 1e-3)
    assert float(((x_fw - y0) ** 2).sum()) > 3e-3
    x, y, _ = infeasible_projection(K, K.a_point(like=y0), y0, 1e-3)
    assert float(((x - y) ** 2).sum()) <= 3e-3


def test_frank_wolfe_projection_is_eps_accurate():
    for name in SETS:
        K = make(name)
        gen = torch.Generator().manual_seed(4)
        y = 2.0 * torch.randn(SHAPES[name], generator=gen, dtype=F64)
        x, calls = frank_wolfe_projection(K, y, 1e-4)
        assert calls == K.calls and K.contains(x, 1e-9)
        assert float(((x - project(K, y)) ** 2).sum()) <= 2e-4


def test_oracle_calls_per_block_are_counted():
    K = make("simplex")
    learner = BOGDIP(K, eta=0.05, block=4, eps=1e-3)
    state = learner.init(K.a_point())
    gen = torch.Generator().manual_seed(5)
    per_block = []
    for t in range(40):
        ended = learner.step(state, torch.randn(8, generator=gen, dtype=F64))
        if ended:
            per_block.append(state["oracle_calls_last_block"])
    assert len(per_block) == 10 and all(c >= 1 for c in per_block)
    assert sum(per_block) == state["oracle_calls"] == K.calls


def test_nuclear_power_iteration_matches_svd():
    K = NuclearBall(2.0, (6, 4), power_iters=500, tol=1e-13, seed=7)
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(6, 4, generator=gen, dtype=F64)
    u, s, v = K.top_singular_pair(g)
    U, S, Vh = torch.linalg.svd(g)
    assert float(s) == pytest.approx(float(S[0]), rel=1e-10)
    assert torch.allclose(torch.outer(u, v), torch.outer(U[:, 0], Vh[0]), atol=1e-6)
    # the same seed gives the same pair: the oracle is deterministic (exact resume)
    assert torch.equal(K.lmo(g), K.lmo(g))


@pytest.mark.parametrize("bad, message", [
    (lambda: make_set("ball", (3,)), "unknown set 'ball'"),
    (lambda: make_set("l1_ball", (3,), radius=-1.0), "radius must be a finite number > 0"),
    (lambda: make_set("box", (3,), lo=1.0, hi=0.0), "lo < hi"),
    (lambda: make_set("nuclear_ball", (3,)), "matrices"),
    (lambda: make_set("simplex", (0,)), "dimension"),
])
def test_bad_sets_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_diameters():
    assert make("simplex").diameter == pytest.approx(math.sqrt(2))
    assert make("box").diameter == pytest.approx(1.5 * math.sqrt(6))
    assert make("nuclear_ball").diameter == 3.0
