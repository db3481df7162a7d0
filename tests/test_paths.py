"""Probability paths: boundary values, derivatives against autograd, variance preservation,
the conditional velocity, and round trips between the four predictions, all in float64."""

import itertools

import pytest
import torch

from nbutils.paths import (
    KINDS,
    RECTIFIED,
    TIME_DENSITIES,
    RectifiedSchedule,
    VESchedule,
    VPSchedule,
    interpolate,
    logit_normal_times,
    mode_times,
    time_cdf,
    time_sampler,
    uniform_times,
)

SCHEDULES = {"rectified": RectifiedSchedule(), "vp": VPSchedule(), "ve": VESchedule(0.02, 20.0)}
each_schedule = pytest.mark.parametrize("name", list(SCHEDULES))


def times(n=7):
    return torch.linspace(0.05, 0.95, n, dtype=torch.float64)


@each_schedule
def test_derivatives_match_autograd(name):
    s = SCHEDULES[name]
    t = times().requires_grad_(True)
    for value, derivative in [(s.alpha, s.d_alpha), (s.sigma, s.d_sigma)]:
        (grad,) = torch.autograd.grad(value(t).sum() + 0 * t.sum(), t)  # constants too
        torch.testing.assert_close(derivative(t.detach()), grad, rtol=1e-10, atol=1e-10)


@each_schedule
def test_boundaries_and_monotonicity(name):
    s = SCHEDULES[name]
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert (s.sigma(t).diff() > 0).all(), "noise must grow from data (t = 0) to noise (t = 1)"
    assert (s.alpha(t).diff() <= 0).all()
    if name == "rectified":
        assert s.alpha(ends).tolist() == [1.0, 0.0] and s.sigma(ends).tolist() == [0.0, 1.0]
    if name == "vp":
        torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
        assert s.alpha(ends)[1] < 0.01  # almost pure noise at t = 1
    if name == "ve":
        torch.testing.assert_close(s.sigma(ends), torch.tensor([0.02, 20.0], dtype=torch.float64))


@each_schedule
def test_velocity_is_the_time_derivative_of_the_path(name):
    s = SCHEDULES[name]
    g = torch.Generator().manual_seed(0)
    x0, x1 = (
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64),
    )
    t = times().requires_grad_(True)
    x_t = s.interpolate(x0, x1, t)
    columns = [torch.autograd.grad(x_t[:, j].sum(), t, retain_graph=True)[0] for j in range(3)]
    torch.testing.assert_close(s.velocity(x0, x1, t.detach()), torch.stack(columns, 1))


@each_schedule
def test_every_prediction_converts_to_every_other_and_back(name):
    s = SCHEDULES[name]
    g = torch.Generator().manual_seed(1)
    x0, x1 = (
        torch.randn(7, 2, 3, generator=g, dtype=torch.float64),
        torch.randn(7, 2, 3, generator=g, dtype=torch.float64),
    )
    t = times()
    x_t = s.interpolate(x0, x1, t)
    truth = {
        "x0": x0,
        "noise": x1,
        "velocity": s.velocity(x0, x1, t),
        "score": -x1 / s.sigma(t)[:, None, None],  # the conditional score of N(alpha x0, sigma^2)
    }
    for source, target in itertools.product(KINDS, KINDS):
        got = s.convert(truth[source], x_t, t, source=source, target=target)
        torch.testing.assert_close(
            got, truth[target], rtol=1e-9, atol=1e-9, msg=f"{source}->{target}"
        )


@each_schedule
def test_errors_say_what_was_expected(name):
    s = SCHEDULES[name]
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"pred must have shape \(3, 2\)"):
        s.convert(torch.zeros(3, 1), x, torch.rand(3), source="x0", target="noise")
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        s.convert(x, x, torch.tensor([0.5, 2.0, 0.5]), source="x0", target="noise")
    with pytest.raises(ValueError, match="one of"):
        s.convert(x, x, torch.rand(3), source="eps", target="x0")
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        s.interpolate(x, x, torch.rand(2))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        s.interpolate(x, x, torch.tensor([0.0, 0.5, 1.5]))


def test_the_straight_line_is_the_default_path():
    x0, x1, t = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)
    assert torch.equal(interpolate(x0, x1, t), RECTIFIED.interpolate(x0, x1, t))
    assert torch.equal(RECTIFIED.velocity(x0, x1, t), x1 - x0)
    expected = (1 - t[:, None]) * x0 + t[:, None] * x1
    torch.testing.assert_close(interpolate(x0, x1, t), expected)


def test_time_densities_have_their_laws(device):
    g = torch.Generator().manual_seed(0)  # a CPU generator may draw for any device
    uniform = uniform_times(20_000, generator=g, device=device).cpu()
    assert uniform.shape == (20_000,) and 0 <= uniform.min() and uniform.max() <= 1
    assert abs(uniform.mean() - 0.5) < 0.01 and abs(uniform.var() - 1 / 12) < 0.005
    logits = torch.logit(logit_normal_times(20_000, 0.5, 2.0, generator=g, device=device)).cpu()
    assert abs(logits.mean() - 0.5) < 0.05 and abs(logits.std() - 2.0) < 0.05  # logit ~ N(m, s)


DENSITIES = [("uniform", {}), ("logit-normal", {"mean": 0.0, "std": 1.0}),
             ("logit-normal", {"mean": -0.5, "std": 0.6}), ("mode", {"scale": 1.29}),
             ("mode", {"scale": -0.8}), ("cosmap", {})]  # fmt: skip


