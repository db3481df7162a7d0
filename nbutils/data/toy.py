"""Two-dimensional toy data sets, for pictures of densities, fields and trajectories.

Every function returns float32 points of shape (n, 2) inside roughly [-2.5, 2.5]^2 and takes an
optional CPU ``torch.Generator`` for reproducible draws.
"""

from __future__ import annotations

import math

import torch

from nbutils.tensors import check_count, generator_device


def _normal(n: int, generator, *shape) -> torch.Tensor:
    return torch.randn(n, *shape, generator=generator)


def _check(n, generator) -> None:
    """n must be a positive int and generator a CPU torch.Generator (or None)."""
    check_count(n, "n")
    generator_device(generator)  # raises a clear TypeError for anything but a Generator


def two_moons(n: int, noise: float = 0.05, generator: torch.Generator | None = None):
    """Two interleaved half circles, centred and scaled to about [-2, 2]^2. Returns (n, 2)."""
    _check(n, generator)
    angle = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(angle), 1.0 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
    return points + noise * 1.6 * _normal(n, generator, 2)


def eight_gaussians(
    n: int, radius: float = 2.0, std: float = 0.15, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Eight Gaussians evenly spaced on a circle of the given radius. Returns (n, 2)."""
    _check(n, generator)
    k = torch.randint(0, 8, (n,), generator=generator).float()
    centres = radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return centres + std * _normal(n, generator, 2)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard over [-2, 2]^2. Returns (n, 2)."""
    _check(n, generator)
    x = torch.rand(n, generator=generator) * 4 - 2
    row = torch.randint(0, 2, (n,), generator=generator).float() * 2
    y = torch.rand(n, generator=generator) - 2 + row + (torch.floor(x) % 2)
    return torch.stack([x, y], dim=1)


def spirals(n: int, noise: float = 0.05, generator: torch.Generator | None = None):
    """Two interleaved spirals inside about [-2, 2]^2. Returns (n, 2)."""
    _check(n, generator)
    r = torch.sqrt(torch.rand(n, generator=generator)) * 3 * math.pi
    arm = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    points = arm[:, None] * torch.stack([-torch.cos(r) * r, torch.sin(r) * r], 1) / (1.6 * math.pi)
    return points + noise * _normal(n, generator, 2)


#: The 2D toy sets by name, for loops in notebooks.
TOY_SETS = {
    "two moons": two_moons,
    "8 gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "spirals": spirals,
}
