"""ODE likelihoods and continuous flows against facts: the exact divergence is the autograd
trace, Hutchinson's estimator is unbiased (and averages its probes), a linear ODE gives its
closed-form density, a 2D CNF's density integrates to one, RK4 is fourth order, training
through the fixed grid gives gradients, and bad input is a clear error."""

import math

import pytest
import torch
from torch import nn

from nbutils.flows import CNF, StandardNormal, cnf_nll
from nbutils.likelihood import (
    divergence_exact,
    divergence_hutchinson,
    ode_log_prob,
    rademacher,
)
from nbutils.nn.layers import VelocityMLP
from nbutils.samplers import NFECounter, rk4, time_grid


@pytest.fixture(autouse=True)
def _all_in_float64(float64):
    """Every test here runs in float64."""


def randomized_mlp(dim=2, seed=0, scale=0.5):
    net = VelocityMLP(dim, hidden=16, layers=2, n_freq=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return net


def test_exact_divergence_is_the_trace_of_the_autograd_jacobian(jacobians):
    net = randomized_mlp(3)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t = torch.full((4,), 0.3)
    div = divergence_exact(net(x, t), x)
    jac = jacobians(lambda v: net(v, t[: len(v)]), x.detach())
    torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(1))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_averages_its_probes(kind):
    net = randomized_mlp(3)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    v = net(x, torch.full((2,), 0.7))
    exact = divergence_exact(v, x)
    g = torch.Generator().manual_seed(2)
    draw = (
        rademacher
        if kind == "rademacher"
        else lambda s, generator: torch.randn(s, generator=generator)
    )
    probes = draw((20_000, 2, 3), generator=g)
    estimate = divergence_hutchinson(v, x, probes)
    per_probe = torch.stack([divergence_hutchinson(v, x, p[None]) for p in probes[:2000]])
    se = per_probe.std(0) / math.sqrt(20_000)
    assert (estimate - exact).abs().max() < 5 * se.max() + 1e-9
    # the mean, not the sum: the scale does not grow with the number of probes
    torch.testing.assert_close(
        divergence_hutchinson(v, x, probes[:1].expand(7, 2, 3)), per_probe[0]
    )


def test_rademacher_probes_are_signs_with_identity_covariance():
    eps = rademacher((100_000, 3), generator=torch.Generator().manual_seed(0))
    assert set(eps.unique().tolist()) == {-1.0, 1.0}
    cov = eps.T @ eps / len(eps)
    torch.testing.assert_close(cov, torch.eye(3), atol=0.02, rtol=0)


def test_linear_ode_gives_the_closed_form_density():
    """dx/dt = A x carries N(0, e^{-A} e^{-A}^T)... at t = 0 to N(0, I) at t = 1 when
    x_1 = e^{A} x_0, so log p_0(x) = log N(e^{A} x; 0, I) + tr(A)."""
    a = torch.tensor([[0.3, -0.5], [0.2, -0.1]])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    out = ode_log_prob(lambda v, t: v @ a.T, x, StandardNormal().log_prob, rtol=1e-9, atol=1e-9)
    z = x @ torch.linalg.matrix_exp(a).T
    torch.testing.assert_close(out.z, z, atol=1e-7, rtol=0)
    torch.testing.assert_close(
        out.log_prob, StandardNormal().log_prob(z) + a.trace(), atol=1e-7, rtol=0
    )
    assert out.nfe > 0


def test_density_of_a_2d_cnf_integrates_to_one():
    cnf = CNF(randomized_mlp(2, scale=0.4), (2,), rtol=1e-6, atol=1e-6).eval()
    half, n = 7.0, 141
    axis = torch.linspace(-half, half, n)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    mass = cnf.log_prob(grid).exp().sum() * (2 * half / (n - 1)) ** 2
    assert abs(mass.item() - 1) < 5e-3
    assert cnf.last_nfe > 6  # the adaptive solver in eval mode


