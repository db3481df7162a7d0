"""Coupling layers (Dinh, Krueger & Bengio 2014), the partitions they split on, and NICE.

A coupling splits its input into two parts with a :class:`Partition`, keeps one part and changes
the other by an invertible map whose parameters come from a conditioner network that sees only
the kept part: ``y_b = g(x_b; m(x_a))``. The Jacobian is then triangular, so its log-determinant
is cheap, and the inverse needs no inversion of the network. :class:`AdditiveCoupling` uses
``g = x_b + m(x_a)`` (log-det exactly 0); subclass :class:`Coupling` (define ``couple`` and
``uncouple``) for other laws, e.g. the affine coupling of RealNVP.

Partitions: :func:`halves`, :func:`checkerboard_partition`, :func:`channels` (each with
``.swapped()``; the toy data set :func:`nbutils.data.checkerboard` is another thing).
Conditioners are built by factories ``(in_shape, out_shape) -> nn.Module``, e.g.
:func:`mlp_conditioner`. :func:`nice` assembles the paper's transform.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbutils.flows.base import Compose, Scaling, Transform
from nbutils.nn.layers import MLP
from nbutils.tensors import check_tensor

# ----------------------------------------------------------------------------- partitions


class Partition(nn.Module):
    """Splits an example into a part ``a`` (kept, conditions the coupling) and ``b`` (changed).

    ``split(x) -> (x_a, x_b)``, ``merge(x_a, x_b) -> x``, ``restrict(h)`` keeps the entries of a
    conditioner output that act on ``b``; ``in_shape`` / ``out_shape`` are the per-example
    shapes a conditioner takes and returns; ``swapped()`` exchanges the roles of ``a`` and ``b``.
    """

    def restrict(self, h: torch.Tensor) -> torch.Tensor:
        return h


class IndexPartition(Partition):
    """Gather the two parts along the leading axes of an example, e.g. flat vectors for MLPs.

    The mask covers the first ``mask.dim()`` axes of the event; those axes are flattened and
    gathered, the rest kept. A mask of the whole event gives (B, d_a), (B, d_b); a (C,) mask
    on a (C, H, W) event gives channel groups (B, C_a, H, W), (B, C_b, H, W).

    Args:
        mask: bool tensor, True where an entry belongs to part ``a``.
        event_shape: shape of one example (defaults to ``mask.shape``).
    """

    def __init__(self, mask: torch.Tensor, event_shape=None):
        super().__init__()
        self.mask = mask.bool().clone()
        self.event_shape = tuple(event_shape or mask.shape)
        if self.event_shape[: mask.dim()] != tuple(mask.shape):
            raise ValueError(f"mask {tuple(mask.shape)} does not lead event {self.event_shape}")
        flat = self.mask.flatten()
        _check_both_parts(flat)
        index_a, index_b = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
        self.register_buffer("index_a", index_a, persistent=False)
        self.register_buffer("index_b", index_b, persistent=False)
        unsort = torch.argsort(torch.cat([index_a, index_b]))
        self.register_buffer("unsort", unsort, persistent=False)
        self.rest = self.event_shape[mask.dim() :]
        self.in_shape, self.out_shape = (len(index_a), *self.rest), (len(index_b), *self.rest)

    def split(self, x):
        x = x.reshape(x.shape[0], -1, *self.rest)  # (B, n, *rest)
        return x[:, self.index_a], x[:, self.index_b]

    def merge(self, xa, xb):
        return torch.cat([xa, xb], 1)[:, self.unsort].reshape(-1, *self.event_shape)

    def swapped(self) -> IndexPartition:
        return IndexPartition(~self.mask, self.event_shape)


class MaskPartition(Partition):
    """Keep the full shape and zero the other part: x_a = m x, x_b = (1 - m) x. For conv nets.

    Args:
        mask: tensor of the event shape, 1 (or True) where an entry belongs to part ``a``.
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        _check_both_parts(mask.bool().flatten())
        self.register_buffer("mask", mask.to(torch.get_default_dtype()), persistent=False)
        self.event_shape = self.in_shape = self.out_shape = tuple(mask.shape)

    def split(self, x):
        return x * self.mask, x * (1 - self.mask)

    def merge(self, xa, xb):
        return xa + xb

    def restrict(self, h):
        return h * (1 - self.mask)

    def swapped(self) -> MaskPartition:
        return MaskPartition(1 - self.mask)


def _check_both_parts(flat_mask: torch.Tensor) -> None:
    if flat_mask.all() or not flat_mask.any():
        raise ValueError("a partition needs at least one entry in each part")


