"""Layers shared by several chapters: an MLP, masked linear and convolutional layers (the
autoregressive masks), and the small time-conditioned MLP of the 2D sections.

Masked convolutions zero the kernel weights that would look at "future" pixels, those below
the centre row or right of the centre in the centre row. Type A also hides the centre itself
(the first layer, which sees the image); type B keeps it (later layers, whose features at a
pixel already summarise only its past). For a 5x5 kernel::

    type A          type B          vertical        horizontal (A / B)
    1 1 1 1 1       1 1 1 1 1       1 1 1 1 1
    1 1 1 1 1       1 1 1 1 1       1 1 1 1 1
    1 1 0 0 0       1 1 1 0 0       1 1 1 1 1       1 1 0 0 0 / 1 1 1 0 0
    0 0 0 0 0       0 0 0 0 0       0 0 0 0 0
    0 0 0 0 0       0 0 0 0 0       0 0 0 0 0

The vertical mask sees the whole centre row: the gated PixelCNN uses it only after shifting
its output down one row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.nn.embeddings import FourierFeatures
from nbutils.tensors import check_tensor


class MLP(nn.Sequential):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers.

    Args:
        sizes: layer widths including input and output, e.g. ``(2, 128, 128, 2)``.
        activation: module class used between layers.

    Shapes: (B, sizes[0]) -> (B, sizes[-1]).

    Example:
        >>> MLP((2, 16, 3))(torch.zeros(5, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(self, sizes, activation=nn.SiLU):
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` buffer (out, in).

    Shapes: (B, in) -> (B, out).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


MASK_KINDS = ("A", "B", "vertical", "horizontal_A", "horizontal_B")


def causal_mask(height: int, width: int, kind: str) -> torch.Tensor:
    """The (height, width) 0/1 kernel mask of a masked convolution (drawn in the module doc)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    mask = torch.zeros(height, width)
    r, c = height // 2, width // 2
    keep_centre = kind in ("B", "horizontal_B")
    if kind in ("A", "B", "vertical"):
        mask[:r] = 1.0  # rows above the centre
    if kind == "vertical":
        mask[r] = 1.0  # the whole centre row: used only after a one-row shift
    else:
        mask[r, : c + keep_centre] = 1.0  # left of the centre (and the centre for B)
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution with a :func:`causal_mask` on its kernel.

    Shapes: (B, in, H, W) -> (B, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, kind: str):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel sizes must be odd, got {(kh, kw)}")
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        self.register_buffer("mask", causal_mask(kh, kw, kind))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class VelocityMLP(nn.Module):
    """A time-conditioned network for vectors (2D toy data): an MLP on ``[x, features(t)]``.

    The time features are :class:`~nbutils.nn.embeddings.FourierFeatures`, ``t`` and
    ``cos(k pi t), sin(k pi t)`` for k = 1..n_freq: smooth in t at the scale of a toy problem.

    Args:
        dim: data dimension D.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        n_freq: number of time frequencies.

    Shapes: x (B, D), t (B,) -> (B, D).
    """

    def __init__(self, dim: int = 2, hidden: int = 256, layers: int = 3, n_freq: int = 8):
        super().__init__()
        self.dim = dim
        self.time = FourierFeatures(n_freq)
        self.net = MLP((dim + self.time.dim, *[hidden] * layers, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if cond:
            raise TypeError(f"VelocityMLP is unconditional; got {sorted(cond)}")
        sizes = check_tensor(x, "x", shape=("B", self.dim), floating=True)
        check_tensor(t, "t", shape=("B",), sizes=sizes)
        return self.net(torch.cat([x, self.time(t, like=x)], dim=1))  # (B, D)
