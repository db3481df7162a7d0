"""PixelCNN (van den Oord et al. 2016): autoregressive convolutions in raster order.

Masked convolutions (:class:`~nbutils.nn.layers.MaskedConv2d`, the masks drawn in
:mod:`nbutils.nn.layers`) zero the kernel weights that would look at "future" pixels. Type A
hides the centre too (the first layer), type B keeps it (later layers).

Stacking A/B layers leaves a *blind spot*: a wedge of pixels above and to the right that no
path reaches. The gated PixelCNN (van den Oord et al. 2016b) splits the net into a vertical
stack (rows above, any column within reach; shifted down one row before it is used) and a
horizontal stack (the current row, to the left) and has no blind spot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.autoregressive import Autoregressive, _class_table
from nbutils.nn.layers import MaskedConv2d


class _RasterModel(Autoregressive):
    """Shared by both PixelCNNs: (B, 1, H, W) images in raster order, cropped sampling steps."""

    row_shift = 0  # extra rows of reach from shifting the vertical stack (gated: 1)

    def __init__(self, height: int, width: int, num_classes: int):
        super().__init__((1, height, width), num_classes)
        self.height, self.width = height, width

    @property
    def reach(self) -> int:
        """Rows above row r that the logits of row r can depend on.

        Each masked convolution looks ``kernel_height // 2`` rows up; the gated network's
        one-row shift from the vertical to the horizontal stack adds one more.
        """
        convs = [m for m in self.modules() if isinstance(m, MaskedConv2d)]
        return sum(m.kernel_size[0] // 2 for m in convs) + self.row_shift

    def output_bias(self):
        return self.head[-1].bias  # (1,): one bias shared by all pixels

    def _label_biases(self, y, n_layers: int, width: int):
        """Per-layer label biases, n_layers tensors (B, width, 1, 1), from ``self.cond``."""
        if y is None:
            return [0.0] * n_layers
        return self.cond(y, validate=False).view(len(y), n_layers, width, 1, 1).unbind(1)

    def _logit_at(self, state, flat, i, y):
        """Run the net on the rows [r - reach, r] only: the same logit, far cheaper."""
        r, c = divmod(i, self.width)
        top = max(0, r - self.reach)
        window = flat.view(len(flat), 1, self.height, self.width)[:, :, top : r + 1]
        return self.logits(window, y)[:, 0, -1, c]


class PixelCNN(_RasterModel):
    """PixelCNN for binary images: a type A masked conv, residual type B blocks, a 1x1 head.

    Each block is ``h + conv1x1(relu(masked_B(relu(h))))``; a label (if any) adds a learnt
    per-channel bias after the first layer and in every block.

    Args:
        height, width: image size.
        channels: feature channels.
        layers: number of residual type B blocks.
        kernel: kernel size of the blocks; first_kernel: of the type A layer.
        num_classes: labels the model is conditioned on (0: unconditional).

    Shapes: x (B, 1, H, W) -> logits (B, 1, H, W).
    """

    def __init__(self, height=28, width=28, channels=64, layers=6, kernel=3, first_kernel=7,
                 num_classes=0):  # fmt: skip
        super().__init__(height, width, num_classes)
        self.first = MaskedConv2d(1, channels, first_kernel, "A")
        self.convs = nn.ModuleList(
            MaskedConv2d(channels, channels, kernel, "B") for _ in range(layers)
        )
        self.mixes = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(layers))
        self.cond = _class_table(num_classes, channels * (layers + 1))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1)
        )
        self.channels = channels

    def logits(self, x, y=None):
        biases = self._label_biases(y, len(self.convs) + 1, self.channels)
        h = self.first(2 * x - 1) + biases[0]  # (B, C, H, W)
        for conv, mix, bias in zip(self.convs, self.mixes, biases[1:], strict=True):
            h = h + mix(torch.relu(conv(torch.relu(h)) + bias))
        return self.head(h)  # (B, 1, H, W)


def _gate(a: torch.Tensor) -> torch.Tensor:
    """tanh(a_1) * sigmoid(a_2) of the two channel halves: (B, 2C, ...) -> (B, C, ...)."""
    left, right = a.chunk(2, dim=1)
    return torch.tanh(left) * torch.sigmoid(right)


def _shift_down(v: torch.Tensor) -> torch.Tensor:
    """Move every row one down (zeros enter at the top): row r then holds row r - 1."""
    return F.pad(v, (0, 0, 1, 0))[:, :, :-1]


class GatedBlock(nn.Module):
    """One layer of the gated PixelCNN: a vertical and a horizontal stack.

    The vertical stack at row r sees rows <= r; it reaches the horizontal stack only shifted
    down one row, so the horizontal output at (r, c) sees rows < r and (r, < c) [or (r, <= c)
    after the first layer]. The horizontal stack has a residual connection.

    Shapes: v, h (B, C_in, H, W) -> (B, C, H, W) each.
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool):
        super().__init__()
        self.first = first
        self.vertical = MaskedConv2d(in_channels, 2 * channels, kernel, "vertical")
        kind = "horizontal_A" if first else "horizontal_B"
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, kernel), kind)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, v, h, bias=0.0):
        v_pre = self.vertical(v)  # (B, 2C, H, W), rows <= r
        h_pre = self.horizontal(h) + self.link(_shift_down(v_pre))
        h_new = self.out(_gate(h_pre + bias))
        return _gate(v_pre + bias), (h_new if self.first else h + h_new)


class GatedPixelCNN(_RasterModel):
    """Gated PixelCNN without blind spot (van den Oord et al. 2016b), for binary images.

    A first gated layer with a ``first_kernel`` (horizontal part type A), ``layers`` gated
    layers, then a 1x1 head on the horizontal stack. A label adds a learnt bias to the
    gate pre-activations of every layer (conditional PixelCNN).

    Shapes: x (B, 1, H, W) -> logits (B, 1, H, W).
    """

    row_shift = 1

    def __init__(self, height=28, width=28, channels=64, layers=6, kernel=3, first_kernel=7,
                 num_classes=0):  # fmt: skip
        super().__init__(height, width, num_classes)
        self.blocks = nn.ModuleList([GatedBlock(1, channels, first_kernel, first=True)])
        self.blocks.extend(GatedBlock(channels, channels, kernel, False) for _ in range(layers))
        self.cond = _class_table(num_classes, 2 * channels * len(self.blocks))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1)
        )
        self.channels = channels

    def logits(self, x, y=None):
        biases = self._label_biases(y, len(self.blocks), 2 * self.channels)
        v = h = 2 * x - 1  # (B, 1, H, W)
        for block, bias in zip(self.blocks, biases, strict=True):
            v, h = block(v, h, bias)
        return self.head(h)  # (B, 1, H, W)
