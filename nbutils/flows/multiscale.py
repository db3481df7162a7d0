"""The multiscale architecture of RealNVP and Glow: levels of flow steps, with half of the
channels factored out after each level.

After a level, half of its output channels are final: they go straight to the latent and
the next level works only on the other half. A level at a coarser scale therefore costs a
fraction of the first, and the factored variables model the fine detail while the ones that
go on model the shape. Every level's log-determinant adds to the total; the factored part's
density is the prior's, in the latent.

:class:`Multiscale` maps an image (C, H, W) to one flat latent (D,); :meth:`Multiscale.split`
cuts a latent into its levels (for resampling one level and keeping the others), and
:func:`multiscale` builds the architecture of chapter 03.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbutils.flows.base import Compose, Transform
from nbutils.flows.couplings import checkerboard_partition
from nbutils.flows.glow import ActNorm, Squeeze, affine, glow_step
from nbutils.tensors import check_tensor


class Multiscale(Transform):
    """Levels of transforms with a factor-out after each but the last; the latent is flat.

    Args:
        levels: transforms; level i + 1 takes the first ``C_i // 2`` channels of level i's
            output (C_i, H_i, W_i); the other channels are factored out.

    Shapes: (B, *event_shape) -> (B, D), D = prod(event_shape).
    """

    def __init__(self, *levels: Transform):
        if not levels:
            raise ValueError("Multiscale needs at least one level")
        for i, (a, b) in enumerate(zip(levels[:-1], levels[1:], strict=False)):
            c, *rest = a.out_shape
            kept = (c // 2, *rest)
            if c < 2 or b.event_shape != kept:
                raise ValueError(
                    f"level {i + 1} must take the {kept} channels that level {i} keeps (of its "
                    f"output {a.out_shape}), but expects {b.event_shape}"
                )
        self.sizes = [
            math.prod(t.out_shape) - math.prod(levels[i + 1].event_shape)
            if i + 1 < len(levels)
            else math.prod(t.out_shape)
            for i, t in enumerate(levels)
        ]  # latent entries that each level contributes
        super().__init__(levels[0].event_shape, (sum(self.sizes),))
        self.levels = nn.ModuleList(levels)

    def forward(self, x):
        check_tensor(x, "input of Multiscale", shape=("B", *self.event_shape))
        parts, logdet, h = [], self._zeros(x), x
        for i, level in enumerate(self.levels):
            h, ld = level(h)
            logdet = logdet + ld  # add: every level's volume change counts
            if i + 1 < len(self.levels):
                keep = h.shape[1] // 2
                parts.append(h[:, keep:].flatten(1))
                h = h[:, :keep]
        parts.append(h.flatten(1))
        return torch.cat(parts, 1), logdet

    def inverse(self, z):
        check_tensor(z, "input of Multiscale.inverse", shape=("B", *self.out_shape))
        parts = self.split(z)
        h = parts[-1].reshape(-1, *self.levels[-1].out_shape)
        h = self.levels[-1].inverse(h)
        for i in range(len(self.levels) - 2, -1, -1):
            c, *rest = self.levels[i].out_shape
            factored = parts[i].reshape(-1, c - c // 2, *rest)
            h = self.levels[i].inverse(torch.cat([h, factored], 1))
        return h

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Cut a latent (B, D) into the parts of each level: [(B, sizes[0]), ...]."""
        check_tensor(z, "latent", shape=("B", *self.out_shape))
        return list(z.split(self.sizes, dim=1))


def multiscale(
    event_shape=(1, 28, 28),
    *,
    levels: int = 2,
    checkerboard: int = 4,
    steps: int = 4,
    conditioner,
    lu: bool = True,
) -> Multiscale:
    """The chapter's multiscale flow (RealNVP's layout with Glow's steps).

    Level 0 works at full resolution: ``checkerboard`` affine couplings on alternating
    checkerboard masks (each after an :class:`ActNorm`), then a squeeze and ``steps`` Glow
    steps. Every later level starts with a squeeze of the channels it kept and runs ``steps``
    Glow steps. For MNIST, (1, 28, 28) -> (4, 14, 14), factor out 2 -> (8, 7, 7).

    Args:
        event_shape: (C, H, W); H and W must halve ``levels`` times.
        levels: number of scales.
        checkerboard: couplings at full resolution before the first squeeze.
        steps: Glow steps per level.
        conditioner: factory ``(in_shape, out_shape) -> nn.Module``, e.g.
            :func:`~nbutils.flows.glow.conv_conditioner`.
        lu: LU-parameterised 1x1 convolutions.
    """
    for name, value in {"levels": levels, "checkerboard": checkerboard, "steps": steps}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    shape, built = tuple(event_shape), []
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, int) for n in shape):
        raise ValueError(f"event_shape must be (C, H, W) of ints, got {event_shape!r}")
    if any(n % 2**levels for n in shape[1:]):
        raise ValueError(
            f"event_shape {shape}: H and W must halve {levels} times (divisible by "
            f"{2**levels}) for {levels} levels"
        )
    for level in range(levels):
        layers = []
        if level == 0:
            mask = checkerboard_partition(shape, flat=False)
            for i in range(checkerboard):
                layers += [ActNorm(shape), affine(mask.swapped() if i % 2 else mask, conditioner)]
        squeeze = Squeeze(shape)
        shape = squeeze.out_shape
        layers.append(squeeze)
        layers += [glow_step(shape, conditioner, swap=i % 2 == 1, lu=lu) for i in range(steps)]
        built.append(Compose(*layers))
        shape = (shape[0] // 2, *shape[1:])
    return Multiscale(*built)
