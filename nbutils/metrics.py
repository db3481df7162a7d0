"""Units and scores: nats and bits per dimension, log-likelihoods of a whole data set computed
in chunks, accuracy, parameter counts, and the Frechet distance between two sets of feature
vectors.

Units. A likelihood model of binarized MNIST reports a negative log-likelihood in **nats per
image**. A model of 8-bit MNIST reports **bits per dimension**: nats per image divided by
``D ln 2`` with D = 784. Dequantized models put a density on [0, 1)^D; the 256-level image then
has probability at least ``p(x) / 256^D`` (see :func:`dequantized_bpd`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from nbutils.tensors import check_count, check_tensor


def bits_per_dim(nats: float | torch.Tensor, dims: int = 784):
    """Nats per example -> bits per dimension: ``nats / (dims * ln 2)``."""
    check_count(dims, "dims")
    return nats / (dims * math.log(2.0))


def nats_per_example(bpd: float | torch.Tensor, dims: int = 784):
    """Bits per dimension -> nats per example (the inverse of :func:`bits_per_dim`)."""
    check_count(dims, "dims")
    return bpd * dims * math.log(2.0)


def dequantized_bpd(log_prob_unit: torch.Tensor, dims: int = 784, levels: int = 256) -> float:
    """Bits per dimension of discrete data from a density on the unit cube.

    If ``x = (k + u) / levels`` with u ~ U[0, 1)^D, a density ``p`` on [0, 1)^D gives the
    discrete image the bound ``log P(k) >= E_u[log p(x)] - D log(levels)``. So

        bpd = (-mean(log p(x)) + D log(levels)) / (D ln 2).

    Args:
        log_prob_unit: (N,) log-densities in nats of dequantized points in [0, 1)^D.
    """
    check_tensor(log_prob_unit, "log_prob_unit (log-densities, one per example)", shape=("N",),
                 floating=True)  # fmt: skip
    check_count(dims, "dims")
    check_count(levels, "levels")
    nll = -log_prob_unit.double().mean().item() + dims * math.log(levels)
    return nll / (dims * math.log(2.0))


@torch.no_grad()
def log_likelihoods(
    log_prob: Callable,
    x: torch.Tensor,
    *,
    batch_size: int = 1000,
    device=None,
    progress: bool = False,
) -> torch.Tensor:
    """``log_prob`` of every example of a data set, computed in chunks without gradients.

    Args:
        log_prob: ``log_prob(x_chunk) -> (b,)``, e.g. ``model.log_prob``.
        x: (N, *) examples, on any device.
        batch_size: examples per chunk (memory, not the result, depends on it).
        device: where each chunk is evaluated (default: where ``x`` is).
        progress: show a ``tqdm.auto`` bar.

    Returns:
        (N,) log-likelihoods on the CPU, in the dtype ``log_prob`` returns.

    Example:
        >>> log_likelihoods(lambda v: -v.sum(1), torch.ones(5, 2), batch_size=2).tolist()
        [-2.0, -2.0, -2.0, -2.0, -2.0]
    """
    check_count(batch_size, "batch_size")
    chunks = x.split(batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, leave=False, desc="log-likelihoods")
    parts = []
    for chunk in chunks:
        out = log_prob(chunk if device is None else chunk.to(device))
        if out.shape != chunk.shape[:1]:
            raise ValueError(
                f"log_prob must return one value per example, shape ({len(chunk)},), "
                f"got {tuple(out.shape)}"
            )
        parts.append(out.cpu())
    return torch.cat(parts)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label. logits (N, K), labels (N,)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, K) and labels (N,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return (logits.argmax(1) == labels).double().mean().item()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"count_parameters needs a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), in float64."""
    x = torch.as_tensor(features).detach().cpu().double().numpy()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must have shape (N, F) with N >= 2, got {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet (2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    ``|mu_a - mu_b|^2 + tr(cov_a + cov_b - 2 (cov_a^1/2 cov_b cov_a^1/2)^1/2)``, computed
    with symmetric eigendecompositions in float64 (no complex square roots).
    """
    root_a = _sqrt_psd(cov_a)
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(middle, 0, None)).sum()
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F)."""
    return frechet_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))