def test_cnf_samples_invert_encoding_and_training_mode_uses_the_rk4_grid():
    cnf = CNF(randomized_mlp(2, scale=0.4), (2,), train_steps=3)
    x = cnf.sample(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        cnf.encode(x),
        cnf.prior.sample((6, 2), 1.0, torch.Generator().manual_seed(0)),
        atol=1e-4,
        rtol=0,
    )
    cnf.train()
    loss = cnf_nll(cnf, x)
    assert cnf.last_nfe == 12  # 3 RK4 steps, 4 evaluations each
    loss.backward()
    missing = [n for n, p in cnf.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing
    # a finer fixed grid and the adaptive solver agree closely on a smooth field
    cnf.train_steps = 8
    fixed = cnf.log_prob(x).detach()
    torch.testing.assert_close(fixed, cnf.log_prob(x, adaptive=True), atol=1e-2, rtol=0)


def test_hutchinson_cnf_log_prob_is_unbiased_for_the_exact_one():
    """On the fixed grid (cheap); one probe set per solve, as in evaluation."""
    cnf = CNF(randomized_mlp(2, scale=0.4), (2,), train_steps=2)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        exact = cnf.log_prob(x, adaptive=False)
        cnf.probes = 1
        singles = torch.stack(
            [
                cnf.log_prob(x, adaptive=False, generator=torch.Generator().manual_seed(s))
                for s in range(200)
            ]
        )
        cnf.probes = 2000
        estimate = cnf.log_prob(x, adaptive=False, generator=torch.Generator().manual_seed(6))
    assert singles.std(0).min() > 1e-3  # a single probe is noisy ...
    se = singles.std(0) / math.sqrt(2000)
    assert ((estimate - exact).abs() < 5 * se + 1e-9).all()  # ... their mean is unbiased


def test_rk4_is_fourth_order():
    """dx/dt = x from t = 0 to 1: the error falls by about 2^4 when the step halves."""
    errors = []
    for steps in (4, 8, 16):
        x = rk4(lambda v, t: v, torch.ones(1, 1), time_grid(steps, 0.0, 1.0))
        errors.append(abs(x.item() - math.e))
    assert 14 < errors[0] / errors[1] < 18 and 14 < errors[1] / errors[2] < 18
    counted = NFECounter(lambda v, t: v)
    rk4(counted, torch.ones(1, 1), time_grid(5))
    assert counted.nfe == 20


def test_bad_inputs_are_clear_errors():
    net = randomized_mlp(2)
    with pytest.raises(ValueError, match="must increase"):
        ode_log_prob(net, torch.zeros(2, 2), StandardNormal().log_prob, ts=(1.0, 0.0))
    with pytest.raises(ValueError, match="must be finite"):
        ode_log_prob(net, torch.full((2, 2), math.nan), StandardNormal().log_prob)
    with pytest.raises(ValueError, match="probe must be"):
        ode_log_prob(net, torch.zeros(2, 2), StandardNormal().log_prob, probes=2, probe="sphere")
    with pytest.raises(ValueError, match=r"probes must have shape \(K, 2, 2\)"):
        x = torch.zeros(2, 2, requires_grad=True)
        divergence_hutchinson(net(x, torch.zeros(2)), x, torch.zeros(3, 2))
    cnf = CNF(net, (2,))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\), got \(4, 3\)"):
        cnf.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="train_steps"):
        CNF(net, (2,), train_steps=0)
    assert isinstance(cnf, nn.Module)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_variance_matches_its_formula(kind):
    """Var[eps^T J eps] = ||J||_F^2 + tr(J^2), less 2 sum J_ii^2 for Rademacher probes (the
    note's cnf-hutchinson), on a linear field v = J x."""
    j = torch.tensor([[0.5, -1.0, 0.3], [2.0, 0.1, 0.0], [-0.4, 0.7, -1.5]])
    x = torch.zeros(1, 3, requires_grad=True)
    v = x @ j.T
    g = torch.Generator().manual_seed(0)
    n = 100_000
    if kind == "rademacher":
        probes = rademacher((n, 1, 3), generator=g)
    else:
        probes = torch.randn(n, 1, 3, generator=g)
    singles = torch.einsum("nbi,ij,nbj->n", probes, j, probes)  # eps^T J eps, one per probe
    formula = (j**2).sum() + torch.trace(j @ j)
    if kind == "rademacher":
        formula = formula - 2 * (j.diagonal() ** 2).sum()
    assert singles.mean().item() == pytest.approx(torch.trace(j).item(), abs=0.05)
    assert singles.var().item() == pytest.approx(formula.item(), rel=0.03)
    one = divergence_hutchinson(v, x, probes[:1])  # the package's estimate for one probe
    torch.testing.assert_close(one, singles[:1])
