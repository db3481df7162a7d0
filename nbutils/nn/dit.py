"""Chapter 08's networks: a class-conditional diffusion transformer, either SD3's MM-DiT (image
and label tokens in two streams with joint attention) or a DiT that runs the label tokens
through the same weights as the image tokens, concatenated into one sequence.

Both follow the book's contract ``forward(x, t, y=None)`` with x (B, C, H, W), t (B,) and labels
y (B,) (None, or the null index, for "no label": classifier-free guidance), so chapter 07's
flow-matching loss and samplers run them unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from nbutils.nn.embeddings import ClassEmbedding, TimeMLP
from nbutils.nn.transformer import (
    DiTBlock,
    MMDiTBlock,
    Modulation,
    modulate,
    patchify,
    sincos_2d,
    unpatchify,
)
from nbutils.tensors import check_tensor


class LabelDiT(nn.Module):
    """A transformer over patches with class-label tokens.

    The image becomes tokens (patchify, a linear map, fixed 2D sin-cos positions); the label
    becomes ``label_tokens`` learned tokens (a "text" of fixed length) and also enters, with the
    time embedding, the conditioning vector of every adaLN-Zero modulation. The output layer
    starts at zero, so the network starts by predicting zero velocity.

    Args:
        image_shape: (C, H, W) of the inputs (pixels or latents).
        patch: patch size (must divide H and W).
        dim, depth, heads: token width, number of blocks, attention heads.
        num_classes: labels 0..K-1; index K is "no label".
        label_tokens: tokens per label.
        joint: True for MM-DiT blocks (two streams); False for one stream over the concatenation.
        qk_norm: RMSNorm on queries and keys in every attention.

    Shapes: x (B, C, H, W), t (B,), y (B,) or None -> (B, C, H, W).
    """

    def __init__(self, image_shape=(1, 28, 28), *, patch: int = 4, dim: int = 128,
                 depth: int = 4, heads: int = 4, num_classes: int = 10, label_tokens: int = 4,
                 joint: bool = True, qk_norm: bool = False, mlp_ratio: float = 4.0):  # fmt: skip
        super().__init__()
        c, h, w = image_shape
        if not isinstance(patch, int) or patch < 1 or h % patch or w % patch:
            raise ValueError(f"the patch size {patch} must divide the image size {h}x{w}")
        self.image_shape, self.patch, self.joint = (c, h, w), patch, joint
        self.dim, self.label_tokens = dim, label_tokens
        self.embed = nn.Linear(c * patch * patch, dim)
        self.register_buffer("positions", sincos_2d(h // patch, w // patch, dim), persistent=False)
        self.time = TimeMLP(dim)
        self.labels = ClassEmbedding(num_classes, dim * label_tokens, null=True)
        self.label_positions = nn.Parameter(0.02 * torch.randn(label_tokens, dim))
        self.pooled = ClassEmbedding(num_classes, dim, null=True, zero_init=True)
        block = MMDiTBlock if joint else DiTBlock
        self.blocks = nn.ModuleList(
            block(dim, heads, dim, qk_norm=qk_norm, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = Modulation(dim, dim, 2)
        self.head = nn.Linear(dim, c * patch * patch)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        check_tensor(x, "x", shape=("B", *self.image_shape), floating=True)
        check_tensor(t, "t", shape=(x.shape[0],))
        b = x.shape[0]
        tokens = self.embed(patchify(x, self.patch)) + self.positions.to(x.dtype)  # (B, N, dim)
        words = self.labels(y, batch=b).reshape(b, self.label_tokens, self.dim)
        words = words + self.label_positions  # (B, M, dim)
        cond = self.time(t) + self.pooled(y, batch=b)  # (B, dim)
        if self.joint:
            for blk in self.blocks:
                tokens, words = blk(tokens, words, cond)
        else:
            sequence = torch.cat([tokens, words], dim=1)
            for blk in self.blocks:
                sequence = blk(sequence, cond)
            tokens = sequence[:, : tokens.shape[1]]
        shift, scale = self.final_modulation(cond)
        out = self.head(modulate(self.norm(tokens), shift, scale))
        return unpatchify(out, self.patch, self.image_shape)
