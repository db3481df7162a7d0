"""Normalizing flows; this module only re-exports the public names of its parts.

* :mod:`~nbutils.flows.base`: the transform contract (``forward(x) -> (z, logabsdet)``,
  ``inverse(z) -> x``), :class:`Compose`, the element-wise transforms (:class:`Scaling`,
  :class:`Permutation`, :class:`Logit`), the priors and :class:`Flow`;
* :mod:`~nbutils.flows.couplings`: partitions, coupling layers and the NICE builder (chapter 02);
* :mod:`~nbutils.flows.glow`: affine coupling, actnorm, invertible 1x1 convolution, squeeze, the
  convolutional conditioner and Glow's step (chapter 03);
* :mod:`~nbutils.flows.multiscale`: levels with factor-out, and the chapter's architecture;
* :mod:`~nbutils.flows.dequantize`: variational dequantization and flows of grey-level images;
* :mod:`~nbutils.flows.cnf`: continuous normalizing flows (their likelihood is in
  :mod:`nbutils.likelihood`, which chapter 06 shares).
"""

from nbutils.flows.base import (
    Compose,
    Flow,
    Logit,
    Permutation,
    Scaling,
    StandardLogistic,
    StandardNormal,
    Transform,
    nll_nats_per_dim,
)
from nbutils.flows.cnf import CNF, cnf_nll
from nbutils.flows.couplings import (
    AdditiveCoupling,
    Coupling,
    FlatMLP,
    IndexPartition,
    MaskPartition,
    Partition,
    channels,
    checkerboard_partition,
    halves,
    mlp_conditioner,
    nice,
)
from nbutils.flows.dequantize import DequantizedFlow, VariationalDequantizer, dequantized_nll
from nbutils.flows.glow import (
    ActNorm,
    AffineCoupling,
    ConvNet,
    InvertibleConv1x1,
    Squeeze,
    affine,
    conv_conditioner,
    glow_step,
)
from nbutils.flows.multiscale import Multiscale, multiscale

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "affine",
    "AffineCoupling",
    "channels",
    "checkerboard_partition",
    "CNF",
    "cnf_nll",
    "Compose",
    "conv_conditioner",
    "ConvNet",
    "Coupling",
    "dequantized_nll",
    "DequantizedFlow",
    "FlatMLP",
    "Flow",
    "glow_step",
    "halves",
    "IndexPartition",
    "InvertibleConv1x1",
    "Logit",
    "MaskPartition",
    "mlp_conditioner",
    "Multiscale",
    "multiscale",
    "nice",
    "nll_nats_per_dim",
    "Partition",
    "Permutation",
    "Scaling",
    "Squeeze",
    "StandardLogistic",
    "StandardNormal",
    "Transform",
    "VariationalDequantizer",
]
