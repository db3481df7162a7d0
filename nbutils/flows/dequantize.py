"""Dequantization: a density on [0, 1)^D turned into a model of 256-level images.

An image of grey levels k gets the points x = (k + u) / 256 with u in [0, 1)^D, and

    log P(k) >= E_{u ~ q(u | k)} [ log p(x) - log q(u | k) ] - D log 256

for any density q on the unit cube (Jensen). Uniform dequantization takes q = 1; the bound
is then tight only if p is flat inside every bin. **Variational dequantization** (Ho et al.
2019, Flow++) learns q: :class:`VariationalDequantizer` is a small flow over the noise,
conditioned on the image. For a fixed p the best q closes the gap; trained jointly, the
optimum is at least as good as the uniform one, which is one of the choices (q starts there).

:class:`DequantizedFlow` pairs a flow on the unit cube with either dequantizer and returns the
per-example term of the bound (a density on the unit cube, so
:func:`nbutils.metrics.dequantized_bpd` turns its mean into bits per dimension).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.flows.couplings import checkerboard_partition
from nbutils.flows.glow import ConvNet, soft_clamp
from nbutils.tensors import check_tensor, draw


def _logistic_log_prob(eps: torch.Tensor) -> torch.Tensor:
    return -(F.softplus(eps) + F.softplus(-eps))


class VariationalDequantizer(nn.Module):
    """q(u | k): u = sigmoid(g(eps; k)) with eps ~ Logistic(0, 1) and g affine couplings.

    The couplings alternate on a checkerboard of the noise; each conditioner sees the kept
    noise and the image (scaled to [-1, 1]). The last layers are zero, so q starts uniform
    (sigmoid of a logistic draw is uniform): training can only move it away from the uniform
    bound where that helps.

    Args:
        event_shape: (C, H, W) of the images.
        couplings: number of affine couplings over the noise.
        hidden, blocks: size of each conditioner (:class:`~nbutils.flows.glow.ConvNet`).
        levels: grey levels of the data (256 for 8-bit images).
        bound: the soft clamp on the log-scales.
    """

    def __init__(self, event_shape=(1, 28, 28), *, couplings=4, hidden=32, blocks=1,
                 levels: int = 256, bound: float = 3.0):  # fmt: skip
        super().__init__()
        self.event_shape, self.levels, self.bound = tuple(event_shape), levels, bound
        c = self.event_shape[0]
        mask = checkerboard_partition(self.event_shape, flat=False).mask  # (C, H, W), 1 = kept
        self.register_buffer("masks", torch.stack([mask, 1 - mask]), persistent=False)
        self.nets = nn.ModuleList(ConvNet(2 * c, 2 * c, hidden, blocks) for _ in range(couplings))

    def _context(self, k: torch.Tensor) -> torch.Tensor:
        check_tensor(k, "k (grey levels)", shape=("B", *self.event_shape),
                     dtype=(torch.uint8, torch.int64, torch.int32))  # fmt: skip
        return 2 * k.float() / (self.levels - 1) - 1  # (B, C, H, W) in [-1, 1]

    def _layer(self, i: int, y: torch.Tensor, context: torch.Tensor):
        """Log-scale and shift of coupling i (zero on the kept entries)."""
        m = self.masks[i % 2]
        h = self.nets[i](torch.cat([y * m, context.to(y.dtype)], 1)).to(y.dtype)
        raw, shift = h.chunk(2, 1)
        return soft_clamp(raw, self.bound) * (1 - m), shift * (1 - m)

    def log_prob(self, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """log q(u | k) of given noise u (B, *event_shape) in (0, 1), by the inverse pass."""
        context = self._context(k)
        check_tensor(u, "u", shape=k.shape, floating=True, finite=True)
        y = torch.log(u) - torch.log1p(-u)  # y_n, with u = sigmoid(y_n)
        log_q = -_logistic_log_prob(y).flatten(1).sum(1)  # - log |du/dy_n|
        for i in reversed(range(len(self.nets))):
            s, t = self._layer(i, y, context)  # layer i leaves the entries it sees unchanged
            y = (y - t) * torch.exp(-s)
            log_q = log_q - s.flatten(1).sum(1)
        return log_q + _logistic_log_prob(y).flatten(1).sum(1)  # + log p(y_0)

    def sample(self, k: torch.Tensor, generator=None):
        """Draw u ~ q(u | k) for integer images k (B, *event_shape).

        Returns:
            ``(u, log_q)``: u (B, *event_shape) in (0, 1) and log q(u | k) (B,) in nats.
        """
        context = self._context(k)
        eps = draw(torch.rand, k.shape, generator=generator, device=k.device)
        eps = eps.clamp(1e-6, 1 - 1e-6)
        y = torch.log(eps) - torch.log1p(-eps)  # a logistic draw
        log_q = _logistic_log_prob(y).flatten(1).sum(1)
        for i in range(len(self.nets)):
            s, t = self._layer(i, y, context)
            y = y * torch.exp(s) + t
            log_q = log_q - s.flatten(1).sum(1)
        log_q = log_q - _logistic_log_prob(y).flatten(1).sum(1)  # |du/dy| of the sigmoid
        return torch.sigmoid(y), log_q


class DequantizedFlow(nn.Module):
    """A model of grey-level images: a flow on [0, 1)^D and a dequantizer.

    Args:
        flow: a density on the unit cube with ``log_prob(x) -> (B,)`` (e.g. a
            :class:`~nbutils.flows.base.Flow` whose transform starts with a ``Logit``).
        dequantizer: a :class:`VariationalDequantizer`, or None for uniform noise.
        levels: grey levels (256).
    """

    def __init__(self, flow: nn.Module, dequantizer: VariationalDequantizer | None = None,
                 levels: int = 256):  # fmt: skip
        super().__init__()
        self.flow, self.dequantizer, self.levels = flow, dequantizer, levels
        self.event_shape = tuple(flow.event_shape)

    def log_prob_unit(self, k: torch.Tensor, generator=None) -> torch.Tensor:
        """One-sample estimate of ``log p(x) - log q(u | k)`` per image, (B,) in nats.

        Its mean minus ``D log levels`` is the bound on ``log P(k)``; see
        :func:`nbutils.metrics.dequantized_bpd`.

        Args:
            k: integer grey levels (B, *event_shape), uint8 or int64, in [0, levels).
        """
        check_tensor(k, "k (grey levels)", shape=("B", *self.event_shape),
                     dtype=(torch.uint8, torch.int64, torch.int32))  # fmt: skip
        if k.numel() and (int(k.min()) < 0 or int(k.max()) >= self.levels):
            raise ValueError(
                f"grey levels must lie in [0, {self.levels - 1}], got [{int(k.min())}, "
                f"{int(k.max())}]"
            )
        if self.dequantizer is None:
            u = draw(torch.rand, k.shape, generator=generator, device=k.device)
            log_q = torch.zeros(k.shape[0], device=k.device)
        else:
            u, log_q = self.dequantizer.sample(k, generator)
        ref = next(self.flow.parameters(), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        x = ((k.to(dtype) + u.to(dtype)) / self.levels).clamp(0, 1)
        return self.flow.log_prob(x) - log_q.to(dtype)


def dequantized_nll(model: DequantizedFlow, batch) -> torch.Tensor:
    """Objective: the negative bound in nats per dimension, plus the constant log(levels)
    (so the loss over ln 2 is bits/dim exactly)."""
    k = batch[0] if isinstance(batch, tuple | list) else batch
    dims = math.prod(model.event_shape)
    return -model.log_prob_unit(k).mean() / dims + math.log(model.levels)
