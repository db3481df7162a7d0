"""The maths of nbutils.flows, in float64: exact inverses, log-determinants equal to those of
autograd Jacobians, normalised densities, consistent sampling, gradients, clear errors."""

import math
import re

import pytest
import torch
from torch import nn
from weights import randomize

from nbutils import flows
from nbutils.flows import (
    AdditiveCoupling,
    Compose,
    Flow,
    IndexPartition,
    Logit,
    MaskPartition,
    Permutation,
    Scaling,
    StandardLogistic,
    StandardNormal,
    checkerboard_partition,
    halves,
    mlp_conditioner,
    nice,
)

PRIORS = pytest.mark.parametrize(
    "prior", [StandardNormal(), StandardLogistic()], ids=["normal", "logistic"]
)


@pytest.fixture(autouse=True)
def _all_in_float64(float64):
    """Every test here runs in float64 (the conftest fixture restores the default)."""


def conv(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1)


def mlp(part):
    return mlp_conditioner(16, 2, activation=nn.Tanh)(part.in_shape, part.out_shape)


def coupling(part, net_factory=mlp):
    return AdditiveCoupling(part, net_factory(part))


# Every transform of the module, built small, with its event shape and an input sampler.
CASES = {
    "coupling-halves": lambda: coupling(halves((6,))),
    "coupling-halves-odd": lambda: coupling(halves((5,))),
    "coupling-checkerboard-flat": lambda: coupling(checkerboard_partition((1, 4, 4))),
    "coupling-checkerboard-swapped": lambda: coupling(checkerboard_partition((1, 4, 4)).swapped()),
    "coupling-checkerboard-mask": lambda: coupling(
        checkerboard_partition((2, 4, 4), flat=False), lambda p: conv(2, 2)
    ),
    "coupling-channels": lambda: coupling(flows.channels((4, 3, 3)), lambda p: conv(2, 2)),
    "scaling": lambda: Scaling((2, 3)),
    "permutation-random": lambda: Permutation.random((1, 3, 3), torch.Generator().manual_seed(1)),
    "permutation-reverse": lambda: Permutation.reverse((7,)),
    "logit": lambda: Logit((1, 3, 3), alpha=0.05),
    "compose": lambda: Compose(
        Logit((1, 4, 4), alpha=0.05),
        coupling(checkerboard_partition((1, 4, 4))),
        Permutation.random((1, 4, 4), torch.Generator().manual_seed(2)),
        coupling(halves((1, 4, 4))),
        Scaling((1, 4, 4)),
    ),
    "nice-2d": lambda: nice((2,), couplings=4, conditioner=mlp_conditioner(8, 2)),
}


def make(name):
    return randomize(CASES[name]())


def inputs(transform, n=3, seed=0):
    """Inputs in (0.05, 0.95): valid for every case, Logit included."""
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(n, *transform.event_shape, generator=g)


@pytest.fixture
def jacobian_logdets(jacobians):
    """log |det J| of a transform's flattened map, per example, from autograd Jacobians."""

    def logdets(transform, x):
        jac = jacobians(lambda v: transform(v)[0], x)  # (B, D, D)
        return torch.linalg.slogdet(jac).logabsdet

    return logdets


# ----------------------------------------------------------------------------- invertibility