def halves(event_shape) -> IndexPartition:
    """First half of the flattened event conditions the second half (NICE's x1 | x2)."""
    mask = torch.zeros(math.prod(event_shape), dtype=torch.bool)
    mask[: mask.numel() // 2] = True
    return IndexPartition(mask.reshape(event_shape))


def checkerboard_partition(event_shape, flat: bool = True) -> Partition:
    """Entries whose coordinates sum to an even number form part ``a``.

    For a vector (D,) that is even vs odd index; for (C, H, W) it is a spatial checkerboard
    shared by all channels. ``flat=True`` gives an :class:`IndexPartition` (MLP conditioners),
    ``flat=False`` a :class:`MaskPartition` (convolutional conditioners).
    """
    grids = torch.meshgrid(*[torch.arange(s) for s in event_shape], indexing="ij")
    spatial = grids if len(event_shape) < 3 else grids[1:]
    mask = sum(spatial) % 2 == 0
    return IndexPartition(mask) if flat else MaskPartition(mask)


def channels(event_shape) -> IndexPartition:
    """The first half of the channels of (C, H, W) conditions the rest (needs C >= 2)."""
    if len(event_shape) != 3:
        raise ValueError(f"a channel partition needs an event (C, H, W), got {tuple(event_shape)}")
    keep = torch.arange(event_shape[0]) < event_shape[0] // 2
    return IndexPartition(keep, event_shape)


# ----------------------------------------------------------------------------- couplings


class Coupling(Transform):
    """y_a = x_a, y_b = g(x_b; h) with h = net(x_a): invertible whatever ``net`` is.

    The Jacobian is block-triangular (dy_a/dx_b = 0), so its determinant is that of dy_b/dx_b,
    which ``couple`` returns. Subclasses define ``couple(x_b, h) -> (y_b, logabsdet (B,))`` and
    ``uncouple(y_b, h) -> x_b``.

    Args:
        partition: how an example splits into ``a`` and ``b`` (:class:`Partition`).
        net: the conditioner, (B, *partition.in_shape) -> (B, *partition.out_shape) for additive
            couplings (a subclass may ask for more outputs).
    """

    def __init__(self, partition: Partition, net: nn.Module):
        super().__init__(partition.event_shape)
        self.partition, self.net = partition, net

    def forward(self, x):
        check_tensor(x, f"input of {type(self).__name__}", shape=("B", *self.event_shape))
        xa, xb = self.partition.split(x)
        yb, logdet = self.couple(xb, self.net(xa))
        return self.partition.merge(xa, yb), logdet

    def inverse(self, z):
        check_tensor(z, f"input of {type(self).__name__}.inverse", shape=("B", *self.event_shape))
        za, zb = self.partition.split(z)
        return self.partition.merge(za, self.uncouple(zb, self.net(za)))

    def _check_net_output(self, h, xb):
        if h.shape != xb.shape:
            raise ValueError(
                f"the conditioner of {type(self).__name__} returned shape "
                f"{tuple(h.shape)}, expected {tuple(xb.shape)}"
            )


class AdditiveCoupling(Coupling):
    """NICE's coupling law y_b = x_b + m(x_a): unit Jacobian (log-det exactly 0), inverse by
    subtraction."""

    def couple(self, xb, h):
        self._check_net_output(h, xb)
        return xb + self.partition.restrict(h), self._zeros(xb)

    def uncouple(self, yb, h):
        self._check_net_output(h, yb)
        return yb - self.partition.restrict(h)


# ----------------------------------------------------------------------------- builders


class FlatMLP(nn.Module):
    """An MLP on flattened examples: (B, *in_shape) -> (B, *out_shape), last layer zero-init.

    With a zero last layer every coupling starts as the identity.
    """

    def __init__(self, in_shape, out_shape, hidden=(1000,) * 5, activation=nn.ReLU, zero_init=True):
        super().__init__()
        self.out_shape = tuple(out_shape)
        sizes = (math.prod(in_shape), *hidden, math.prod(out_shape))
        self.mlp = MLP(sizes, activation=activation)
        if zero_init:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):
        return self.mlp(x.flatten(1)).reshape(-1, *self.out_shape)


def mlp_conditioner(hidden: int = 1000, depth: int = 5, activation=nn.ReLU, zero_init=True):
    """A conditioner factory ``(in_shape, out_shape) -> FlatMLP`` with ``depth`` hidden layers."""

    def make(in_shape, out_shape):
        return FlatMLP(in_shape, out_shape, (hidden,) * depth, activation, zero_init)

    return make


def nice(
    event_shape,
    *,
    couplings: int = 4,
    conditioner=None,
    partition=checkerboard_partition,
    alternate: bool = True,
    scaling: bool = True,
) -> Compose:
    """NICE's transform: additive couplings on alternating parts, then a diagonal scaling.

    Args:
        event_shape: shape of one example, e.g. (2,) or (1, 28, 28).
        couplings: number of additive coupling layers (the paper used 4 on MNIST).
        conditioner: factory ``(in_shape, out_shape) -> nn.Module``; default
            ``mlp_conditioner(1000, 5)`` (the paper's MNIST conditioner).
        partition: factory ``event_shape -> Partition`` (:func:`checkerboard_partition`,
            :func:`halves`, :func:`channels`).
        alternate: swap the roles of the two parts after every coupling (turn off to see why
            it matters: half of the entries are then never changed).
        scaling: end with a :class:`Scaling` layer (without it the flow preserves volume).
    """
    if isinstance(couplings, bool) or not isinstance(couplings, int) or couplings < 0:
        raise ValueError(f"couplings must be an int >= 0, got {couplings!r}")
    conditioner = conditioner or mlp_conditioner()
    part = partition(tuple(event_shape))
    layers = []
    for i in range(couplings):
        p = part.swapped() if alternate and i % 2 else part
        layers.append(AdditiveCoupling(p, conditioner(p.in_shape, p.out_shape)))
    if scaling:
        layers.append(Scaling(event_shape))
    return Compose(*layers)
