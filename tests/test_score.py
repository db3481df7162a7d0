"""Score matching and Langevin sampling against closed forms: exact scores equal autograd
gradients of the log-densities, the DSM objective is the Fisher distance to the noised score
plus a constant, explicit and sliced score matching equal the analytic Fisher divergence up to
its constant, Langevin with the exact score reaches a Gaussian's moments, annealed Langevin
recovers mixture weights that plain Langevin gets wrong, and the denoising step is Tweedie's
formula."""

import math

import pytest
import torch
from torch import nn

from nbutils.analytic import gaussian_mixture_score, gaussian_score
from nbutils.langevin import annealed_langevin, langevin, ncsn_step_sizes, tweedie
from nbutils.paths import VESchedule, VPSchedule
from nbutils.samplers import time_grid
from nbutils.score import (
    ScoreModel,
    dsm_loss,
    esm_loss,
    fisher_divergence,
    geometric_sigmas,
    sigma_max_rule,
    ssm_loss,
)

VE = VESchedule(0.01, 10.0)


@pytest.fixture(autouse=True)
def _all_in_float64(float64):
    """Every test here runs in float64."""


def g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("schedule", [VE, VPSchedule()], ids=["VE", "VP"])
def test_exact_scores_are_gradients_of_the_noised_log_densities(schedule):
    means, std, w = torch.tensor([[-2.0, 0.0], [1.0, 1.5]]), 0.4, torch.tensor([0.7, 0.3])
    x = torch.randn(6, 2, generator=g(0), requires_grad=True)
    t = torch.rand(6, generator=g(1)) * 0.9 + 0.05
    alpha, sigma = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]
    c = alpha**2 * std**2 + sigma**2
    diff = x[:, None] - alpha * means
    log_p = torch.logsumexp(
        w.log() - 0.5 * diff.square().sum(-1) / c[..., 0] - torch.log(c[..., 0]), 1
    )
    (auto,) = torch.autograd.grad(log_p.sum(), x)
    torch.testing.assert_close(gaussian_mixture_score(means, std, schedule, w)(x, t), auto)
    mean, cov = torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]])
    dist = torch.distributions.MultivariateNormal(
        alpha[:, 0] * mean, alpha**2 * cov + sigma**2 * torch.eye(2)
    )
    (auto,) = torch.autograd.grad(dist.log_prob(x).sum(), x)
    torch.testing.assert_close(gaussian_score(mean, cov, schedule)(x, t), auto)


def test_dsm_is_the_fisher_distance_to_the_noised_score_plus_a_constant():
    """E|sigma s + z|^2 = sigma^2 E|s - s_t|^2 + const, so DSM(s1) - DSM(s2) equals the
    difference of the sigma^2-weighted squared errors against the exact noised score."""
    mean, cov = torch.tensor([1.0, -0.5]), torch.tensor([[0.6, 0.2], [0.2, 0.3]])
    exact = gaussian_score(mean, cov, VE)
    t, n = 0.7, 400_000  # sigma = 1.26: the sigma^2 term dominates the Monte Carlo noise
    x0 = mean + torch.randn(n, 2, generator=g(20)) @ torch.linalg.cholesky(cov).T
    sig = VE.sigma(torch.tensor(t)).item()

    def wrong(x, tt):  # the exact score, shifted and scaled
        return 0.8 * exact(x, tt) + 0.3

    d_loss = dsm_loss(wrong, x0, t=t, schedule=VE, generator=g(2)) - dsm_loss(
        exact, x0, t=t, schedule=VE, generator=g(2)
    )
    x_t = x0 + sig * torch.randn(n, 2, generator=g(3))
    tt = torch.full((n,), t)
    gap = sig**2 * (wrong(x_t, tt) - exact(x_t, tt)).square().sum(1).mean() / 2  # per entry
    assert d_loss.item() == pytest.approx(gap.item(), rel=0.03)


