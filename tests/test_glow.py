"""Glow's and RealNVP's pieces in float64: exact inverses, log-determinants equal to those of
autograd Jacobians (every layer and the whole multiscale stack), actnorm's initialisation,
the 1x1 convolution's O(C) log-det, squeeze as a permutation, and clear errors."""

import math
import re

import pytest
import torch
from torch import nn
from weights import randomize

from nbutils.flows import (
    ActNorm,
    AffineCoupling,
    Compose,
    Flow,
    InvertibleConv1x1,
    Logit,
    Multiscale,
    Squeeze,
    StandardNormal,
    affine,
    channels,
    checkerboard_partition,
    conv_conditioner,
    glow_step,
    halves,
    mlp_conditioner,
    multiscale,
)


@pytest.fixture(autouse=True)
def _all_in_float64(float64):
    """Every test here runs in float64 (the conftest fixture restores the default)."""


def small_multiscale(levels=2):
    side = 2**levels  # every level halves the image
    return multiscale((1, side, side), levels=levels, checkerboard=2, steps=2,
                      conditioner=conv_conditioner(8, 1))  # fmt: skip


CASES = {
    "affine-halves": lambda: affine(halves((5,)), mlp_conditioner(8, 2, activation=nn.Tanh)),
    "affine-checkerboard-mask": lambda: affine(
        checkerboard_partition((2, 4, 4), flat=False), conv_conditioner(8, 1)
    ),
    "affine-channels": lambda: affine(channels((4, 2, 2)), conv_conditioner(8, 1)),
    "actnorm-image": lambda: ActNorm((3, 2, 2)),
    "actnorm-vector": lambda: ActNorm((3,)),
    "conv1x1-lu": lambda: InvertibleConv1x1((3, 2, 2), generator=torch.Generator().manual_seed(0)),
    "conv1x1-plain": lambda: InvertibleConv1x1(
        (3, 2, 2), lu=False, generator=torch.Generator().manual_seed(0)
    ),
    "conv1x1-vector": lambda: InvertibleConv1x1((4,), generator=torch.Generator().manual_seed(1)),
    "squeeze": lambda: Squeeze((2, 4, 2)),
    "glow-step": lambda: glow_step((4, 2, 2), conv_conditioner(8, 1)),
    "multiscale-2": small_multiscale,
    "multiscale-3": lambda: small_multiscale(3),
    "logit-multiscale": lambda: Compose(Logit((1, 4, 4), alpha=0.05), small_multiscale()),
}


def make(name):
    return randomize(CASES[name](), scale=0.1)


