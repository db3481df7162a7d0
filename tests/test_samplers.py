"""ODE samplers against closed forms: exactness, convergence order, the Gaussian map, errors."""

import math

import pytest
import torch

from nbutils.analytic import gaussian_velocity
from nbutils.samplers import NFECounter, check_grid, euler, heun, rk45, time_grid, trajectory

pytestmark = pytest.mark.usefixtures("one_thread")


FIXED = [euler, heun]
ALL = [euler, heun, rk45]


def constant_field(c):
    return lambda x, t: c.expand_as(x)


def growth_field(x, t):
    """dx/dt = t x, so x(0) = x(1) exp(-1/2)."""
    return x * t[:, None]


def test_time_grid_runs_from_noise_to_data():
    ts = time_grid(4)
    assert ts.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert time_grid(2, 0.0, 1.0).tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("sampler", FIXED)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_exact_on_a_constant_field(sampler, steps):
    x1 = torch.randn(5, 3, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x0 = sampler(constant_field(c), x1, time_grid(steps))
    torch.testing.assert_close(x0, x1 - c, rtol=0, atol=1e-12)


def test_rk45_exact_on_a_constant_field():
    x1 = torch.randn(5, 3, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(rk45(constant_field(c), x1), x1 - c, rtol=0, atol=1e-12)


def heun_error(steps):
    x1 = torch.ones(1, 1, dtype=torch.float64)
    return (heun(growth_field, x1, time_grid(steps)) - math.exp(-0.5)).abs().item()


def euler_error(steps):
    x1 = torch.ones(1, 1, dtype=torch.float64)
    return (euler(growth_field, x1, time_grid(steps)) - math.exp(-0.5)).abs().item()


@pytest.mark.parametrize("steps", [32, 64, 128])
def test_heun_is_second_order_euler_first_order(steps):
    assert 3.5 < heun_error(steps) / heun_error(2 * steps) < 4.5
    assert 1.8 < euler_error(steps) / euler_error(2 * steps) < 2.2


def test_rk45_meets_its_tolerance_with_few_evaluations():
    counted = NFECounter(growth_field)
    x1 = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]
    x0 = rk45(counted, x1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0, x1 * math.exp(-0.5), rtol=1e-7, atol=1e-8)
    assert counted.nfe < 300


def test_rk45_lands_on_every_time_of_the_grid():
    seen = []
    rk45(growth_field, torch.ones(2, 1), [1.0, 0.6, 0.25, 0.0], callback=lambda s: seen.append(s))
    times = [s["t"] for s in seen]
    assert {0.6, 0.25, 0.0} <= set(times)
    assert times == sorted(times, reverse=True)


def affine_map(sampler, field, d, **kwargs):
    """A linear ODE gives an affine map x1 -> x0 = A x1 + b; read A and b off d + 1 points."""
    points = torch.cat([torch.zeros(1, d), torch.eye(d)]).double()  # (d + 1, d)
    out = sampler(field, points, **kwargs)
    b = out[0]
    return out[1:].T - b[:, None], b  # A (d, d), b (d,)


@pytest.mark.parametrize(
    "sampler, kwargs, tol",
    [(rk45, dict(rtol=1e-10, atol=1e-10), 1e-7), (heun, dict(ts=time_grid(200)), 1e-3)],
)
def test_closed_form_velocity_maps_noise_to_the_data_gaussian(sampler, kwargs, tol):
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.3, 0.2, 0.3]], dtype=torch.float64)
    cov = root @ root.T
    a, b = affine_map(sampler, gaussian_velocity(mean, cov), 3, **kwargs)
    # noise N(0, I) pushed through x0 = A x1 + b is N(b, A A^T): the data Gaussian
    torch.testing.assert_close(b, mean, rtol=0, atol=tol)
    torch.testing.assert_close(a @ a.T, cov, rtol=0, atol=tol)


def test_closed_form_velocity_on_samples():
    torch.manual_seed(0)
    mean, cov = torch.tensor([2.0, -1.0]), torch.tensor([[0.5, 0.3], [0.3, 0.4]])
    x0 = euler(gaussian_velocity(mean, cov), torch.randn(20_000, 2), time_grid(100))
    torch.testing.assert_close(x0.mean(0), mean, rtol=0, atol=0.03)
    torch.testing.assert_close(torch.cov(x0.T), cov, rtol=0, atol=0.03)


@pytest.mark.parametrize("sampler", FIXED)
def test_callback_sees_every_step(sampler):
    seen = []
    x1 = torch.randn(4, 2)
    x0 = sampler(growth_field, x1, time_grid(5), callback=lambda s: seen.append(dict(s)))
    assert [s["i"] for s in seen] == list(range(5))
    assert [s["t"] for s in seen] == time_grid(5)[1:].tolist()
    assert seen[-1]["x"] is x0 or torch.equal(seen[-1]["x"], x0)
    assert seen[-1]["nfe"] == 5 * (1 if sampler is euler else 2)
    # the reported slope is the step: x_next = x + dt * v
    x_prev = seen[1]["x"]
    torch.testing.assert_close(seen[2]["x"], x_prev - 0.2 * seen[2]["v"])


def test_callback_slopes_reassemble_the_rk45_path():
    seen, x1 = [], torch.randn(4, 2, dtype=torch.float64)
    x0 = rk45(growth_field, x1, callback=seen.append)
    x, t = x1, 1.0
    for s in seen:
        x, t = x + (s["t"] - t) * s["v"], s["t"]
    torch.testing.assert_close(x, x0)


