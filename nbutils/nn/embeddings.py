"""Embeddings of the things a network is conditioned on: time and class labels.

* :func:`sinusoidal_embedding` / :class:`TimeMLP`: the Transformer / DDPM code of a time, for
  the image networks (U-Net, and the transformer of chapter 08);
* :class:`FourierFeatures`: ``[t, cos(k pi t), sin(k pi t)]``, smooth at the scale of the small
  MLPs of the 2D sections;
* :class:`ClassEmbedding`: a table of label vectors, optionally with a "no label" row for
  classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbutils.tensors import check_tensor


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of times in [0, 1] (scaled by 1000, as in DDPM / the Transformer).

    Args:
        t: (B,) times.
        dim: embedding size (even).

    Returns:
        (B, dim): ``[cos(1000 t w_k), sin(1000 t w_k)]`` with geometric frequencies w_k.

    Example:
        >>> sinusoidal_embedding(torch.zeros(2), 4)
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.]])
    """
    check_tensor(t, "t", shape=("B",))
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
        self.dim, hidden = dim, hidden or 4 * dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(t, self.dim)  # (B, dim), float32
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # in the weights' dtype


class FourierFeatures(nn.Module):
    """Time features ``[t, cos(k pi t), sin(k pi t)]`` for k = 1..n_freq: t (B,) -> (B, 1 + 2n).

    The frequencies are a non-persistent buffer (nothing to save); the features take the
    dtype of ``like`` when given (the dtype of the data they are concatenated with).
    """

    def __init__(self, n_freq: int = 8):
        super().__init__()
        if n_freq < 0:
            raise ValueError(f"n_freq must be >= 0, got {n_freq}")
        self.register_buffer("freqs", math.pi * torch.arange(1, n_freq + 1.0), persistent=False)

    @property
    def dim(self) -> int:
        return 1 + 2 * len(self.freqs)

    def forward(self, t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(t, "t", shape=("B",))
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        t = t.to(dtype)[:, None]  # (B, 1)
        angles = t * self.freqs.to(dtype)  # (B, n_freq)
        return torch.cat([t, angles.cos(), angles.sin()], dim=1)  # (B, 1 + 2 n_freq)


class ClassEmbedding(nn.Embedding):
    """Label vectors: y (B,) int64 in [0, num_classes) -> (B, dim).

    With ``null=True`` the table has one more row, index ``num_classes``, that stands for "no
    label": ``forward(None, batch=B)`` returns it B times, and classifier-free guidance trains
    with it in place of a dropped label. ``zero_init=True`` starts every vector at zero (for an
    additive label term that at first changes nothing).

    Args:
        num_classes: number of labels K.
        dim: size of each vector.
        null: add the "no label" row.
        zero_init: start the table at zero.
    """

    def __init__(self, num_classes: int, dim: int, *, null: bool = False, zero_init=False):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        super().__init__(num_classes + int(null), dim)
        self.num_classes, self.null = int(num_classes), bool(null)
        if zero_init:
            nn.init.zeros_(self.weight)

    @property
    def null_index(self) -> int:
        """The row of "no label" (only with ``null=True``)."""
        if not self.null:
            raise ValueError("this ClassEmbedding has no null row (null=False)")
        return self.num_classes

    def forward(
        self, y: torch.Tensor | None, batch: int | None = None, *, validate: bool = True
    ) -> torch.Tensor:
        """Vectors of the labels y (B,); ``y=None`` gives the null row ``batch`` times.

        ``validate=False`` skips the range check (two GPU synchronisations) for labels that
        the caller has checked already."""
        if y is None:
            if batch is None:
                raise ValueError("y=None needs batch=B, the number of null labels")
            y = torch.full((batch,), self.null_index, dtype=torch.long, device=self.weight.device)
        if not validate:
            return super().forward(y)
        check_tensor(y, "y", dtype=torch.long, shape=("B",))
        top = self.num_classes + int(self.null)
        if y.numel() and (y.min() < 0 or y.max() >= top):
            null = f" ({self.num_classes} = no label)" if self.null else ""
            raise ValueError(
                f"labels must lie in [0, {top - 1}]{null}, got [{int(y.min())}, {int(y.max())}]"
            )
        return super().forward(y)
