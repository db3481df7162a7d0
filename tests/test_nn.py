import pytest
import torch

from nbutils import nn as bnn


def test_append_dims():
    assert bnn.append_dims(torch.ones(3), 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="cannot expand"):
        bnn.append_dims(torch.ones(3, 2), 1)


def test_mlp_shapes_and_errors():
    assert bnn.MLP((2, 16, 16, 3))(torch.randn(5, 2)).shape == (5, 3)
    with pytest.raises(ValueError, match="at least an input and an output"):
        bnn.MLP((4,))


def test_timestep_embedding_is_bounded_and_separates_times():
    t = torch.tensor([0.0, 0.001, 0.5, 1.0])
    e = bnn.timestep_embedding(t, 64)
    assert e.shape == (4, 64) and e.abs().max() <= 1.0
    # cos^2 + sin^2 = 1 for every frequency: the norm is sqrt(dim / 2)
    assert torch.allclose(e.norm(dim=1), torch.full((4,), 32**0.5))
    assert torch.cdist(e, e).add(torch.eye(4)).min() > 0.1  # distinct times, distinct codes
    with pytest.raises(ValueError, match="even"):
        bnn.timestep_embedding(t, 7)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        bnn.timestep_embedding(t[:, None], 8)


def test_time_mlp_follows_its_weights_dtype():
    m = bnn.TimeMLP(16).double()
    out = m(torch.rand(3, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (3, 16)


def test_classifier_shapes():
    m = bnn.MnistClassifier().eval()
    x = torch.rand(2, 1, 28, 28)
    assert m(x).shape == (2, 10) and m.features(x).shape == (2, bnn.MnistClassifier.feature_dim)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        m(torch.rand(2, 28, 28))
