"""The pieces of a small diffusion transformer (chapter 08, after SD3 and DiT).

* :func:`patchify` / :func:`unpatchify`: images (B, C, H, W) <-> tokens (B, N, C p p);
* :func:`sincos_2d`: fixed 2D sine-cosine position embeddings, half of the channels for the
  row and half for the column of a patch;
* :class:`Attention`: multi-head self-attention over one sequence, optionally with QK-norm
  (an RMSNorm of every head's queries and keys, which bounds the attention logits by the norms'
  learned scales instead of letting them grow with the weights);
* :class:`DiTBlock`: attention and MLP with adaLN-Zero (the conditioning vector sets each
  layer norm's shift and scale and a gate on each residual branch; the gates start at zero, so
  the block starts as the identity);
* :class:`MMDiTBlock`: SD3's two streams (image tokens and context tokens, here class-label
  tokens), each with its own weights and modulation, attending jointly over both;
* :func:`record_logits`: while open, every attention of these blocks reports its largest
  logit (to watch logits grow without QK-norm).

The network that assembles them, with the book's ``forward(x, t, **cond)`` contract, is
:class:`nbutils.nn.dit.LabelDiT`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from nbutils.tensors import check_tensor


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into non-overlapping ``patch x patch`` squares, in row-major order.

    Args:
        x: (B, C, H, W) with H and W divisible by ``patch``.

    Returns:
        (B, N, C * patch * patch) with N = (H / patch) (W / patch).
    """
    check_tensor(x, "x", shape=("B", "C", "H", "W"))
    b, c, h, w = x.shape
    _check_patch(patch, h, w)
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def _check_patch(patch: int, h: int, w: int) -> None:
    if not isinstance(patch, int) or patch < 1 or h % patch or w % patch:
        fits = [p for p in range(1, math.gcd(h, w) + 1) if h % p == 0 and w % p == 0]
        raise ValueError(
            f"the image size {h}x{w} is not divisible by the patch size {patch}; choose a patch "
            f"size that divides both ({', '.join(map(str, fits))})"
        )


