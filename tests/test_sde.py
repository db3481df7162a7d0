"""The SDE view against closed forms: the simulated forward SDE has the marginals of its path
(VE, VP, sub-VP), both ends of the time axis are where they should be, the reverse SDE with
the exact score returns Gaussian data (Euler-Maruyama and predictor-corrector), DDPM's step
tends to the Euler-Maruyama step, the parameterisations round-trip, and bad input is a clear
error."""

import math

import pytest
import torch

from nbutils.analytic import gaussian_score
from nbutils.paths import KINDS, SubVPSchedule, VESchedule, VPSchedule
from nbutils.samplers import time_grid
from nbutils.sde import SDE, ddpm_ancestral, euler_maruyama, noise_loss, predictor_corrector

SCHEDULES = {"VE": VESchedule(0.01, 5.0), "VP": VPSchedule(), "sub-VP": SubVPSchedule()}


@pytest.fixture(autouse=True)
def _all_in_float64(float64):
    """Every test here runs in float64."""


def g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", SCHEDULES)
def test_simulated_forward_sde_has_the_paths_marginals(name):
    """Euler-Maruyama of dx = f x dt + g dw from x = 1 at t_0 = 1e-4 reaches the transition's
    closed form: mean alpha(t) / alpha(t_0), variance sigma(t)^2 - (alpha(t) / alpha(t_0))^2
    sigma(t_0)^2 (1-D, 20,000 paths, 2,000 steps, to t = 0.7)."""
    schedule, sde, noise = SCHEDULES[name], SDE(SCHEDULES[name]), g(0)
    t0, t1, n = 1e-4, 0.7, 20_000
    x = torch.ones(n, 1)
    grid = time_grid(2000, t0, t1).tolist()
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        h = t_next - t
        x = (
            x
            + h * float(sde.f(t)) * x
            + math.sqrt(float(sde.g2(t)) * h) * torch.randn(x.shape, generator=noise)
        )
    a0, s0 = schedule.alpha(torch.tensor(t0)), schedule.sigma(torch.tensor(t0))
    a1, s1 = schedule.alpha(torch.tensor(t1)), schedule.sigma(torch.tensor(t1))
    mean, std = (a1 / a0).item(), math.sqrt(s1.item() ** 2 - (a1 / a0).item() ** 2 * s0.item() ** 2)
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(n) + 1e-3)
    assert x.std().item() == pytest.approx(std, rel=0.03)


@pytest.mark.parametrize("name", SCHEDULES)
def test_diffusion_coefficient_makes_the_variance_of_the_path(name):
    """v' = 2 f v + g^2 with v = sigma^2 (autograd), f = alpha' / alpha, and g^2 equal to the
    closed forms of the note's table."""
    sde, schedule = SDE(SCHEDULES[name]), SCHEDULES[name]
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64).requires_grad_(True)
    v = schedule.sigma(t) ** 2
    (dv,) = torch.autograd.grad(v.sum(), t)
    alpha = schedule.alpha(t)
    da = torch.autograd.grad(alpha.sum(), t)[0] if alpha.requires_grad else torch.zeros_like(t)
    t = t.detach()
    torch.testing.assert_close(dv, 2 * sde.f(t) * v.detach() + sde.g2(t))
    torch.testing.assert_close(da / schedule.alpha(t), sde.f(t))
    assert (sde.g2(t) > 0).all()
    closed = {  # the note's table
        "VE": 2 * math.log(5.0 / 0.01) * schedule.sigma(t) ** 2,
        "VP": 0.1 + t * (20.0 - 0.1),
        "sub-VP": (0.1 + t * (20.0 - 0.1)) * (1 - schedule.alpha(t) ** 4),
    }[name]
    torch.testing.assert_close(sde.g2(t), closed)
    assert torch.isfinite(sde.g2(torch.tensor(0.0))) and torch.isfinite(sde.f(torch.tensor(0.0)))


@pytest.mark.parametrize("name", ["VP", "sub-VP"])
def test_the_ends_of_the_time_axis(name):
    """t = 0 is the data, t = 1 the prior: assert both (a flipped convention fails here)."""
    sde = SDE(SCHEDULES[name])
    x0 = 3 + torch.randn(10_000, 2, generator=g(1))
    mean0, std0 = sde.marginal(x0, torch.zeros(10_000))
    torch.testing.assert_close(mean0, x0)
    assert std0.max().item() == 0
    mean1, std1 = sde.marginal(x0, torch.ones(10_000))
    assert (mean1.abs() <= 0.01 * x0.abs()).all() and std1.min().item() > 0.99
    prior = sde.prior_sample((10_000, 2), generator=g(2))
    assert abs(prior.std().item() - std1[0].item()) < 0.02


