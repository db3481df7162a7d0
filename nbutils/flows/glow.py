"""Glow's layers (Kingma & Dhariwal 2018) and RealNVP's affine coupling (Dinh et al. 2017).

* :class:`AffineCoupling`: ``y_b = x_b * exp(s) + t`` with ``(s, t) = net(x_a)``; log-det
  ``sum(s)``. The raw scale goes through a soft clamp ``bound * tanh(s / bound)`` so that one
  bad step cannot blow a layer up.
* :class:`ActNorm`: a per-channel affine map whose first call on data (in training mode) sets
  it so that every channel of that batch has zero mean and unit variance.
* :class:`InvertibleConv1x1`: a learned channel mixing ``z = W x`` at every position, ``W``
  held as ``P L (U + diag(sign * exp(log_s)))`` (LU), so that ``log |det W| = sum(log_s)``
  costs O(C); a plain-matrix version (``lu=False``) uses ``slogdet``.
* :class:`Squeeze`: (C, H, W) -> (4C, H/2, W/2), each 2x2 block of pixels into channels.
* :class:`ConvNet` and :func:`conv_conditioner`: the convolutional conditioner, last layer zero
  so every coupling starts as the identity; :func:`glow_step`: ActNorm, 1x1 conv, coupling.

Events are (C, H, W) images or (C,) vectors (then the "channels" are the coordinates and there
is one position). Log-determinants are per example, in nats, like every transform here.

Under bf16 autocast only the conditioners run in bf16: the coupling law and the 1x1
convolution work in the data's dtype, so the latent path and its log-determinant keep
float32 precision (a flow's likelihood is a sum of many such terms).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.flows.base import Compose, Transform
from nbutils.flows.couplings import Coupling, Partition, channels
from nbutils.tensors import check_tensor

# ----------------------------------------------------------------------------- affine coupling


def soft_clamp(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """``bound * tanh(raw / bound)``: the identity near 0, never beyond ``+-bound``."""
    return bound * torch.tanh(raw / bound)


def affine_out_shape(out_shape) -> tuple[int, ...]:
    """The conditioner output an affine coupling needs: twice the first axis (s and t)."""
    return (2 * out_shape[0], *out_shape[1:])


class AffineCoupling(Coupling):
    """RealNVP's coupling law ``y_b = x_b * exp(s) + t``, ``(s, t) = net(x_a)`` (split on axis 1).

    Args:
        partition: how an example splits (:func:`~nbutils.flows.couplings.channels`,
            a checkerboard :class:`~nbutils.flows.couplings.MaskPartition`, ...).
        net: conditioner (B, *partition.in_shape) -> (B, *affine_out_shape(partition.out_shape)).
        bound: the soft clamp on the log-scale s.
    """

    def __init__(self, partition: Partition, net: nn.Module, bound: float = 3.0):
        super().__init__(partition, net)
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound}")
        self.bound = bound

    def _scale_shift(self, h: torch.Tensor, xb: torch.Tensor):
        want = (xb.shape[0], *affine_out_shape(xb.shape[1:]))
        if tuple(h.shape) != want:
            raise ValueError(
                f"the conditioner of AffineCoupling returned shape {tuple(h.shape)}, expected "
                f"{want} (log-scale and shift for each changed entry)"
            )
        raw, shift = h.to(xb.dtype).chunk(2, dim=1)  # the law in the data's precision
        restrict = self.partition.restrict
        return restrict(soft_clamp(raw, self.bound)), restrict(shift)

    def couple(self, xb, h):
        s, t = self._scale_shift(h, xb)
        return xb * torch.exp(s) + t, s.flatten(1).sum(1)

    def uncouple(self, yb, h):
        s, t = self._scale_shift(h, yb)
        return (yb - t) * torch.exp(-s)


# ----------------------------------------------------------------------------- actnorm


class ActNorm(Transform):
    """Per-channel ``z = (x + b) * exp(s)``; log-det ``positions * sum(s)``.

    The first forward pass in training mode sets ``b`` and ``s`` from that batch so that each
    channel comes out with zero mean and unit variance (data-dependent initialisation). The
    flag is a buffer: a loaded checkpoint is not initialised again.

    Args:
        event_shape: (C, H, W) or (C,).
    """

    def __init__(self, event_shape):
        super().__init__(event_shape)
        shape = (self.event_shape[0],) + (1,) * (len(self.event_shape) - 1)
        self.bias = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.positions = math.prod(self.event_shape[1:])
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # mirrors the buffer without a device sync on every call

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialized)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias and scale from the batch x (B, *event_shape): zero mean, unit variance."""
        if x.shape[0] < 2:
            raise ValueError(f"ActNorm initialises from a batch of at least 2, got {x.shape[0]}")
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, B * positions)
        per_channel = per_channel.to(torch.promote_types(x.dtype, torch.float32))
        mean, std = per_channel.mean(1), per_channel.std(1, unbiased=False)
        self.bias.copy_(-mean.reshape(self.bias.shape))
        self.log_scale.copy_(-torch.log(std + 1e-6).reshape(self.log_scale.shape))
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x):
        check_tensor(x, "input of ActNorm", shape=("B", *self.event_shape))
        if not self._ready and self.training:
            self.initialize(x)
        logdet = (self.positions * self.log_scale.sum()).expand(x.shape[0])
        return (x + self.bias) * torch.exp(self.log_scale), logdet

    def inverse(self, z):
        check_tensor(z, "input of ActNorm.inverse", shape=("B", *self.event_shape))
        return z * torch.exp(-self.log_scale) - self.bias


