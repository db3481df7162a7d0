"""Diffusion as a stochastic differential equation (chapter 05): the forward SDE of a path of
:mod:`nbutils.paths`, its reverse in time, the noise-prediction loss, and the SDE samplers
(Euler-Maruyama, predictor-corrector, DDPM ancestral).

A path ``x_t = alpha(t) x_0 + sigma(t) z`` (t = 0 data, t = 1 noise) is the marginal law of the
linear SDE

    dx = f(t) x dt + g(t) dw,    f = alpha' / alpha,    g^2 = (sigma^2)' - 2 f sigma^2,

(the mean obeys m' = f m and the variance v' = 2 f v + g^2). VE: ``f = 0``, ``g^2 =
(sigma^2)'``; VP: ``f = -beta / 2``, ``g^2 = beta``; sub-VP: ``g^2 = beta (1 - alpha^4)``.
Its reverse in time (Anderson 1982) runs from t = 1 to t = 0,

    dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar,

and needs only the score of the marginals, which a score model learns.

Samplers take ``score(x, t) -> (B, *)`` (t (B,)), a decreasing time grid ``ts`` from the
prior's time to the data's, and ``generator=`` for reproducible noise; the callback sees each
step as ``{"i", "t", "x", "nfe"}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nbutils.langevin import langevin_step
from nbutils.paths import Schedule, uniform_times
from nbutils.samplers import check_grid, velocity
from nbutils.tensors import append_dims, check_like, check_tensor, draw


class SDE:
    """The forward SDE whose marginals are those of ``schedule``.

    Args:
        schedule: a :class:`~nbutils.paths.Schedule` (VE, VP, sub-VP, ...).
    """

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def __repr__(self) -> str:
        return f"SDE({type(self.schedule).__name__})"

    def _times(self, t) -> torch.Tensor:
        """t as float64, refused outside [0, 1] (the path is defined there only) or NaN."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if not bool(((t >= 0) & (t <= 1)).all()):  # NaN fails both comparisons
            bad = t[~((t >= 0) & (t <= 1))].flatten()[:3].tolist()
            raise ValueError(f"times must lie in [0, 1] (t = 0 data, t = 1 noise), got {bad}")
        return t

    def f(self, t) -> torch.Tensor:
        """Drift coefficient ``alpha' / alpha`` (the drift is ``f(t) x``)."""
        t = self._times(t)
        return self.schedule.d_alpha(t) / self.schedule.alpha(t)

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion coefficient ``(sigma^2)' - 2 f sigma^2``."""
        t = self._times(t)
        return self.schedule.d_sigma2(t) - 2 * self.f(t) * self.schedule.sigma(t) ** 2

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``alpha(t) x_0`` (B, *) and standard deviation ``sigma(t)`` (B, 1, ..., 1)."""
        check_tensor(x0, "x0", shape=("B", "*"), floating=True)
        check_tensor(t, "t", shape=("B",), sizes={"B": x0.shape[0]})
        tt = append_dims(self._times(t), x0.dim())
        alpha, sigma = self.schedule.alpha(tt), self.schedule.sigma(tt)
        return alpha.to(x0.dtype) * x0, sigma.to(x0.dtype)

    def prior_sample(self, shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        """Draw from N(0, sigma(1)^2 I): the law of x_1 up to alpha(1) x_0, which vanishes for
        VP and sub-VP (alpha(1) ~ 0.007) and is negligible for VE when sigma_max is large."""
        sigma = float(self.schedule.sigma(torch.tensor(1.0, dtype=torch.float64)))
        return sigma * draw(torch.randn, shape, generator=generator, device=device, dtype=dtype)

    def reverse_drift(self, score: Callable, x: torch.Tensor, t: float) -> torch.Tensor:
        """``f(t) x - g(t)^2 s(x, t)``, the drift of the reverse-time SDE (as dx/dt)."""
        s = velocity(score, x, t)
        return float(self.f(t)) * x - float(self.g2(t)) * s


def noise_loss(net: Callable, batch, *, schedule: Schedule, t_min: float = 1e-3,
               generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """The DDPM objective in continuous time: ``E |net(x_t, t) - z|^2`` per entry, t uniform in
    ``[t_min, 1]``. It is denoising score matching weighted by sigma(t)^2 for the score
    ``-net / sigma``; ``t_min > 0`` keeps VP's sigma(0) = 0 out of the conversion.

    Args:
        net: the noise-predicting network ``net(x, t)``.
        batch: clean data (B, *) or a tuple whose first item it is.
    """
    x0 = batch[0] if isinstance(batch, tuple | list) else batch
    check_tensor(x0, "batch", shape=("B", "*"), floating=True)
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must be in [0, 1), got {t_min}")
    u = uniform_times(x0.shape[0], device=x0.device, generator=generator).to(x0.dtype)
    t = t_min + (1 - t_min) * u
    z = draw(torch.randn, x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.interpolate(x0, z, t)
    return (check_like(net(x_t, t), x_t, "net", "a noise prediction") - z).square().mean()


def _check_sampling_grid(ts) -> list[float]:
    grid = check_grid(ts)
    if grid[-1] > grid[0]:
        raise ValueError(f"the grid must decrease from noise (t = 1) to data (t = 0), got {grid}")
    return grid


@torch.no_grad()
def euler_maruyama(score: Callable, x: torch.Tensor, ts, *, sde: SDE, generator=None,
                   callback=None, last_noise: bool = False) -> torch.Tensor:  # fmt: skip
    """Euler-Maruyama for the reverse SDE: ``x <- x - h * reverse_drift + g sqrt(h) z`` with
    ``h = t - t_next > 0``. The last step adds no noise unless ``last_noise`` (the sample is
    then the mean of the last transition). One score evaluation per step."""
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    grid = _check_sampling_grid(ts)
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        h = t - t_next
        x = x - h * sde.reverse_drift(score, x, t)
        if last_noise or i < len(grid) - 2:
            z = draw(torch.randn, x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(float(sde.g2(t)) * h) * z
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x, "nfe": i + 1})
    return x


@torch.no_grad()
def predictor_corrector(
    score: Callable,
    x: torch.Tensor,
    ts,
    *,
    sde: SDE,
    snr: float = 0.16,
    corrector_steps: int = 1,
    generator=None,
    callback=None,
) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021): at every time of the grid, an
    Euler-Maruyama step of the reverse SDE (predictor), then ``corrector_steps`` Langevin steps
    at the new time with the snr step rule (corrector). ``1 + corrector_steps`` score
    evaluations per step, except the last, which has no corrector (one evaluation)."""
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    grid = _check_sampling_grid(ts)
    if (
        isinstance(corrector_steps, bool)
        or not isinstance(corrector_steps, int)
        or corrector_steps < 0
    ):
        raise ValueError(f"corrector_steps must be an int >= 0, got {corrector_steps!r}")
    nfe = 0
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        x = euler_maruyama(score, x, [t, t_next], sde=sde, generator=generator,
                           last_noise=i < len(grid) - 2)  # fmt: skip
        nfe += 1
        for _ in range(corrector_steps if i < len(grid) - 2 else 0):
            x, _ = langevin_step(score, x, t_next, snr=snr, generator=generator)
            nfe += 1
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x, "nfe": nfe})
    return x