def test_dsm_gradient_vanishes_at_the_exact_score_of_gaussian_data():
    mean, cov = torch.tensor([1.0, -0.5]), torch.tensor([[0.6, 0.2], [0.2, 0.3]])
    t = 0.4
    sig2 = VE.sigma(torch.tensor(t)).item() ** 2
    x0 = mean + torch.randn(400_000, 2, generator=g(21)) @ torch.linalg.cholesky(cov).T

    def largest_gradient(precision):  # of the DSM loss for s(x) = -P (x - mean), over sigma^2
        linear = nn.Linear(2, 2)
        with torch.no_grad():
            linear.weight.copy_(-precision)
            linear.bias.copy_(precision @ mean)
        loss = dsm_loss(lambda x, tt: linear(x), x0, t=t, schedule=VE, generator=g(4))
        grads = torch.autograd.grad(loss, list(linear.parameters()))
        return max(gr.abs().max().item() for gr in grads) / sig2

    exact = torch.linalg.inv(cov + sig2 * torch.eye(2))  # the score of the noised data
    assert largest_gradient(exact) < 0.05
    assert largest_gradient(torch.linalg.inv(cov)) > 0.08  # the clean data's score is not it
    assert largest_gradient(1.3 * exact) > 0.08


@pytest.mark.parametrize("loss", ["esm", "ssm"])
def test_esm_and_ssm_equal_the_fisher_divergence_up_to_its_constant(loss):
    """Model s(x) = -(x - mu) / v_m, data N(m, v I) in D = 2: the Fisher divergence is
    (D v (1/v - 1/v_m)^2 + |mu - m|^2 / v_m^2) / 2 and the constant is E|grad log p|^2 / 2 =
    D / (2 v)."""
    d, m, v, mu, v_m = 2, torch.tensor([0.5, -1.0]), 0.7, torch.tensor([0.0, 0.3]), 1.3
    x = m + math.sqrt(v) * torch.randn(200_000, d, generator=g(5))

    def model(xx, tt):
        return -(xx - mu) / v_m

    fisher = 0.5 * (d * v * (1 / v - 1 / v_m) ** 2 + (mu - m).square().sum() / v_m**2)
    value = esm_loss(model, x) if loss == "esm" else ssm_loss(model, x, probes=3, generator=g(6))
    assert (value * d).item() == pytest.approx((fisher - d / (2 * v)).item(), abs=0.01)
    exact = lambda xx, tt: -(xx - m) / v  # noqa: E731
    assert fisher_divergence(model, exact, x, 0.0) == pytest.approx(fisher.item(), rel=0.01)


def test_score_model_reads_a_noise_prediction_as_a_score():
    net = lambda x, t: torch.ones_like(x)  # noqa: E731  predicts the noise z = 1
    model = ScoreModel(net, VE)
    x, t = torch.randn(3, 4), torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(model(x, t), -1 / VE.sigma(t)[:, None].expand(3, 4))
    x0 = VE.convert(net(x, t), x, t, source="noise", target="x0")  # Tweedie, through paths
    torch.testing.assert_close(x0, x + VE.sigma(t)[:, None] ** 2 * model(x, t))


def test_langevin_with_the_exact_score_reaches_a_gaussians_moments():
    mean, cov = torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 0.5], [0.5, 0.8]])
    score = gaussian_score(mean, cov, VESchedule(1e-6, 1.0))
    x = langevin(score, torch.zeros(4000, 2), 0.0, step=0.01, n_steps=800, generator=g(7))
    torch.testing.assert_close(x.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.06, rtol=0)


def _mode_weight(x):  # fraction of points nearer the first mean (-4, 0)
    return (x[:, 0] < 0).double().mean().item()


def test_annealed_langevin_recovers_mixture_weights_where_plain_langevin_does_not():
    means, std, w = torch.tensor([[-4.0, 0.0], [4.0, 0.0]]), 0.5, torch.tensor([0.8, 0.2])
    score = gaussian_mixture_score(means, std, VE, w)
    start = 16 * torch.rand(4000, 2, generator=g(8)) - 8  # uniform over [-8, 8]^2
    plain = langevin(score, start, 0.0, step=0.02, n_steps=500, generator=g(9))
    assert abs(_mode_weight(plain) - 0.8) > 0.2  # stuck near 0.5: the start's split
    x = VE.sigma(torch.tensor(1.0)).item() * torch.randn(4000, 2, generator=g(10))
    annealed = annealed_langevin(score, x, time_grid(30), sigma=VE.sigma, steps_per_level=20,
                                 eps=0.2 * 0.01**2, generator=g(11))  # fmt: skip
    # With 20 steps per level, chains stop crossing between the modes near sigma ~ 2, where the
    # noised mixture puts 0.8 Phi(4/s) + 0.2 Phi(-4/s) ~ 0.784 left of 0 (s^2 = std^2 +
    # sigma^2): the weights come back to within about 0.02. More steps per level lower that
    # point and the bias shrinks.
    assert abs(_mode_weight(annealed) - 0.8) < 0.035


