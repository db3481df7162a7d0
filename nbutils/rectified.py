"""Rectified flow: the flow-matching loss (also with labels and classifier-free guidance, for
chapter 08), reflow pairs, one-step distillation and the straightness of a flow. (The path and
its time densities are in :mod:`nbutils.paths`, the closed-form velocities in
:mod:`nbutils.analytic`, the 2D network is :class:`nbutils.nn.VelocityMLP`.)

Convention of the book (t = 0 data, t = 1 noise)::

    x_t = (1 - t) x_0 + t x_1,   x_0 ~ data,  x_1 ~ N(0, I),   target  dx_t/dt = x_1 - x_0.

The network ``v(x_t, t)`` learns ``E[x_1 - x_0 | x_t]``; samples come from integrating
``dx/dt = v`` from t = 1 (noise) down to t = 0 (data), see :mod:`nbutils.samplers`.
Liu, Gong & Liu (ICLR 2023) write the same thing with time reversed: their X_0 is noise, X_1 is
data and X_t = t X_1 + (1 - t) X_0, so their time s is our 1 - t and their velocity is ours
with the sign flipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nbutils.paths import RECTIFIED, Schedule, uniform_times
from nbutils.samplers import check_grid, euler
from nbutils.tensors import check_count, check_tensor

# ----------------------------------------------------------------------------- objectives


def _split_pair(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch is data x0 (B, *) - noise is then drawn fresh - or a coupled pair (x0, x1)."""
    if isinstance(batch, torch.Tensor):
        check_tensor(batch, "x0", floating=True)  # before drawing noise like it
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


def flow_matching_loss(
    model: Callable,
    batch,
    *,
    time_sampler: Callable = uniform_times,
    schedule: Schedule = RECTIFIED,
):
    """Flow-matching (rectified-flow) loss ``E_t E ||(x_1 - x_0) - v(x_t, t)||^2``.

    The squared error is averaged over the batch and over dimensions (so its scale does not
    depend on the image size); its minimiser over all functions is ``E[x_1 - x_0 | x_t]``.

    Args:
        model: velocity network ``model(x, t)``, t (B,).
        batch: data x0 (B, *), paired with fresh Gaussian noise (independent coupling: the
            1-rectified flow), or a pair ``(x0, x1)`` from a given coupling (reflow).
        time_sampler: ``time_sampler(n, device=) -> (n,)`` times in [0, 1].
        schedule: the path (default: the straight line; any :class:`nbutils.paths.Schedule`
            gives the flow-matching loss of that path, target ``alpha' x_0 + sigma' x_1``).

    Returns:
        scalar loss.
    """
    x0, x1 = _split_pair(batch)
    t = time_sampler(x0.shape[0], device=x0.device)  # (B,)
    x_t = schedule.interpolate(x0, x1, t)
    target = schedule.velocity(x0, x1, t)  # x1 - x0 on the straight line
    return (model(x_t, t.to(x0.dtype)) - target).pow(2).mean()


def label_flow_matching_loss(model: Callable, batch, *, null_index: int, drop: float = 0.1,
                             time_sampler: Callable = uniform_times) -> torch.Tensor:  # fmt: skip
    """The flow-matching loss of a class-conditional model, with label dropout for guidance.

    A fraction ``drop`` of the labels, chosen at random, is replaced by ``null_index`` ("no
    label"), so the one network also learns the unconditional velocity that classifier-free
    guidance needs (Ho & Salimans 2022).

    Args:
        model: ``model(x, t, y)`` with y (B,) labels in [0, null_index].
        batch: ``(x0, y)``: data (B, *) and labels (B,) int64; noise is drawn fresh.
        null_index: the label index that means "no label".
        drop: probability of dropping a label, in [0, 1].
        time_sampler: as in :func:`flow_matching_loss` (e.g. a density of
            :func:`nbutils.paths.time_sampler`).

    Returns:
        scalar loss.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"a batch must be a pair (images, labels), got {type(batch).__name__}")
    x0, y = batch
    check_tensor(x0, "x0", floating=True)
    check_tensor(y, "y (labels)", shape=(x0.shape[0],), dtype=torch.long)
    if not 0 <= drop <= 1:
        raise ValueError(f"drop must be a probability in [0, 1], got {drop}")
    dropped = torch.rand(y.shape, device=y.device) < drop
    y = torch.where(dropped, torch.full_like(y, null_index), y)
    return flow_matching_loss(lambda x, t: model(x, t, y), x0, time_sampler=time_sampler)


def guided(model: Callable, y: torch.Tensor, scale: float, *, null_index: int) -> Callable:
    """Classifier-free guidance: ``v = v(x, t, null) + scale (v(x, t, y) - v(x, t, null))``.

    ``scale = 0`` is the unconditional model, 1 the conditional one, larger values push the
    samples further towards their label. Both velocities come from one call on a doubled batch.

    Args:
        model: ``model(x, t, y)``; y: (B,) the labels of the batch to sample.

    Returns:
        ``velocity(x, t)`` for x (B, *), t (B,), for any sampler of :mod:`nbutils.samplers`.
    """
    check_tensor(y, "y (labels)", shape=("B",), dtype=torch.long)
    null = torch.full_like(y, null_index)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    return velocity


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
    check_tensor(noise, "noise", shape=("N", "*"), floating=True, finite=True)
    size = noise.shape[0] if batch_size is None else check_count(batch_size, "batch_size")
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