# ----------------------------------------------------------------------------- 1x1 convolution


class InvertibleConv1x1(Transform):
    """``z = W x`` at every position with a learned invertible C x C matrix ``W``.

    ``W`` starts as a random rotation (log-det 0). With ``lu=True`` it is stored as
    ``P L (U + diag(sign * exp(log_s)))``: P a fixed permutation, L unit lower triangular, U
    strictly upper triangular, so ``log |det W| = sum(log_s)`` and the log-det of the layer is
    ``positions * sum(log_s)``, with no determinant to compute.

    Args:
        event_shape: (C, H, W) or (C,).
        lu: the LU parameterisation (default) or a plain matrix with ``slogdet``.
        generator: for the initial rotation (default: the global generator).
    """

    def __init__(self, event_shape, lu: bool = True, generator: torch.Generator | None = None):
        super().__init__(event_shape)
        c = self.event_shape[0]
        self.lu, self.positions = lu, math.prod(self.event_shape[1:])
        rotation = torch.linalg.qr(torch.randn(c, c, generator=generator))[0]
        if not lu:
            self.weight = nn.Parameter(rotation)
            return
        p, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign", torch.sign(diagonal))
        self.register_buffer("below", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()))

    def matrix(self) -> torch.Tensor:
        """The current W, (C, C)."""
        if not self.lu:
            return self.weight
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.below + eye
        upper = self.upper * self.below.T + torch.diag(self.sign * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        """log |det W| (a scalar)."""
        return self.log_s.sum() if self.lu else torch.linalg.slogdet(self.weight).logabsdet

    @staticmethod
    def _mix(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x @ w.to(x.dtype).T
        return F.conv2d(x, w.to(x.dtype)[:, :, None, None])

    def forward(self, x):
        check_tensor(x, "input of InvertibleConv1x1", shape=("B", *self.event_shape))
        # outside autocast: W, its log-det and the mixing all in the data's precision, so the
        # log-det reported is that of the matrix used
        with torch.autocast(x.device.type, enabled=False):
            logdet = (self.positions * self.log_abs_det()).expand(x.shape[0])
            return self._mix(self.matrix(), x), logdet

    def inverse(self, z):
        check_tensor(z, "input of InvertibleConv1x1.inverse", shape=("B", *self.event_shape))
        with torch.autocast(z.device.type, enabled=False):
            w = self.matrix()
            return self._mix(torch.linalg.inv(w.double()).to(z.dtype), z)


# ----------------------------------------------------------------------------- squeeze


class Squeeze(Transform):
    """(C, H, W) -> (4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels (log-det 0).

    A permutation of the entries, so a channel coupling after it mixes neighbouring pixels.
    """

    def __init__(self, event_shape):
        shape = tuple(event_shape)
        if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
            raise ValueError(f"Squeeze needs an event (C, H, W) with even H and W, got {shape}")
        c, h, w = shape
        super().__init__(shape, (4 * c, h // 2, w // 2))

    def forward(self, x):
        check_tensor(x, "input of Squeeze", shape=("B", *self.event_shape))
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, 4 * c, h // 2, w // 2), self._zeros(x)

    def inverse(self, z):
        check_tensor(z, "input of Squeeze.inverse", shape=("B", *self.out_shape))
        b, c4, h, w = z.shape
        z = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c4 // 4, 2 * h, 2 * w)


# ----------------------------------------------------------------------------- conditioner


class ConvNet(nn.Module):
    """Conditioner for images: 3x3 conv, residual blocks, 3x3 conv (zero-initialised).

    Shapes: (B, c_in, H, W) -> (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, hidden: int = 64, blocks: int = 2):
        super().__init__()
        self.first = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 1),
            )
            for _ in range(blocks)
        )
        self.last = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x):
        h = self.first(x)
        for block in self.blocks:
            h = h + block(h)
        return self.last(F.relu(h))


def conv_conditioner(hidden: int = 64, blocks: int = 2):
    """A conditioner factory ``(in_shape, out_shape) -> ConvNet`` for (C, H, W) parts."""

    def make(in_shape, out_shape):
        return ConvNet(in_shape[0], out_shape[0], hidden, blocks)

    return make


def affine(partition: Partition, conditioner, bound: float = 3.0) -> AffineCoupling:
    """An :class:`AffineCoupling` on ``partition`` whose net comes from ``conditioner``."""
    net = conditioner(partition.in_shape, affine_out_shape(partition.out_shape))
    return AffineCoupling(partition, net, bound)


def glow_step(event_shape, conditioner, *, swap: bool = False, lu: bool = True) -> Compose:
    """One step of Glow: :class:`ActNorm`, :class:`InvertibleConv1x1`, a channel coupling.

    Args:
        event_shape: (C, H, W) with C >= 2.
        conditioner: factory ``(in_shape, out_shape) -> nn.Module``.
        swap: let the second half of the channels condition the first.
        lu: LU-parameterised 1x1 convolution.
    """
    part = channels(tuple(event_shape))
    part = part.swapped() if swap else part
    return Compose(
        ActNorm(event_shape),
        InvertibleConv1x1(event_shape, lu=lu),
        affine(part, conditioner),
    )
