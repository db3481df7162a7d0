"""Rectified flow against closed forms: the optimal velocity, straightness, reflow, distillation."""

import math

import pytest
import torch

from nbutils.analytic import gaussian_mixture_velocity, gaussian_velocity
from nbutils.nn import VelocityMLP
from nbutils.paths import interpolate, logit_normal_times, uniform_times
from nbutils.rectified import (
    distillation_loss,
    flow_matching_loss,
    reflow_pairs,
    straightness,
    transport_cost,
)
from nbutils.samplers import euler, heun, time_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def fixed_time(t):
    return lambda n, device=None: torch.full((n,), t, device=device, dtype=torch.float64)


def gaussian_pairs(n, mean, root, generator):
    d = mean.shape[0]
    x0 = mean + torch.randn(n, d, generator=generator, dtype=torch.float64) @ root.T
    return x0, torch.randn(n, d, generator=generator, dtype=torch.float64)


MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
ROOT = torch.tensor([[0.8, 0.0], [0.3, 0.4]], dtype=torch.float64)  # cov = ROOT ROOT^T


def test_interpolation_runs_from_data_to_noise_with_constant_speed():
    x0, x1 = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(4)), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(4)), x1)
    t, h = torch.rand(4, dtype=torch.float64) * 0.9, 0.1
    x0, x1 = x0.double(), x1.double()
    step = interpolate(x0, x1, t + h) - interpolate(x0, x1, t)
    torch.testing.assert_close(step / h, x1 - x0)  # dx_t/dt = x1 - x0 for every t