def ks_distance(samples: torch.Tensor, cdf: torch.Tensor) -> float:
    """sup |F_n - F| over the sorted samples (F evaluated there)."""
    n = len(samples)
    steps = torch.arange(1, n + 1, dtype=torch.float64) / n
    return max((steps - cdf).abs().max().item(), (cdf - (steps - 1 / n)).abs().max().item())


@pytest.mark.parametrize(("name", "params"), DENSITIES)
def test_each_time_sampler_draws_from_its_density(name, params):
    """Kolmogorov-Smirnov: 20,000 draws sit within the 0.1% critical distance 1.95 / sqrt(n) of
    the density's CDF, and far from the uniform CDF (except for the uniform density itself)."""
    n = 20_000
    draws = time_sampler(name, **params)(n, generator=torch.Generator().manual_seed(3))
    assert draws.shape == (n,) and 0 <= draws.min() and draws.max() <= 1
    ordered = draws.double().sort().values
    assert ks_distance(ordered, time_cdf(name, ordered, **params)) < 1.95 / n**0.5
    if name != "uniform":
        assert ks_distance(ordered, ordered) > 0.03  # far from the uniform CDF F(t) = t


def test_mode_with_scale_zero_is_uniform_and_the_cdfs_are_proper():
    g = torch.Generator().manual_seed(4)
    u = torch.Generator().manual_seed(4)
    torch.testing.assert_close(mode_times(50, 0.0, generator=g), 1 - uniform_times(50, generator=u))
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    for name, params in DENSITIES:
        cdf = time_cdf(name, grid, **params)
        assert abs(cdf[0]) < 1e-9 and abs(cdf[-1] - 1) < 1e-9, name
        assert (cdf[1:] >= cdf[:-1] - 1e-12).all(), name


def test_mode_times_follow_the_papers_formula_and_its_density_at_the_middle():
    """Independent of the package's map: SD3's f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u), and
    the density 1 / |f'(1/2)| = 1 / (1 + s - s pi / 2) at t = 1/2 (about 3.79 for s = 1.29)."""
    s = 1.29
    u = uniform_times(10, generator=torch.Generator().manual_seed(7))
    expected = 1 - u - s * (torch.cos(torch.pi * u / 2) ** 2 - 1 + u)
    torch.testing.assert_close(mode_times(10, s, generator=torch.Generator().manual_seed(7)),
                               expected)  # fmt: skip
    draws = mode_times(400_000, s, generator=torch.Generator().manual_seed(8))
    middle = ((draws - 0.5).abs() < 0.005).double().mean().item() / 0.01
    assert middle == pytest.approx(1 / (1 + s - s * torch.pi / 2), rel=0.03)


def test_building_a_sampler_leaves_the_global_random_stream_alone():
    torch.manual_seed(9)
    first = torch.rand(3)
    torch.manual_seed(9)
    time_sampler("logit-normal", mean=0.0, std=1.0)
    torch.testing.assert_close(torch.rand(3), first)


def test_unknown_time_densities_and_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown time density 'lognormal'.*uniform"):
        time_sampler("lognormal")
    with pytest.raises(ValueError, match="unknown time density"):
        time_cdf("lognormal", torch.zeros(2))
    with pytest.raises(ValueError, match="stays monotone"):
        time_sampler("mode", scale=2.0)
    with pytest.raises(ValueError, match="std must be a positive number"):
        time_sampler("logit-normal", std=0.0)
    with pytest.raises(ValueError, match="does not take the parameters"):
        time_sampler("uniform", scale=1.0)
    with pytest.raises(ValueError, match="does not take the parameters"):
        time_cdf("mode", torch.zeros(2), scael=1.29)  # a typo is not silently the default
    with pytest.raises(ValueError, match="stays monotone"):
        time_cdf("mode", torch.zeros(2), scale=3.0)
    assert TIME_DENSITIES == ("uniform", "logit-normal", "mode", "cosmap")


def test_vp_schedule_matches_its_closed_form():
    vp = VPSchedule(0.1, 20.0)
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(vp.alpha(one), torch.exp(-(0.1 + 20.0) / 4 * one))
    for t, beta in [(0.0, 0.1), (0.5, 10.05), (1.0, 20.0)]:  # d log alpha / dt = -beta(t) / 2
        t = torch.tensor([t], dtype=torch.float64)
        torch.testing.assert_close(vp.d_alpha(t) / vp.alpha(t), torch.tensor([-beta / 2]).double())
    assert vp.sigma(torch.zeros(1)).item() == 0.0
    assert torch.isinf(vp.d_sigma(torch.zeros(1))).all()  # sigma ~ sqrt(beta_min t): train on t > 0


def test_bad_schedule_settings_are_refused():
    with pytest.raises(ValueError, match="beta_min"):
        VPSchedule(1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        VESchedule(0.0, 1.0)


@each_schedule
def test_float32_and_the_test_device(name, device):
    s = SCHEDULES[name]
    x0 = torch.randn(5, 3, device=device)
    x1 = torch.randn(5, 3, device=device)
    t = torch.linspace(0.1, 0.9, 5, device=device)
    x_t = s.interpolate(x0, x1, t)
    assert x_t.dtype == torch.float32 and x_t.device == x0.device
    back = s.convert(s.velocity(x0, x1, t), x_t, t, source="velocity", target="x0")
    torch.testing.assert_close(back, x0, rtol=1e-4, atol=1e-4)
