"""Small network pieces shared by several chapters: an MLP, a sinusoidal time embedding and
the MNIST classifier whose features measure sample quality (:mod:`nbutils.classifier`)."""

from __future__ import annotations

import math

import torch
from torch import nn


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions: t (B,) -> (B, 1, ..., 1) with ``ndim`` dims in all."""
    if t.dim() > ndim:
        raise ValueError(f"cannot expand a tensor of {t.dim()} dims to {ndim} dims")
    return t.reshape(*t.shape, *([1] * (ndim - t.dim())))


class MLP(nn.Sequential):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers.

    Args:
        sizes: layer widths including input and output, e.g. ``(2, 128, 128, 2)``.
        activation: module class used between layers.

    Shapes: (B, sizes[0]) -> (B, sizes[-1]).
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


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of times in [0, 1] (scaled by 1000, as in DDPM / the Transformer).

    Args:
        t: (B,) times.
        dim: embedding size (even).

    Returns:
        (B, dim): ``[cos(1000 t w_k), sin(1000 t w_k)]`` with geometric frequencies w_k.
    """
    if t.dim() != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimeMLP(nn.Module):
    """Sinusoidal embedding followed by a two-layer MLP: t (B,) -> (B, dim)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        self.dim = dim
        self.mlp = MLP((dim, hidden or 4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.dim)  # (B, dim), float32
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # in the weights' dtype


class MnistClassifier(nn.Module):
    """A small CNN for 28x28 digits: four 3x3 conv blocks, global average pooling, a linear head.

    The 128-dimensional pooled vector (:meth:`features`) is the feature space of the book's
    Frechet distance. About 140k parameters.

    Shapes: x (B, 1, 28, 28) in [0, 1] -> logits (B, 10).
    """

    feature_dim = 128

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),  # 14x14
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),  # 7x7
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, 128)."""
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected images of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        return self.body(x - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def __getattr__(name: str):
    """``nbutils.nn.UNet``: the small U-Net lives in :mod:`nbutils.unet` (its own module, which
    imports this one), and is reachable here too, where the package layout lists it."""
    if name == "UNet":
        from nbutils.unet import UNet

        return UNet
    raise AttributeError(f"module 'nbutils.nn' has no attribute {name!r}")
