"""Closed forms that serve as ground truth in tests and 2D sections: the exact velocity of the
rectified-flow path (t = 0 data, t = 1 noise, ``x_t = (1 - t) x_0 + t x_1``) for Gaussian data
and for isotropic Gaussian mixtures, and the exact scores of the same data noised along any
path of :mod:`nbutils.paths` (chapter 04), and the exact noised density of a mixture (the
Gaussian convolution that solves the heat equation, chapter 06).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nbutils.tensors import check_tensor


def gaussian_velocity(mean: torch.Tensor, cov: torch.Tensor) -> Callable:
    """Exact velocity ``E[x_1 - x_0 | x_t = x]`` for data N(mean, cov) and noise N(0, I).

    With ``m_t = (1 - t) mean`` and ``C_t = (1 - t)^2 cov + t^2 I``,
    ``v(x, t) = -mean + (t I - (1 - t) cov) C_t^{-1} (x - m_t)``.

    Args:
        mean: (D,); cov: (D, D) symmetric positive definite.

    Returns:
        ``v(x, t)`` for x (B, D), t (B,), in the dtype of ``mean``.
    """
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}), got {tuple(cov.shape)}")
    eye = torch.eye(d, dtype=mean.dtype, device=mean.device)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        times, index = torch.unique(t.to(mean.dtype), return_inverse=True)  # samplers: one time
        s = times[:, None, None]  # (U, 1, 1)
        c_t = (1 - s) ** 2 * cov + s**2 * eye  # (U, D, D)
        gain = torch.linalg.solve(c_t, s * eye - (1 - s) * cov, left=False)  # K_t C_t^-1
        centred = x.to(mean.dtype) - (1 - times[index, None]) * mean  # (B, D)
        return (-mean + (gain[index] @ centred[..., None])[..., 0]).to(x.dtype)  # (B, D)

    return v


def _mixture_log_weights(means: torch.Tensor, std, weights) -> torch.Tensor:
    """Check a mixture's means (K, D), std and weights (K,); return the log-weights (K,)."""
    check_tensor(means, "means (component means)", shape=("K", "D"), floating=True, finite=True)
    if not (isinstance(std, (int, float)) and std >= 0 and math.isfinite(std)):
        raise ValueError(f"std must be a number >= 0, got {std!r}")
    k = means.shape[0]
    w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights)
    if w.shape != (k,) or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-4:
        raise ValueError(f"weights must be {k} non-negative numbers summing to 1, got {w.tolist()}")
    return w.to(means).log()


def gaussian_mixture_velocity(means: torch.Tensor, std: float, weights=None) -> Callable:
    """Exact velocity for data = a mixture of N(mean_k, std^2 I) and noise N(0, I).

    Per component, ``x_t ~ N((1 - t) mean_k, c_t I)`` with ``c_t = (1 - t)^2 std^2 + t^2`` and
    ``E[x_1 - x_0 | x_t, k] = -mean_k + (t - (1 - t) std^2) / c_t (x - (1 - t) mean_k)``; the
    marginal velocity averages these with the posterior weights of the components.

    Args:
        means: (K, D) component means; std: component standard deviation; weights: (K,)
            mixture weights (default uniform).

    Returns:
        ``v(x, t)`` for x (B, D), t (B,) with t < 1 or std > 0.
    """
    log_w = _mixture_log_weights(means, std, weights)  # (K,)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = t.to(means.dtype)[:, None, None]  # (B, 1, 1)
        c_t = (1 - s) ** 2 * std**2 + s**2  # (B, 1, 1)
        diff = x.to(means.dtype)[:, None, :] - (1 - s) * means  # (B, K, D)
        logits = log_w - 0.5 * diff.pow(2).sum(-1) / c_t[..., 0]  # (B, K) up to a constant
        post = torch.softmax(logits, dim=1)[..., None]  # (B, K, 1)
        cond = -means + (s - (1 - s) * std**2) / c_t * diff  # (B, K, D)
        return (post * cond).sum(1).to(x.dtype)  # (B, D)

    return v


