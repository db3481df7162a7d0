"""The ODE view against closed forms: the probability-flow velocity is f x - g^2 s / 2 for every
parameterisation, the PF-ODE with the exact score carries the prior to Gaussian data, its
log-likelihood equals the closed-form density, uniform noise scores its analytic bits/dim,
DDIM is an Euler step in the right variables, Hutchinson's probe is fixed within a solve, and
bad input is a clear error."""

import math

import pytest
import torch

from nbutils.analytic import gaussian_mixture_log_density, gaussian_mixture_score, gaussian_score
from nbutils.likelihood import ode_log_prob, rademacher
from nbutils.ode import (
    ProbabilityFlow,
    bits_per_dim,
    bpd,
    ddim,
    decode,
    encode,
    gaussian_prior_log_prob,
    symmetric_dequantized,
)
from nbutils.paths import VESchedule, VPSchedule
from nbutils.samplers import euler, rk45, time_grid
from nbutils.sde import SDE

MEAN = torch.tensor([0.5, -0.3], dtype=torch.float64)
COV = torch.tensor([[0.4, 0.1], [0.1, 0.2]], dtype=torch.float64)
SCHEDULES = {"VP": VPSchedule(), "VE": VESchedule(0.01, 5.0)}


@pytest.fixture(autouse=True)
def _all_in_float64(float64):
    """Every test here runs in float64."""


def g(seed):
    return torch.Generator().manual_seed(seed)


def noise_net(schedule):
    """The exact noise prediction of Gaussian data, -sigma * score."""
    score = gaussian_score(MEAN, COV, schedule)

    def net(x, t):
        return -schedule.sigma(t)[:, None] * score(x, t)

    return net


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("kind", ["noise", "score", "x0"])
def test_probability_flow_is_f_x_minus_half_g2_score(name, kind):
    schedule = SCHEDULES[name]
    sde, score = SDE(schedule), gaussian_score(MEAN, COV, schedule)
    x, t = torch.randn(6, 2, generator=g(0)), torch.rand(6, generator=g(1)) * 0.9 + 0.05
    exact_noise = noise_net(schedule)(x, t)
    pred = schedule.convert(exact_noise, x, t, source="noise", target=kind)
    flow = ProbabilityFlow(lambda xx, tt: pred, schedule, kind=kind)
    expected = sde.f(t)[:, None] * x - 0.5 * sde.g2(t)[:, None] * score(x, t)
    torch.testing.assert_close(flow(x, t), expected)


def test_pf_ode_with_the_exact_score_carries_the_prior_to_the_data():
    schedule = SCHEDULES["VP"]
    flow = ProbabilityFlow(noise_net(schedule), schedule)
    z = torch.randn(20_000, 2, generator=g(2))
    x = rk45(flow, z, (1.0, 1e-4), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), COV, atol=0.02, rtol=0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_ode_log_likelihood_equals_the_closed_form(name):
    """With the exact p_1 as the prior, the ODE gives log p_{t_min}(x) exactly."""
    schedule, t_min = SCHEDULES[name], 1e-3
    flow = ProbabilityFlow(noise_net(schedule), schedule)

    def marginal(t):
        tt = torch.tensor(t)
        a, s = schedule.alpha(tt), schedule.sigma(tt)
        return torch.distributions.MultivariateNormal(a * MEAN, a**2 * COV + s**2 * torch.eye(2))

    torch.manual_seed(8)
    x = marginal(t_min).sample((8,))
    out = ode_log_prob(flow, x, marginal(1.0).log_prob, ts=(t_min, 1.0), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out.log_prob, marginal(t_min).log_prob(x), atol=1e-5, rtol=0)