@torch.no_grad()
def ddpm_ancestral(score: Callable, x: torch.Tensor, ts, *, schedule: Schedule, generator=None,
                   callback=None) -> torch.Tensor:  # fmt: skip
    """DDPM's ancestral sampler on a VP path, written for a grid of times: with
    ``a = alpha(t) / alpha(t_next)`` and ``beta = 1 - a^2`` (DDPM's beta of that step),

        x <- (x + beta s(x, t)) / a + sqrt(beta) z,

    the posterior step of DDPM in its score form (Song et al. 2021, appendix). As the grid gets
    finer it becomes the Euler-Maruyama step of the reverse VP SDE. Here ``a = alpha(t) /
    alpha(t_next) < 1`` is DDPM's ``sqrt(1 - beta)``: alpha shrinks as t grows."""
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    grid = _check_sampling_grid(ts)
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        times = torch.tensor([t, t_next], dtype=torch.float64)
        alphas, sigmas = schedule.alpha(times), schedule.sigma(times)
        a = float(alphas[0] / alphas[1])
        beta = 1 - a**2
        if not beta > 0 or (alphas**2 + sigmas**2 - 1).abs().max() > 1e-6:
            raise ValueError(
                "DDPM ancestral sampling is the discretisation of a variance-preserving path "
                f"(alpha^2 + sigma^2 = 1, alpha falling); {type(schedule).__name__} gives alpha "
                f"{alphas.tolist()}, sigma {sigmas.tolist()} at {[t, t_next]}"
            )
        x = (x + beta * velocity(score, x, t)) / a
        if i < len(grid) - 2:
            z = draw(torch.randn, x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(beta) * z
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x, "nfe": i + 1})
    return x
