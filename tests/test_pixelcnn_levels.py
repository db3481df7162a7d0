"""The PixelCNN of grey levels: a normalised distribution over every image, raster-order
causality, sampling windows that give the full image's logits, and clear errors."""

import itertools
import math

import pytest
import torch

from nbutils.data import Batches, grey_levels
from nbutils.pixelcnn import CategoricalPixelCNN, nll_nats_per_pixel


def _model(height=3, width=4, levels=5, **kw):
    torch.manual_seed(0)
    model = CategoricalPixelCNN(height, width, levels=levels, channels=6, layers=2,
                                first_kernel=3, **kw).double()  # fmt: skip
    with torch.no_grad():  # away from the initial values, so that nothing cancels by accident
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_probabilities_of_all_images_sum_to_one():
    model = _model(2, 2, levels=3)
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).view(81, 1, 2, 2)
    total = model.log_prob(images).exp().sum().item()
    assert abs(total - 1) < 1e-12, total


def test_each_pixel_depends_only_on_the_pixels_before_it():
    model = _model(3, 4, levels=5)
    x = torch.randint(0, 5, (2, 1, 3, 4), generator=torch.Generator().manual_seed(1))
    base = model.logits(x)  # (2, 5, 3, 4)
    changed_later = 0
    for j in range(12):
        y = x.clone()
        y.view(2, -1)[:, j] = (y.view(2, -1)[:, j] + 2) % 5
        diff = (model.logits(y) - base).abs().amax(dim=(0, 1)).flatten()  # (12,)
        assert (diff[: j + 1] == 0).all(), f"pixel {j} changes a logit at or before itself"
        changed_later += int((diff[j + 1 :] > 0).any())
    assert changed_later >= 10, "later pixels should see earlier ones"


def test_a_window_of_reach_rows_gives_the_full_images_logits():
    model = _model(6, 4, levels=4)
    x = torch.randint(0, 4, (3, 1, 6, 4), generator=torch.Generator().manual_seed(2))
    full = model.logits(x)
    assert model.reach == 1 + 1 * 2 + 1  # 3x3 first layer, two 3x3 layers, one row shift
    for r in range(6):
        top = max(0, r - model.reach)
        torch.testing.assert_close(model.logits(x[:, :, top : r + 1])[:, :, -1], full[:, :, r])


def test_samples_are_reproducible_and_follow_a_forced_distribution():
    model = _model(3, 3, levels=4)
    gen = torch.Generator().manual_seed(3)
    first = model.sample(5, generator=gen)
    again = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert first.dtype == torch.long and first.shape == (5, 1, 3, 3)
    assert torch.equal(first, again) and 0 <= first.min() and first.max() < 4
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor([-50.0, -50.0, 50.0, -50.0]))
    assert (model.sample(4) == 2).all()


def test_the_loss_is_nats_per_pixel_and_uniform_logits_give_log_levels():
    model = _model(3, 4, levels=5)
    x = torch.randint(0, 5, (6, 1, 3, 4), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(nll_nats_per_pixel(model, x), -model.log_prob(x).mean() / 12)
    torch.testing.assert_close(nll_nats_per_pixel(model, (x, None)), nll_nats_per_pixel(model, x))
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
    torch.testing.assert_close(nll_nats_per_pixel(model, x).item(), math.log(5))


def test_init_marginals_makes_independent_pixels_with_the_histogram():
    model = _model(3, 4, levels=5)
    probs = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    model.init_marginals(probs)  # also zeroes the head's weights
    x = torch.randint(0, 5, (4, 1, 3, 4), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model.log_prob(x), probs.log()[x].flatten(1).sum(1))
    with pytest.raises(ValueError, match="sum to 1"):
        model.init_marginals(probs * 2)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        model.init_marginals(probs[:4])


def test_grey_level_batches_are_the_uint8_images():
    images = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
    batch = next(iter(Batches(images, batch_size=4, transform=grey_levels, seed=0)))
    assert batch.dtype == torch.uint8 and batch.shape == (4, 1, 28, 28)
    assert all(any(torch.equal(b[0], im) for im in images) for b in batch)
    assert CategoricalPixelCNN(channels=4, layers=0).log_prob(batch).shape == (4,)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.zeros(2, 1, 3, 4), TypeError, "dtype"),
        (torch.full((2, 1, 3, 4), 5), ValueError, r"grey levels 0 \.\. 4, got values in \[5, 5\]"),
        (torch.full((2, 1, 3, 4), -1), ValueError, "grey levels"),
        (torch.zeros(2, 3, 4, dtype=torch.long), ValueError, r"shape \(B, 1, 3, 4\)"),
        ([[0, 1]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_images_are_refused_clearly(x, error, message):
    with pytest.raises(error, match=message):
        _model(3, 4, levels=5).log_prob(x)


def test_bad_settings_are_refused_clearly():
    with pytest.raises(ValueError, match="levels must be an integer >= 2, got 1"):
        CategoricalPixelCNN(levels=1)
    with pytest.raises(ValueError, match="got 256.0"):
        CategoricalPixelCNN(levels=256.0)
    with pytest.raises((ValueError, TypeError), match="n must be"):
        _model().sample(0)
