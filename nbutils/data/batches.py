"""Mini-batches of tensors held in memory (on the GPU when there is one), with exact resume,
and the batch transforms that make the views of :mod:`nbutils.data.views` on the fly.
"""

from __future__ import annotations

import numbers

import torch

from nbutils.checkpoint import CheckpointMismatch, describe_value, tensor_digest
from nbutils.data.views import binarize, dequantize, to_levels, to_symmetric


class Batches:
    """Endless shuffled mini-batches of in-memory tensors, with a state that resumes exactly.

    Each epoch visits every row once in a fresh random order (the last incomplete batch is
    dropped). The order and any randomness in ``transform`` come from one generator on the
    data's device, saved by :meth:`state_dict`, so a resumed run sees the same batches.

    Args:
        *tensors: tensors with the same first dimension N, e.g. images (N, 28, 28) and labels (N,).
        batch_size: rows per batch (at most N).
        transform: optional ``transform(*rows, generator=g) -> batch`` applied to each batch,
            e.g. dynamic binarization.
        seed: seed of the generator.
        device: where the tensors are kept and batches are made.
    """

    def __init__(self, *tensors, batch_size: int, transform=None, seed: int = 0, device=None):
        if not tensors:
            raise ValueError("Batches needs at least one tensor")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"tensors differ in length: {[len(t) for t in tensors]}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise ValueError(f"batch_size must be an int in [1, {n}], got {batch_size!r}")
        batch_size = int(batch_size)
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
        self.device = torch.device(device) if device is not None else tensors[0].device
        self.tensors = [t.to(self.device) for t in tensors]
        self.batch_size, self.transform, self.n, self.seed = batch_size, transform, n, seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch, self.position = 0, 0
        self.order = self._new_order()

    def _new_order(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator, device=self.device)

    def __iter__(self):
        return self

    def __next__(self):
        if self.position + self.batch_size > self.n:
            self.order, self.position, self.epoch = self._new_order(), 0, self.epoch + 1
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        rows = [t[index] for t in self.tensors]
        if self.transform is not None:
            return self.transform(*rows, generator=self.generator)
        return rows[0] if len(rows) == 1 else tuple(rows)

    def fingerprint(self) -> str:
        """What the batches are made of: a digest of the tensors, the batch size, the seed, the
        device type (its generator's state only fits that kind) and the transform (recorded by
        :func:`nbutils.train.fit` in its checkpoints). Data made by a model, such as reflow
        pairs, are hashed by their values: another GPU or torch version may give other bits
        and so train afresh, which is safe."""
        parts = (self.batch_size, self.seed, self.device.type, describe_value(self.transform))
        return f"{tensor_digest(self.tensors)}:{parts}"

    def state_dict(self) -> dict:
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "position": self.position,
            "order": self.order.cpu(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = (state.get("n", self.n), state.get("batch_size", self.batch_size))
        if saved != (self.n, self.batch_size):
            raise CheckpointMismatch(
                f"the saved batches came from {saved[0]} rows in batches of {saved[1]}; these "
                f"have {self.n} rows in batches of {self.batch_size}"
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = state["order"].to(self.device)
        self.generator.set_state(state["generator"])


def binarized(images: torch.Tensor, *rest, generator=None):
    """A :class:`Batches` transform: dynamic binarization of the images; the rest unchanged."""
    x = binarize(images, generator=generator)
    return (x, *rest) if rest else x


def dequantized(images: torch.Tensor, *rest, generator=None):
    """A :class:`Batches` transform: uniform dequantization of the images into [0, 1)."""
    x = dequantize(images, generator=generator)
    return (x, *rest) if rest else x


def symmetric(images: torch.Tensor, *rest, generator=None):
    """A :class:`Batches` transform: images scaled to [-1, 1] (no randomness)."""
    x = to_symmetric(images)
    return (x, *rest) if rest else x


def grey_levels(images: torch.Tensor, *rest, generator=None):
    """A :class:`Batches` transform: the 8-bit images themselves, uint8 (B, 1, 28, 28), for a
    model of grey levels (e.g. :class:`nbutils.pixelcnn.CategoricalPixelCNN`)."""
    x = to_levels(images)
    return (x, *rest) if rest else x
