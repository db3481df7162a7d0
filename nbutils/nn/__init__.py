"""Network pieces shared by several chapters; this module only re-exports their names.

* :mod:`~nbutils.nn.layers`: :class:`MLP`, :class:`MaskedLinear`, :class:`MaskedConv2d` with
  :func:`causal_mask`, and :class:`VelocityMLP` (the 2D sections' time-conditioned MLP);
* :mod:`~nbutils.nn.embeddings`: :func:`sinusoidal_embedding`, :class:`TimeMLP`,
  :class:`FourierFeatures`, :class:`ClassEmbedding` (with an optional "no label" row);
* :mod:`~nbutils.nn.unet`: the small time-conditioned :class:`UNet` of chapters 04-08;
* :mod:`~nbutils.nn.transformer`: :func:`patchify`, :func:`unpatchify`, :func:`sincos_2d`,
  :class:`Attention` (with QK-norm), :class:`DiTBlock` and :class:`MMDiTBlock` (chapter 08);
* :mod:`~nbutils.nn.dit`: :class:`LabelDiT`, the class-conditional MM-DiT (or one-stream DiT)
  of chapter 08.

The book's MNIST classifier, whose features measure sample quality, is in
:mod:`nbutils.classifier`.
"""

from nbutils.nn.dit import LabelDiT
from nbutils.nn.embeddings import ClassEmbedding, FourierFeatures, TimeMLP, sinusoidal_embedding
from nbutils.nn.layers import (
    MASK_KINDS,
    MLP,
    MaskedConv2d,
    MaskedLinear,
    VelocityMLP,
    causal_mask,
)
from nbutils.nn.transformer import (
    Attention,
    DiTBlock,
    MMDiTBlock,
    patchify,
    sincos_2d,
    unpatchify,
)
from nbutils.nn.unet import UNet

__all__ = [
    "Attention",
    "LabelDiT",
    "DiTBlock",
    "MMDiTBlock",
    "patchify",
    "sincos_2d",
    "unpatchify",
    "MASK_KINDS",
    "MLP",
    "ClassEmbedding",
    "FourierFeatures",
    "MaskedConv2d",
    "MaskedLinear",
    "TimeMLP",
    "UNet",
    "VelocityMLP",
    "causal_mask",
    "sinusoidal_embedding",
]