def inputs(t, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(n, *t.event_shape, generator=g)


@pytest.mark.parametrize("name", CASES)
def test_inverse_round_trips(name):
    t = make(name)
    x = inputs(t)
    z, logdet = t(x)
    assert z.shape == (3, *t.out_shape) and logdet.shape == (3,)
    torch.testing.assert_close(t.inverse(z), x, atol=1e-10, rtol=0)
    z2 = z + 0.01
    torch.testing.assert_close(t(t.inverse(z2))[0], z2, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_logdet_equals_slogdet_of_autograd_jacobian(name, jacobians):
    t = make(name)
    x = inputs(t)
    expected = torch.linalg.slogdet(jacobians(lambda v: t(v)[0], x)).logabsdet
    torch.testing.assert_close(t(x)[1], expected, atol=1e-9, rtol=1e-9)


def test_multiscale_adds_the_logdet_of_every_level(jacobians):
    """The sum, not the last level's term: a decoder that overwrote it would fail here."""
    ms = make("multiscale-2")
    x = inputs(ms)
    _, total = ms(x)
    first, kept = ms.levels[0](x)[1], ms.levels[0](x)[0][:, :2]
    second = ms.levels[1](kept)[1]
    torch.testing.assert_close(total, first + second)
    assert (first.abs() > 1e-3).all() and (second.abs() > 1e-3).all()


def test_multiscale_split_gives_each_level_its_latents():
    ms = make("multiscale-2")
    assert ms.sizes == [8, 8] and ms.out_shape == (16,)
    x = inputs(ms)
    z = ms(x)[0]
    parts = ms.split(z)
    h = ms.levels[0](x)[0]  # (B, 4, 2, 2): channels 2, 3 factored out
    torch.testing.assert_close(parts[0], h[:, 2:].flatten(1))
    # replacing the coarse part leaves the early part of the re-encoded latent as it was
    new = torch.cat([parts[0], torch.zeros_like(parts[1])], 1)
    torch.testing.assert_close(ms.split(ms(ms.inverse(new))[0])[0], parts[0])


def test_actnorm_initialisation_gives_zero_mean_unit_variance_per_channel():
    g = torch.Generator().manual_seed(3)
    x = (
        5
        + 3 * torch.randn(64, 3, 4, 4, generator=g) * torch.tensor([1.0, 0.1, 10.0])[:, None, None]
    )
    norm = ActNorm((3, 4, 4)).train()
    z, logdet = norm(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet, 16 * norm.log_scale.sum().expand(64))
    again = norm(x + 1)[0]  # initialised once: a second batch does not reset it
    torch.testing.assert_close(again, z + torch.exp(norm.log_scale))


def test_actnorm_does_not_initialise_in_eval_mode_or_after_loading():
    x = torch.randn(8, 2) * 4
    fresh = ActNorm((2,)).eval()
    torch.testing.assert_close(fresh(x)[0], x)  # eval: untouched identity
    trained = ActNorm((2,)).train()
    trained(x)
    loaded = ActNorm((2,)).train()
    loaded.load_state_dict(trained.state_dict())
    assert loaded._ready
    torch.testing.assert_close(loaded(x * 10)[0], trained(x * 10)[0])


def test_actnorm_refuses_to_initialise_from_one_example():
    with pytest.raises(ValueError, match="at least 2"):
        ActNorm((2,)).train()(torch.randn(1, 2))


@pytest.mark.parametrize("lu", [True, False])
def test_conv1x1_logdet_is_positions_times_log_abs_det_w(lu):
    conv = randomize(
        InvertibleConv1x1((3, 5, 4), lu=lu, generator=torch.Generator().manual_seed(0)), scale=0.1
    )
    w = conv.matrix()
    expected = 20 * torch.linalg.slogdet(w).logabsdet
    torch.testing.assert_close(conv(torch.randn(2, 3, 5, 4))[1], expected.expand(2))
    torch.testing.assert_close(conv.log_abs_det(), torch.linalg.slogdet(w).logabsdet)


def test_conv1x1_starts_as_a_rotation():
    conv = InvertibleConv1x1((4, 2, 2), generator=torch.Generator().manual_seed(5))
    w = conv.matrix()
    torch.testing.assert_close(w @ w.T, torch.eye(4), atol=1e-10, rtol=0)
    torch.testing.assert_close(conv.log_abs_det(), torch.tensor(0.0), atol=1e-10, rtol=0)


def test_squeeze_is_a_permutation_of_2x2_blocks():
    sq = Squeeze((1, 4, 4))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    z, logdet = sq(x)
    assert z.shape == (1, 4, 2, 2) and logdet.item() == 0
    assert sorted(z.flatten().tolist()) == list(range(16))
    # the four channels at block (0, 0) are the pixels of the top-left 2x2 block
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


def test_affine_coupling_changes_only_part_b_and_clamps_the_scale():
    t = randomize(affine(channels((4, 2, 2)), conv_conditioner(8, 1)), scale=3.0)
    x = inputs(t)
    z = t(x)[0]
    torch.testing.assert_close(z[:, :2], x[:, :2])
    h = t.net(x[:, :2])
    s = t._scale_shift(h, x[:, 2:])[0]
    assert s.abs().max() <= t.bound


def test_zero_initialised_conditioners_make_couplings_identities():
    t = affine(checkerboard_partition((1, 4, 4), flat=False), conv_conditioner(8, 1))
    x = inputs(t)
    z, logdet = t(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(3))


def test_every_parameter_of_a_multiscale_flow_gets_a_gradient():
    flow = Flow(Compose(Logit((1, 4, 4), alpha=0.05), make("multiscale-2")), StandardNormal())
    flow.log_prob(inputs(flow.transform)).sum().backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=re.escape("even H and W, got (1, 7, 7)")):
        Squeeze((1, 7, 7))
    with pytest.raises(ValueError, match=re.escape("(1, 28, 28): H and W must halve 3 times")):
        multiscale((1, 28, 28), levels=3, conditioner=conv_conditioner(8, 1))
    with pytest.raises(ValueError, match=re.escape("event_shape (1, 6, 6): H and W must halve")):
        multiscale((1, 6, 6), conditioner=conv_conditioner(8, 1))  # the shape given, named
    with pytest.raises(ValueError, match=re.escape("must be (C, H, W) of ints, got (1, 28)")):
        multiscale((1, 28), conditioner=conv_conditioner(8, 1))
    with pytest.raises(
        ValueError, match=re.escape("must have shape (B, 1, 4, 4), got (2, 1, 5, 4)")
    ):
        make("multiscale-2")(torch.zeros(2, 1, 5, 4))
    with pytest.raises(ValueError, match="must be finite"):
        Flow(make("logit-multiscale"), StandardNormal()).log_prob(
            torch.full((2, 1, 4, 4), math.nan)
        )
    with pytest.raises(ValueError, match="expected"):
        bad = AffineCoupling(channels((4, 2, 2)), nn.Conv2d(2, 2, 1))  # needs 4 output channels
        bad(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="level 1 must take"):
        Multiscale(Squeeze((1, 4, 4)), Squeeze((4, 2, 2)))
    with pytest.raises(ValueError, match="steps must be an int"):
        multiscale(steps=-1, conditioner=conv_conditioner(8, 1))


def test_under_bf16_autocast_the_latent_path_and_logdet_stay_exact():
    """Only conditioners may run in bf16: the 1x1 convolution's log-det must be that of the
    matrix it applies, and the whole stack must still invert (float32 data, CPU autocast)."""
    conv = randomize(
        InvertibleConv1x1((4, 3, 3), generator=torch.Generator().manual_seed(0)), scale=0.1
    )
    ms = make("multiscale-2")
    for module in (conv, ms):
        module.float()
    x = torch.rand(5, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = conv(x)
        back = conv.inverse(z)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, conv(x)[0])
    torch.testing.assert_close(logdet, 9 * torch.linalg.slogdet(conv.matrix()).logabsdet.expand(5))
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    image = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latent, _ = ms(image)
        again = ms.inverse(latent)
    assert latent.dtype == torch.float32
    torch.testing.assert_close(again, image, atol=1e-4, rtol=0)
