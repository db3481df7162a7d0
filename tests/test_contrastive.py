"""Chapter 09's estimators and models, on facts: InfoNCE is log N minus a cross-entropy and never
exceeds log N, NWJ is unbiased at its optimal critic, the Gaussian benchmark's closed-form MI
agrees with Monte Carlo, the NCE optimum is the density ratio, the critics score every pair,
CPC's predictions see only the past, and the linear probe learns below log(classes)."""

import math

import pytest
import torch

from nbutils.contrastive import (
    BilinearCritic,
    ConcatCritic,
    SeparableCritic,
    correlated_gaussians,
    gaussian_log_ratio,
    gaussian_mi,
    info_nce,
    info_nce_loss,
    mi_staircase,
    nce_loss,
    nwj,
    rho_for_mi,
)
from nbutils.cpc import CPC, cpc_loss
from nbutils.probe import chance_loss, linear_probe


def test_info_nce_on_a_3x3_matrix_by_hand():
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    rows = [
        d - math.log(math.exp(d) + 2.0) for d in (1.0, 2.0, 3.0)
    ]  # log-softmax of each positive
    by_hand = math.log(3) + sum(rows) / 3
    assert by_hand == pytest.approx(0.803308, abs=1e-6)
    assert float(info_nce(scores)) == pytest.approx(by_hand, abs=1e-12)
    assert float(info_nce_loss(scores)) == pytest.approx(math.log(3) - by_hand, abs=1e-12)


@pytest.mark.parametrize("n", [2, 7, 64])
def test_info_nce_never_exceeds_log_n(n):
    g = torch.Generator().manual_seed(n)
    for scale in (0.1, 10.0, 1e3):
        scores = scale * torch.randn(n, n, generator=g, dtype=torch.float64)
        scores.diagonal().add_(scale * 5)  # positives far above the negatives
        assert float(info_nce(scores)) <= math.log(n) + 1e-12
    huge = torch.eye(n, dtype=torch.float64) * 1e4  # the supremum, reached only in the limit
    assert float(info_nce(huge)) == pytest.approx(math.log(n), abs=1e-9)


def test_gaussian_mi_matches_monte_carlo_and_inverts():
    dim, rho = 5, 0.8
    x, y = correlated_gaussians(200_000, dim, rho, generator=torch.Generator().manual_seed(0))
    x, y = x.double(), y.double()
    # log p(x, y) - log p(x) - log p(y), each from its own multivariate normal
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    joint = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov)
    unit = torch.distributions.Normal(0.0, 1.0)
    pairs = torch.stack([x, y], -1)  # (n, dim, 2): dimension d of x with dimension d of y
    pointwise = (joint.log_prob(pairs) - unit.log_prob(x) - unit.log_prob(y)).sum(1)
    se = pointwise.std().item() / math.sqrt(len(pointwise))
    assert abs(pointwise.mean().item() - gaussian_mi(rho, dim)) < 4 * se
    small = slice(0, 50)
    assert torch.allclose(gaussian_log_ratio(x[small], y[small], rho).diagonal(), pointwise[small])
    for mi in (0.5, 2.0, 10.0):
        assert gaussian_mi(rho_for_mi(mi, 20), 20) == pytest.approx(mi, rel=1e-12)


def test_the_optimal_critic_nwj_is_unbiased_and_info_nce_is_capped():
    dim, mi, n = 20, 6.0, 64
    rho = rho_for_mi(mi, dim)
    g = torch.Generator().manual_seed(1)
    nwj_values, nce_values = [], []
    for _ in range(400):
        x, y = correlated_gaussians(n, dim, rho, generator=g)
        ratio = gaussian_log_ratio(x.double(), y.double(), rho)
        nwj_values.append(float(nwj(1.0 + ratio)))
        nce_values.append(float(info_nce(ratio)))
    nwj_values = torch.tensor(nwj_values)
    assert abs(nwj_values.mean().item() - mi) < 4 * nwj_values.std().item() / 20
    assert max(nce_values) <= math.log(n)
    # well below both the truth and the ceiling: the bound's own looseness (about 3.72 nats)
    assert sum(nce_values) / len(nce_values) < min(mi, math.log(n)) - 0.3