@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_flow_matching_regression_recovers_the_closed_form_velocity(t):
    """At fixed t, the least-squares fit of x1 - x0 on [1, x_t] is E[x1 - x0 | x_t] (linear)."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = gaussian_pairs(200_000, MEAN, ROOT, g)
    x_t = interpolate(x0, x1, torch.full((len(x0),), t, dtype=torch.float64))
    design = torch.cat([torch.ones(len(x_t), 1, dtype=torch.float64), x_t], 1)  # (N, 3)
    coef = torch.linalg.lstsq(design, x1 - x0).solution  # (3, 2)
    grid = torch.randn(16, 2, dtype=torch.float64)
    fitted = torch.cat([torch.ones(16, 1, dtype=torch.float64), grid], 1) @ coef
    exact = gaussian_velocity(MEAN, ROOT @ ROOT.T)(grid, torch.full((16,), t))
    torch.testing.assert_close(fitted, exact, rtol=0, atol=0.03)


@pytest.mark.parametrize("t", [0.25, 0.75])
def test_flow_matching_loss_is_minimal_at_the_closed_form_velocity(t):
    """Diagonal data N(m, s^2 I): the minimal loss per dimension is s^2 / ((1-t)^2 s^2 + t^2)."""
    s, mean = 0.6, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    exact = gaussian_velocity(mean, s**2 * torch.eye(3, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    x0 = mean + s * torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    batch = (x0, torch.randn(400_000, 3, generator=g, dtype=torch.float64))
    loss = flow_matching_loss(exact, batch, time_sampler=fixed_time(t)).item()
    assert loss == pytest.approx(s**2 / ((1 - t) ** 2 * s**2 + t**2), rel=0.01)
    for bias in (0.1, -0.1):

        def shifted(x, tt, b=bias):
            return exact(x, tt) + b

        worse = flow_matching_loss(shifted, batch, time_sampler=fixed_time(t)).item()
        assert worse == pytest.approx(loss + bias**2, rel=0.01)


def test_flow_matching_loss_draws_noise_for_plain_data_and_has_gradients():
    net = VelocityMLP(dim=2, hidden=16, layers=2)
    loss = flow_matching_loss(net, torch.randn(32, 2))
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in net.parameters())


def test_time_samplers_lie_in_the_unit_interval():
    g = torch.Generator().manual_seed(0)
    for times in (uniform_times(10_000, generator=g), logit_normal_times(10_000, generator=g)):
        assert times.shape == (10_000,) and 0 <= times.min() and times.max() <= 1
    assert abs(logit_normal_times(10_000, generator=g).median() - 0.5) < 0.02


def test_mixture_velocity_with_one_component_is_the_gaussian_one():
    mean, std = torch.tensor([[1.0, 2.0]], dtype=torch.float64), 0.7
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    gaussian = gaussian_velocity(mean[0], std**2 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(gaussian_mixture_velocity(mean, std)(x, t), gaussian(x, t))


def test_mixture_velocity_maps_noise_to_the_mixture():
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    torch.manual_seed(0)
    x0 = heun(
        gaussian_mixture_velocity(means, 0.2, [0.25, 0.75]), torch.randn(8000, 2), time_grid(50)
    )
    near = torch.cdist(x0, means).argmin(1)
    assert abs((near == 1).float().mean().item() - 0.75) < 0.02
    spread = (x0 - means[near]).std(0)
    torch.testing.assert_close(spread, torch.tensor([0.2, 0.2]), rtol=0.1, atol=0)


def test_straightness_is_zero_for_straight_flows():
    x1 = torch.randn(64, 2, dtype=torch.float64)
    constant = torch.tensor([0.5, -1.0], dtype=torch.float64)
    assert abs(straightness(lambda x, t: constant.expand_as(x), x1, time_grid(20))) < 1e-12
    # a point mass at m: v(x, t) = (x - m) / t, every path a straight line into m
    point = gaussian_mixture_velocity(torch.tensor([[1.0, 2.0]], dtype=torch.float64), 0.0)
    assert abs(straightness(point, x1, time_grid(20))) < 1e-12


@pytest.mark.parametrize("sampler", [euler, heun])
def test_straightness_is_the_mean_squared_deviation_from_the_chord(sampler):
    flow = gaussian_mixture_velocity(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]).double(), 0.3)
    x1, ts = torch.randn(64, 2, dtype=torch.float64), time_grid(10)
    steps = []
    s = straightness(flow, x1, ts, sampler=sampler, callback=steps.append)
    assert [step["i"] for step in steps] == list(range(10))
    chord = x1 - steps[-1]["x"]
    direct = sum(0.1 * (chord - step["v"]).pow(2).sum(1).mean() for step in steps).item()
    assert s == pytest.approx(direct, rel=1e-9)
    assert s > 0.1


def test_straightness_of_a_linear_field_matches_its_integral():
    """dx/dt = x: z_t = z_1 e^(t-1), so S = E||z_1||^2 int_0^1 (1 - e^-1 - e^(t-1))^2 dt."""
    x1 = torch.randn(16, 3, dtype=torch.float64)
    chord = 1 - math.exp(-1)
    integral = chord**2 - 2 * chord * (1 - math.exp(-1)) + (1 - math.exp(-2)) / 2
    expected = x1.pow(2).sum(1).mean().item() * integral
    got = straightness(lambda x, t: x, x1, time_grid(2000), sampler=heun)
    assert got == pytest.approx(expected, rel=1e-3)


def test_noise_to_noise_flow_is_curved_and_its_reflow_is_the_identity():
    """Data N(0, I): the 1-rectified map is the identity, yet its paths bend in and out:
    z_t = sqrt((1-t)^2 + t^2) z_1, so S = E||z_1||^2 int (d/dt sqrt(...))^2 dt = D (2 - pi/2)."""
    d = 3
    flow = gaussian_velocity(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    noise = torch.randn(4000, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0, x1 = reflow_pairs(flow, noise, time_grid(100), sampler=heun)
    torch.testing.assert_close(x0, x1, rtol=0, atol=1e-5)  # reflow pairs: x0 = x1
    assert transport_cost(x0, x1) < 1e-9
    expected = noise.pow(2).sum(1).mean().item() * (2 - math.pi / 2)
    assert straightness(flow, noise, time_grid(100), sampler=heun) == pytest.approx(
        expected, rel=1e-3
    )


def train_velocity(pairs, steps=600, seed=0):
    """A few hundred Adam steps of a small MLP on a coupling."""
    torch.manual_seed(seed)
    net = VelocityMLP(dim=2, hidden=64, layers=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x0, x1 = pairs
    for _ in range(steps):
        idx = torch.randint(0, len(x0), (256,))
        loss = flow_matching_loss(net, (x0[idx], x1[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_reflow_on_a_mixture_lowers_transport_cost_and_straightness():
    means = torch.tensor([[-2.0, -1.0], [2.0, 1.0], [0.0, 2.5]])
    flow1 = gaussian_mixture_velocity(means, 0.2)  # the exact 1-rectified flow
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4096, 2, generator=g)
    x0, x1 = reflow_pairs(flow1, noise, time_grid(64), sampler=heun, batch_size=1000)
    assert x1 is noise and x0.shape == noise.shape
    independent = x0[torch.randperm(len(x0), generator=g)]  # same marginals, random coupling
    assert transport_cost(x0, x1) < 0.8 * transport_cost(independent, x1)
    flow2 = train_velocity((x0, x1))
    probe = torch.randn(1000, 2, generator=g)
    s1, s2 = (straightness(f, probe, time_grid(64)) for f in (flow1, flow2))
    assert s2 < 0.3 * s1, (s1, s2)
    # and the straight flow still reproduces its coupling
    error = (euler(flow2, x1, time_grid(64)) - x0).pow(2).sum(1).mean()
    assert error < 0.1 * x0.var(0).sum()


def test_reflow_pairs_do_not_depend_on_the_batch_size():
    flow = gaussian_mixture_velocity(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), 0.3)
    noise = torch.randn(50, 2)
    whole, _ = reflow_pairs(flow, noise, time_grid(8))
    chunked, again = reflow_pairs(flow, noise, time_grid(8), batch_size=7, progress=True)
    torch.testing.assert_close(chunked, whole)
    assert again is noise


def test_distillation_loss_is_zero_for_the_exact_one_step_map():
    x1 = torch.randn(32, 2)
    x0 = 2.0 * x1 + 1.0

    def one_step(x, t):  # x1 - v(x1, 1) = x0
        assert torch.all(t == 1)
        return x - (2.0 * x + 1.0)

    assert distillation_loss(one_step, (x0, x1)).item() == pytest.approx(0.0, abs=1e-12)
    assert distillation_loss(lambda x, t: torch.zeros_like(x), (x0, x1)).item() > 1.0
    with pytest.raises(ValueError, match="pairs"):
        distillation_loss(one_step, x0)


def test_bad_inputs_give_clear_errors():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(x, x, torch.full((4,), 1.5))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        interpolate(x, x, torch.rand(3))
    with pytest.raises(ValueError, match="one shape"):
        interpolate(x, torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="pair shapes differ"):
        flow_matching_loss(VelocityMLP(), (x, torch.randn(4, 3)))
    with pytest.raises(ValueError, match="a batch must be"):
        flow_matching_loss(VelocityMLP(), (x, x, x))
    with pytest.raises(ValueError, match="from noise"):
        reflow_pairs(VelocityMLP(), x, time_grid(4, 0.0, 1.0))
    with pytest.raises(ValueError, match="from 1 to 0"):
        straightness(VelocityMLP(), x, [1.0, 0.5])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\), got \(4, 3\)"):
        VelocityMLP()(torch.randn(4, 3), torch.rand(4))


def test_guidance_interpolates_and_extrapolates_between_the_two_velocities():
    from nbutils.rectified import guided

    def model(x, t, y):  # depends on x, t and the label; y 10 is "no label"
        return x + t[:, None] + 5.0 * (y == 10)[:, None] + y[:, None]

    x, t, y = torch.randn(3, 2), torch.rand(3), torch.tensor([1, 4, 7])
    null = torch.full_like(y, 10)
    v_c, v_u = model(x, t, y), model(x, t, null)
    for scale in (0.0, 1.0, 3.0):
        torch.testing.assert_close(guided(model, y, scale, null_index=10)(x, t),
                                   v_u + scale * (v_c - v_u))  # fmt: skip


def test_label_dropout_replaces_the_chosen_fraction_of_labels():
    from nbutils.rectified import label_flow_matching_loss

    seen = []

    def model(x, t, y):
        seen.append(y)
        return torch.zeros_like(x)

    torch.manual_seed(0)
    x0, y = torch.randn(20_000, 2), torch.randint(0, 10, (20_000,))
    loss = label_flow_matching_loss(model, (x0, y), null_index=10, drop=0.2)
    (used,) = seen
    assert abs((used == 10).double().mean().item() - 0.2) < 0.01
    assert torch.equal(used[used != 10], y[used != 10])  # the others are kept
    assert loss.item() == pytest.approx(2.0, abs=0.05)  # a zero model: E (x1 - x0)^2 = 2
    model_c = VelocityMLP(2, hidden=16)  # without dropout it is the flow-matching loss itself
    torch.manual_seed(1)
    labelled = label_flow_matching_loss(lambda x, t, y: model_c(x, t), (x0[:64], y[:64]),
                                        null_index=10, drop=0.0)  # fmt: skip
    torch.manual_seed(1)
    torch.rand(64)  # the dropout's draw
    torch.testing.assert_close(labelled, flow_matching_loss(model_c, x0[:64]))
    with pytest.raises(ValueError, match=r"pair \(images, labels\)"):
        label_flow_matching_loss(model, x0, null_index=10)
    with pytest.raises(ValueError, match="probability"):
        label_flow_matching_loss(model, (x0, y), null_index=10, drop=1.5)