def test_conditioning_reaches_the_model():
    def field(x, t, shift):
        return shift.expand_as(x)

    shift = torch.tensor([1.0, 2.0])
    for sampler in ALL:
        x0 = sampler(field, torch.zeros(3, 2), time_grid(2), shift=shift)
        torch.testing.assert_close(x0, -shift.expand(3, 2))


def test_samplers_agree_at_many_steps():
    mean, cov = torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.5], [0.5, 2.0]])
    field, x1 = gaussian_velocity(mean.double(), cov.double()), torch.randn(8, 2).double()
    reference = rk45(field, x1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(heun(field, x1, time_grid(100)), reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(euler(field, x1, time_grid(1000)), reference, atol=1e-2, rtol=0)


def test_an_increasing_grid_runs_the_ode_forward():
    x0 = torch.ones(1, 1, dtype=torch.float64)
    x1 = heun(growth_field, x0, time_grid(200, 0.0, 1.0))
    assert abs(x1.item() - math.exp(0.5)) < 1e-4


@pytest.mark.parametrize(
    "ts, match",
    [
        ([1.0, 0.5, 1.2], r"\[0, 1\]"),
        ([1.0, -0.1], r"\[0, 1\]"),
        ([1.0, 0.5, 0.5, 0.0], "monotone"),
        ([1.0, 0.2, 0.5], "monotone"),
        ([1.0], "at least 2"),
        ([[1.0, 0.0]], "1-D"),
        ([1.0, float("nan")], r"\[0, 1\]"),
    ],
)
def test_bad_grids_give_clear_errors(ts, match):
    with pytest.raises(ValueError, match=match):
        check_grid(ts)
    for sampler in ALL:
        with pytest.raises(ValueError, match=match):
            sampler(growth_field, torch.ones(2, 1), ts)


def test_shape_mismatch_gives_a_clear_error():
    def wrong(x, t):
        return x[:, :1]

    for sampler in ALL:
        with pytest.raises(ValueError, match="shape of its input"):
            sampler(wrong, torch.ones(2, 3), time_grid(2))
        with pytest.raises(ValueError, match=r"shape \(B, \*\)"):
            sampler(growth_field, torch.ones(3), time_grid(2))
        with pytest.raises(TypeError, match="floating"):
            sampler(growth_field, torch.ones(2, 3, dtype=torch.long), time_grid(2))


def test_rk45_gives_up_clearly():
    with pytest.raises(RuntimeError, match="more than 5 steps"):
        rk45(lambda x, t: 1e3 * torch.sin(1e3 * x), torch.ones(2, 1), max_steps=5)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("sampler", ALL, ids=lambda s: s.__name__)
def test_no_gradients_by_default(sampler):
    x = torch.ones(2, 3, requires_grad=True)
    assert not sampler(growth_field, x, time_grid(4)).requires_grad


@pytest.mark.parametrize("sampler", ALL, ids=lambda s: s.__name__)
def test_grad_switch_differentiates_through_the_solve(sampler, device):
    """dx/dt = a x from t = 1 to 0 gives x(0) = x(1) exp(-a): d x(0) / d x(1) = exp(-a) and
    d x(0) / d a = -x(1) exp(-a), up to the solver's error."""
    a = torch.tensor(0.7, dtype=torch.float64, device=device, requires_grad=True)
    x1 = torch.full((3, 2), 1.5, dtype=torch.float64, device=device, requires_grad=True)
    steps = {"euler": 2000, "heun": 100}.get(sampler.__name__)
    ts = time_grid(steps) if steps else (1.0, 0.0)
    x0 = sampler(lambda x, t: a * x, x1, ts, grad=True)
    dx1, da = torch.autograd.grad(x0.sum(), (x1, a))
    exact = math.exp(-0.7)
    torch.testing.assert_close(dx1, torch.full_like(dx1, exact), rtol=1e-3, atol=0)
    torch.testing.assert_close(da.item(), -6 * 1.5 * exact, rtol=1e-3, atol=0)


def test_grad_switch_follows_the_callers_mode():
    x = torch.ones(2, 1, requires_grad=True)
    with torch.no_grad():
        assert not euler(growth_field, x, time_grid(2), grad=True).requires_grad


def test_trajectory_holds_every_state_of_the_solve(device):
    x = torch.randn(4, 2, device=device)
    states = trajectory(growth_field, x, time_grid(5))
    assert states.shape == (6, 4, 2) and states.device == x.device
    assert torch.equal(states[0], x) and torch.equal(
        states[-1], euler(growth_field, x, time_grid(5))
    )
    kept = trajectory(growth_field, x, time_grid(3), sampler=heun)
    assert torch.equal(kept[-1], heun(growth_field, x, time_grid(3)))


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_heun_with_a_final_euler_step_is_heun_then_euler(steps):
    """On dx/dt = a x a Heun step multiplies by 1 + ha + (ha)^2 / 2 and an Euler step by
    1 + ha; the last step must be the Euler one, and the model is never asked at t = 0."""
    a, h = 1.7, -1.0 / steps
    seen, reported = [], []

    def linear(x, t):
        seen.append(t[0].item())
        return a * x

    x1 = torch.ones(2, 1, dtype=torch.float64)
    out = heun(linear, x1, time_grid(steps), final_euler=True, callback=reported.append)
    expected = (1 + h * a + (h * a) ** 2 / 2) ** (steps - 1) * (1 + h * a)
    torch.testing.assert_close(out, torch.full_like(x1, expected), rtol=1e-12, atol=0)
    assert len(seen) == 2 * steps - 1 == reported[-1]["nfe"]
    assert min(seen) > 0, "the model was evaluated at the end of the grid"
    full = heun(linear, x1, time_grid(steps))
    torch.testing.assert_close(full, torch.full_like(x1, (1 + h * a + (h * a) ** 2 / 2) ** steps))
