"""The latent space of chapter 08: a small convolutional autoencoder for MNIST with a chosen
number of latent channels, and the standardisation of its latents.

Stable Diffusion runs its flow on the latents of an autoencoder, not on pixels. Two choices
matter: how many channels the latent has (more channels reconstruct better but are harder to
generate; SD3 moves from 4 to 16), and the **shift and scale** applied to the latents before the
flow sees them. Public code multiplies by a "scaling factor" and subtracts a "shift factor" that
were measured once on the training set, so that the latents have roughly zero mean and unit
variance, the scale of the Gaussian noise they are mixed with. SD3's two factors are single
numbers for all channels; :class:`Standardizer` measures a shift and a scale per channel (the
book's generalisation) and keeps them as buffers, so they travel with a checkpoint.

Shapes: images (B, 1, 28, 28) in [-1, 1]; latents (B, C, 7, 7).
"""

from __future__ import annotations

import torch
from torch import nn

from nbutils.tensors import check_tensor


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class Autoencoder(nn.Module):
    """28x28 images <-> (C, 7, 7) latents, two stride-2 stages each way.

    Args:
        latent_channels: C, the channels of the latent (the chapter compares 4, 8 and 16).
        hidden: channels of the first stage (the second has twice as many; a multiple of 8).
    """

    def __init__(self, latent_channels: int = 4, hidden: int = 32):
        super().__init__()
        if latent_channels < 1 or hidden < 8 or hidden % 8:
            raise ValueError(
                f"need latent_channels >= 1 and hidden a positive multiple of 8, got "
                f"latent_channels={latent_channels}, hidden={hidden}"
            )
        self.latent_channels = latent_channels
        h = hidden
        self.encoder = nn.Sequential(
            _block(1, h),
            nn.Conv2d(h, h, 4, stride=2, padding=1),  # 14x14
            _block(h, 2 * h),
            nn.Conv2d(2 * h, 2 * h, 4, stride=2, padding=1),  # 7x7
            _block(2 * h, 2 * h),
            nn.Conv2d(2 * h, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * h, 3, padding=1),
            _block(2 * h, 2 * h),
            nn.ConvTranspose2d(2 * h, h, 4, stride=2, padding=1),  # 14x14
            _block(h, h),
            nn.ConvTranspose2d(h, h, 4, stride=2, padding=1),  # 28x28
            _block(h, h),
            nn.Conv2d(h, 1, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) images in [-1, 1] -> (B, C, 7, 7) latents."""
        check_tensor(x, "x (images)", shape=("B", 1, 28, 28), floating=True, finite=True)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, 7, 7) latents -> (B, 1, 28, 28) images (not clamped)."""
        check_tensor(z, "z (latents)", shape=("B", self.latent_channels, 7, 7), floating=True)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def reconstruction_loss(model: Autoencoder, batch) -> torch.Tensor:
    """Objective: mean squared error of the reconstruction, per pixel."""
    x = batch[0] if isinstance(batch, tuple | list) else batch
    return (model(x) - x).pow(2).mean()


class Standardizer(nn.Module):
    """Per-channel shift and scale of latents: ``(z - shift) / scale`` and back.

    :meth:`fit` measures them on latents of the training set (the mean and standard deviation
    of each channel over examples and positions); they are buffers, saved with the model.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))

    @torch.no_grad()
    def fit(self, latents: torch.Tensor) -> Standardizer:
        """Measure shift and scale on latents (N, C, H, W); returns self."""
        check_tensor(latents, "latents", shape=("N", len(self.shift), "H", "W"), floating=True,
                     finite=True)  # fmt: skip
        per_channel = latents.transpose(0, 1).reshape(len(self.shift), -1).double()
        scale = per_channel.std(1)
        if (scale <= 0).any():
            raise ValueError(
                f"a latent channel is constant on these latents (std {scale.tolist()})"
            )
        self.shift.copy_(per_channel.mean(1))
        self.scale.copy_(scale)
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor(z, "z (latents)", shape=("B", len(self.shift), "H", "W"), floating=True)
        return (z - self.shift[:, None, None].to(z)) / self.scale[:, None, None].to(z)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        check_tensor(u, "u (standardised latents)", shape=("B", len(self.shift), "H", "W"),
                     floating=True)  # fmt: skip
        return u * self.scale[:, None, None].to(u) + self.shift[:, None, None].to(u)
