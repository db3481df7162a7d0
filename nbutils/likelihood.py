"""Log-likelihoods of ODE flows: the instantaneous change of variables, with an exact or a
Hutchinson divergence (chapters 03 and 06).

If ``dx/dt = v(x, t)`` carries data at t = 0 to the prior at t = 1, the log-density along a
path changes as ``d log p_t(x_t) / dt = -div v(x_t, t)``, so

    log p_0(x_0) = log p_1(x_1) + integral_0^1 div v(x_t, t) dt.

:func:`ode_log_prob` integrates the state and the running integral together, as one
augmented state (B, D + 1), with any sampler of :mod:`nbutils.samplers` (fixed-grid RK4 to
train, adaptive RK45 to evaluate). The divergence is :func:`divergence_exact` (D backward
passes: the trace of the Jacobian, fine in 2D) or :func:`divergence_hutchinson`
(``E[eps^T (dv/dx) eps] = tr(dv/dx)`` for probes with identity covariance: one backward pass
per probe, unbiased). The probes are drawn once per solve, so the integrand is one smooth
function of time that an adaptive solver can follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from nbutils.samplers import NFECounter, check_grid, rk45
from nbutils.tensors import check_count, check_tensor, draw


def divergence_exact(v: torch.Tensor, x: torch.Tensor, *, create_graph: bool = False):
    """tr(dv/dx) per example, one backward pass per dimension.

    Args:
        v: (B, *) outputs of a function of x, computed with gradients.
        x: (B, *) its inputs (each example's outputs depend on its own input only).
        create_graph: keep the graph (to train through the divergence).

    Returns:
        (B,) the traces.
    """
    flat = v.flatten(1)
    total = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=create_graph,
                                   retain_graph=True)  # fmt: skip
        total = total + g.flatten(1)[:, i]
    return total


def divergence_hutchinson(v, x, probes: torch.Tensor, *, create_graph: bool = False):
    """Hutchinson's estimate of tr(dv/dx): the mean over K probes of ``eps^T (dv/dx) eps``.

    Args:
        v, x: as in :func:`divergence_exact`.
        probes: (K, B, *) probe vectors with E[eps eps^T] = I (Rademacher or Gaussian).
        create_graph: keep the graph.

    Returns:
        (B,) the estimates, averaged over the K probes (not summed).
    """
    check_tensor(probes, "probes", shape=("K", *v.shape))
    total = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    for eps in probes:
        (g,) = torch.autograd.grad(v, x, eps, create_graph=create_graph, retain_graph=True)
        total = total + (g * eps).flatten(1).sum(1)
    return total / len(probes)


def rademacher(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """Random signs +-1 of the given shape (the lowest-variance Hutchinson probe)."""
    bits = draw(torch.rand, shape, generator=generator, device=device, dtype=dtype)
    return torch.where(bits < 0.5, -1.0, 1.0).to(bits.dtype)


class ODELikelihood(NamedTuple):
    """What :func:`ode_log_prob` returns: log p_0(x) (B,), the end state z (B, *) and the
    number of evaluations of the velocity."""

    log_prob: torch.Tensor
    z: torch.Tensor
    nfe: int


def augmented(model: Callable, shape, probes=None, create_graph=False) -> Callable:
    """The dynamics of ``[x, l]`` (B, D + 1): ``dx/dt = v(x, t)``, ``dl/dt = div v(x, t)``.

    Args:
        model: ``model(x, t) -> v`` with x (B, *shape[1:]), t (B,).
        shape: shape of x, (B, *).
        probes: None for the exact divergence, else (K, B, *) Hutchinson probes.
        create_graph: differentiate through the divergence (training).
    """

    def dynamics(state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = state[:, :-1].reshape(shape)
            if not x.requires_grad:  # evaluation: a leaf to differentiate against
                x = x.detach().requires_grad_(True)
            v = model(x, t)
            if probes is None:
                div = divergence_exact(v, x, create_graph=create_graph)
            else:
                div = divergence_hutchinson(v, x, probes, create_graph=create_graph)
        if not create_graph:
            v, div = v.detach(), div.detach()
        return torch.cat([v.flatten(1), div[:, None].to(v.dtype)], 1)

    return dynamics


def ode_log_prob(
    model: Callable,
    x: torch.Tensor,
    prior_log_prob: Callable,
    *,
    ts=(0.0, 1.0),
    sampler: Callable = rk45,
    probes: int | None = None,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    grad: bool = False,
    **sampler_kwargs,
) -> ODELikelihood:
    """log p_0(x) of an ODE flow by the instantaneous change of variables.

    Args:
        model: the velocity ``model(x, t) -> (B, *)``, t (B,) (t = 0 data, t = 1 prior).
        x: (B, *) data at ``ts[0]``.
        prior_log_prob: ``(B, *) -> (B,)`` log-density at ``ts[-1]`` (e.g. StandardNormal).
        ts: increasing grid from data to prior, default (0, 1); with :func:`~nbutils.samplers.
            rk4` pass a grid such as ``time_grid(4, 0, 1)``.
        sampler: any sampler of :mod:`nbutils.samplers` (default adaptive :func:`rk45`).
        probes: None for the exact divergence, else the number K of Hutchinson probes,
            drawn once for the whole solve.
        probe: ``"rademacher"`` or ``"gaussian"``.
        generator: for the probes.
        grad: differentiate the result with respect to the model's parameters (training).
        **sampler_kwargs: e.g. ``rtol`` / ``atol`` for :func:`rk45`.

    Returns:
        :class:`ODELikelihood` ``(log_prob (B,), z (B, *), nfe)``.
    """
    check_tensor(x, "x", shape=("B", "*"), floating=True, finite=True)
    grid = check_grid(ts)
    if grid[-1] < grid[0]:
        raise ValueError(f"ts must increase from data (t = 0) to the prior, got {grid}")
    eps = None
    if probes is not None:
        check_count(probes, "probes")
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
        kind = rademacher if probe == "rademacher" else _gaussian
        eps = kind((probes, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    counted = NFECounter(model)
    dynamics = augmented(counted, x.shape, eps, create_graph=grad)
    start = torch.cat([x.flatten(1), x.new_zeros(x.shape[0], 1)], 1)  # (B, D + 1)
    end = sampler(dynamics, start, ts, grad=grad, **sampler_kwargs)
    z = end[:, :-1].reshape(x.shape)
    return ODELikelihood(prior_log_prob(z) + end[:, -1], z, counted.nfe)


def _gaussian(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    return draw(torch.randn, shape, generator=generator, device=device, dtype=dtype)
