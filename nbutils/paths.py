"""Probability paths between data and noise, the time densities used to train on them, and
converters between the four things a network can predict.

Every diffusion and flow chapter interpolates between data ``x_0`` and Gaussian noise
``x_1 ~ N(0, I)`` along

    x_t = alpha(t) x_0 + sigma(t) x_1,     t in [0, 1],  t = 0 data, t = 1 noise,

and differs only in the **schedule** ``(alpha, sigma)``:

* :class:`RectifiedSchedule` (chapter 07): ``alpha = 1 - t``, ``sigma = t``, a straight line;
* :class:`VPSchedule` (chapters 05, 06): variance preserving, ``alpha^2 + sigma^2 = 1``, with
  the linear noise rate of Song et al. (2021), ``beta(t) = beta_min + t (beta_max - beta_min)``;
* :class:`SubVPSchedule` (chapter 05): VP's mean with the smaller ``sigma = 1 - alpha^2``;
* :class:`VESchedule` (chapters 04, 05): variance exploding, ``alpha = 1`` and a geometric
  ``sigma`` from ``sigma_min`` to ``sigma_max``.

The time densities to train with (uniform; SD3's logit-normal, mode and cosmap, chapter 08) are
at the end: :func:`time_sampler` by name, :func:`time_cdf` for their laws.

The conditional velocity of the path is ``dx_t/dt = alpha'(t) x_0 + sigma'(t) x_1``. A network
may predict that velocity, the data ``x_0``, the noise ``x_1`` or the score
``grad log p_t(x_t) = -E[x_1 | x_t] / sigma(t)``; given ``x_t`` any one fixes the others
(:meth:`Schedule.convert`).

Example:
    >>> t = torch.tensor([0.25])
    >>> RECTIFIED.interpolate(torch.zeros(1, 2), torch.ones(1, 2), t)
    tensor([[0.2500, 0.2500]])
"""

from __future__ import annotations

import math

import torch

from nbutils.tensors import append_dims, check_count, check_tensor, draw

#: What a network can predict, for :meth:`Schedule.convert`.
KINDS = ("velocity", "x0", "noise", "score")


class Schedule:
    """A path ``x_t = alpha(t) x_0 + sigma(t) x_1``; subclasses define alpha, sigma and their
    time derivatives (all element-wise on a tensor of times)."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def d_sigma2(self, t: torch.Tensor) -> torch.Tensor:
        """The time derivative of sigma(t)^2 (finite where sigma' is not, e.g. VP at t = 0)."""
        return 2 * self.sigma(t) * self.d_sigma(t)

    def _coefficients(self, t, like: torch.Tensor, *names: str) -> list[torch.Tensor]:
        """The named coefficients at t (B,), shaped (B, 1, ..., 1) like ``like`` (B, *)."""
        check_tensor(t, "t", shape=("B",), sizes={"B": like.shape[0]})
        t = append_dims(t, like.dim()).to(like.dtype)
        return [getattr(self, name)(t) for name in names]

    def _check_prediction(self, pred, x_t, t) -> None:
        check_tensor(x_t, "x_t", shape=("B", "*"), floating=True)
        if not isinstance(pred, torch.Tensor) or pred.shape != x_t.shape:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ValueError(f"pred must have shape {tuple(x_t.shape)} (that of x_t), got {got}")
        _check_times(t, x_t)

    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The point of the path at time t: x0, x1 (B, *), t (B,) in [0, 1] -> x_t (B, *)."""
        _check_pair(x0, x1, t)
        alpha, sigma = self._coefficients(t, x0, "alpha", "sigma")
        return alpha * x0 + sigma * x1

    def velocity(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The conditional velocity ``alpha'(t) x_0 + sigma'(t) x_1``: (B, *)."""
        _check_pair(x0, x1, t)
        d_alpha, d_sigma = self._coefficients(t, x0, "d_alpha", "d_sigma")
        return d_alpha * x0 + d_sigma * x1

    def x0_and_noise(self, pred, x_t, t, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, x1)`` consistent with ``x_t`` and a prediction of the given kind.

        Args:
            pred: (B, *) what the network predicted; kind: one of :data:`KINDS`.
            x_t: (B, *) the point on the path; t: (B,) its times (where the formula needs it,
                ``alpha(t) > 0`` or ``sigma(t) > 0``).
        """
        _check_kind(kind, "kind")
        self._check_prediction(pred, x_t, t)
        alpha, sigma, d_alpha, d_sigma = self._coefficients(
            t, x_t, "alpha", "sigma", "d_alpha", "d_sigma"
        )
        if kind == "x0":
            return pred, (x_t - alpha * pred) / sigma
        if kind == "velocity":  # solve [alpha sigma; alpha' sigma'] [x0; x1] = [x_t; v]
            det = alpha * d_sigma - sigma * d_alpha
            return (d_sigma * x_t - sigma * pred) / det, (alpha * pred - d_alpha * x_t) / det
        noise = pred if kind == "noise" else -sigma * pred  # score = -E[x1 | x_t] / sigma
        return (x_t - sigma * noise) / alpha, noise

    def convert(self, pred, x_t, t, *, source: str, target: str) -> torch.Tensor:
        """Turn a prediction of kind ``source`` into the equivalent one of kind ``target``.

        Example:
            >>> x_t, t = torch.ones(1, 2), torch.tensor([0.5])
            >>> RECTIFIED.convert(torch.zeros(1, 2), x_t, t, source="x0", target="noise")
            tensor([[2., 2.]])
        """
        _check_kind(target, "target")
        x0, noise = self.x0_and_noise(pred, x_t, t, source)
        if target == "x0":
            return x0
        if target == "noise":
            return noise
        alpha, sigma, d_alpha, d_sigma = self._coefficients(
            t, x_t, "alpha", "sigma", "d_alpha", "d_sigma"
        )
        if target == "score":
            return -noise / sigma
        return d_alpha * x0 + d_sigma * noise


class RectifiedSchedule(Schedule):
    """The straight line of rectified flow: ``x_t = (1 - t) x_0 + t x_1``, velocity
    ``x_1 - x_0`` (Liu et al. 2023, with their time reversed: see note 07)."""

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def velocity(self, x0, x1, t):
        _check_pair(x0, x1, t)
        return x1 - x0  # the same at every t: the line's constant velocity


class VPSchedule(Schedule):
    """Variance preserving (DDPM as an SDE, Song et al. 2021), linear noise rate beta(t).

    ``log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2`` and
    ``sigma(t) = sqrt(1 - alpha(t)^2)``, so ``alpha^2 + sigma^2 = 1`` at every t.

    Near the data end ``sigma(t) ~ sqrt(beta_min t)``, so ``sigma'(0)`` is infinite and so is
    the path's velocity there: train and integrate on ``t`` in ``[t_min, 1]`` with a small
    ``t_min`` (Song et al. use 1e-5 for likelihoods, 1e-3 for sampling).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def _log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))  # sqrt(1 - alpha^2), accurate

    def d_alpha(self, t):
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return -0.5 * beta * self.alpha(t)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def d_sigma2(self, t):
        return -2 * self.alpha(t) * self.d_alpha(t)  # (1 - alpha^2)'