def _path_coefficients(schedule, t: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    t = t.to(torch.float64)
    return schedule.alpha(t).to(dtype), schedule.sigma(t).to(dtype)


def gaussian_score(mean: torch.Tensor, cov: torch.Tensor, schedule) -> Callable:
    """Exact score of data N(mean, cov) noised along ``schedule``: x_t ~ N(alpha mean,
    alpha^2 cov + sigma^2 I), so ``s(x, t) = -(alpha^2 cov + sigma^2 I)^{-1} (x - alpha mean)``.

    Args:
        mean: (D,); cov: (D, D) symmetric positive definite (or positive semi-definite with
            sigma(t) > 0); schedule: a :class:`~nbutils.paths.Schedule`.

    Returns:
        ``score(x, t)`` for x (B, D), t (B,).
    """
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}), got {tuple(cov.shape)}")
    eye = torch.eye(d, dtype=mean.dtype, device=mean.device)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = _path_coefficients(schedule, t, mean.dtype)  # (B,)
        c_t = alpha[:, None, None] ** 2 * cov + sigma[:, None, None] ** 2 * eye  # (B, D, D)
        centred = x.to(mean.dtype) - alpha[:, None] * mean  # (B, D)
        return -torch.linalg.solve(c_t, centred).to(x.dtype)  # (B, D)

    return score


def gaussian_mixture_score(means: torch.Tensor, std: float, schedule, weights=None) -> Callable:
    """Exact score of a mixture of N(mean_k, std^2 I) noised along ``schedule``.

    Per component x_t ~ N(alpha mean_k, c_t I) with ``c_t = alpha^2 std^2 + sigma^2``; the
    score is the posterior-weighted average of the components' scores
    ``-(x - alpha mean_k) / c_t``.

    Args:
        means: (K, D); std: component standard deviation; schedule: a path of
            :mod:`nbutils.paths`; weights: (K,) mixture weights (default uniform).

    Returns:
        ``score(x, t)`` for x (B, D), t (B,) (c_t must be positive).
    """
    log_w = _mixture_log_weights(means, std, weights)  # (K,)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = _path_coefficients(schedule, t, means.dtype)
        c_t = (alpha**2 * std**2 + sigma**2)[:, None, None]  # (B, 1, 1)
        diff = x.to(means.dtype)[:, None, :] - alpha[:, None, None] * means  # (B, K, D)
        logits = log_w - 0.5 * diff.pow(2).sum(-1) / c_t[..., 0]  # (B, K), up to a constant
        post = torch.softmax(logits, dim=1)[..., None]  # (B, K, 1)
        return (post * -diff / c_t).sum(1).to(x.dtype)  # (B, D)

    return score


def gaussian_mixture_log_density(means: torch.Tensor, std: float, schedule,
                                 weights=None) -> Callable:  # fmt: skip
    """Exact log p_t of a mixture of N(mean_k, std^2 I) noised along ``schedule``.

    ``p_t`` is the data density scaled by alpha(t) and convolved with N(0, sigma(t)^2 I):
    ``p_t(x) = sum_k w_k N(x; alpha mean_k, (alpha^2 std^2 + sigma^2) I)``. For a VE path
    (alpha = 1) it solves the heat equation ``dp/dt = (1/2) (d sigma^2 / dt) Laplacian p``
    (note 06); its gradient is :func:`gaussian_mixture_score`.

    Args:
        means: (K, D); std: component standard deviation; schedule: a path of
            :mod:`nbutils.paths`; weights: (K,) (default uniform).

    Returns:
        ``log_density(x, t)`` for x (B, D), t (B,) -> (B,), in the dtype of ``means``.
    """
    log_w = _mixture_log_weights(means, std, weights)  # (K,)
    d = means.shape[1]

    def log_density(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = _path_coefficients(schedule, t, means.dtype)
        c_t = (alpha**2 * std**2 + sigma**2)[:, None]  # (B, 1)
        diff = x.to(means.dtype)[:, None, :] - alpha[:, None, None] * means  # (B, K, D)
        log_n = -0.5 * diff.pow(2).sum(-1) / c_t - 0.5 * d * torch.log(2 * math.pi * c_t)
        return torch.logsumexp(log_w + log_n, dim=1)  # (B,)

    return log_density
