"""Dequantization and bits/dim of the whole pipeline, checked against closed forms: a model that
is uniform on the unit cube scores exactly 8 - log2(1 - 2 alpha) bits/dim on any 256-level
data (this catches a forgotten preprocessing Jacobian and the 255-against-256 off-by-one),
the variational dequantizer starts uniform, its density integrates to one and agrees with
the density of its own samples, and the bound it gives is a lower bound."""

import math

import pytest
import torch
from weights import randomize

from nbutils.flows import (
    DequantizedFlow,
    Flow,
    Logit,
    StandardLogistic,
    StandardNormal,
    VariationalDequantizer,
    dequantized_nll,
)
from nbutils.metrics import dequantized_bpd


@pytest.fixture(autouse=True)
def _all_in_float64(float64):
    """Every test here runs in float64."""


def levels(n, shape=(1, 4, 4), seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("alpha", [0.0, 1e-6, 0.05])
def test_uniform_model_scores_its_analytic_bits_per_dim(alpha):
    """logit(alpha + (1 - 2 alpha) x) maps x uniform on the cube to the logistic prior up to
    the constant factor 1 - 2 alpha, so log p(x) = D log(1 - 2 alpha) everywhere."""
    model = DequantizedFlow(Flow(Logit((1, 4, 4), alpha=alpha), StandardLogistic()))
    k = levels(500)
    log_p = model.log_prob_unit(k, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_p, torch.full((500,), 16 * math.log1p(-2 * alpha)))
    expected = 8 - math.log2(1 - 2 * alpha)
    assert dequantized_bpd(log_p, dims=16) == pytest.approx(expected, abs=1e-9)
    assert dequantized_nll(model, k).item() / math.log(2) == pytest.approx(expected, abs=1e-9)


def test_variational_dequantizer_starts_uniform():
    deq = VariationalDequantizer((1, 4, 4), couplings=2, hidden=8)
    k = levels(64)
    u, log_q = deq.sample(k, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_q, torch.zeros(64), atol=1e-9, rtol=0)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.02  # uniform: mean 1/2, variance 1/12
    assert abs(u.var().item() - 1 / 12) < 0.005


def test_variational_density_matches_its_samples_and_integrates_to_one():
    deq = randomize(VariationalDequantizer((1, 2, 2), couplings=3, hidden=8, blocks=1), scale=0.15)
    k = levels(1, shape=(1, 2, 2)).expand(4000, 1, 2, 2)
    u, log_q = deq.sample(k, generator=torch.Generator().manual_seed(2))
    assert log_q.std() > 0.1  # no longer uniform
    torch.testing.assert_close(
        deq.log_prob(u, k), log_q, atol=1e-5, rtol=1e-6
    )  # u near 1 loses digits
    # integral of q over the unit cube, by Monte Carlo with uniform points
    n = 200_000
    points = torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    q = deq.log_prob(points, k[:1].expand(n, 1, 2, 2)).exp()
    mean, se = q.mean().item(), q.std().item() / math.sqrt(n)
    assert abs(mean - 1) < 4 * se + 1e-3, (mean, se)


def test_the_bound_is_below_the_exact_discrete_log_likelihood():
    """One pixel, a Gaussian model: P(k) = integral of p over the bin, computed by quadrature,
    is above every dequantized bound, uniform or variational."""
    flow = Flow(randomize(Logit((1, 2, 2), alpha=0.01)), StandardNormal())
    k = torch.tensor([[[[3, 128], [250, 0]]]])
    for deq in (None, randomize(VariationalDequantizer((1, 2, 2), couplings=2, hidden=8))):
        model = DequantizedFlow(flow, deq)
        bound = model.log_prob_unit(k.expand(20_000, 1, 2, 2)).mean() - 4 * math.log(256)
        grid = (torch.arange(2000) + 0.5) / 2000  # midpoints inside one bin
        exact = 0.0
        for index in [(0, 0), (0, 1), (1, 0), (1, 1)]:  # the density factorises per pixel
            x = (k[0, 0][index] + grid) / 256
            z, logdet = Logit((1,), alpha=0.01)(x[:, None])
            density = (StandardNormal().log_prob(z) + logdet).exp()
            exact += math.log(density.mean().item() / 256)
        assert bound.item() <= exact + 1e-6


def test_bad_grey_levels_are_clear_errors():
    model = DequantizedFlow(Flow(Logit((1, 4, 4)), StandardLogistic()))
    with pytest.raises(ValueError, match=r"grey levels must lie in \[0, 255\], got \[0, 256\]"):
        model.log_prob_unit(torch.arange(2 * 16).reshape(2, 1, 4, 4) * 256 // 31)
    with pytest.raises(TypeError, match="must have dtype"):
        model.log_prob_unit(torch.zeros(2, 1, 4, 4))  # floats are not grey levels
    with pytest.raises(ValueError, match=r"must have shape \(B, 1, 4, 4\), got \(2, 4, 4\)"):
        model.log_prob_unit(torch.zeros(2, 4, 4, dtype=torch.uint8))
    deq = VariationalDequantizer((1, 4, 4), couplings=1, hidden=4)
    with pytest.raises(ValueError, match="must be finite"):
        deq.log_prob(torch.full((1, 1, 4, 4), math.nan), torch.zeros(1, 1, 4, 4, dtype=torch.long))
