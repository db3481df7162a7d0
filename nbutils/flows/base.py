"""Normalizing flows: invertible transforms with tractable log-determinants, priors, ``Flow``.

The contract (DESIGN.md, section 3). A **transform** is an ``nn.Module`` that maps data to
latent and knows its own volume change::

    z, logabsdet = transform(x)    # x (B, *event_shape) -> z (B, *out_shape), logabsdet (B,)
    x = transform.inverse(z)

``logabsdet`` is ``log |det dz/dx|`` per example, in nats. Transforms compose (:class:`Compose`)
and check the shape of what they are given. A :class:`Flow` pairs a transform with a factorised
prior and gives ``log_prob(x) = log p_Z(f(x)) + log |det df/dx|`` (change of variables).

This module holds the contract, composition, the element-wise transforms (:class:`Scaling`,
:class:`Permutation`, :class:`Logit`, a preprocessing transform for data in [0, 1]), the priors
:class:`StandardLogistic` / :class:`StandardNormal` and :class:`Flow`. Coupling layers, the
partitions they split on, and the NICE builder are in :mod:`nbutils.flows.couplings`.

Example:
    >>> from nbutils.flows import mlp_conditioner, nice
    >>> flow = Flow(nice((2,), couplings=4, conditioner=mlp_conditioner(64, 2)), StandardNormal())
    >>> flow.log_prob(torch.randn(8, 2)).shape
    torch.Size([8])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbutils.tensors import check_count, check_dtype_matches, check_tensor, draw, generator_device

# ----------------------------------------------------------------------------- priors


class StandardNormal:
    """Factorised N(0, 1) prior. ``log_prob`` sums over every non-batch dimension."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(B, *) -> (B,) in nats."""
        return (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    def sample(self, shape, temperature=1.0, generator=None, device=None, dtype=None):
        """Draw ``temperature * N(0, I)`` of the given shape (on the generator's device first)."""
        _check_temperature(temperature)
        return temperature * draw(
            torch.randn, shape, generator=generator, device=device, dtype=dtype
        )


class StandardLogistic:
    """Factorised standard logistic prior, p(z) = sigmoid(z) sigmoid(-z) per dimension.

    Its tails (exp(-|z|)) are heavier than a Gaussian's, so gradients stay large for outliers;
    NICE used it on MNIST.
    """

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(B, *) -> (B,) in nats."""
        return -(nn.functional.softplus(z) + nn.functional.softplus(-z)).flatten(1).sum(1)

    def sample(self, shape, temperature=1.0, generator=None, device=None, dtype=None):
        """Draw ``temperature * Logistic(0, 1)`` by inverting the CDF of a uniform draw."""
        _check_temperature(temperature)
        where = generator_device(generator, device)  # transform where drawn, then move
        u = draw(torch.rand, shape, generator=generator, device=where, dtype=dtype)
        eps = torch.finfo(u.dtype).eps
        u = u.clamp(eps, 1 - eps)
        return temperature * (torch.log(u) - torch.log1p(-u)).to(device)


def _check_temperature(temperature) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


# ----------------------------------------------------------------------------- base and composition


class Transform(nn.Module):
    """An invertible map data -> latent: ``forward(x) -> (z, logabsdet)``, ``inverse(z) -> x``.

    Args:
        event_shape: shape of one input example, e.g. ``(2,)`` or ``(1, 28, 28)``.
        out_shape: shape of one output example (defaults to ``event_shape``).
    """

    def __init__(self, event_shape, out_shape=None):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.out_shape = tuple(out_shape) if out_shape is not None else self.event_shape

    def forward(self, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _zeros(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0])


class Compose(Transform):
    """Transforms applied in order (data -> latent); log-determinants add up.

    Args:
        *transforms: transforms whose shapes chain (each ``out_shape`` is the next
            ``event_shape``).
    """

    def __init__(self, *transforms: Transform):
        if not transforms:
            raise ValueError("Compose needs at least one transform")
        for a, b in zip(transforms[:-1], transforms[1:], strict=False):
            if a.out_shape != b.event_shape:
                raise ValueError(
                    f"shapes do not chain: {type(a).__name__} gives {a.out_shape}, "
                    f"{type(b).__name__} expects {b.event_shape}"
                )
        super().__init__(transforms[0].event_shape, transforms[-1].out_shape)
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x):
        check_tensor(x, "input of Compose", shape=("B", *self.event_shape))
        logdet = self._zeros(x)
        for t in self.transforms:
            x, ld = t(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z):
        check_tensor(z, "input of Compose.inverse", shape=("B", *self.out_shape))
        for t in reversed(self.transforms):
            z = t.inverse(z)
        return z

    def forward_steps(self, x) -> list[torch.Tensor]:
        """Every intermediate state from data to latent: ``[x, t1(x), t2(t1(x)), ..., z]``."""
        states = [x]
        for t in self.transforms:
            states.append(t(states[-1])[0])
        return states

    def inverse_steps(self, z) -> list[torch.Tensor]:
        """Every intermediate state from latent to data: ``[z, ..., x]``."""
        states = [z]
        for t in reversed(self.transforms):
            states.append(t.inverse(states[-1]))
        return states


# ----------------------------------------------------------------------------- elementwise maps


class Scaling(Transform):
    """NICE's diagonal scaling z = exp(s) * x, log-det = sum(s): the only volume change in NICE.

    In the generative direction a latent dimension d is multiplied by exp(-s_d): a large s_d
    means that direction barely moves the data (see the note on the learned spectrum).
    """

    def __init__(self, event_shape):
        super().__init__(event_shape)
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def forward(self, x):
        check_tensor(x, "input of Scaling", shape=("B", *self.event_shape))
        logdet = self.log_scale.sum().expand(x.shape[0])
        return x * torch.exp(self.log_scale), logdet

    def inverse(self, z):
        check_tensor(z, "input of Scaling.inverse", shape=("B", *self.event_shape))
        return z * torch.exp(-self.log_scale)


class Permutation(Transform):
    """A fixed permutation of the flattened entries (log-det 0).

    Args:
        perm: (D,) permutation of ``range(D)`` with D = prod(event_shape); output entry i is
            input entry ``perm[i]``.
        event_shape: shape of one example.
    """

    def __init__(self, perm: torch.Tensor, event_shape):
        super().__init__(event_shape)
        d = math.prod(self.event_shape)
        if perm.shape != (d,) or not torch.equal(perm.sort().values, torch.arange(d)):
            raise ValueError(f"perm must permute range({d}), got shape {tuple(perm.shape)}")
        self.register_buffer("perm", perm.long().clone())
        self.register_buffer("inv", torch.argsort(self.perm))

    @classmethod
    def reverse(cls, event_shape) -> Permutation:
        return cls(torch.arange(math.prod(event_shape)).flip(0), event_shape)

    @classmethod
    def random(cls, event_shape, generator: torch.Generator | None = None) -> Permutation:
        return cls(torch.randperm(math.prod(event_shape), generator=generator), event_shape)

    def forward(self, x):
        check_tensor(x, "input of Permutation", shape=("B", *self.event_shape))
        return x.flatten(1)[:, self.perm].reshape(x.shape), self._zeros(x)

    def inverse(self, z):
        check_tensor(z, "input of Permutation.inverse", shape=("B", *self.event_shape))
        return z.flatten(1)[:, self.inv].reshape(z.shape)


class Logit(Transform):
    """Preprocessing for data in [0, 1]: z = logit(alpha + (1 - 2 alpha) x) (RealNVP's trick).

    Inputs outside [0, 1] (outside (0, 1) when ``alpha`` is 0) raise a ValueError.

    Args:
        event_shape: shape of one example.
        alpha: margin that keeps the logit finite at 0 and 1 (0 <= alpha < 0.5).
    """

    def __init__(self, event_shape, alpha: float = 1e-6):
        super().__init__(event_shape)
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x):
        check_tensor(x, "input of Logit", shape=("B", *self.event_shape))
        closed = self.alpha > 0
        low, high = x.min().item(), x.max().item()
        if math.isnan(low) or math.isnan(high):
            raise ValueError("Logit expects values in [0, 1], got NaN")
        if (low < 0 or high > 1) if closed else (low <= 0 or high >= 1):
            interval = "[0, 1]" if closed else "(0, 1) (alpha = 0)"
            raise ValueError(f"Logit expects values in {interval}, got [{low:.4g}, {high:.4g}]")
        u = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(u) - torch.log1p(-u)
        logdet = (math.log1p(-2 * self.alpha) - torch.log(u) - torch.log1p(-u)).flatten(1).sum(1)
        return z, logdet

    def inverse(self, z):
        check_tensor(z, "input of Logit.inverse", shape=("B", *self.event_shape))
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


# ----------------------------------------------------------------------------- the flow


class Flow(nn.Module):
    """A density p(x) = p_Z(f(x)) |det df/dx| from a transform f (data -> latent) and a prior.

    Args:
        transform: a :class:`Transform`.
        prior: an object with ``log_prob(z) -> (B,)`` and ``sample(shape, temperature,
            generator, device, dtype)``, e.g. :class:`StandardLogistic`.
    """

    def __init__(self, transform: Transform, prior):
        super().__init__()
        self.transform, self.prior = transform, prior
        self.event_shape = transform.event_shape

    def extra_repr(self) -> str:
        return f"prior={type(self.prior).__name__}"  # part of the repr a checkpoint records

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *event_shape) -> (B,) log-density in nats."""
        check_tensor(x, "x", shape=("B", *self.event_shape), floating=True, finite=True)
        check_dtype_matches(x, self)
        z, logdet = self.transform(x)
        return self.prior.log_prob(z) + logdet

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data -> latent, (B, *event_shape) -> (B, *out_shape)."""
        return self.transform(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> data, the exact inverse of :meth:`encode`."""
        return self.transform.inverse(z)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator=None) -> torch.Tensor:
        """Draw n examples: z ~ prior scaled by ``temperature``, x = f^{-1}(z).

        The draw uses ``generator`` (on its own device) and then moves to the flow's device.
        Returns (n, *event_shape).
        """
        check_count(n, "n")
        ref = next(self.parameters(), torch.empty(0))
        shape = (n, *self.transform.out_shape)
        z = self.prior.sample(shape, temperature, generator, device=ref.device, dtype=ref.dtype)
        return self.decode(z)


def nll_nats_per_dim(model: Flow, batch) -> torch.Tensor:
    """Objective: mean negative log-likelihood in nats per dimension (a scalar).

    ``batch`` is x (B, *event_shape) or a tuple whose first item is x.
    """
    x = batch[0] if isinstance(batch, tuple | list) else batch
    return -model.log_prob(x).mean() / math.prod(model.event_shape)