def test_uniform_noise_scores_8_bits_per_dim():
    """A field that moves nothing and a uniform prior on [-1, 1]^D: p = 2^-D on the cube, so
    any 8-bit data cost exactly 8 bits/dim (the +7 offset and the scaling's Jacobian)."""
    k = torch.randint(0, 256, (50, 1, 4, 4), generator=g(3))

    def uniform(z):
        return torch.full((z.shape[0],), -z[0].numel() * math.log(2.0), dtype=z.dtype)

    bpd, _, _ = bits_per_dim(lambda x, t: 0 * x, k, prior_log_prob=uniform, probes=None,
                             generator=g(4))  # fmt: skip
    assert bpd == pytest.approx(8.0, abs=1e-9)


def test_symmetric_dequantization_fills_each_bin_of_minus_one_to_one():
    k = torch.tensor([0, 255]).repeat(100_000)
    x = symmetric_dequantized(k, generator=g(9)).reshape(-1, 2)
    assert x[:, 0].min() >= -1 and x[:, 0].max() < -1 + 2 / 256
    assert x[:, 1].min() >= 1 - 2 / 256 and x[:, 1].max() < 1
    assert x[:, 0].mean().item() == pytest.approx(-1 + 1 / 256, abs=2e-5)  # uniform in the bin


def test_gaussian_prior_is_the_normal_density():
    prior = gaussian_prior_log_prob(VESchedule(0.01, 5.0))
    z = torch.randn(6, 3, generator=g(10))
    expected = torch.distributions.Normal(0.0, 5.0).log_prob(z).sum(1)
    torch.testing.assert_close(prior(z), expected)


