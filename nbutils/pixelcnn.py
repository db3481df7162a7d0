"""PixelCNN (van den Oord et al. 2016): autoregressive convolutions in raster order.

Masked convolutions (:class:`~nbutils.nn.layers.MaskedConv2d`, the masks drawn in
:mod:`nbutils.nn.layers`) zero the kernel weights that would look at "future" pixels. Type A
hides the centre too (the first layer), type B keeps it (later layers).

Stacking A/B layers leaves a *blind spot*: a wedge of pixels above and to the right that no
path reaches. The gated PixelCNN (van den Oord et al. 2016b) splits the net into a vertical
stack (rows above, any column within reach; shifted down one row before it is used) and a
horizontal stack (the current row, to the left) and has no blind spot.

:class:`CategoricalPixelCNN` is the gated network with a ``levels``-way softmax per pixel
instead of a Bernoulli: a model of 8-bit images whose exact log-likelihood gives a discrete
bits/dim (:func:`nll_nats_per_pixel` is its training loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.autoregressive import Autoregressive, _class_table
from nbutils.nn.layers import MaskedConv2d
from nbutils.tensors import check_count, check_tensor, draw

INTEGER_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def _reach(model: nn.Module, row_shift: int) -> int:
    """Rows above row r that the outputs at row r can depend on: ``kernel_height // 2`` per
    masked convolution, plus ``row_shift`` (1 where a vertical stack is shifted down a row)."""
    convs = [m for m in model.modules() if isinstance(m, MaskedConv2d)]
    return sum(m.kernel_size[0] // 2 for m in convs) + row_shift


class _RasterModel(Autoregressive):
    """Shared by both PixelCNNs: (B, 1, H, W) images in raster order, cropped sampling steps."""

    row_shift = 0  # extra rows of reach from shifting the vertical stack (gated: 1)

    def __init__(self, height: int, width: int, num_classes: int):
        super().__init__((1, height, width), num_classes)
        self.height, self.width = height, width

    @property
    def reach(self) -> int:
        """Rows above row r that the logits of row r can depend on (see :func:`_reach`)."""
        return _reach(self, self.row_shift)

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
        return self._logits(window, y)[:, 0, -1, c]


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

    def _logits(self, x, y=None):
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


def _gated_stack(first_kernel: int, channels: int, layers: int, kernel: int) -> nn.ModuleList:
    """A first gated layer (horizontal part type A) on one input channel, then ``layers`` more."""
    blocks = nn.ModuleList([GatedBlock(1, channels, first_kernel, first=True)])
    blocks.extend(GatedBlock(channels, channels, kernel, False) for _ in range(layers))
    return blocks


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
        self.blocks = _gated_stack(first_kernel, channels, layers, kernel)
        self.cond = _class_table(num_classes, 2 * channels * len(self.blocks))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1)
        )
        self.channels = channels

    def _logits(self, x, y=None):
        biases = self._label_biases(y, len(self.blocks), 2 * self.channels)
        v = h = 2 * x - 1  # (B, 1, H, W)
        for block, bias in zip(self.blocks, biases, strict=True):
            v, h = block(v, h, bias)
        return self.head(h)  # (B, 1, H, W)


class CategoricalPixelCNN(nn.Module):
    """Gated PixelCNN over ``levels`` grey levels, e.g. 256 for 8-bit MNIST.

    ``p(x) = prod_i softmax(l_i)[x_i]`` in raster order: the gated network of
    :class:`GatedPixelCNN` sees the image scaled to [-1, 1] and a 1x1 head gives ``levels``
    logits per pixel. The likelihood of the discrete image is exact, so ``-log2 p(x) / D`` is a
    discrete bits/dim; a flow's dequantized bits/dim bounds the same quantity from above.

    Args:
        height, width: image size; levels: number of grey levels (pixel values 0 .. levels - 1).
        channels, layers, kernel, first_kernel: as in :class:`GatedPixelCNN`.

    Shapes: x integer (B, 1, H, W) in [0, levels) -> logits (B, levels, H, W).
    """

    def __init__(self, height=28, width=28, levels=256, channels=64, layers=6, kernel=3,
                 first_kernel=7):  # fmt: skip
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        self.event_shape, self.levels, self.channels = (1, height, width), levels, channels
        self.blocks = _gated_stack(first_kernel, channels, layers, kernel)
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, levels, 1)
        )

    @property
    def reach(self) -> int:
        """Rows above row r that the logits of row r can depend on (see :func:`_reach`)."""
        return _reach(self, row_shift=1)

    @torch.no_grad()
    def init_marginals(self, probs: torch.Tensor) -> None:
        """Set the head's bias to log(probs), (levels,) level frequencies of the training set,
        and its weights to zero: the model then starts as exactly the independent pixels with
        the data's histogram (the head's weights get gradients from the first step)."""
        bias = self.head[-1].bias
        check_tensor(probs, "probs", shape=(self.levels,), floating=True, finite=True)
        if (probs < 0).any() or abs(probs.sum().item() - 1) > 1e-3:
            raise ValueError(f"probs must be non-negative and sum to 1, got sum {probs.sum():.4g}")
        bias.copy_(probs.to(bias).clamp_min(1e-8).log())
        self.head[-1].weight.zero_()

    def check_levels(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is an integer tensor (B, 1, H, W) in [0, levels)."""
        check_tensor(x, "x (grey levels)", shape=("B", *self.event_shape), dtype=INTEGER_DTYPES)
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.levels):
            raise ValueError(
                f"x must hold grey levels 0 .. {self.levels - 1}, got values in "
                f"[{int(x.min())}, {int(x.max())}]"
            )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel's grey level, (B, levels, H, W); entry (:, :, r, c) depends
        only on the pixels before (r, c) in raster order. Values of x are not checked; any
        number of rows (a window of the image) may be passed."""
        return self.head(self._features(x))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The horizontal stack's output (B, channels, rows, W) before the head."""
        ref = self.head[-1].weight
        v = h = x.to(ref.dtype) * (2.0 / (self.levels - 1)) - 1.0  # (B, 1, rows, W) in [-1, 1]
        for block in self.blocks:
            v, h = block(v, h)
        return h

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-likelihood in nats, (B,); the softmax sums in at least float32 (also
        under bfloat16 autocast)."""
        self.check_levels(x)
        logits = self.logits(x)
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        nll = F.cross_entropy(logits, x[:, 0].long(), reduction="none")  # (B, H, W)
        return -nll.flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling in raster order: (n, 1, H, W) int64 grey levels.

        Row r's logits are computed on the rows [r - reach, r] only, which gives the same
        values as the whole image (the tests check it) at a fraction of the cost.
        """
        check_count(n, "n")
        ref = self.head[-1].weight
        _, height, width = self.event_shape
        x = torch.zeros(n, 1, height, width, dtype=torch.long, device=ref.device)
        for r in range(height):
            top = max(0, r - self.reach)
            for c in range(width):
                features = self._features(x[:, :, top : r + 1])[:, :, -1:, c : c + 1]
                logits = self.head(features)[:, :, 0, 0]  # (n, levels): the head at (r, c) only
                probs = torch.softmax(
                    logits.to(torch.promote_types(logits.dtype, torch.float32)), 1
                )
                u = draw(
                    torch.rand, (n, 1), generator=generator, device=ref.device, dtype=probs.dtype
                )
                x[:, 0, r, c] = (probs.cumsum(1) < u).sum(1).clamp(max=self.levels - 1)
        return x


def nll_nats_per_pixel(model: CategoricalPixelCNN, batch) -> torch.Tensor:
    """Training loss: the mean negative log-likelihood in nats per pixel of a batch of integer
    images (B, 1, H, W) (or a tuple whose first entry is that); bits/dim = loss / ln 2."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return -model.log_prob(x).mean() / x[0].numel()
