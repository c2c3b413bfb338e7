"""The DDPM schedule and sampler against closed forms recomputed here (linear betas, the forward
marginal by Monte Carlo, the posterior of q(x_{t-1} | x_t, x0) by Gaussian conditioning, exact
recovery of a one-point data distribution under its optimal noise predictor), sampler determinism
by seed, and the 3D-conv denoiser's shapes and input checks."""
import math

import numpy as np
import pytest
import torch

from recis_multimodal.halo.ddpm import DDPMSchedule
from recis_multimodal.halo.denoiser import Denoiser3D


def test_linear_betas_and_cumulative_products():
    s = DDPMSchedule(steps=10, beta_start=0.02, beta_end=0.5)
    betas = [0.02 + (0.5 - 0.02) * i / 9 for i in range(10)]
    prod, expect = 1.0, []
    for b in betas:
        prod *= 1.0 - b
        expect.append(prod)
    assert np.allclose(s.betas.numpy(), betas, rtol=1e-6)
    assert np.allclose(s.alphas_cumprod.numpy(), expect, rtol=1e-6)


def test_q_sample_marginal_by_monte_carlo():
    s = DDPMSchedule(steps=10)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -0.3, 0.0, 1.0])
    n = 40000
    for step in (0, 4, 9):
        t = torch.full((n,), step, dtype=torch.long)
        noise = torch.randn(n, 4, generator=g)
        xt = s.q_sample(x0.expand(n, 4), t, noise)
        ab = float(np.prod([1 - (0.01 + (0.7 - 0.01) * i / 9) for i in range(step + 1)]))
        mean, var = math.sqrt(ab) * x0, 1.0 - ab
        se = math.sqrt(var / n)
        assert torch.allclose(xt.mean(dim=0), mean, atol=5 * se)
        assert torch.allclose(xt.var(dim=0), torch.full((4,), var), rtol=0.04)


def test_posterior_coefficients_by_gaussian_conditioning():
    s = DDPMSchedule(steps=10)
    ab = s.alphas_cumprod.double()
    for t in range(1, 10):
        a_t, ab_t, ab_prev = 1 - float(s.betas[t]), float(ab[t]), float(ab[t - 1])
        # (x_{t-1}, x_t) | x0 jointly Gaussian: cov = sqrt(a_t) (1 - ab_prev), var(x_t) = 1 - ab_t
        gain = math.sqrt(a_t) * (1 - ab_prev) / (1 - ab_t)
        var = (1 - ab_prev) - a_t * (1 - ab_prev) ** 2 / (1 - ab_t)
        coef_x0 = math.sqrt(ab_prev) - gain * math.sqrt(ab_t)
        assert float(s.posterior_variance[t]) == pytest.approx(var, rel=1e-5)
        assert float(s.posterior_coef_xt[t]) == pytest.approx(gain, rel=1e-5)
        assert float(s.posterior_coef_x0[t]) == pytest.approx(coef_x0, rel=1e-5)


def test_sampler_recovers_a_one_point_distribution_under_its_optimal_predictor():
    s = DDPMSchedule(steps=10, clip=None)
    point = torch.linspace(-0.9, 0.9, 2 * 1 * 2 * 3 * 3).reshape(2, 1, 2, 3, 3)

    def oracle(x, t, cond):  # E[eps | x_t] when x0 is always `point`
        ab = s.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
        return (x - ab.sqrt() * point) / (1 - ab).sqrt()

    out = s.sample(oracle, point.shape, None, torch.Generator().manual_seed(3))
    assert torch.allclose(out, point, atol=1e-5)


def test_sampler_is_deterministic_by_seed():
    s = DDPMSchedule(steps=10)
    torch.manual_seed(0)
    net = Denoiser3D(width=8).eval()
    cond = torch.tensor([1, 4, 7])
    a = s.sample(net, (3, 1, 4, 8, 8), cond, torch.Generator().manual_seed(11))
    b = s.sample(net, (3, 1, 4, 8, 8), cond, torch.Generator().manual_seed(11))
    c = s.sample(net, (3, 1, 4, 8, 8), cond, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 1, 4, 8, 8) and float(a.abs().max()) <= 1.0 + 1e-6  # clipped x0 estimate at t = 0
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    t1, n1 = s.draw((4, 1, 2, 4, 4), g1)
    t2, n2 = s.draw((4, 1, 2, 4, 4), g2)
    assert torch.equal(t1, t2) and torch.equal(n1, n2) and t1.dtype == torch.long and int(t1.max()) < 10


def test_schedule_errors_name_the_option():
    with pytest.raises(ValueError, match="DDPMSchedule.beta_end"):
        DDPMSchedule(beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="DDPMSchedule.beta_end must be a finite number in \\(0, 1\\)"):
        DDPMSchedule(beta_end=1.0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        DDPMSchedule().q_sample(torch.zeros(1, 3), torch.tensor([10]), torch.zeros(1, 3))


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_denoiser_shapes(layers):
    net = Denoiser3D(channels=2, width=8, num_classes=5, steps=10, layers=layers)
    assert sum(isinstance(m, torch.nn.Conv3d) for m in net.modules()) == layers
    for shape in ((3, 2, 4, 16, 16), (1, 2, 8, 12, 20)):
        x = torch.randn(shape)
        out = net(x, torch.randint(0, 10, (shape[0],)), torch.randint(0, 5, (shape[0],)))
        assert out.shape == x.shape
    # the class changes the prediction (its embedding is added)
    x = torch.randn(1, 2, 4, 8, 8)
    t = torch.tensor([3])
    assert not torch.equal(net(x, t, torch.tensor([0])), net(x, t, torch.tensor([1])))


@pytest.mark.parametrize("call,match", [
    (lambda n: n(torch.zeros(2, 3, 4, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 1])), "x_t must be"),
    (lambda n: n(torch.zeros(2, 1, 4, 8, 8), torch.tensor([0, 10]), torch.tensor([0, 1])), r"t must lie in \[0, 9\]"),
    (lambda n: n(torch.zeros(2, 1, 4, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 10])),
     r"cond must lie in \[0, 9\]"),
    (lambda n: n(torch.zeros(2, 1, 4, 8, 8), torch.tensor([0.0, 1.0]), torch.tensor([0, 1])), "t must be a long"),
    (lambda n: Denoiser3D(layers=5), r"Denoiser3D.layers must be an integer in \[2, 4\]"),
])
def test_denoiser_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(Denoiser3D(width=4))
