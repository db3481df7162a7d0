"""Chapter 08's latent space: the autoencoder's shapes for every latent size, a reconstruction
loss that training lowers, and a standardisation that gives each channel zero mean and unit
variance on the data it was fitted on and inverts exactly."""

import pytest
import torch

from nbutils.latent import Autoencoder, Standardizer, reconstruction_loss


@pytest.mark.parametrize("channels", [4, 8, 16])
def test_the_autoencoder_maps_images_to_latents_of_its_size_and_back(channels):
    model = Autoencoder(latent_channels=channels, hidden=8)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    z = model.encode(x)
    assert z.shape == (3, channels, 7, 7) and model.decode(z).shape == x.shape


def test_training_lowers_the_reconstruction_loss():
    torch.manual_seed(0)
    model = Autoencoder(latent_channels=4, hidden=8)
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = reconstruction_loss(model, x).item()
    for _ in range(60):
        optimizer.zero_grad()
        reconstruction_loss(model, (x,)).backward()
        optimizer.step()
    final = reconstruction_loss(model, x).item()
    assert final < 0.5 * start and final < 0.5 * x.pow(2).mean().item()  # beats predicting 0


def test_standardised_latents_have_zero_mean_and_unit_variance_per_channel():
    g = torch.Generator().manual_seed(1)
    shifts, scales = torch.tensor([3.0, -1.0, 0.5]), torch.tensor([0.2, 5.0, 1.0])
    latents = torch.randn(400, 3, 7, 7, generator=g) * scales[:, None, None] + shifts[:, None, None]
    standardizer = Standardizer(3).fit(latents)
    u = standardizer(latents)
    per_channel = u.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardizer.inverse(u), latents, atol=1e-5, rtol=1e-5)
    assert set(standardizer.state_dict()) == {"shift", "scale"}  # saved with a checkpoint


def test_bad_inputs_are_clear_errors():
    model = Autoencoder(latent_channels=4, hidden=8)
    with pytest.raises(ValueError, match=r"x \(images\) must have shape \(B, 1, 28, 28\), got"):
        model.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"z \(latents\) must have shape \(B, 4, 7, 7\)"):
        model.decode(torch.zeros(2, 8, 7, 7))  # latents of another autoencoder
    with pytest.raises(ValueError, match="multiple of 8"):
        Autoencoder(hidden=12)
    with pytest.raises(ValueError, match="constant"):
        Standardizer(2).fit(torch.ones(5, 2, 7, 7))
    with pytest.raises(ValueError, match=r"latents must have shape \(N, 2, H, W\)"):
        Standardizer(2).fit(torch.zeros(5, 3, 7, 7))
