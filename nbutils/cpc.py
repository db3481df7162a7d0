"""Contrastive Predictive Coding on MNIST (chapter 09): an image read as a sequence of bands.

A 28x28 digit is cut into ``T`` horizontal bands of ``28 / T`` rows, read top to bottom. Each
band is encoded on its own, ``z_t = g_enc(band_t)``; a GRU summarises the bands so far,
``c_t = g_ar(z_1..z_t)``; and for each step ahead ``k = 1..K`` a bilinear critic scores
``f_k(c_t, z_{t+k}) = c_t^T W_k z_{t+k}``. The loss is InfoNCE over the batch at every
``(t, k)``: the anchor's own future band is the positive, the same band of the other images in
the batch are the negatives. So a (B, B) critic matrix per ``(t, k)``, as in
:mod:`nbutils.contrastive`.

Only past bands reach a prediction: ``z_t`` sees band ``t`` alone and the GRU runs forward, so
the prediction made at step ``t`` does not change when any band after ``t`` does.
"""

from __future__ import annotations

import torch
from torch import nn

from nbutils.contrastive import BilinearCritic, info_nce_loss
from nbutils.nn.layers import MLP
from nbutils.tensors import check_tensor


class CPC(nn.Module):
    """Band encoder, autoregressive context and K bilinear predictors.

    Args:
        bands: number of bands T (28 must divide into them: 2, 4, 7, 14 or 28).
        embed: size of each band's code z_t.
        context: size of the GRU's state c_t.
        hidden: width of the band encoder's two hidden layers.
        ahead: K, how many bands ahead are predicted (K < T).

    Shapes: x (B, 1, 28, 28) -> z (B, T, embed), c (B, T, context).
    """

    def __init__(
        self, bands: int = 7, embed: int = 64, context: int = 128, hidden: int = 256, ahead: int = 3
    ):
        super().__init__()
        if isinstance(bands, bool) or not isinstance(bands, int) or bands < 2 or 28 % bands:
            raise ValueError(f"bands must divide 28 into at least 2 bands, got {bands}")
        if isinstance(ahead, bool) or not isinstance(ahead, int) or not 1 <= ahead < bands:
            raise ValueError(f"ahead must be between 1 and bands - 1 = {bands - 1}, got {ahead}")
        self.bands, self.ahead = bands, ahead
        self.encoder = MLP((28 * 28 // bands, hidden, hidden, embed), activation=nn.ReLU)
        self.gru = nn.GRU(embed, context, batch_first=True)
        self.predictors = nn.ModuleList(BilinearCritic(context, embed) for _ in range(ahead))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) -> bands (B, T, 28 * 28 / T), top band first."""
        check_tensor(x, "x", shape=("B", 1, 28, 28), floating=True, finite=True)
        return x.reshape(x.shape[0], self.bands, -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, 28, 28) -> codes z (B, T, embed) and contexts c (B, T, context)."""
        z = self.encoder(self.split(x))
        c, _ = self.gru(z)
        return z, c

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted codes ``W_k^T c_t`` of band ``t + k``: (B, T, K, embed).

        Entry ``[:, t, k - 1]`` is made from bands ``0..t`` only (for ``t + k >= T`` it
        predicts past the last band and takes no part in the loss).
        """
        _, c = self(x)
        return torch.stack([p.project(c) for p in self.predictors], dim=2)

    def features(self, x: torch.Tensor, kind: str = "all") -> torch.Tensor:
        """Frozen features for a linear probe.

        ``kind``: ``"codes"`` (every band's z, concatenated: (B, T * embed)), ``"context"``
        (the last context c_T: (B, context)) or ``"all"`` (both, concatenated).
        """
        z, c = self(x)
        parts = {"codes": [z.flatten(1)], "context": [c[:, -1]], "all": [z.flatten(1), c[:, -1]]}
        if kind not in parts:
            raise ValueError(f"kind must be one of {sorted(parts)}, got {kind!r}")
        return torch.cat(parts[kind], dim=1)


def cpc_loss(model: CPC, batch) -> torch.Tensor:
    """The mean InfoNCE loss over every (t, k) with t + k < T; negatives from the batch.

    ``batch`` is images (B, 1, 28, 28), or a tuple whose first entry they are (labels are
    ignored: the loss uses none). Needs B >= 2.
    """
    x = batch[0] if isinstance(batch, tuple | list) else batch
    z, c = model(x)
    if z.shape[0] < 2:
        raise ValueError(
            "cpc_loss needs a batch of at least 2 images (the others are the negatives), "
            f"got {z.shape[0]}"
        )
    losses = []
    for k, critic in enumerate(model.predictors, start=1):
        for t in range(model.bands - k):
            losses.append(info_nce_loss(critic(c[:, t], z[:, t + k])))
    return torch.stack(losses).mean()
