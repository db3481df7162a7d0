import math

import numpy as np
import pytest
import torch

from nbutils import metrics


def test_units_round_trip_and_worked_example():
    # 88 nats per binarized image = 88 / (784 ln 2) = 0.1619 bits per dimension
    assert metrics.bits_per_dim(88.0) == pytest.approx(88 / (784 * math.log(2)))
    assert metrics.nats_per_example(metrics.bits_per_dim(123.4)) == pytest.approx(123.4)
    assert metrics.nats_per_example(1.0) == pytest.approx(543.43, abs=0.01)


def test_dequantized_bpd_of_the_uniform_density_is_eight_bits():
    # the uniform density on [0, 1)^D has log p = 0: every one of 256 levels costs 8 bits
    assert metrics.dequantized_bpd(torch.zeros(10), dims=784) == pytest.approx(8.0)
    # a density twice as high everywhere saves exactly one bit per dimension
    log_p = torch.full((3,), 784 * math.log(2))
    assert metrics.dequantized_bpd(log_p, dims=784) == pytest.approx(7.0)


def test_accuracy_and_shape_errors():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert metrics.accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        metrics.accuracy(logits, torch.tensor([1, 0]))


def test_frechet_closed_form_for_commuting_covariances():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    got = metrics.frechet_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_is_rotation_invariant_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov_a, cov_b = a @ a.T, b @ b.T + np.eye(4)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    mu_a, mu_b = rng.normal(size=4), rng.normal(size=4)
    d = metrics.frechet_from_stats(mu_a, cov_a, mu_b, cov_b)
    assert metrics.frechet_from_stats(mu_b, cov_b, mu_a, cov_a) == pytest.approx(d, rel=1e-9)
    rotated = metrics.frechet_from_stats(q @ mu_a, q @ cov_a @ q.T, q @ mu_b, q @ cov_b @ q.T)
    assert rotated == pytest.approx(d, rel=1e-9)


def test_frechet_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shifts = [metrics.frechet_distance(x, x + s) for s in (0.1, 0.5, 1.0)]
    assert shifts == pytest.approx([16 * 0.01, 16 * 0.25, 16 * 1.0], rel=1e-5)  # float32 data
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        metrics.frechet_distance(torch.randn(5), torch.randn(5))


def test_count_parameters():
    assert metrics.count_parameters(torch.nn.Linear(3, 2)) == 8


def test_log_likelihoods_in_chunks_equal_one_pass():
    x = torch.randn(10, 3)

    def log_prob(v):
        return -0.5 * v.pow(2).sum(1)

    out = metrics.log_likelihoods(log_prob, x, batch_size=3)
    torch.testing.assert_close(out, log_prob(x))
    assert out.device.type == "cpu"
    w = torch.ones(3, requires_grad=True)  # a parameter: no graph is kept
    assert not metrics.log_likelihoods(lambda v: v @ w, x).requires_grad


def test_log_likelihoods_check_what_log_prob_returns():
    with pytest.raises(ValueError, match=r"one value per example, shape \(4,\), got \(4, 3\)"):
        metrics.log_likelihoods(lambda v: v, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="positive int"):
        metrics.log_likelihoods(lambda v: v.sum(1), torch.zeros(4, 3), batch_size=0)
