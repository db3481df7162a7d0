"""A small U-Net for 28x28 images, conditioned on time and optionally on a class label.

It is the velocity / score / noise network of the diffusion and flow chapters (04-08): any
network that maps ``(x_t, t)`` to a tensor shaped like ``x_t``. The layout is the usual one of
DDPM-style U-Nets, cut down to MNIST size::

    x (B, C, 28, 28) -> conv -> [res blocks @28] -skip-> down -> [res blocks @14] -skip-> down
      -> [res blocks @7] -skip-> res + attention + res @7
      -> concat skip, [res blocks @7] -> up -> concat skip, [res blocks @14] -> up
      -> concat skip, [res blocks @28] -> norm, SiLU, conv -> (B, C, 28, 28)

Residual blocks use GroupNorm and SiLU; the time embedding (sinusoidal features through an
MLP, :class:`~nbutils.nn.embeddings.TimeMLP`) scales and shifts each block's second
normalisation. With ``num_classes=K`` a label embedding of K + 1 rows
(:class:`~nbutils.nn.embeddings.ClassEmbedding` with a null row) is added to the time
embedding; row K is the "null" label (no class), which classifier-free guidance uses later.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.nn.embeddings import ClassEmbedding, TimeMLP
from nbutils.tensors import check_dtype_matches, check_tensor


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection and a time-dependent scale and shift.

    Shapes: x (B, cin, H, W), emb (B, emb_dim) -> (B, cout, H, W).
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, HW, C / heads)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """One resolution of the U-Net: a few residual blocks (and a resampling layer)."""

    def __init__(self, blocks: list[ResBlock], resample: nn.Module):
        super().__init__()
        self.blocks, self.resample = nn.ModuleList(blocks), resample

    def run_blocks(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, emb)
        return h


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """U-Net ``net(x, t, y=None)`` returning a tensor shaped like ``x``.

    Args:
        in_channels: image channels C (1 for MNIST).
        channels: feature channels per resolution, e.g. ``(32, 64, 128)``; each entry after
            the first halves the resolution, so H and W must be divisible by
            ``2 ** (len(channels) - 1)`` (28 -> 14 -> 7 for three entries).
        blocks: residual blocks per resolution on the way down (and up).
        num_classes: if given, add a label embedding with ``num_classes + 1`` rows; label
            ``num_classes`` is the null label, used when ``y`` is omitted.
        attention: add one self-attention layer at the lowest resolution.
        emb_dim: size of the time (and label) embedding; default ``4 * channels[0]``.
        groups: GroupNorm groups (at most).
        dropout: dropout rate inside the residual blocks.

    Shapes: x (B, C, H, W), t (B,) in [0, 1], y (B,) int64 in [0, num_classes] -> (B, C, H, W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels=(32, 64, 128),
        blocks: int = 1,
        *,
        num_classes: int | None = None,
        attention: bool = True,
        emb_dim: int | None = None,
        groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not channels or blocks < 1:
            raise ValueError(f"need at least one level and one block, got {channels}, {blocks}")
        self.in_channels, self.channels, self.num_classes = (
            in_channels,
            tuple(channels),
            num_classes,
        )
        emb_dim = emb_dim or 4 * channels[0]
        self.time_emb = TimeMLP(emb_dim)
        self.label_emb = ClassEmbedding(num_classes, emb_dim, null=True) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, groups, dropout)

        self.down, prev = nn.ModuleList(), channels[0]
        for i, ch in enumerate(channels):
            last = i == len(channels) - 1
            down = nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            self.down.append(Level([res(prev if j == 0 else ch, ch) for j in range(blocks)], down))
            prev = ch
        self.mid1, self.mid2 = res(prev, prev), res(prev, prev)
        self.attn = SelfAttention2d(prev, groups=groups) if attention else nn.Identity()
        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            up = nn.Identity() if i == 0 else Upsample(ch)  # applied after this level's blocks
            self.up.append(Level([res(prev + ch if j == 0 else ch, ch) for j in range(blocks)], up))
            prev = ch
        self.norm_out = _norm(channels[0], groups)
        self.conv_out = nn.Conv2d(channels[0], in_channels, 3, padding=1)

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Time (and label) embedding: t (B,), y (B,) or None -> (B, emb_dim)."""
        emb = self.time_emb(t)  # (B, emb_dim)
        if self.label_emb is None:
            if y is not None:
                raise ValueError("this UNet has no label embedding (num_classes=None); drop y")
            return emb
        if y is not None:
            check_tensor(y, "y", shape=("B",), sizes={"B": len(t)})
        return emb + self.label_emb(y, batch=len(t))  # y None: the null label

    def check_input(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Raise a clear error unless x is (B, C, H, W) with H, W divisible and t is (B,)."""
        sizes = check_tensor(x, "x", shape=("B", self.in_channels, "H", "W"), floating=True)
        factor = 2 ** (len(self.channels) - 1)
        if sizes["H"] % factor or sizes["W"] % factor:
            raise ValueError(
                f"H and W must be divisible by {factor} for {len(self.channels)} "
                f"levels, got {tuple(x.shape[2:])}"
            )
        check_tensor(t, "t", shape=("B",), sizes=sizes)
        check_dtype_matches(x, self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        self.check_input(x, t)
        emb = self.embed(t, y)  # (B, emb_dim)
        h, skips = self.conv_in(x), []  # (B, c0, H, W)
        for level in self.down:
            h = level.run_blocks(h, emb)
            skips.append(h)  # (B, ch, H / 2^i, W / 2^i)
            h = level.resample(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)  # (B, c_last, H / f, W / f)
        for level in self.up:
            h = level.run_blocks(torch.cat([h, skips.pop()], dim=1), emb)
            h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
