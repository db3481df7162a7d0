"""Shared network pieces: MLP, time embeddings, the class embedding with its null row, the
book's classifier."""

import math

import pytest
import torch

from nbutils import nn as bnn
from nbutils.classifier import MnistClassifier


def test_mlp_shapes_and_errors():
    assert bnn.MLP((2, 16, 16, 3))(torch.randn(5, 2)).shape == (5, 3)
    with pytest.raises(ValueError, match="at least an input and an output"):
        bnn.MLP((4,))


def test_sinusoidal_embedding_is_bounded_and_separates_times():
    t = torch.tensor([0.0, 0.001, 0.5, 1.0])
    e = bnn.sinusoidal_embedding(t, 64)
    assert e.shape == (4, 64) and e.abs().max() <= 1.0
    # cos^2 + sin^2 = 1 for every frequency: the norm is sqrt(dim / 2)
    assert torch.allclose(e.norm(dim=1), torch.full((4,), 32**0.5))
    assert torch.cdist(e, e).add(torch.eye(4)).min() > 0.1  # distinct times, distinct codes
    with pytest.raises(ValueError, match="even"):
        bnn.sinusoidal_embedding(t, 7)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        bnn.sinusoidal_embedding(t[:, None], 8)


def test_time_mlp_follows_its_weights_dtype():
    m = bnn.TimeMLP(16).double()
    out = m(torch.rand(3, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (3, 16)


def test_fourier_features_are_t_cos_and_sin_of_multiples_of_pi():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    f = bnn.FourierFeatures(3)(t, like=t)
    assert f.shape == (3, 7) and f.dtype == torch.float64 and bnn.FourierFeatures(3).dim == 7
    k = torch.arange(1, 4, dtype=torch.float64)
    expected = torch.cat(
        [t[:, None], torch.cos(math.pi * k * t[:, None]), torch.sin(math.pi * k * t[:, None])], 1
    )
    torch.testing.assert_close(f, expected, atol=1e-6, rtol=0)  # frequencies kept in float32
    assert bnn.FourierFeatures(2).state_dict() == {}  # nothing to save
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        bnn.FourierFeatures(2)(t[:, None])


def test_class_embedding_null_row_and_zero_init():
    emb = bnn.ClassEmbedding(10, 4, null=True)
    assert emb.weight.shape == (11, 4) and emb.null_index == 10
    torch.testing.assert_close(emb(None, batch=3), emb.weight[10].expand(3, 4))
    torch.testing.assert_close(emb(torch.tensor([2, 10])), emb.weight[[2, 10]])
    zero = bnn.ClassEmbedding(3, 5, zero_init=True)
    assert torch.equal(zero(torch.tensor([0, 2])), torch.zeros(2, 5))


def test_class_embedding_errors_say_what_came():
    plain = bnn.ClassEmbedding(3, 2)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\], got \[0, 3\]"):
        plain(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="no null row"):
        plain(None, batch=2)
    with pytest.raises(TypeError, match="int64"):
        plain(torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\] \(3 = no label\)"):
        bnn.ClassEmbedding(3, 2, null=True)(torch.tensor([-1]))
    with pytest.raises(ValueError, match="batch=B"):
        bnn.ClassEmbedding(3, 2, null=True)(None)
    with pytest.raises(ValueError, match="at least 1"):
        bnn.ClassEmbedding(0, 2)


def test_masked_linear_applies_its_mask():
    layer = bnn.MaskedLinear(3, 2)
    layer.mask.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    x = torch.randn(4, 3, requires_grad=True)
    layer(x)[:, 0].sum().backward()
    assert torch.equal(x.grad[:, 1:], torch.zeros(4, 2))  # output 0 sees input 0 only


def test_velocity_mlp_takes_no_condition_and_checks_its_inputs():
    net = bnn.VelocityMLP(dim=2, hidden=8, layers=1)
    assert net(torch.randn(5, 2), torch.rand(5)).shape == (5, 2)
    with pytest.raises(TypeError, match="unconditional"):
        net(torch.randn(5, 2), torch.rand(5), y=torch.zeros(5))
    with pytest.raises(ValueError, match=r"t must have shape \(B=5,\)"):
        net(torch.randn(5, 2), torch.rand(4))


def test_classifier_shapes():
    m = MnistClassifier().eval()
    x = torch.rand(2, 1, 28, 28)
    assert m(x).shape == (2, 10) and m.features(x).shape == (2, MnistClassifier.feature_dim)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        m(torch.rand(2, 28, 28))