class Still(torch.nn.Module):
    """A velocity that moves nothing (so bits/dim is the prior's), with one float32 weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float32))

    def forward(self, x, t):
        return self.w * x


def test_bits_per_dim_of_a_float32_model_with_a_gaussian_prior():
    """A module that moves nothing, float32 parameters, a N(0, 1) prior: bits/dim must be
    7 - mean log N(x) / (D ln 2) for the dequantized images x, with the Hutchinson path on."""
    k = torch.randint(0, 256, (20, 1, 2, 2), generator=g(11))
    prior = gaussian_prior_log_prob(VPSchedule())  # sigma(1) = 1 to 4 digits
    bpd, log_unit, _ = bits_per_dim(Still(), k, prior_log_prob=prior, probes=1, generator=g(12))
    x = symmetric_dequantized(k, generator=g(12)).double()
    expected = 7 - prior(x).mean().item() / (4 * math.log(2))
    assert log_unit.dtype == torch.float32
    assert bpd == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="drop sampler="):
        bits_per_dim(Still(), k, prior_log_prob=prior, sampler=euler)


def test_ddim_is_an_euler_step_in_y_and_r_and_tends_to_euler_in_x():
    schedule = SCHEDULES["VP"]
    net, flow = noise_net(schedule), ProbabilityFlow(noise_net(schedule), schedule)
    x = torch.randn(5, 2, generator=g(5))
    t, t_next = 0.6, 0.5
    tt = torch.tensor([t, t_next])
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    z_hat = net(x, torch.full((5,), t))
    y_next = (
        x / a[0] + (s[1] / a[1] - s[0] / a[0]) * z_hat
    )  # Euler in y = x / alpha, r = sigma / alpha
    torch.testing.assert_close(ddim(net, x, [t, t_next], schedule=schedule), a[1] * y_next)
    gaps = []
    for h in (0.04, 0.02, 0.01):
        gaps.append(
            (ddim(net, x, [t, t - h], schedule=schedule) - euler(flow, x, [t, t - h])).abs().max()
        )
    assert gaps[0] / gaps[1] > 3 and gaps[1] / gaps[2] > 3  # O(h^2) per step


def test_hutchinson_probe_is_fixed_within_one_solve():
    """On v = A x the estimate integrates eps^T A eps, for the one probe of the solve: the
    result differs from the exact one by (eps^T A eps - tr A) times the length of the solve."""
    a = torch.tensor([[0.3, -0.8], [0.5, -0.2]])
    x = torch.randn(4, 2, generator=g(6))
    prior = gaussian_prior_log_prob(VESchedule(0.01, 1.0))
    exact = ode_log_prob(lambda v, t: v @ a.T, x, prior, ts=(0.2, 1.0), rtol=1e-9, atol=1e-9)
    hutch = ode_log_prob(lambda v, t: v @ a.T, x, prior, ts=(0.2, 1.0), probes=1, generator=g(7),
                         rtol=1e-9, atol=1e-9)  # fmt: skip
    eps = rademacher((1, 4, 2), generator=g(7))[0]
    quad = torch.einsum("bi,ij,bj->b", eps, a, eps)
    torch.testing.assert_close(
        hutch.log_prob - exact.log_prob, 0.8 * (quad - a.trace()), atol=1e-6, rtol=0
    )


MIX_MEANS = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=torch.float64)


def test_ve_marginal_solved_from_the_heat_equation_is_the_gaussian_convolution():
    """March dp/ds = (1/2) Laplacian p (s = sigma^2) on a grid by explicit finite differences,
    from the exact p at t0 to t1; the result is the closed-form convolution at t1."""
    ve = VESchedule(0.01, 5.0)
    density = gaussian_mixture_log_density(MIX_MEANS, 0.3, ve)
    h, t0, t1 = 0.08, 0.2, 0.45
    axis = torch.arange(-5.0, 5.0 + h / 2, h, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    n = len(axis)

    def p_at(t):
        return density(grid, torch.full((len(grid),), t)).exp().reshape(n, n)

    s0, s1 = (float(ve.sigma(torch.tensor(t))) ** 2 for t in (t0, t1))
    steps = math.ceil((s1 - s0) / (0.4 * h**2))  # explicit scheme: stable for ds <= h^2 / 2
    ds, p = (s1 - s0) / steps, p_at(t0)
    for _ in range(steps):
        lap = torch.zeros_like(p)
        lap[1:-1, 1:-1] = (
            p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * p[1:-1, 1:-1]
        ) / h**2
        p = p + 0.5 * ds * lap
    exact = p_at(t1)
    assert (p - exact).abs().max() < 2e-3 * exact.max()
    assert (p_at(t0) - exact).abs().max() > 0.2 * exact.max()  # the density did change


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_mixture_score_is_the_gradient_of_its_log_density(name):
    schedule = SCHEDULES[name]
    x = torch.randn(7, 2, generator=g(13), requires_grad=True)
    t = torch.rand(7, generator=g(14)) * 0.9 + 0.05
    log_p = gaussian_mixture_log_density(MIX_MEANS, 0.3, schedule)(x, t)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    torch.testing.assert_close(grad, gaussian_mixture_score(MIX_MEANS, 0.3, schedule)(x, t))


def test_bpd_over_batches_is_the_batch_formula_image_by_image():
    """With the exact divergence the generator only draws the dequantization, in image order,
    so the chunking cannot change any image's bits/dim; and each agrees with bits_per_dim."""
    k = torch.randint(0, 256, (12, 1, 2, 2), generator=g(15))
    vp = VPSchedule()
    whole = bpd(Still(), k, schedule=vp, kind="velocity", probes=None, batch_size=12, seed=3,
                progress=False)  # fmt: skip
    pieces = bpd(Still(), k, schedule=vp, kind="velocity", probes=None, batch_size=5, seed=3,
                 progress=False)  # fmt: skip
    torch.testing.assert_close(whole.per_image, pieces.per_image)
    one, _, _ = bits_per_dim(Still(), k, prior_log_prob=gaussian_prior_log_prob(vp), probes=None,
                             generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert whole.bpd == pytest.approx(one, abs=1e-5)
    assert whole.bpd == pytest.approx(whole.per_image.mean().item(), abs=1e-9)
    assert whole.nfe > 0 and pieces.nfe > 0


def test_bpd_of_gaussian_data_under_its_exact_rectified_flow_is_the_closed_form():
    """End to end: the exact velocity of N(m, C) data on the straight path moves its density to
    N(0, I) exactly, so bpd() of any images must be 7 - log N(x; m, C) / (D ln 2) at the
    dequantized points x; exact divergence per image, Hutchinson within its noise."""
    from nbutils.analytic import gaussian_velocity
    from nbutils.paths import RectifiedSchedule

    k = torch.randint(0, 256, (40, 2), generator=g(17))
    velocity = gaussian_velocity(MEAN, COV)
    straight = RectifiedSchedule()
    exact = bpd(velocity, k, schedule=straight, kind="velocity", t_min=0.0, probes=None,
                batch_size=40, seed=5, progress=False, rtol=1e-8, atol=1e-8)  # fmt: skip
    x = symmetric_dequantized(k, generator=torch.Generator().manual_seed(5)).double()
    data = torch.distributions.MultivariateNormal(MEAN, COV)
    expected = 7 - data.log_prob(x) / (2 * math.log(2))
    torch.testing.assert_close(exact.per_image, expected, atol=1e-5, rtol=0)
    hutch = bpd(velocity, k, schedule=straight, kind="velocity", t_min=0.0, probes=1,
                probe="gaussian", batch_size=40, seed=5, progress=False)  # fmt: skip
    assert hutch.bpd == pytest.approx(expected.mean().item(), abs=0.3)
    assert not torch.allclose(hutch.per_image, exact.per_image)  # the probe did act


def test_the_deterministic_encoder_inverts():
    schedule = SCHEDULES["VP"]
    flow = ProbabilityFlow(noise_net(schedule), schedule)
    x = (MEAN + 0.3 * torch.randn(6, 2, generator=g(16))).clamp(-1, 1)
    z = encode(flow, x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(decode(flow, z, rtol=1e-8, atol=1e-8), x, atol=1e-5, rtol=0)
    assert (z - x).abs().max() > 0.1  # it moved


def test_bad_inputs_are_clear_errors():
    schedule = SCHEDULES["VP"]
    with pytest.raises(TypeError, match="pass the 8-bit images themselves"):
        symmetric_dequantized(torch.rand(2, 1, 4, 4))  # an image already in [-1, 1] or [0, 1]
    with pytest.raises(ValueError, match=r"grey levels must lie in \[0, 255\]"):
        symmetric_dequantized(torch.full((2, 3), 300))
    with pytest.raises(ValueError, match="must decrease from noise"):
        ddim(noise_net(schedule), torch.zeros(2, 2), time_grid(3, 0.0, 1.0), schedule=schedule)
    with pytest.raises(ValueError, match="strictly monotone"):
        ddim(noise_net(schedule), torch.zeros(2, 2), [1.0, 0.3, 0.5], schedule=schedule)
    with pytest.raises(ValueError, match="must be finite"):
        ddim(noise_net(schedule), torch.full((2, 2), math.nan), time_grid(2), schedule=schedule)
    with pytest.raises(ValueError, match="kind must be one of"):
        ProbabilityFlow(torch.nn.Identity(), schedule, kind="epsilon")
    flow = ProbabilityFlow(noise_net(schedule), schedule)
    with pytest.raises(
        ValueError, match=r"must hold images in \[-1, 1\], got values in \[0, 255\]"
    ):
        encode(flow, torch.tensor([[0.0, 255.0]]))  # an 8-bit image where [-1, 1] is expected
    with pytest.raises(ValueError, match="strictly monotone"):
        ddim(noise_net(schedule), torch.zeros(2, 2), [1.0, 1.0, 0.5], schedule=schedule)
    with pytest.raises(TypeError, match="pass the 8-bit images themselves"):
        bpd(Still(), torch.rand(3, 1, 2, 2), schedule=schedule, progress=False)