@pytest.mark.parametrize("name", CASES)
def test_inverse_of_forward_is_identity(name):
    t = make(name)
    x = inputs(t)
    z, logdet = t(x)
    assert z.shape == (3, *t.out_shape) and logdet.shape == (3,)
    torch.testing.assert_close(t.inverse(z), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_forward_of_inverse_is_identity(name):
    t = make(name)
    z = t(inputs(t))[0] + 0.01  # a latent that is not exactly an encoded input
    torch.testing.assert_close(t(t.inverse(z))[0], z, atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- log-determinants


@pytest.mark.parametrize("name", CASES)
def test_logdet_equals_slogdet_of_autograd_jacobian(name, jacobian_logdets):
    t = make(name)
    x = inputs(t)
    torch.testing.assert_close(t(x)[1], jacobian_logdets(t, x), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("coupling")])
def test_additive_coupling_has_unit_jacobian(name, jacobian_logdets):
    t = make(name)
    x = inputs(t)
    assert torch.equal(t(x)[1], torch.zeros(3))  # exactly 0, by construction
    torch.testing.assert_close(jacobian_logdets(t, x), torch.zeros(3), atol=1e-10, rtol=0)


def test_coupling_jacobian_is_block_triangular():
    """y_a = x_a: its rows of the Jacobian are the identity on a and exactly 0 on b."""
    part = checkerboard_partition((1, 4, 4))
    t = randomize(coupling(part))
    a = part.mask.flatten()
    f = lambda v: t(v.reshape(1, 1, 4, 4))[0].flatten()  # noqa: E731
    jac = torch.autograd.functional.jacobian(f, inputs(t, 1)[0].flatten())
    assert torch.equal(jac[a][:, a], torch.eye(int(a.sum())))
    assert torch.equal(jac[a][:, ~a], torch.zeros(int(a.sum()), int((~a).sum())))
    assert jac[~a][:, a].abs().sum() > 0  # b really depends on a


def test_scaling_logdet_is_sum_of_log_scales():
    t = make("scaling")
    assert torch.equal(t(inputs(t))[1], t.log_scale.sum().expand(3))


def test_compose_logdet_is_sum_of_parts():
    t = make("compose")
    x, total = inputs(t), 0.0
    for part in t.transforms:
        x, ld = part(x)
        total = total + ld
    torch.testing.assert_close(t(inputs(t))[1], total)


def test_forward_and_inverse_steps_trace_the_composition():
    t = make("nice-2d")
    x = inputs(t)
    steps = t.forward_steps(x)
    assert len(steps) == len(t.transforms) + 1
    torch.testing.assert_close(steps[-1], t(x)[0])
    back = t.inverse_steps(steps[-1])
    torch.testing.assert_close(back[::-1], steps)


# ----------------------------------------------------------------------------- partitions


@pytest.mark.parametrize(
    "part",
    [
        halves((5,)),
        checkerboard_partition((6,)),
        checkerboard_partition((2, 4, 4)),
        flows.channels((3, 2, 2)),
    ],
    ids=["halves", "checkerboard-1d", "checkerboard-image", "channels"],
)
def test_partition_split_merge_round_trip_and_swap(part):
    x = torch.randn(2, *part.event_shape)
    xa, xb = part.split(x)
    assert xa.shape == (2, *part.in_shape) and xb.shape == (2, *part.out_shape)
    assert torch.equal(part.merge(xa, xb), x)
    other = part.swapped()
    ya, yb = other.split(x)
    assert torch.equal(ya, xb) and torch.equal(yb, xa)


def test_checkerboard_masks():
    assert checkerboard_partition((6,)).mask.tolist() == [True, False] * 3
    image = checkerboard_partition((2, 3, 3)).mask
    assert torch.equal(image[0], image[1])  # shared by the channels
    assert image[0].tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    mask = MaskPartition(checkerboard_partition((1, 2, 2)).mask)
    assert mask.restrict(torch.ones(1, 1, 2, 2)).tolist() == [[[[0.0, 1.0], [1.0, 0.0]]]]


def test_without_alternation_half_the_entries_never_change():
    kw = dict(couplings=4, conditioner=mlp_conditioner(8, 1), scaling=False)
    x, kept = torch.randn(4, 6), checkerboard_partition((6,)).mask
    z = randomize(nice((6,), alternate=False, **kw))(x)[0]
    assert torch.equal(z[:, kept], x[:, kept])
    z = randomize(nice((6,), alternate=True, **kw))(x)[0]
    assert not torch.isclose(z, x).any()


# ----------------------------------------------------------------------------- priors and flows


@pytest.mark.parametrize(
    "prior, reference",
    [
        (StandardNormal(), torch.distributions.Normal(0.0, 1.0)),
        (
            StandardLogistic(),
            torch.distributions.TransformedDistribution(
                torch.distributions.Uniform(0.0, 1.0),
                [torch.distributions.SigmoidTransform().inv],
            ),
        ),
    ],
    ids=["normal", "logistic"],
)
def test_prior_log_prob_matches_torch_distributions(prior, reference):
    z = torch.linspace(-30, 30, 60).reshape(3, 1, 20)
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z).flatten(1).sum(1))