def unpatchify(tokens: torch.Tensor, patch: int, shape) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, C p p) -> (B, C, H, W) for ``shape = (C, H, W)``."""
    c, h, w = shape
    _check_patch(patch, h, w)
    check_tensor(tokens, "tokens", shape=("B", (h // patch) * (w // patch), c * patch * patch))
    b = tokens.shape[0]
    x = tokens.reshape(b, h // patch, w // patch, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions -> (N, dim): ``[sin(p w_k), cos(p w_k)]``, w_k = 10000^(-2k / dim)."""
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(dim // 2, dtype=torch.float64) * 2 / dim)
    angles = positions.double()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(rows: int, cols: int, dim: int) -> torch.Tensor:
    """Fixed 2D position embeddings of a ``rows x cols`` grid of patches, row-major: (N, dim).

    The first half of the channels encodes the row, the second half the column, each with the
    1D sine-cosine code of the Transformer; every value lies in [-1, 1] and every grid position
    gets its own vector. ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 (sin and cos of rows and columns), got {dim}")
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    code = torch.cat([_sincos_1d(r.reshape(-1), dim // 2), _sincos_1d(c.reshape(-1), dim // 2)], 1)
    return code.float()


_RECORDS: list[list[torch.Tensor]] = []  # the lists of the open record_logits() blocks


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for (B, heads, N, d) queries, keys and values (keys and
    values may have another length M); reports its largest logit magnitude to any open
    :func:`record_logits`."""
    if _RECORDS:
        with torch.no_grad():
            top = (q @ k.transpose(-1, -2)).abs().amax().float() / math.sqrt(q.shape[-1])
        for record in _RECORDS:
            record.append(top)
    return F.scaled_dot_product_attention(q, k, v)


@contextmanager
def record_logits() -> Iterator[list[torch.Tensor]]:
    """Collect the largest pre-softmax logit of every attention call made inside the block.

    Yields a list that receives one 0-d tensor (on the model's device, no synchronisation) per
    call of :class:`Attention` or :class:`MMDiTBlock`, in call order::

        with record_logits() as seen:
            loss = loss_fn(model, batch)
        largest = torch.stack(seen).max()
    """
    record: list[torch.Tensor] = []
    _RECORDS.append(record)
    try:
        yield record
    finally:
        _RECORDS.remove(record)


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, dim) -> (B, N, dim), with optional QK-norm.

    ``logits(x)`` returns the pre-softmax scores (B, heads, N, N), to watch how large they grow.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by the number of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def qkv_heads(self, x: torch.Tensor):
        """Queries, keys and values (B, heads, N, head_dim), queries and keys normalised."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if isinstance(self.q_norm, nn.RMSNorm):  # normalise in float32 (under bf16 autocast too)
            wide = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64
            q, k = self.q_norm(q.to(wide)).to(v.dtype), self.k_norm(k.to(wide)).to(v.dtype)
        return q, k, v

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        q, k, _ = self.qkv_heads(x)
        return q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)
        y = attend(q, k, v)  # (B, heads, N, head_dim)
        return self.out(y.transpose(1, 2).reshape(x.shape))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (1 + scale) + shift`` with (B, dim) shift and scale over (B, N, dim) tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Modulation(nn.Module):
    """adaLN-Zero's projection: cond (B, cond_dim) -> ``parts`` vectors (B, dim) each (shifts,
    scales, gates), all zero at initialisation."""

    def __init__(self, cond_dim: int, dim: int, parts: int):
        super().__init__()
        self.parts, self.linear = parts, nn.Linear(cond_dim, parts * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, cond: torch.Tensor):
        return self.linear(F.silu(cond)).chunk(self.parts, dim=1)


def _mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
    )


class DiTBlock(nn.Module):
    """One transformer block with adaLN-Zero: tokens (B, N, dim), cond (B, cond_dim) -> (B, N, dim).

    ``x + g1 * attn(modulate(norm(x), s1, c1))``, then the same for the MLP, with shifts s,
    scales c and gates g computed from ``cond``. The modulation starts at zero, so the block
    starts as the identity (Peebles & Xie 2023).
    """

    def __init__(self, dim: int, heads: int, cond_dim: int, *, qk_norm: bool = False,
                 mlp_ratio: float = 4.0):  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads, qk_norm), _mlp(dim, mlp_ratio)
        self.modulation = Modulation(cond_dim, dim, 6)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2 = self.modulation(cond)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, c1))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, c2))


class MMDiTBlock(nn.Module):
    """SD3's block: image tokens x (B, N, dim) and context tokens c (B, M, dim), each stream
    with its own norms, projections, MLP and adaLN-Zero modulation from ``cond`` (B, cond_dim),
    and one attention over the joined sequence (B, N + M, dim). Returns ``(x, c)``; the
    identity at initialisation. (In the last block of a network the context stream's output
    is unused; SD3 drops its output projection and MLP there, this block keeps them.)
    """

    def __init__(self, dim: int, heads: int, cond_dim: int, *, qk_norm: bool = False,
                 mlp_ratio: float = 4.0):  # fmt: skip
        super().__init__()
        self.streams = nn.ModuleList()
        for _ in range(2):  # 0: image, 1: context
            stream = nn.Module()
            stream.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            stream.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            stream.attn, stream.mlp = Attention(dim, heads, qk_norm), _mlp(dim, mlp_ratio)
            stream.modulation = Modulation(cond_dim, dim, 6)
            self.streams.append(stream)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: torch.Tensor):
        mods = [s.modulation(cond) for s in self.streams]
        heads = [
            s.attn.qkv_heads(modulate(s.norm1(tokens), m[0], m[1]))
            for s, m, tokens in zip(self.streams, mods, (x, c), strict=True)
        ]
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(*heads, strict=True))  # joint
        joint = attend(q, k, v).transpose(1, 2)  # (B, N + M, h, d)
        joint = joint.reshape(x.shape[0], -1, x.shape[2])
        out, parts = [], joint.split([x.shape[1], c.shape[1]], dim=1)
        for s, m, tokens, y in zip(self.streams, mods, (x, c), parts, strict=True):
            tokens = tokens + m[2][:, None] * s.attn.out(y)
            out.append(tokens + m[5][:, None] * s.mlp(modulate(s.norm2(tokens), m[3], m[4])))
        return out[0], out[1]
