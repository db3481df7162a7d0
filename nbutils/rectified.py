"""Rectified flow: the flow-matching loss, time samplers, reflow pairs, one-step distillation
and the straightness of a flow.

Convention of the book (t = 0 data, t = 1 noise)::

    x_t = (1 - t) x_0 + t x_1,   x_0 ~ data,  x_1 ~ N(0, I),   target  dx_t/dt = x_1 - x_0.

The network ``v(x_t, t)`` learns ``E[x_1 - x_0 | x_t]``; samples come from integrating
``dx/dt = v`` from t = 1 (noise) down to t = 0 (data), see :mod:`nbutils.samplers`.
Liu, Gong & Liu (ICLR 2023) write the same thing with time reversed: their X_0 is noise, X_1 is
data and X_t = t X_1 + (1 - t) X_0, so their time s is our 1 - t and their velocity is ours
with the sign flipped.

Closed-form velocities for Gaussian data (:func:`gaussian_velocity`) and isotropic Gaussian
mixtures (:func:`gaussian_mixture_velocity`) serve as ground truth in tests and notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from nbutils.nn import MLP, append_dims
from nbutils.samplers import check_grid, euler

# ----------------------------------------------------------------------------- path and times


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path ``x_t = (1 - t) x_0 + t x_1``: x0, x1 (B, *), t (B,) -> (B, *)."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have one shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
    if t.shape != x0.shape[:1]:
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError(f"t must lie in [0, 1], got [{t.min():.3g}, {t.max():.3g}]")
    t = append_dims(t, x0.dim()).to(x0.dtype)  # (B, 1, ..., 1)
    return (1 - t) * x0 + t * x1


def uniform_times(n: int, *, device=None, generator: torch.Generator | None = None):
    """n times drawn uniformly from [0, 1]: (n,)."""
    return torch.rand(n, device=device, generator=generator)


def logit_normal_times(
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    *,
    device=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """n times ``sigmoid(m + s * eps)``, eps ~ N(0, 1): more weight on the middle of the path
    (the SD3 choice for ``mean=0, std=1``). Returns (n,)."""
    eps = torch.randn(n, device=device, generator=generator)
    return torch.sigmoid(mean + std * eps)


class VelocityMLP(nn.Module):
    """A velocity network for vectors (2D toy data): an MLP on ``[x, features(t)]``.

    The time features are ``t`` and ``cos(k pi t), sin(k pi t)`` for k = 1..n_freq: smooth in
    t at the scale of a toy problem.

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
        self.register_buffer("freqs", math.pi * torch.arange(1, n_freq + 1.0), persistent=False)
        self.net = MLP((dim + 1 + 2 * n_freq, *[hidden] * layers, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim or t.shape != x.shape[:1]:
            raise ValueError(
                f"expected x (B, {self.dim}) and t (B,), got {tuple(x.shape)} and {tuple(t.shape)}"
            )
        angles = t.to(x.dtype)[:, None] * self.freqs.to(x.dtype)  # (B, n_freq)
        features = [x, t.to(x.dtype)[:, None], angles.cos(), angles.sin()]
        return self.net(torch.cat(features, dim=1))  # (B, D)


# ----------------------------------------------------------------------------- objectives


def _split_pair(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch is data x0 (B, *) - noise is then drawn fresh - or a coupled pair (x0, x1)."""
    if isinstance(batch, torch.Tensor):
        return batch, torch.randn_like(batch)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x0, x1 = batch
        if x0.shape != x1.shape:
            raise ValueError(f"pair shapes differ: x0 {tuple(x0.shape)}, x1 {tuple(x1.shape)}")
        return x0, x1
    raise ValueError(
        "a batch must be data x0 (B, *) or a pair (x0, x1) of equal shapes, "
        f"got {type(batch).__name__}"
    )


def flow_matching_loss(model: Callable, batch, *, time_sampler: Callable = uniform_times):
    """Flow-matching (rectified-flow) loss ``E_t E ||(x_1 - x_0) - v(x_t, t)||^2``.

    The squared error is averaged over the batch and over dimensions (so its scale does not
    depend on the image size); its minimiser over all functions is ``E[x_1 - x_0 | x_t]``.

    Args:
        model: velocity network ``model(x, t)``, t (B,).
        batch: data x0 (B, *), paired with fresh Gaussian noise (independent coupling: the
            1-rectified flow), or a pair ``(x0, x1)`` from a given coupling (reflow).
        time_sampler: ``time_sampler(n, device=) -> (n,)`` times in [0, 1].

    Returns:
        scalar loss.
    """
    x0, x1 = _split_pair(batch)
    t = time_sampler(x0.shape[0], device=x0.device)  # (B,)
    x_t = interpolate(x0, x1, t)
    return (model(x_t, t.to(x0.dtype)) - (x1 - x0)).pow(2).mean()


def distillation_loss(model: Callable, batch) -> torch.Tensor:
    """One-step distillation: ``E ||x_0 - (x_1 - v(x_1, 1))||^2`` on pairs of a teacher flow.

    ``x_1 - v(x_1, 1)`` is one Euler step from t = 1 to t = 0, so a model trained on this loss
    is a one-step generator; it is the flow-matching loss with t fixed at 1. The paper uses
    LPIPS for images; this is the L2 version, averaged over batch and dimensions.

    Args:
        batch: a pair ``(x0, x1)`` with ``x0`` the teacher's ODE solution from noise ``x1``.
    """
    if isinstance(batch, torch.Tensor):
        raise ValueError("distillation needs pairs (x0, x1) from a teacher flow, got one tensor")
    x0, x1 = _split_pair(batch)
    t = torch.ones(x1.shape[0], device=x1.device, dtype=x1.dtype)  # (B,)
    return (x1 - model(x1, t) - x0).pow(2).mean()


# ----------------------------------------------------------------------------- reflow


@torch.no_grad()
def reflow_pairs(
    model: Callable,
    noise: torch.Tensor,
    ts,
    *,
    sampler: Callable = euler,
    batch_size: int | None = None,
    progress: bool = False,
    **cond,
):
    """Couple noise with the data the flow makes of it: ``x0 = ODE_{1 -> 0}(x1)``.

    Training a new flow on these pairs (instead of independent ones) is *reflow*: the new
    coupling is deterministic and its paths cross less, so the next flow is straighter.

    Args:
        model: the current velocity network.
        noise: x1 (N, *) standard Gaussian draws (the caller seeds them).
        ts: decreasing grid from 1 to 0 for the sampler (e.g. ``time_grid(32)``).
        sampler: a fixed-grid sampler of :mod:`nbutils.samplers`.
        batch_size: solve this many at a time (default: all at once).
        progress: show a progress bar.

    Returns:
        ``(x0, x1)``: generated data (N, *) and the noise it came from (N, *).
    """
    ts = check_grid(ts)
    if ts[0] < ts[-1]:
        raise ValueError(f"reflow pairs are made from noise (t = 1) to data (t = 0), got {ts}")
    size = batch_size or noise.shape[0]
    chunks = range(0, noise.shape[0], size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="reflow pairs")
    x0 = torch.cat([sampler(model, noise[i : i + size], ts, **cond) for i in chunks])
    return x0, noise


def transport_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """Average squared distance ``E ||x_1 - x_0||^2`` of a coupling (summed over dimensions).

    Reflow never increases it for any convex cost (Liu et al., ICLR 2023)."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have one shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
    return (x1 - x0).flatten(1).pow(2).sum(1).mean().item()


@torch.no_grad()
def straightness(
    model: Callable, noise: torch.Tensor, ts, *, sampler: Callable = euler, callback=None, **cond
) -> float:
    """Straightness ``S = int_0^1 E ||(z_1 - z_0) - dz_t/dt||^2 dt`` of a flow (0 = straight).

    ``z`` are the flow's own trajectories from ``noise`` (t = 1) to t = 0, solved on the grid
    ``ts``; the integral is the sum over the steps of ``|dt|`` times the squared distance
    (summed over dimensions, averaged over the batch) between the step's slope ``v_i`` and
    the chord ``c = z_1 - z_0``. Liu et al. (ICLR 2023) define S the same way. Because the chord
    is the ``|dt|``-weighted sum of the slopes, ``S = E[sum_i |dt_i| ||v_i||^2 - ||c||^2]``,
    which is accumulated step by step (float64, memory of one batch).

    Args:
        model: velocity network.
        noise: (B, *) starting points at t = 1.
        ts: decreasing grid 1 -> 0 (many steps, e.g. ``time_grid(100)``).
        sampler: fixed-grid sampler whose callback reports each step's slope.
        callback: also called with every step (e.g. to keep the samples).
    """
    ts = check_grid(ts)
    if not (ts[0] == 1.0 and ts[-1] == 0.0):
        raise ValueError(f"straightness needs a grid from 1 to 0, got {ts[0]} -> {ts[-1]}")
    energy = torch.zeros(noise.shape[0], dtype=torch.float64, device=noise.device)  # (B,)

    def accumulate(step):
        dt = abs(ts[step["i"]] - ts[step["i"] + 1])
        energy.add_(dt * step["v"].flatten(1).double().pow(2).sum(1))
        if callback is not None:
            callback(step)

    z0 = sampler(model, noise, ts, callback=accumulate, **cond)
    chord = (noise - z0).flatten(1).double().pow(2).sum(1)  # ||z_1 - z_0||^2, (B,)
    return (energy - chord).mean().item()


# ----------------------------------------------------------------------------- closed forms


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
    k = means.shape[0]
    w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights)
    log_w = w.to(means).log()  # (K,)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = t.to(means.dtype)[:, None, None]  # (B, 1, 1)
        c_t = (1 - s) ** 2 * std**2 + s**2  # (B, 1, 1)
        diff = x.to(means.dtype)[:, None, :] - (1 - s) * means  # (B, K, D)
        logits = log_w - 0.5 * diff.pow(2).sum(-1) / c_t[..., 0]  # (B, K) up to a constant
        post = torch.softmax(logits, dim=1)[..., None]  # (B, K, 1)
        cond = -means + (s - (1 - s) * std**2) / c_t * diff  # (B, K, D)
        return (post * cond).sum(1).to(x.dtype)  # (B, D)

    return v
