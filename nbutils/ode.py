"""Diffusion as an ODE (chapter 06, package part): the probability-flow velocity of a network of
any parameterisation, the DDIM sampler, and bits per dimension of 8-bit images under any of the
book's continuous-time models.

For a Gaussian path ``x_t = alpha(t) x_0 + sigma(t) z`` the ODE

    dx/dt = v(x, t) = E[alpha'(t) x_0 + sigma'(t) z | x_t = x] = f(t) x - g(t)^2 s(x, t) / 2

has the marginals of the path at every t (the probability-flow ODE of the SDE of chapter 05;
the same field is the flow-matching velocity of chapter 07). Given a prediction of the noise,
of x_0 or of the score, ``Schedule.convert(..., target="velocity")`` computes it, so
:class:`ProbabilityFlow` is only that conversion around a network.

DDIM (Song, Meng & Ermon 2021) steps ``x -> alpha(t') x0_hat + sigma(t') z_hat``: in the
variables ``y = x / alpha`` and ``r = sigma / alpha`` the ODE reads ``dy/dr = z_hat``, and a
DDIM step is exactly one Euler step of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from nbutils.likelihood import ode_log_prob
from nbutils.metrics import dequantized_bpd
from nbutils.paths import KINDS, Schedule
from nbutils.runtime import Timer
from nbutils.samplers import check_grid, rk45
from nbutils.tensors import check_count, check_tensor, draw


class ProbabilityFlow(nn.Module):
    """The probability-flow velocity of a network that predicts ``kind`` on ``schedule``.

    Args:
        net: ``net(x, t) -> (B, *)``, a prediction of the noise, of x_0 or of the score.
        schedule: the path the network was trained on.
        kind: ``"noise"``, ``"x0"``, ``"score"`` or ``"velocity"``.

    Shapes: x (B, *), t (B,) -> (B, *).
    """

    def __init__(self, net: nn.Module, schedule: Schedule, kind: str = "noise"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.net, self.schedule, self.kind = net, schedule, kind

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = self.net(x, t)
        return self.schedule.convert(pred, x, t, source=self.kind, target="velocity")


@torch.no_grad()
def ddim(net: Callable, x: torch.Tensor, ts, *, schedule: Schedule, kind: str = "noise",
         callback=None) -> torch.Tensor:  # fmt: skip
    """Deterministic DDIM: ``x <- alpha(t') x0_hat + sigma(t') z_hat`` along a decreasing grid.

    Args:
        net: ``net(x, t)`` predicting ``kind``; x: (B, *) states at ``ts[0]``; ts: a decreasing
            grid in [0, 1] (e.g. ``time_grid(20, 1.0, 1e-3)``).
        callback: called after every step with ``{"i", "t", "x", "x0", "nfe"}``.

    Returns:
        (B, *) the states at ``ts[-1]``.
    """
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    grid = check_grid(ts)
    if grid[-1] > grid[0]:
        raise ValueError(f"the grid must decrease from noise (t = 1) to data (t = 0), got {grid}")
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        x0, z = schedule.x0_and_noise(net(x, tb), x, tb, kind)
        nxt = torch.tensor(t_next, dtype=torch.float64)
        x = float(schedule.alpha(nxt)) * x0 + float(schedule.sigma(nxt)) * z
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x, "x0": x0, "nfe": i + 1})
    return x


def gaussian_prior_log_prob(schedule: Schedule, t: float = 1.0) -> Callable:
    """log N(z; 0, sigma(t)^2 I) per example: the prior of a path at time t (data ignored,
    which is exact up to alpha(t) x_0, negligible at t = 1 for VP and for a large VE sigma)."""
    sigma = float(schedule.sigma(torch.tensor(t, dtype=torch.float64)))

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        d = z[0].numel()
        return -0.5 * z.flatten(1).square().sum(1) / sigma**2 - d * math.log(
            sigma * math.sqrt(2 * math.pi)
        )

    return log_prob


def symmetric_dequantized(k: torch.Tensor, generator=None, levels: int = 256) -> torch.Tensor:
    """Integer images k (B, *) in [0, levels) -> uniform dequantization in [-1, 1):
    ``2 (k + u) / levels - 1``. An image already in floats is refused (clear error)."""
    if isinstance(k, torch.Tensor) and k.is_floating_point():
        raise TypeError(
            f"k must hold integer grey levels, got a {k.dtype} tensor (range "
            f"[{k.min().item():.3g}, {k.max().item():.3g}]); pass the 8-bit images themselves, "
            "e.g. load_mnist(...)[0], not images already scaled"
        )
    check_tensor(k, "k (grey levels)", dtype=(torch.uint8, torch.int64, torch.int32))
    if k.numel() and (int(k.min()) < 0 or int(k.max()) >= levels):
        raise ValueError(
            f"grey levels must lie in [0, {levels - 1}], got [{int(k.min())}, {int(k.max())}]"
        )
    u = draw(torch.rand, k.shape, generator=generator, device=k.device)
    x = 2 * (k.float() + u) / levels - 1
    return x.clamp(max=torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item())  # < 1


def bits_per_dim(velocity: Callable, k: torch.Tensor, *, prior_log_prob: Callable,
                 t_min: float = 1e-5, probes: int | None = 1, generator=None,
                 **solver) -> tuple[float, torch.Tensor, int]:  # fmt: skip
    """Bits per dimension of 8-bit images under an ODE model on [-1, 1] data.

    The images are dequantized uniformly into [-1, 1), their log-density is integrated by
    :func:`nbutils.likelihood.ode_log_prob` from ``t_min`` to 1 (with ``probes`` Hutchinson
    probes, drawn once per solve, or the exact divergence for None), and the density on
    [-1, 1]^D is turned into one on the unit cube by the scaling's Jacobian, ``+ D log 2``:

        bpd = 8 - (log p(x) + D log 2) / (D ln 2) = 7 - log p(x) / (D ln 2).

    Args:
        velocity: ``velocity(x, t)``, e.g. a :class:`ProbabilityFlow` (in eval mode). For an
            ``nn.Module`` the images move to its device and to its dtype, at least float32;
            for a plain function pass ``k`` on the device it expects.
        k: (B, *) integer images.
        prior_log_prob: log-density at t = 1, e.g. :func:`gaussian_prior_log_prob`.
        t_min: where the integration starts (p_{t_min} stands for the data density).
        **solver: passed to :func:`~nbutils.likelihood.ode_log_prob`: the sampler's ``rtol``,
            ``atol``, and ``probe`` (``"rademacher"`` or ``"gaussian"``).

    Returns:
        ``(bits/dim of the batch, log p on the unit cube per image (B,), evaluations)``.
    """
    for name in ("ts", "sampler"):
        if name in solver:
            raise ValueError(f"bits_per_dim integrates from t_min to 1 with RK45; drop {name}=")
    x = symmetric_dequantized(k, generator)
    ref = next(velocity.parameters(), None) if isinstance(velocity, nn.Module) else None
    if ref is not None:
        x = x.to(device=ref.device, dtype=torch.promote_types(ref.dtype, torch.float32))
    else:
        x = x.to(torch.promote_types(torch.get_default_dtype(), torch.float32))
    out = ode_log_prob(velocity, x, prior_log_prob, ts=(t_min, 1.0), probes=probes,
                       generator=generator, **solver)  # fmt: skip
    d = x[0].numel()
    log_unit = out.log_prob + d * math.log(2.0)  # the [-1, 1] -> [0, 1] scaling's Jacobian
    return dequantized_bpd(log_unit, dims=d), log_unit, out.nfe


class BitsPerDim(NamedTuple):
    """What :func:`bpd` returns: bits/dim of the whole set, of each image (N,), the mean
    number of evaluations of the network per solve, and the wall time in seconds."""

    bpd: float
    per_image: torch.Tensor
    nfe: float
    seconds: float


def bpd(net: Callable, k: torch.Tensor, *, schedule: Schedule, kind: str = "noise",
        t_min: float = 1e-5, probes: int | None = 1, probe: str = "rademacher",
        batch_size: int = 500, seed: int = 0, progress: bool = True,
        **solver) -> BitsPerDim:  # fmt: skip
    """Bits per dimension of 8-bit images under any of the book's continuous-time models.

    The network's prediction (noise, x_0, score or velocity on ``schedule``) becomes the
    probability-flow velocity, the prior is ``N(0, sigma(1)^2 I)``, and each batch goes through
    :func:`bits_per_dim` (uniform dequantization into [-1, 1), RK45 from ``t_min`` to 1,
    Hutchinson probes drawn once per solve). One generator seeded with ``seed`` draws the
    dequantization noise and the probes, batch after batch, so the result is reproducible.

    Args:
        net: ``net(x, t)`` on [-1, 1] images, an ``nn.Module`` (its device and dtype are used).
        k: (N, C, H, W) integer images (uint8), e.g. ``load_mnist("test")[0][:, None]``.
        schedule, kind: what the network was trained on and predicts, e.g. ``VPSchedule()``
            and ``"noise"`` (chapter 05), ``RectifiedSchedule()`` and ``"velocity"`` (07).
        t_min: where the integration starts (Song et al. use 1e-5 on VP; 0 is fine for RF).
        probes: Hutchinson probes per solve (None: the exact divergence, D passes).
        probe: ``"rademacher"`` (random signs, the lower variance) or ``"gaussian"``.
        batch_size: images per solve (memory and the adaptive steps depend on it, not the
            expectation).
        **solver: ``rtol``, ``atol`` of :func:`~nbutils.samplers.rk45` (default 1e-5 each).

    Returns:
        :class:`BitsPerDim`.
    """
    check_count(batch_size, "batch_size")
    check_tensor(k, "k (8-bit images)", shape=("N", "*"))
    flow, prior = ProbabilityFlow(net, schedule, kind), gaussian_prior_log_prob(schedule)
    generator = torch.Generator().manual_seed(seed)
    chunks = k.split(batch_size)
    logs, evaluations, dims = [], [], k[0].numel()
    ref = next(flow.parameters(), None)
    with Timer(ref.device if ref is not None else None) as timer:
        for chunk in tqdm(chunks, desc="bits/dim", leave=False, disable=not progress):
            _, log_unit, nfe = bits_per_dim(
                flow, chunk, prior_log_prob=prior, t_min=t_min, probes=probes, probe=probe,
                generator=generator, **solver,
            )  # fmt: skip
            logs.append(log_unit.detach().double().cpu())
            evaluations.append(nfe)
    log_unit = torch.cat(logs)
    per_image = math.log2(256) - log_unit / (dims * math.log(2.0))
    total = dequantized_bpd(log_unit, dims=dims)
    return BitsPerDim(total, per_image, sum(evaluations) / len(evaluations), timer.seconds)


def _check_symmetric(x: torch.Tensor, name: str) -> None:
    check_tensor(x, name, shape=("B", "*"), floating=True, finite=True)
    low, high = x.min().item(), x.max().item()
    if low < -1.0 - 1e-6 or high > 1.0 + 1e-6:
        raise ValueError(
            f"{name} must hold images in [-1, 1], got values in [{low:.4g}, {high:.4g}]; "
            "scale 8-bit images with nbutils.data.symmetric (k / 127.5 - 1) first"
        )


def encode(velocity: Callable, x: torch.Tensor, *, t_min: float = 1e-3, **solver) -> torch.Tensor:
    """The deterministic encoder: images (B, *) in [-1, 1] at ``t_min`` -> latents at t = 1, by
    RK45 along the probability-flow ODE (``rtol``/``atol`` in ``solver``)."""
    _check_symmetric(x, "x")
    return rk45(velocity, x, (t_min, 1.0), **solver)


def decode(velocity: Callable, z: torch.Tensor, *, t_min: float = 1e-3, **solver) -> torch.Tensor:
    """The inverse of :func:`encode`: latents (B, *) at t = 1 -> images at ``t_min``."""
    check_tensor(z, "z", shape=("B", "*"), floating=True, finite=True)
    return rk45(velocity, z, (1.0, t_min), **solver)