def test_nce_recovers_the_density_ratio():
    """Data N(1, 0.5^2) against noise N(0, 1.5^2), nu = 2, a quadratic log-ratio model (the
    family that contains the truth): the NCE minimiser is the true log ratio."""
    g = torch.Generator().manual_seed(2)
    data = 1.0 + 0.5 * torch.randn(1_000_000, generator=g, dtype=torch.float64)
    noise = 1.5 * torch.randn(2_000_000, generator=g, dtype=torch.float64)
    coef = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def model(x):
        return coef[0] + coef[1] * x + coef[2] * x * x

    optimizer = torch.optim.LBFGS([coef], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nce_loss(model(data), model(noise))
        loss.backward()
        return loss

    optimizer.step(closure)
    grid = torch.linspace(-0.5, 2.0, 51, dtype=torch.float64)
    truth = torch.distributions.Normal(1.0, 0.5).log_prob(grid) - torch.distributions.Normal(
        0.0, 1.5
    ).log_prob(grid)
    with torch.no_grad():
        assert (model(grid) - truth).abs().max() < 0.05


def test_critics_score_every_pair():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3), torch.randn(5, 4)
    sep, bil, cat = (
        SeparableCritic(3, 4, hidden=8, embed=6),
        BilinearCritic(3, 4),
        ConcatCritic(3, 4, hidden=8),
    )
    torch.nn.init.normal_(bil.weight)
    for i in range(5):
        for j in range(5):
            assert torch.allclose(sep(x, y)[i, j], sep.g(x[i]) @ sep.h(y[j]), atol=1e-6)
            assert torch.allclose(bil(x, y)[i, j], x[i] @ bil.weight @ y[j], atol=1e-5)
            assert torch.allclose(cat(x, y)[i, j], cat.net(torch.cat([x[i], y[j]]))[0], atol=1e-6)


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        info_nce(torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"shape \(N, N\)|shape \(N=3, N=3\)"):
        info_nce(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        nwj(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="same number of pairs"):
        SeparableCritic(2, 2, hidden=4)(torch.zeros(4, 2), torch.zeros(5, 2))
    for critic in (SeparableCritic(2, 3, hidden=4), BilinearCritic(2, 3), ConcatCritic(2, 3, 4)):
        with pytest.raises(ValueError, match=r"x of 2 and y of 3 features, got x \(4, 3\)"):
            critic(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="rho"):
        correlated_gaussians(4, 2, 1.0)
    with pytest.raises(ValueError, match="batch must be an int >= 2"):
        mi_staircase(SeparableCritic(2, 2, hidden=4), info_nce, steps_per_level=1, batch=1, dim=2)
    with pytest.raises(ValueError, match="at least 2 images"):
        cpc_loss(CPC(), torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\)"):
        CPC()(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="divide 28"):
        CPC(bands=5)
    with pytest.raises(ValueError, match="divide 28"):
        CPC(bands=7.0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        info_nce(torch.zeros(0, 0))
    with pytest.raises(ValueError, match="data and noise samples"):
        nce_loss(torch.zeros(0), torch.zeros(3))
    with pytest.raises(ValueError, match="rho"):
        gaussian_log_ratio(torch.zeros(2, 3), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="critic must score pairs of 20-dimensional"):
        mi_staircase(SeparableCritic(4, 4, hidden=4), info_nce, steps_per_level=1, batch=8)
    with pytest.raises(ValueError, match="batch must be an int >= 2"):
        mi_staircase(SeparableCritic(2, 2, hidden=4), info_nce, steps_per_level=1, batch="a", dim=2)


def test_mi_staircase_records_one_estimate_per_step():
    critic = SeparableCritic(4, 4, hidden=16, embed=8)
    out = mi_staircase(critic, info_nce, levels=(1.0, 2.0), steps_per_level=30, batch=16, dim=4,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.shape == (60,) and torch.isfinite(out).all()
    assert (out <= math.log(16) + 1e-6).all()
    assert out[-10:].mean() > out[:10].mean()  # it learns


def test_cpc_predictions_see_only_the_past():
    torch.manual_seed(0)
    model = CPC(bands=7, embed=8, context=12, hidden=16, ahead=3).double()
    for p in model.predictors:
        torch.nn.init.normal_(p.weight)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    changed = x.clone()
    changed[:, :, 20:24] = torch.rand(3, 1, 4, 28, dtype=torch.float64)  # band 5 of 0..6
    before, after = model.predict(x), model.predict(changed)
    assert before.shape == (3, 7, 3, 8)
    assert torch.equal(before[:, :5], after[:, :5])  # made from bands 0..4: untouched
    assert not torch.allclose(before[:, 5:], after[:, 5:])
    z, z_changed = model(x)[0], model(changed)[0]
    keep = [t for t in range(7) if t != 5]
    assert torch.equal(z[:, keep], z_changed[:, keep])  # each code sees its own band only


def test_cpc_loss_pairs_each_context_with_the_band_k_ahead():
    """With random predictors, the loss is the mean over (t, k) of the cross-entropy of
    c_t W_k z_{t+k}^T against the diagonal, written out here band by band."""
    torch.manual_seed(1)
    model = CPC(bands=4, embed=5, context=6, hidden=8, ahead=2).double()
    for p in model.predictors:
        torch.nn.init.normal_(p.weight)
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    z, c = model(x)
    terms = []
    for k in (1, 2):
        for t in range(4 - k):
            w = model.predictors[k - 1].weight
            scores = torch.stack(
                [torch.stack([c[i, t] @ w @ z[j, t + k] for j in range(6)]) for i in range(6)]
            )
            terms.append(torch.nn.functional.cross_entropy(scores, torch.arange(6)))
    assert len(terms) == 5
    assert torch.allclose(cpc_loss(model, x), torch.stack(terms).mean())


def test_cpc_loss_starts_at_log_batch():
    """The bilinear predictors start at zero, so every score is 0 and each InfoNCE term is log B."""
    torch.manual_seed(0)
    loss = cpc_loss(CPC(embed=8, context=8, hidden=16), torch.rand(10, 1, 28, 28))
    assert loss.item() == pytest.approx(math.log(10), abs=1e-6)


def test_probe_learns_below_chance_loss():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 6, generator=g)
    labels = torch.randint(0, 4, (400,), generator=g)
    features = centres[labels] + torch.randn(400, 6, generator=g)
    result = linear_probe(
        features[:300], labels[:300], features[300:], labels[300:], classes=4, steps=50
    )
    assert result.losses[0] == pytest.approx(chance_loss(4), abs=1e-6)  # the zero start
    assert result.loss < 0.5 * chance_loss(4)
    assert result.accuracy > 0.9 and result.train_accuracy > 0.9


def test_probe_bad_inputs():
    x, y = torch.zeros(8, 3), torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        linear_probe(x, y + 10, x, y)
    with pytest.raises(TypeError, match="int64"):
        linear_probe(x, y.float(), x, y)
    with pytest.raises(ValueError, match="test features must have shape"):
        linear_probe(x, y, torch.zeros(8, 4), y)
    with pytest.raises(ValueError, match="train labels must have shape"):
        linear_probe(x, y[:5], x, y)
    with pytest.raises(ValueError, match="weight_decay"):
        linear_probe(x, y, x, y, weight_decay=-1.0)
    with pytest.raises(ValueError, match="finite"):
        linear_probe(x.fill_(float("nan")), y, torch.zeros(8, 3), y)
