"""Continuous normalizing flows (Chen et al. 2018; FFJORD, Grathwohl et al. 2019).

A CNF is a velocity field ``v(x, t)`` whose ODE carries data (t = 0) to the prior (t = 1).
It is invertible by construction (run the ODE backwards) and puts no constraint on the
network; its log-likelihood comes from :func:`nbutils.likelihood.ode_log_prob`.

The training recipe that avoids the "underflow in dt" failures of adaptive solvers during
training: a **fixed grid** (RK4 with a few steps, differentiated through), and an
**adaptive** solver (RK45 at a tight tolerance) only to evaluate and to sample. In training
mode :meth:`CNF.log_prob` uses the fixed grid; in eval mode the adaptive solver.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbutils.flows.base import StandardNormal
from nbutils.likelihood import ode_log_prob
from nbutils.samplers import rk4, rk45, time_grid
from nbutils.tensors import check_count, check_dtype_matches, check_tensor


class CNF(nn.Module):
    """A continuous normalizing flow around a velocity network.

    Args:
        net: ``net(x, t) -> (B, *event_shape)``, t (B,), e.g.
            :class:`~nbutils.nn.layers.VelocityMLP`.
        event_shape: shape of one example, e.g. (2,).
        prior: density at t = 1 (default :class:`~nbutils.flows.base.StandardNormal`).
        probes: None for the exact divergence, else the number of Hutchinson probes.
        train_steps: RK4 steps of the training grid.
        rtol, atol: tolerances of the adaptive solver used in eval mode.
    """

    def __init__(self, net: nn.Module, event_shape, *, prior=None, probes: int | None = None,
                 train_steps: int = 4, rtol: float = 1e-5, atol: float = 1e-5):  # fmt: skip
        super().__init__()
        check_count(train_steps, "train_steps")
        self.net, self.event_shape = net, tuple(event_shape)
        self.prior = prior or StandardNormal()
        self.probes, self.train_steps, self.rtol, self.atol = probes, train_steps, rtol, atol
        self.last_nfe = 0

    def extra_repr(self) -> str:
        return f"probes={self.probes}, train_steps={self.train_steps}"

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t), (B, *event_shape)."""
        return self.net(x, t)

    def solve(self, x: torch.Tensor, *, adaptive: bool | None = None, generator=None):
        """The :class:`~nbutils.likelihood.ODELikelihood` of x (B, *event_shape).

        ``adaptive=None`` picks by mode: the fixed RK4 grid (with gradients) in training
        mode, RK45 (without) in eval mode.
        """
        check_tensor(x, "x", shape=("B", *self.event_shape), floating=True, finite=True)
        check_dtype_matches(x, self)
        adaptive = not self.training if adaptive is None else adaptive
        common = dict(probes=self.probes, generator=generator)
        if adaptive:
            out = ode_log_prob(self.net, x, self.prior.log_prob, sampler=rk45, rtol=self.rtol,
                               atol=self.atol, **common)  # fmt: skip
        else:
            grid = time_grid(self.train_steps, 0.0, 1.0)
            out = ode_log_prob(self.net, x, self.prior.log_prob, ts=grid, sampler=rk4,
                               grad=torch.is_grad_enabled(), **common)  # fmt: skip
        self.last_nfe = out.nfe
        return out

    def log_prob(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """(B, *event_shape) -> (B,) log-density in nats (see :meth:`solve`)."""
        return self.solve(x, **kwargs).log_prob

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator=None) -> torch.Tensor:
        """Draw n examples: z from the prior, then the ODE from t = 1 back to t = 0 (RK45)."""
        check_count(n, "n")
        ref = next(self.parameters())
        z = self.prior.sample((n, *self.event_shape), temperature, generator, device=ref.device,
                              dtype=ref.dtype)  # fmt: skip
        return rk45(self.net, z, (1.0, 0.0), rtol=self.rtol, atol=self.atol)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data -> latent by the ODE from t = 0 to t = 1 (RK45)."""
        check_tensor(x, "x", shape=("B", *self.event_shape), floating=True)
        return rk45(self.net, x, (0.0, 1.0), rtol=self.rtol, atol=self.atol)


def cnf_nll(model: CNF, batch) -> torch.Tensor:
    """Objective: mean negative log-likelihood in nats per dimension (a scalar)."""
    x = batch[0] if isinstance(batch, tuple | list) else batch
    return -model.log_prob(x).mean() / math.prod(model.event_shape)