class SubVPSchedule(VPSchedule):
    """The sub-VP path of Song et al. (2021): VP's ``alpha`` with ``sigma(t) = 1 - alpha(t)^2``,
    below VP's ``sqrt(1 - alpha^2)`` at every t > 0 (a smaller variance for the same mean)."""

    def sigma(self, t):
        return -torch.expm1(2 * self._log_alpha(t))  # 1 - alpha^2

    def d_sigma(self, t):
        return -2 * self.alpha(t) * self.d_alpha(t)

    def d_sigma2(self, t):
        return 2 * self.sigma(t) * self.d_sigma(t)  # finite: sigma' is


class VESchedule(Schedule):
    """Variance exploding (SMLD / NCSN): ``alpha = 1``,
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return self.log_ratio * self.sigma(t)


#: The rectified-flow path, the default of :func:`nbutils.rectified.flow_matching_loss`.
RECTIFIED = RectifiedSchedule()


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path ``x_t = (1 - t) x_0 + t x_1``: x0, x1 (B, *), t (B,) -> (B, *)."""
    return RECTIFIED.interpolate(x0, x1, t)


def _check_pair(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> None:
    check_tensor(x0, "x0", floating=True)
    check_tensor(x1, "x1", floating=True)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have one shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
    _check_times(t, x0)


def _check_times(t: torch.Tensor, like: torch.Tensor) -> None:
    check_tensor(t, "t", floating=True)
    if t.shape != like.shape[:1]:
        raise ValueError(f"t must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    if t.numel() and not (t.min() >= 0 and t.max() <= 1):  # NaN fails too
        raise ValueError(f"t must lie in [0, 1], got [{t.min():.3g}, {t.max():.3g}]")


def _check_kind(kind: str, what: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"{what} must be one of {KINDS}, got {kind!r}")


# ----------------------------------------------------------------------------- time densities


def uniform_times(n: int, *, device=None, generator: torch.Generator | None = None):
    """n times drawn uniformly from [0, 1]: (n,) (drawn on the generator's device)."""
    check_count(n, "n")
    return draw(torch.rand, (n,), generator=generator, device=device)


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
    check_count(n, "n")
    if not (isinstance(std, (int, float)) and std > 0 and math.isfinite(std)):
        raise ValueError(f"std must be a positive number, got {std!r}")
    if not (isinstance(mean, (int, float)) and math.isfinite(mean)):
        raise ValueError(f"mean must be a finite number, got {mean!r}")
    eps = draw(torch.randn, (n,), generator=generator, device=device)
    return torch.sigmoid(mean + std * eps)


def mode_times(n: int, scale: float = 1.29, *, device=None,
               generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """n times ``f(u) = 1 - u - scale (cos^2(pi u / 2) - 1 + u)``, u uniform (SD3's "mode"
    sampling; ``scale = 0`` is uniform, a positive scale favours the middle). Returns (n,)."""
    check_count(n, "n")
    limit = 2 / (math.pi - 2)  # f'(u) = -1 - scale + scale (pi / 2) sin(pi u) <= 0 up to here
    if not (isinstance(scale, (int, float)) and -1 <= scale <= limit):
        raise ValueError(f"scale must lie in [-1, {limit:.4f}] so that the map stays monotone, "
                         f"got {scale!r}")  # fmt: skip
    u = draw(torch.rand, (n,), generator=generator, device=device)
    return _mode_map(u, scale)


def _mode_map(u: torch.Tensor, scale: float) -> torch.Tensor:
    return 1 - u - scale * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)


def cosmap_times(n: int, *, device=None, generator: torch.Generator | None = None):
    """n times ``1 - 1 / (tan(pi u / 2) + 1)``, u uniform (SD3's "cosmap", the density under
    which the straight path has the cosine schedule's signal-to-noise ratio). Returns (n,)."""
    check_count(n, "n")
    u = draw(torch.rand, (n,), generator=generator, device=device)
    return 1 - 1 / (torch.tan(math.pi / 2 * u) + 1)


#: The time densities of chapter 08, by name: what :func:`time_sampler` accepts.
TIME_DENSITIES = ("uniform", "logit-normal", "mode", "cosmap")
_SAMPLERS = {"uniform": uniform_times, "logit-normal": logit_normal_times,
             "mode": mode_times, "cosmap": cosmap_times}  # fmt: skip


def time_sampler(name: str, **params):
    """The sampler ``sampler(n, device=, generator=) -> (n,)`` of a named time density, with its
    parameters bound (e.g. ``time_sampler("logit-normal", mean=0.0, std=1.0)``,
    ``time_sampler("mode", scale=1.29)``): what a loss's ``time_sampler`` argument takes.

    A density is a law that t is **drawn** from; weighting a uniformly drawn t's loss by the
    density instead is not the same objective's estimator at equal cost, and SD3's choice is
    the sampling.
    """
    if name not in TIME_DENSITIES:
        raise ValueError(f"unknown time density {name!r}; the valid ones are {TIME_DENSITIES}")
    base = _SAMPLERS[name]
    _check_density_params(name, base, params)

    def sampler(n: int, *, device=None, generator: torch.Generator | None = None):
        return base(n, device=device, generator=generator, **params)

    sampler.__name__ = sampler.__qualname__ = f"{name.replace('-', '_')}_times"
    return sampler


def _check_density_params(name: str, base, params: dict) -> None:
    """Refuse unknown or out-of-range parameters now, with a clear error, by one draw on a
    private generator (the global random stream is left as it was)."""
    try:
        base(1, generator=torch.Generator(), **params)
    except TypeError as err:
        raise ValueError(f"the {name} time density does not take the parameters {params}: "
                         f"{err}") from err  # fmt: skip


def time_cdf(name: str, t: torch.Tensor, **params) -> torch.Tensor:
    """The cumulative distribution function of a named time density at t (for tests and plots).

    Uniform: t. Logit-normal: ``Phi((logit t - mean) / std)``. Cosmap: ``(2 / pi)
    atan(t / (1 - t))``. Mode: ``1 - f^{-1}(t)`` for the decreasing map f of
    :func:`mode_times`, inverted by bisection.
    """
    if name in TIME_DENSITIES:
        _check_density_params(name, _SAMPLERS[name], params)
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, 1)
    if name == "uniform":
        return t
    if name == "logit-normal":
        mean, std = params.get("mean", 0.0), params.get("std", 1.0)
        z = (torch.logit(t.clamp(1e-12, 1 - 1e-12)) - mean) / std
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    if name == "cosmap":
        return 2 / math.pi * torch.atan2(t, 1 - t)
    if name == "mode":
        scale = params.get("scale", 1.29)
        low, high = torch.zeros_like(t), torch.ones_like(t)  # f(low) >= t >= f(high)
        for _ in range(60):
            mid = (low + high) / 2
            above = _mode_map(mid, scale) > t
            low, high = torch.where(above, mid, low), torch.where(above, high, mid)
        return 1 - (low + high) / 2
    raise ValueError(f"unknown time density {name!r}; the valid ones are {TIME_DENSITIES}")
