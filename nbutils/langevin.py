"""Langevin samplers for score fields: plain Langevin dynamics at one noise level, annealed
Langevin over a decreasing sequence of levels (NCSN, Song & Ermon 2019), and Tweedie's
denoising step (chapters 04 and 05).

Langevin dynamics with step ``eps``,

    x <- x + eps * s(x) + sqrt(2 eps) z,     z ~ N(0, I),

has the density whose score is ``s`` as its stationary distribution as ``eps -> 0`` and the
number of steps grows. The score model is called like every time-dependent network of the
book, ``score(x, t)`` with ``t`` (B,) in [0, 1], t = 0 data and t = 1 noise, and returns
``grad_x log p_t(x)``. A noise **level** is a time of the schedule (:mod:`nbutils.paths`).

The samplers follow the book's sampler contract ``sampler(score, x, ts, *, callback=None,
...) -> x`` with a decreasing grid of levels ``ts``; the callback sees every step as the dict
``{"i", "t", "x", "step_size", "nfe"}``. Randomness comes from ``generator`` (drawn on its own
device, then moved).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nbutils.samplers import check_grid, velocity  # velocity: a field at one time, checked
from nbutils.tensors import check_count, check_tensor, draw


def _check_step(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


@torch.no_grad()
def langevin(
    score: Callable,
    x: torch.Tensor,
    t: float,
    *,
    step: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    """Plain (unadjusted) Langevin dynamics at one level ``t`` for ``n_steps`` steps.

    Args:
        score: ``score(x, t) -> (B, *)``.
        x: (B, *) starting points.
        t: the level whose score is followed (e.g. the smallest noise level).
        step: the step size eps.
        n_steps: number of steps.
        generator: for the noise.
        callback: called after every step.

    Returns:
        (B, *) the final states.
    """
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    step, n_steps = _check_step(step, "step"), check_count(n_steps, "n_steps")
    if not 0 <= t <= 1:
        raise ValueError(f"t must be a level (time) in [0, 1], got {t}")
    for i in range(n_steps):
        z = draw(torch.randn, x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + step * velocity(score, x, t) + math.sqrt(2 * step) * z
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "step_size": step, "nfe": i + 1})
    return x


def ncsn_step_sizes(sigmas: torch.Tensor, eps: float) -> torch.Tensor:
    """NCSN's rule: ``step_i = eps * sigma_i^2 / sigma_L^2`` with sigma_L the smallest level.

    The step shrinks with the noise level so that the signal-to-noise ratio of every update,
    ``eps_i |s| / sqrt(2 eps_i)``, is about the same at every level (``|s| ~ 1 / sigma_i``).
    """
    check_tensor(sigmas, "sigmas", shape=("L",), floating=True, finite=True)
    if (sigmas <= 0).any():
        raise ValueError(f"noise levels must be positive, got min {sigmas.min().item():.3g}")
    return _check_step(eps, "eps") * (sigmas / sigmas.min()) ** 2


@torch.no_grad()
def annealed_langevin(
    score: Callable,
    x: torch.Tensor,
    ts,
    *,
    sigma: Callable,
    steps_per_level: int,
    eps: float | None = None,
    snr: float | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    """Annealed Langevin dynamics: ``steps_per_level`` Langevin steps at each level of ``ts``,
    from the largest noise to the smallest, then (optionally) Tweedie's denoising step.

    Args:
        score: ``score(x, t) -> (B, *)``.
        x: (B, *) starting points, e.g. ``sigma(1) * N(0, I)`` for a VE schedule.
        ts: strictly decreasing levels (times) in [0, 1], e.g. ``time_grid(L - 1)``.
        sigma: the noise scale of a level, ``sigma(t_tensor) -> tensor`` (e.g.
            ``VESchedule().sigma``).
        steps_per_level: Langevin steps at each level.
        eps: NCSN's step rule, ``step_i = eps sigma_i^2 / sigma_min^2`` (see
            :func:`ncsn_step_sizes`). Give ``eps`` or ``snr``, not both.
        snr: the predictor-corrector rule of Song et al. (2021): at every step
            ``step = 2 (snr |z| / |s|)^2``, norms per example averaged over the batch.
        denoise: end with ``x + sigma_min^2 s(x, t_min)`` (Tweedie: the posterior mean of the
            clean data; the final denoising step of Jolicoeur-Martineau et al. 2021, adopted
            by NCSNv2). This form holds for a VE path (alpha = 1); for a path with alpha < 1
            divide by alpha, or pass ``denoise=False``.
        generator: for the noise.
        callback: called after every step (the dict of the module docstring).

    Returns:
        (B, *) samples.
    """
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    levels = check_grid(ts)
    if levels[-1] > levels[0]:
        raise ValueError(f"levels must decrease from noise to data, got {levels}")
    check_count(steps_per_level, "steps_per_level")
    if (eps is None) == (snr is None):
        raise ValueError("give exactly one of eps (NCSN's step rule) or snr (the PC rule)")
    sigmas = sigma(torch.tensor(levels, dtype=torch.float64))
    steps = ncsn_step_sizes(sigmas, eps) if eps is not None else None
    snr = _check_step(snr, "snr") if snr is not None else None
    nfe = 0
    for i, t in enumerate(levels):
        for _ in range(steps_per_level):
            fixed = float(steps[i]) if steps is not None else None
            x, step = langevin_step(score, x, t, step=fixed, snr=snr, generator=generator)
            nfe += 1
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "step_size": step, "nfe": nfe})
    if denoise:
        x = tweedie(score, x, levels[-1], float(sigmas[-1]))
    return x


def langevin_step(
    score: Callable,
    x: torch.Tensor,
    t: float,
    *,
    step: float | None = None,
    snr: float | None = None,
    generator=None,
) -> tuple[torch.Tensor, float]:
    """One Langevin step at level t with a given ``step`` or the snr rule; returns
    ``(x_new, step_used)``. The corrector of the predictor-corrector samplers (chapter 05).

    The snr rule: ``step = 2 (snr |z| / |s|)^2`` with the norms per example averaged over the
    batch (Song et al. 2021), so that the drift is ``snr`` times the size of the noise.
    """
    z = draw(torch.randn, x.shape, generator=generator, device=x.device, dtype=x.dtype)
    s = velocity(score, x, t)
    if step is None:
        score_norm = s.flatten(1).norm(dim=1).mean()
        noise_norm = z.flatten(1).norm(dim=1).mean()
        step = float(2 * (snr * noise_norm / score_norm.clamp_min(1e-12)) ** 2)
    return x + step * s + math.sqrt(2 * step) * z, step


@torch.no_grad()
def tweedie(score: Callable, x: torch.Tensor, t: float, sigma: float) -> torch.Tensor:
    """Tweedie's formula for ``x = x_0 + sigma z``: ``E[x_0 | x] = x + sigma^2 s(x, t)`` (a VE
    path, alpha = 1; with alpha < 1 the posterior mean is that divided by alpha).

    Args:
        score: ``score(x, t) -> (B, *)``, the score of the noised density at level t.
        x: (B, *) noisy points; t: their level; sigma: its noise scale.
    """
    check_tensor(x, "x", shape=("B", "*"), floating=True)
    sigma = _check_step(sigma, "sigma")
    return x + sigma**2 * velocity(score, x, t)