def test_the_snr_rule_also_recovers_the_weights():
    means, std, w = torch.tensor([[-4.0, 0.0], [4.0, 0.0]]), 0.5, torch.tensor([0.8, 0.2])
    score = gaussian_mixture_score(means, std, VE, w)
    x = 10 * torch.randn(4000, 2, generator=g(12))
    out = annealed_langevin(score, x, time_grid(30), sigma=VE.sigma, steps_per_level=20,
                            snr=0.3, generator=g(13))  # fmt: skip
    assert abs(_mode_weight(out) - 0.8) < 0.035


def test_denoising_step_is_tweedies_posterior_mean():
    mean, cov = torch.tensor([0.5, 1.0]), torch.tensor([[0.5, 0.1], [0.1, 0.2]])
    sig = 0.3
    schedule = VESchedule(sig, 10.0)  # level 0 has sigma = 0.3
    x = torch.randn(5, 2, generator=g(14))
    posterior = mean + (cov @ torch.linalg.inv(cov + sig**2 * torch.eye(2)) @ (x - mean).T).T
    torch.testing.assert_close(tweedie(gaussian_score(mean, cov, schedule), x, 0.0, sig), posterior)


def test_ncsn_step_sizes_and_geometric_sigmas():
    sigmas = geometric_sigmas(0.01, 10.0, 4)
    torch.testing.assert_close(sigmas, torch.tensor([10.0, 1.0, 0.1, 0.01]))
    torch.testing.assert_close(ncsn_step_sizes(sigmas, 2e-5), 2e-5 * (sigmas / 0.01) ** 2)
    torch.testing.assert_close(VE.sigma(time_grid(3)), sigmas)  # the VE levels are these
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert sigma_max_rule(pts) == pytest.approx(5.0)


def test_bad_inputs_are_clear_errors():
    score = gaussian_score(torch.zeros(2), torch.eye(2), VE)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="sigma must be a positive number, got 0"):
        tweedie(score, x, 0.0, 0)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        geometric_sigmas(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="levels must decrease"):
        annealed_langevin(score, x, time_grid(3, 0.0, 1.0), sigma=VE.sigma, steps_per_level=1,
                          eps=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="exactly one of eps"):
        annealed_langevin(score, x, time_grid(3), sigma=VE.sigma, steps_per_level=1)
    with pytest.raises(ValueError, match=r"returned shape \(4, 3\) for x of shape \(4, 2\)"):
        langevin(lambda v, t: torch.zeros(4, 3), x, 0.5, step=0.1, n_steps=1)
    with pytest.raises(ValueError, match="step must be a positive number"):
        langevin(score, x, 0.0, step=-1.0, n_steps=1)
    with pytest.raises(ValueError, match=r"t must be a level \(time\) in \[0, 1\]"):
        dsm_loss(ScoreModel(nn.Identity()), x, t=1.5)
    with pytest.raises(ValueError, match="must be finite"):
        langevin(score, torch.full((2, 2), math.nan), 0.0, step=0.1, n_steps=1)
    with pytest.raises(ValueError, match="probes must be a positive int"):
        ssm_loss(lambda v, t: v, x, probes=0)
    with pytest.raises(ValueError, match="VPSchedule has sigma = 0 at t = 0.0"):
        dsm_loss(ScoreModel(nn.Identity(), VPSchedule()), x, t=0.0)
    with pytest.raises(ValueError, match=r"sigma\(t\) = 0 .*smallest t = 0\)"):
        ScoreModel(nn.Identity(), VPSchedule())(x, torch.zeros(4))
    wrong = lambda v, t: v[:, :1]  # noqa: E731  a score of the wrong shape
    for loss, kwargs in ((dsm_loss, {"schedule": VE}), (esm_loss, {}), (ssm_loss, {})):
        with pytest.raises(
            ValueError, match=r"returned shape \(4, 1\) for x of shape \(4, 2\); a score"
        ):
            loss(wrong, x, **kwargs)
    with pytest.raises(ValueError, match=r"exact returned shape \(4, 1\) for x of shape \(4, 2\)"):
        fisher_divergence(score, wrong, x, 0.5)