@pytest.mark.parametrize(
    "prior", [StandardNormal(), StandardLogistic()], ids=["normal", "logistic"]
)
def test_prior_samples_scale_with_temperature_and_are_reproducible(prior):
    draw = lambda t: prior.sample((20000,), t, torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.equal(draw(1.0), draw(1.0))
    torch.testing.assert_close(draw(0.5), 0.5 * draw(1.0))
    std = math.pi / math.sqrt(3) if isinstance(prior, StandardLogistic) else 1.0
    assert abs(draw(1.0).std().item() - std) < 0.05
    assert torch.isfinite(prior.sample((10**5,), 1.0, torch.Generator().manual_seed(0))).all()


@pytest.mark.parametrize(
    "prior", [StandardNormal(), StandardLogistic()], ids=["normal", "logistic"]
)
def test_density_of_a_2d_flow_integrates_to_one(prior):
    transform = randomize(nice((2,), couplings=4, conditioner=mlp_conditioner(16, 2)), scale=0.2)
    flow = Flow(transform, prior)
    half, n = 25.0, 1001
    axis = torch.linspace(-half, half, n)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (2 * half / (n - 1)) ** 2
    assert abs(mass.item() - 1) < 5e-3


def test_log_prob_of_samples_is_consistent_with_prior_and_logdet():
    parts = [
        coupling(checkerboard_partition((1, 4, 4))),
        coupling(halves((1, 4, 4))),
        Scaling((1, 4, 4)),
    ]
    flow = Flow(randomize(Compose(*parts)), StandardLogistic())
    z = StandardLogistic().sample((16, 1, 4, 4), 1.0, torch.Generator().manual_seed(4))
    x = flow.decode(z)
    torch.testing.assert_close(flow.encode(x), z)
    z_again, logdet = flow.transform(x)
    expected = StandardLogistic().log_prob(z) + logdet
    assert torch.isfinite(flow.log_prob(x)).all()
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_flow_sample_shapes_temperature_zero_and_generator():
    flow = Flow(make("nice-2d"), StandardNormal())
    a = flow.sample(5, generator=torch.Generator().manual_seed(0))
    b = flow.sample(5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 2) and torch.equal(a, b) and torch.isfinite(a).all()
    torch.testing.assert_close(flow.sample(3, temperature=0.0), flow.decode(torch.zeros(3, 2)))


def test_nll_nats_per_dim_is_mean_nats_per_dimension():
    flow = Flow(make("compose"), StandardLogistic())
    x = inputs(flow.transform, 4)
    expected = -flow.log_prob(x).mean() / 16
    torch.testing.assert_close(flows.nll_nats_per_dim(flow, x), expected)
    torch.testing.assert_close(flows.nll_nats_per_dim(flow, (x, torch.zeros(4))), expected)


@pytest.mark.parametrize("name", [n for n in CASES if list(make(n).parameters())])
def test_every_parameter_receives_a_gradient(name):
    flow = Flow(make(name), StandardLogistic())
    flow.log_prob(inputs(flow.transform, 4)).sum().backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_mnist_sized_nice_starts_as_scaled_identity():
    """The default conditioner's last layer is zero: a fresh NICE is the identity map."""
    flow = Flow(nice((1, 28, 28), conditioner=mlp_conditioner(32, 2)), StandardLogistic())
    x = torch.rand(2, 1, 28, 28)
    z, logdet = flow.transform(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(2))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", CASES)
def test_wrong_shape_is_a_clear_error(name):
    t = make(name)
    wrong = torch.rand(3, math.prod(t.event_shape) + 1)
    expected = "(B, " + ", ".join(map(str, t.event_shape)) + ")"
    with pytest.raises(ValueError, match=rf"must have shape {re.escape(expected)}"):
        t(wrong)
    with pytest.raises(ValueError, match=r"got \(3, "):
        t.inverse(wrong)


def test_logit_rejects_values_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\], got \[-0.1"):
        Logit((2,), alpha=0.05)(torch.tensor([[-0.1, 0.5]]))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Logit((2,), alpha=0.0)(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match="alpha"):
        Logit((2,), alpha=0.5)


def test_other_bad_inputs_are_clear_errors():
    bad_net = AdditiveCoupling(halves((4,)), nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"returned shape \(1, 3\), expected \(1, 2\)"):
        bad_net(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="do not chain"):
        Compose(Scaling((2,)), Scaling((3,)))
    with pytest.raises(ValueError, match="each part"):
        IndexPartition(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="permute"):
        Permutation(torch.tensor([0, 0, 1]), (3,))
    with pytest.raises(ValueError, match="C, H, W"):
        flows.channels((4,))
    flow = Flow(make("nice-2d"), StandardNormal())
    with pytest.raises(ValueError, match="temperature"):
        flow.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="positive int"):
        flow.sample(0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        flow.log_prob([[0.0, 0.0]])