@pytest.mark.parametrize("sampler", ["euler_maruyama", "predictor_corrector", "ddpm"])
def test_reverse_sde_with_the_exact_score_returns_gaussian_data(sampler):
    mean, cov = torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    schedule = SCHEDULES["VP"]
    sde, score = SDE(schedule), gaussian_score(mean, cov, schedule)
    x = sde.prior_sample((20_000, 2), generator=g(3))
    grid = time_grid(500, 1.0, 1e-3)
    if sampler == "euler_maruyama":
        out = euler_maruyama(score, x, grid, sde=sde, generator=g(4))
    elif sampler == "predictor_corrector":
        out = predictor_corrector(score, x, time_grid(250, 1.0, 1e-3), sde=sde, snr=0.1,
                                  generator=g(4))  # fmt: skip
    else:
        out = ddpm_ancestral(score, x, grid, schedule=schedule, generator=g(4))
    se = 4 * math.sqrt(0.5 / 20_000)
    torch.testing.assert_close(out.mean(0), mean, atol=se + 0.01, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), cov, atol=0.03, rtol=0)


def test_ddpm_step_tends_to_the_euler_maruyama_step():
    """One step from t = 0.5 with the same noise: their difference shrinks like h^2."""
    schedule = SCHEDULES["VP"]
    sde, score = SDE(schedule), gaussian_score(torch.zeros(2), torch.eye(2) * 0.3, schedule)
    x = torch.randn(5, 2, generator=g(5))
    gaps = []
    for h in (0.04, 0.02, 0.01):
        a = ddpm_ancestral(score, x, [0.5, 0.5 - h], schedule=schedule)  # last step: no noise
        b = euler_maruyama(score, x, [0.5, 0.5 - h], sde=sde)
        gaps.append((a - b).abs().max().item())
    assert gaps[0] / gaps[1] > 3 and gaps[1] / gaps[2] > 3


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_four_parameterisations_round_trip(name):
    schedule = SCHEDULES[name]
    x0, z = torch.randn(4, 3, generator=g(6)), torch.randn(4, 3, generator=g(7))
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    x_t = schedule.interpolate(x0, z, t)
    truth = {"x0": x0, "noise": z}
    truth["score"] = schedule.convert(z, x_t, t, source="noise", target="score")
    truth["velocity"] = schedule.velocity(x0, z, t)
    for source in KINDS:
        for target in KINDS:
            got = schedule.convert(truth[source], x_t, t, source=source, target=target)
            torch.testing.assert_close(got, truth[target], msg=f"{source} -> {target}")


def test_noise_loss_is_zero_for_the_true_noise_and_checks_its_input():
    schedule = SCHEDULES["VP"]
    x0 = torch.randn(64, 2, generator=g(8))

    def oracle(x_t, t):  # recovers the noise from x_t, knowing x0
        alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        return (x_t - alpha * x0) / sigma

    assert noise_loss(oracle, x0, schedule=schedule, generator=g(9)).item() < 1e-20
    seen = []

    def spy(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    noise_loss(spy, torch.zeros(5000, 1), schedule=schedule, t_min=0.3, generator=g(10))
    assert (
        seen[0].min() >= 0.3
        and seen[0].max() <= 1
        and seen[0].mean() == pytest.approx(0.65, abs=0.01)
    )
    with pytest.raises(ValueError, match=r"t_min must be in \[0, 1\)"):
        noise_loss(oracle, x0, schedule=schedule, t_min=1.0)


def test_bad_inputs_are_clear_errors():
    schedule = SCHEDULES["VP"]
    sde, score = SDE(schedule), gaussian_score(torch.zeros(2), torch.eye(2), schedule)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="must decrease from noise"):
        euler_maruyama(score, x, time_grid(4, 0.0, 1.0), sde=sde)
    with pytest.raises(ValueError, match="strictly monotone"):
        euler_maruyama(score, x, [1.0, 0.2, 0.5, 0.0], sde=sde)
    with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
        predictor_corrector(score, x, [1.5, 0.0], sde=sde)
    with pytest.raises(ValueError, match=r"returned shape \(3, 1\) for x of shape \(3, 2\)"):
        euler_maruyama(lambda v, t: v[:, :1], x, time_grid(2), sde=sde)
    with pytest.raises(ValueError, match="variance-preserving"):
        ddpm_ancestral(score, x, time_grid(2), schedule=VESchedule())
    with pytest.raises(ValueError, match="variance-preserving"):
        ddpm_ancestral(score, x, time_grid(2), schedule=SubVPSchedule())
    for bad in (1.5, -0.5, math.nan):
        with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
            sde.g2(bad)
    with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
        sde.marginal(x, torch.tensor([0.5, 1.2, 0.0]))
    with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
        sde.reverse_drift(score, x, 1.01)
    with pytest.raises(ValueError, match=r"net returned shape \(3, 1\) for x of shape \(3, 2\)"):
        noise_loss(lambda v, t: v[:, :1], x, schedule=schedule)
    with pytest.raises(ValueError, match="corrector_steps"):
        predictor_corrector(score, x, time_grid(2), sde=sde, corrector_steps=-1)
