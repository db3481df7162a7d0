"""MADE (Germain et al. 2015): a masked autoencoder as an autoregressive model, and the
mixture of its connectivity masks at test time (:func:`ensemble_log_prob`).
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from nbutils.autoregressive import Autoregressive, _class_table, _plus_class
from nbutils.nn.layers import MaskedLinear
from nbutils.tensors import check_count


class MADE(Autoregressive):
    """Masked autoencoder for distribution estimation (Germain et al. 2015).

    An MLP D -> hidden... -> D whose weights are masked so that output i sees only inputs
    earlier in the order. Every unit k gets a degree m(k): input j has degree rank(j) (its
    position in the order, 0-based), a hidden unit a degree drawn uniformly from
    [min degree of the layer below, D - 2]; a hidden weight is kept when m(out) >= m(in),
    an output weight when rank(i) > m(hidden). Mask k (order + degrees) is drawn from a
    generator seeded by ``(seed, k)``, so it is reproducible; training cycles through
    ``num_masks`` of them (:meth:`resample_masks`) and :func:`ensemble_log_prob` averages
    their probabilities at test time.

    Args:
        shape: event shape, e.g. ``(1, 28, 28)``.
        hidden: widths of the hidden layers, e.g. ``(500,)`` or ``(1000, 1000)``.
        num_masks: how many masks training cycles through (1: a single fixed MADE).
        order: ``"natural"`` (raster order, only connectivity varies) or ``"random"``
            (order resampled with every mask too).
        seed: seed of the mask generator.
        num_classes: labels the model is conditioned on; the label is "variable 0", seen
            by every first-layer unit and every output.
        direct: add masked direct input -> output weights (an FVSBN inside the MADE).

    Shapes: x (B, *shape) -> logits (B, *shape).
    """

    def __init__(self, shape=(1, 28, 28), hidden=(500,), num_masks: int = 1,
                 order: str = "natural", seed: int = 0, num_classes: int = 0,
                 direct: bool = False):  # fmt: skip
        super().__init__(shape, num_classes)
        if order not in ("natural", "random"):
            raise ValueError(f"order must be 'natural' or 'random', got {order!r}")
        check_count(num_masks, "num_masks")
        if (
            isinstance(hidden, int)
            or not hidden
            or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)
        ):
            raise ValueError(
                f"hidden must be a non-empty tuple of layer widths, e.g. (500,), got {hidden!r}"
            )
        self.hidden, self.num_masks = tuple(hidden), int(num_masks)
        self.order_kind, self.seed = order, int(seed)
        sizes = (self.dim, *self.hidden, self.dim)
        self.layers = nn.ModuleList(
            MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.class_hidden = _class_table(self.num_classes, self.hidden[0])
        self.class_bias = _class_table(self.num_classes, self.dim)
        self.direct = MaskedLinear(self.dim, self.dim, bias=False) if direct else None
        self.register_buffer("mask_index", torch.tensor(0))
        self._cache: dict = {}  # (k, device, dtype) -> order, layer masks, direct mask
        self.set_mask(0)

    def degrees(self, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Order (D,) and unit degrees [inputs (D,), hidden_1 (h1,), ...] of mask k."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(k))
        if self.order_kind == "random":
            order = torch.randperm(self.dim, generator=g)
        else:
            order = torch.arange(self.dim)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.dim)
        degrees = [rank]
        for width in self.hidden:
            low = min(int(degrees[-1].min()), self.dim - 2)
            degrees.append(torch.randint(low, self.dim - 1, (width,), generator=g))
        return order, degrees

    @torch.no_grad()
    def set_mask(self, k: int) -> None:
        """Install connectivity k >= 0: its order and the masks of every layer. Training
        cycles through k < num_masks; any other k is a valid but untrained connectivity."""
        try:
            index = operator.index(k)  # ints, and NumPy or 0-d torch integers
        except TypeError:
            index = -1
        if isinstance(k, bool) or index < 0:
            raise ValueError(f"mask index must be an integer >= 0, got {k!r}")
        k = index
        order, masks = self._connectivity(k)
        for layer, mask in zip(self.layers, masks, strict=True):
            layer.mask.copy_(mask)
        if self.direct is not None:
            self.direct.mask.copy_(self._direct_mask(k))
        self.order.copy_(order)
        self.mask_index.fill_(k)
        self._index = k

    def _connectivity(self, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Order and layer masks of connectivity k, built once where the model lives and kept
        (training cycles through them every step; no host round trip, no sync on a GPU)."""
        device, dtype = self.order.device, self.layers[0].mask.dtype
        key = (k, device, dtype)
        if key not in self._cache:
            order, degrees = self.degrees(k)
            degrees = [d.to(device) for d in degrees]
            masks = [
                (d_out[:, None] >= d_in[None, :]).to(dtype)
                for d_in, d_out in zip(degrees[:-1], degrees[1:], strict=True)
            ]
            masks.append((degrees[0][:, None] > degrees[-1][None, :]).to(dtype))
            direct = (degrees[0][:, None] > degrees[0][None, :]).to(dtype)
            self._cache[key] = (order.to(device), masks, direct)
        return self._cache[key][:2]

    def _direct_mask(self, k: int) -> torch.Tensor:
        return self._cache[(k, self.order.device, self.layers[0].mask.dtype)][2]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._index = int(self.mask_index)  # the Python copy that resample_masks reads

    def resample_masks(self) -> None:
        """Cycle to the next of the ``num_masks`` training masks."""
        if self.num_masks > 1:
            self.set_mask((self._index + 1) % self.num_masks)

    def output_bias(self):
        return self.layers[-1].bias

    def _logits(self, x, y=None):
        h = x.flatten(1)  # (B, D)
        for j, layer in enumerate(self.layers):
            h = layer(h)  # (B, width_j)
            if j == 0 and y is not None:
                h = h + self.class_hidden(y)
            if j < len(self.layers) - 1:
                h = torch.relu(h)
        if self.direct is not None:
            h = h + self.direct(x.flatten(1))
        return _plus_class(h, self.class_bias, y).view_as(x)


def ensemble_log_prob(model: MADE, x, y=None, num_masks: int | None = None) -> torch.Tensor:
    """Log-likelihood of the mixture of MADE's first K masks: log (1/K) sum_k p_k(x), (B,).

    Each mask is a different autoregressive model, so their *probabilities* are averaged
    (log-mean-exp of the log-likelihoods). Averaging their logits instead is another model
    at best (masks sharing one order) and, with different orders, not even normalised: a
    pixel would see pixels that come later in another mask's order. The model's current
    mask is restored afterwards.

    Args:
        num_masks: K (default ``model.num_masks``); masks k >= model.num_masks were never
            trained on.
    """
    k_total = model.num_masks if num_masks is None else check_count(num_masks, "num_masks")
    current = int(model.mask_index)
    try:
        per_mask = []
        for k in range(k_total):
            model.set_mask(k)
            per_mask.append(model.log_prob(x, y))
    finally:
        model.set_mask(current)
    return torch.logsumexp(torch.stack(per_mask), dim=0) - math.log(k_total)  # (B,)
