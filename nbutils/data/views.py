"""Views of MNIST that the models see: [0, 1], [-1, 1], binarized, dequantized, and the fixed
binarized test set every likelihood chapter scores on.

All take uint8 images (N, 28, 28) or (N, 1, 28, 28) and return float32 (N, 1, 28, 28).
"""

from __future__ import annotations

import numpy as np
import torch

from nbutils.data.mnist import load_mnist
from nbutils.tensors import check_tensor


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    """uint8 MNIST pixels (0..255) of shape (N, 28, 28) or (N, 1, 28, 28)."""
    check_tensor(images, f"{name} (uint8 MNIST pixels, 0..255)", dtype=torch.uint8)
    if tuple(images.shape[1:]) not in ((28, 28), (1, 28, 28)):
        raise ValueError(
            f"{name} must have shape (N, 28, 28) or (N, 1, 28, 28), got {tuple(images.shape)}"
        )


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) -> (N, 1, 28, 28)."""
    return images if images.dim() == 4 else images.unsqueeze(1)


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, [1,] 28, 28) -> uint8 (N, 1, 28, 28): the grey levels 0..255 themselves."""
    _check_images(images)
    return _as_batch(images)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, [1,] 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] (k / 255)."""
    _check_images(images)
    return _as_batch(images).float() / 255.0


def to_symmetric(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, [1,] 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return to_unit(images) * 2.0 - 1.0


def from_symmetric(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (model samples) -> float in [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: pixel k becomes 1 with probability k / 255 (fresh each call).

    Args:
        images: uint8 (N, [1,] 28, 28).
        generator: a torch generator on the images' device, for reproducible draws.

    Returns:
        float32 (N, 1, 28, 28) with values in {0, 1}.
    """
    return torch.bernoulli(to_unit(images), generator=generator)


def fixed_binarized_test(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed binarization of the 10,000 test images, the same on every machine.

    Drawn with NumPy's PCG64 stream (stable across versions), so that test NLLs of every
    chapter and every run are measured on identical binary images.

    Returns:
        images: float32 (10000, 1, 28, 28) in {0, 1}; labels: int64 (10000,).
    """
    images, labels = load_mnist("test")
    uniform = np.random.default_rng(seed).random(images.shape, dtype=np.float64)
    binary = (uniform < images.numpy() / 255.0).astype(np.float32)
    return torch.from_numpy(binary).unsqueeze(1), labels


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization: pixel k becomes (k + u) / 256 with u ~ U[0, 1).

    A density on [0, 1)^D of these values lower-bounds the probability of the 256-level image:
    log P(k) >= E_u[log p((k + u) / 256)] - D log 256 (see :func:`nbutils.metrics.dequantized_bpd`).

    Returns:
        float32 (N, 1, 28, 28) in [0, 1).
    """
    _check_images(images)
    x = _as_batch(images).float()
    u = torch.rand(x.shape, generator=generator, device=x.device)
    y = (x + u) / 256.0
    # k + u can round up to k + 1 in float32: keep every value strictly inside its own bin
    top = torch.nextafter((x + 1.0) / 256.0, torch.zeros_like(x))
    return torch.minimum(y, top)
