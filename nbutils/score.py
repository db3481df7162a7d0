"""Score-based models (chapter 04): a noise-conditional score model and the three ways to
learn a score, explicit (Hyvarinen 2005), sliced (Song et al. 2019) and denoising (Vincent
2011) score matching, each with the book's contract ``loss(model, batch) -> scalar``.

A score model returns ``s(x, t) ~ grad_x log p_t(x)``, the score of the data noised to level t
of a schedule of :mod:`nbutils.paths` (t = 0 data, t = 1 the most noise). :class:`ScoreModel`
wraps a network that predicts the noise (the U-Net of :mod:`nbutils.nn`, or a
:class:`~nbutils.nn.layers.VelocityMLP` in 2D) and reads it as a score,
``s = -net(x, t) / sigma(t)``: the 1/sigma scaling of NCSNv2 (Song & Ermon 2020), which keeps
the network's output of unit size at every level. The schedule's sigma(t) must be positive
wherever the model is called (true of the VE path; a VP path has sigma(0) = 0).
``schedule.convert`` turns that prediction into any other kind (``x0``, ``velocity``).

All losses average over the entries of an example (per dimension), so their sizes do not
depend on the image size. For a score that does not depend on t (explicit and sliced score
matching learn one level), pass the level with ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from nbutils.likelihood import divergence_exact, divergence_hutchinson, rademacher
from nbutils.paths import Schedule, VESchedule, uniform_times
from nbutils.tensors import append_dims, check_count, check_like, check_tensor, draw


class ScoreModel(nn.Module):
    """``s(x, t) = -net(x, t) / sigma(t)``: a noise-predicting network read as a score.

    Args:
        net: ``net(x, t) -> (B, *)`` predicting the noise ``x_1`` of ``x_t = alpha x_0 +
            sigma x_1``.
        schedule: the path (default :class:`~nbutils.paths.VESchedule`, NCSN's noise levels).

    Shapes: x (B, *), t (B,) in [0, 1] -> (B, *).
    """

    def __init__(self, net: nn.Module, schedule: Schedule | None = None):
        super().__init__()
        self.net, self.schedule = net, schedule or VESchedule()
        zero = torch.zeros((), dtype=torch.float64)
        self._sigma_vanishes = float(self.schedule.sigma(zero)) <= 0  # a VP path: sigma(0) = 0

    def extra_repr(self) -> str:
        return f"schedule={type(self.schedule).__name__}{vars(self.schedule)}"

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._sigma_vanishes and bool((self.schedule.sigma(t) <= 0).any()):
            raise ValueError(
                f"{type(self.schedule).__name__} has sigma(t) = 0 at some of the times given "
                f"(smallest t = {float(t.min()):.3g}); a score -noise / sigma needs sigma > 0: "
                "call the model at t > 0 (e.g. t >= 1e-3)"
            )
        noise = self.net(x, t)
        return self.schedule.convert(noise, x, t, source="noise", target="score")

    def sigma(self, t) -> torch.Tensor:
        """The noise scale of level(s) t (a float or a tensor)."""
        return self.schedule.sigma(torch.as_tensor(t, dtype=torch.float64))


def _data(batch) -> torch.Tensor:
    x = batch[0] if isinstance(batch, tuple | list) else batch
    check_tensor(x, "batch", shape=("B", "*"), floating=True)
    return x


def _score(model: Callable, x: torch.Tensor, times: torch.Tensor, name: str = "the model"):
    """``model(x, times)``, refused unless it has the shape of x (a score is a field on x)."""
    return check_like(model(x, times), x, name, "a score")


def _times(t, x: torch.Tensor, generator) -> torch.Tensor:
    if t is None:
        return uniform_times(x.shape[0], device=x.device, generator=generator).to(x.dtype)
    if not 0 <= float(t) <= 1:
        raise ValueError(f"t must be a level (time) in [0, 1], got {t}")
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def dsm_loss(model: Callable, batch, *, t=None, schedule: Schedule | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Denoising score matching, weighted by sigma^2 (NCSN's weighting):

        E_t E_{x_0, z} | sigma(t) s(x_t, t) + z |^2 / D,    x_t = alpha(t) x_0 + sigma(t) z.

    The target ``-z / sigma`` is the score of ``p(x_t | x_0)``; its regression solution is the
    score of the noised density ``p_t`` (Vincent 2011).

    Args:
        model: ``model(x, t) -> score``, e.g. a :class:`ScoreModel`.
        batch: clean data (B, *) or a tuple whose first item it is.
        t: a fixed level for every example, or None for levels uniform in [0, 1].
        schedule: the path (default ``model.schedule``).
        generator: for the levels and the noise.
    """
    x0 = _data(batch)
    schedule = schedule or model.schedule
    if t is not None and float(schedule.sigma(torch.tensor(float(t), dtype=torch.float64))) <= 0:
        raise ValueError(
            f"{type(schedule).__name__} has sigma = 0 at t = {t}: nothing is noised there and "
            "the score target -z / sigma is infinite; use t > 0"
        )
    times = _times(t, x0, generator)
    z = draw(torch.randn, x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.interpolate(x0, z, times)
    sigma = append_dims(schedule.sigma(times), x0.dim())
    return (sigma * _score(model, x_t, times) + z).square().mean()


def esm_loss(model: Callable, batch, *, t: float = 0.0) -> torch.Tensor:
    """Explicit (implicit, in Hyvarinen's words) score matching at one level:

        E_x [ |s(x)|^2 / 2 + tr(ds/dx) ] / D,

    equal to the Fisher divergence ``E |s - grad log p|^2 / 2`` up to a constant of the data
    (integration by parts). The trace costs D backward passes: fine in 2D, not for images.
    """
    x = _data(batch).detach().requires_grad_(True)
    s = _score(model, x, _times(t, x, None))
    trace = divergence_exact(s, x, create_graph=True)
    return (0.5 * s.flatten(1).square().sum(1) + trace).mean() / s[0].numel()


def ssm_loss(model: Callable, batch, *, t: float = 0.0, probes: int = 1,
             generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Sliced score matching with variance reduction (SSM-VR, Song et al. 2019):

        E_x E_v [ |s(x)|^2 / 2 + v^T (ds/dx) v ] / D,   v Rademacher,

    the trace of :func:`esm_loss` replaced by Hutchinson's unbiased estimate: one backward pass
    per probe instead of D.
    """
    check_count(probes, "probes")
    x = _data(batch).detach().requires_grad_(True)
    s = _score(model, x, _times(t, x, generator))
    v = rademacher((probes, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    trace = divergence_hutchinson(s, x, v, create_graph=True)
    return (0.5 * s.flatten(1).square().sum(1) + trace).mean() / s[0].numel()


@torch.no_grad()
def fisher_divergence(score: Callable, exact: Callable, x: torch.Tensor, t: float) -> float:
    """``E |s(x, t) - s*(x, t)|^2 / 2`` over the points x (B, *) (per example, not per entry):
    the distance between a learned and an exact score field at level t."""
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    times = _times(t, x, None)
    difference = _score(score, x, times, "score") - _score(exact, x, times, "exact")
    return 0.5 * difference.flatten(1).square().sum(1).mean().item()


def sigma_max_rule(data: torch.Tensor, n: int = 2000, generator=None) -> float:
    """NCSNv2's first rule (Song & Ermon 2020): the largest noise scale should be about the
    largest distance between two training points, so that at sigma_max the noised data are
    one blob and Langevin can move between any two modes. Estimated on n points (B, *)."""
    check_tensor(data, "data", shape=("N", "*"), floating=True, finite=True)
    where = generator.device if generator is not None else None
    idx = torch.randperm(len(data), generator=generator, device=where)[: min(n, len(data))]
    flat = data[idx.to(data.device)].flatten(1).double()
    return float(torch.cdist(flat, flat).max())


def geometric_sigmas(sigma_min: float, sigma_max: float, levels: int) -> torch.Tensor:
    """``levels`` noise scales from sigma_max down to sigma_min, equally spaced in log: (L,)."""
    check_count(levels, "levels")
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), levels, dtype=torch.float64)
