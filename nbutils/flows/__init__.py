"""Normalizing flows; this module only re-exports the public names of its parts.

* :mod:`~nbutils.flows.base`: the transform contract (``forward(x) -> (z, logabsdet)``,
  ``inverse(z) -> x``), :class:`Compose`, the element-wise transforms (:class:`Scaling`,
  :class:`Permutation`, :class:`Logit`), the priors and :class:`Flow`;
* :mod:`~nbutils.flows.couplings`: partitions, coupling layers and the NICE builder (chapter 02).

Chapter 03 adds Glow's pieces and continuous flows beside them.
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

__all__ = [
    "AdditiveCoupling",
    "Compose",
    "Coupling",
    "FlatMLP",
    "Flow",
    "IndexPartition",
    "Logit",
    "MaskPartition",
    "Partition",
    "Permutation",
    "Scaling",
    "StandardLogistic",
    "StandardNormal",
    "Transform",
    "channels",
    "checkerboard_partition",
    "halves",
    "mlp_conditioner",
    "nice",
    "nll_nats_per_dim",
]
