"""The small U-Net: shapes, gradients to every parameter, conditioning, clear input errors."""

import pytest
import torch

from nbutils.nn import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kwargs):
    torch.manual_seed(0)
    return UNet(channels=(8, 16, 16), **kwargs)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 1, 8, 12)])
def test_output_has_the_input_shape(shape):
    net = small()
    x = torch.randn(shape)
    assert net(x, torch.rand(shape[0])).shape == x.shape


def test_two_channels_and_two_levels():
    net = UNet(in_channels=2, channels=(8, 16), blocks=2, attention=False)
    x = torch.randn(2, 2, 6, 10)
    assert net(x, torch.rand(2)).shape == x.shape


def test_every_parameter_gets_a_gradient():
    net = small(num_classes=10, blocks=2)
    y = torch.tensor([0, 3, 10, 9])
    net(torch.randn(4, 1, 28, 28), torch.rand(4), y).pow(2).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_time_changes_the_output():
    net = small().eval()
    x = torch.randn(2, 1, 28, 28)
    out_a, out_b = net(x, torch.full((2,), 0.1)), net(x, torch.full((2,), 0.9))
    assert (out_a - out_b).abs().max() > 1e-4


def test_label_changes_the_output_and_none_is_the_null_label():
    net = small(num_classes=10).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    assert (net(x, t, torch.tensor([1, 1])) - net(x, t, torch.tensor([2, 2]))).abs().max() > 1e-4
    torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([10, 10])))


def test_batch_items_are_independent():
    net = small().eval()
    x, t = torch.randn(3, 1, 28, 28), torch.rand(3)
    torch.testing.assert_close(net(x, t)[1:], net(x[1:], t[1:]), atol=1e-5, rtol=1e-5)


def test_float64_works():
    net = small().double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    assert net(x, torch.rand(2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "x, t, match",
    [
        (torch.randn(2, 28, 28), torch.rand(2), r"shape \(B, 1, H, W\)"),
        (torch.randn(2, 3, 28, 28), torch.rand(2), r"shape \(B, 1, H, W\)"),
        (torch.randn(2, 1, 30, 28), torch.rand(2), "divisible by 4"),
        (torch.randn(2, 1, 28, 28), torch.rand(3), r"t must have shape \(B=2,\)"),
        (torch.randn(2, 1, 28, 28), torch.tensor(0.5), r"t must have shape \(B=2,\)"),
    ],
)
def test_wrong_inputs_give_clear_errors(x, t, match):
    with pytest.raises(ValueError, match=match):
        small()(x, t)


def test_wrong_labels_give_clear_errors():
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    with pytest.raises(ValueError, match="no label embedding"):
        small()(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"lie in \[0, 10\]"):
        small(num_classes=10)(x, t, torch.tensor([0, 11]))
    with pytest.raises(TypeError, match="int64"):
        small(num_classes=10)(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(B=2,\)"):
        small(num_classes=10)(x, t, torch.tensor([0, 1, 2]))
